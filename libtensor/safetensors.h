/*
 * safetensors.h - the safetensors reader.
 *
 * On-disk layout (huggingface/safetensors README, "Format"):
 *   1. u64 little-endian N: the size of the JSON header;
 *   2. N bytes of UTF-8 JSON: an object mapping tensor names to
 *      {"dtype": "BF16", "shape": [d0, d1, ...], "data_offsets": [begin, end]}
 *      plus an optional "__metadata__" object of string values; it may be
 *      padded with spaces;
 *   3. the byte buffer: every tensor's bytes, row-major, little-endian;
 *      data_offsets are relative to its start, [begin, end).
 *
 * We check what the reference (Rust) reader checks, in its order: N >= 8
 * bytes of file, N <= 100,000,000, 8+N inside the file, UTF-8, a JSON object
 * with well-typed entries and known dtypes; sorted by (begin, end) the
 * tensors must tile the buffer from 0 without holes or overlaps; the shape
 * product times the dtype bits (checked 64-bit math) must end on a byte and
 * equal end-begin; and the buffer must end exactly at EOF.  We also reject
 * duplicate names, empty names and names containing NUL, non-string
 * __metadata__ values, and numbers that are not non-negative integers
 * (or are >= 2^53, beyond what JSON numbers carry exactly).
 *
 * Ownership: ck_st_open returns a handle freed by ck_st_close (NULL is
 * fine); tensors, names, metadata and data views are borrowed from it.
 */
#ifndef CK_SAFETENSORS_H
#define CK_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>
#include "ck.h"
#include "tensor.h"

#define CK_ST_MAX_HEADER 100000000ULL

struct ck_st_file {
	char *path;
	int fd;			/* -1 when parsed from memory */
	const uint8_t *map;	/* the whole file, read-only */
	uint64_t size;
	uint64_t header_len;	/* N */
	uint64_t data_start;	/* 8 + N */
	size_t n;
	struct ck_tensor *tensors;	/* sorted by offset */
	size_t n_meta;
	char **meta_keys, **meta_vals;	/* in header order */
};

/* Open and validate a safetensors file (mmap, read-only). */
int ck_st_open(struct ck_st_file **out, const char *path, struct ck_diag *d);

/*
 * Validate buf[0..len) as a safetensors file (the fuzzer's entry point).
 * buf is borrowed and must outlive the handle; name is used in messages.
 */
int ck_st_parse(struct ck_st_file **out, const uint8_t *buf, uint64_t len, const char *name,
		struct ck_diag *d);

void ck_st_close(struct ck_st_file *f);

#endif
