/*
 * gguf.h - GGUF reader (v2, v3) and streaming writer (v3).
 *
 * Reader.  The file is mapped read-only; every count, length and offset is
 * checked against the file size before it is used, with overflow-checked
 * 64-bit arithmetic, so a hostile file gives one error line (file, key or
 * tensor, problem) and never a crash, a hang or a huge allocation: the
 * number of items allocated is bounded by the bytes that describe them.
 * What the ggml reader (gguf.cpp) enforces, we enforce: magic, version 2 or
 * 3, key types 0..12, nested arrays, unique keys and tensor names, tensor
 * names shorter than 64 bytes, 1..4 dims, every ne > 0, a known ggml type,
 * ne[0] a multiple of the type's block size, general.alignment a non-zero
 * power of two (u32), tensor offsets multiples of the alignment, inside the
 * data section and not overlapping.
 *
 * Limits, as ggml's: strings up to 1 GiB, arrays up to 2^30 items; arrays
 * nest at most CK_GGUF_MAX_DEPTH deep (ggml rejects nesting; gguf-py writes
 * and reads it).  Keys and tensor names must be valid UTF-8 without NUL.
 * Tensor data may have gaps (ggml wants them contiguous; gguf-py does not).
 * A file whose version has its low 16 bits zero is big-endian: refused.
 *
 * Shapes: a ck_tensor from GGUF has its shape in PyTorch order (ggml's ne[]
 * reversed) and ggml_type set; dtype is the plain equivalent (F32, F16,
 * BF16, I8...) or CK_DT_UNKNOWN for block-quantized types.
 *
 * Writer.  Like the safetensors writer: describe every KV and tensor first,
 * the header is written first (all offsets known), then the caller streams
 * the data of each tensor in order; padding between tensors is written by
 * the writer.  Output goes through a struct ck_out (temp + rename).
 */
#ifndef CK_GGUF_H
#define CK_GGUF_H

#include <stddef.h>
#include <stdint.h>
#include "ck.h"
#include "output.h"
#include "tensor.h"

/* GGUF metadata value types (gguf.h enum gguf_type). */
enum ck_gguf_type {
	CK_GGUF_U8 = 0,
	CK_GGUF_I8 = 1,
	CK_GGUF_U16 = 2,
	CK_GGUF_I16 = 3,
	CK_GGUF_U32 = 4,
	CK_GGUF_I32 = 5,
	CK_GGUF_F32 = 6,
	CK_GGUF_BOOL = 7,
	CK_GGUF_STRING = 8,
	CK_GGUF_ARRAY = 9,
	CK_GGUF_U64 = 10,
	CK_GGUF_I64 = 11,
	CK_GGUF_F64 = 12,
	CK_GGUF_TYPE_COUNT
};

#define CK_GGUF_DEFAULT_ALIGNMENT 32
#define CK_GGUF_MAX_NAME 64			/* tensor names are shorter (ggml GGML_MAX_NAME) */
#define CK_GGUF_MAX_DIMS 4
#define CK_GGUF_MAX_STRING (1ULL << 30)		/* ggml GGUF_MAX_STRING_LENGTH */
#define CK_GGUF_MAX_ARRAY (1ULL << 30)		/* ggml GGUF_MAX_ARRAY_ELEMENTS */
#define CK_GGUF_MAX_DEPTH 8			/* arrays of arrays of ... */

/* "u32", "string", "array" ...; "unknown" when out of range. */
const char *ck_gguf_type_name(uint32_t type);
/* Bytes of a scalar value type (1 for BOOL); 0 for STRING, ARRAY, unknown. */
size_t ck_gguf_type_size(uint32_t type);

struct ck_gguf_value {
	uint32_t type;			/* enum ck_gguf_type */
	union {
		uint64_t u;		/* U8..U64, BOOL (0/1) */
		int64_t i;		/* I8..I64 */
		double f;		/* F32, F64 */
		struct {
			const char *p;	/* borrowed, not NUL-terminated, may hold NUL */
			uint64_t len;
		} str;
		struct {
			uint32_t type;	/* element type */
			uint64_t n;
			/*
			 * STRING or ARRAY elements: n decoded values.  Scalar
			 * elements are not expanded (a 1 GB array of u8 must not
			 * cost 32 GB): items is NULL and raw points at the n
			 * packed little-endian elements.  ck_gguf_arr_item()
			 * reads any element either way.
			 */
			const struct ck_gguf_value *items;
			const uint8_t *raw;
		} arr;
	};
};

/* Element i (< arr->arr.n) of an ARRAY value, decoded into *out. */
void ck_gguf_arr_item(const struct ck_gguf_value *arr, uint64_t i, struct ck_gguf_value *out);

struct ck_gguf_kv {
	const char *key;		/* NUL-terminated copy (keys holding NUL are rejected) */
	struct ck_gguf_value v;
};

struct ck_gguf;

/* Open and validate path.  On failure < 0 with d naming file and problem. */
int ck_gguf_open(struct ck_gguf **out, const char *path, struct ck_diag *d);
/* The same over a buffer that outlives the handle (fuzzing, tests); label names it. */
int ck_gguf_parse(struct ck_gguf **out, const void *buf, size_t len, const char *label,
		  struct ck_diag *d);
void ck_gguf_close(struct ck_gguf *g);

uint32_t ck_gguf_version(const struct ck_gguf *g);
uint64_t ck_gguf_alignment(const struct ck_gguf *g);
/* Absolute offset of the data section. */
uint64_t ck_gguf_data_offset(const struct ck_gguf *g);

size_t ck_gguf_nkv(const struct ck_gguf *g);
const struct ck_gguf_kv *ck_gguf_kv(const struct ck_gguf *g, size_t i);
/* The KV called key, or NULL. */
const struct ck_gguf_kv *ck_gguf_find(const struct ck_gguf *g, const char *key);

size_t ck_gguf_ntensors(const struct ck_gguf *g);
/* Tensor i in file (tensor-info) order; offset is absolute in the file. */
const struct ck_tensor *ck_gguf_tensor(const struct ck_gguf *g, size_t i);

/* ---- writer ------------------------------------------------------------------ */

struct ck_ggw;

/* A tensor to write: name, ggml type and shape in PyTorch order. */
struct ck_ggw_tensor {
	const char *name;		/* copied by the writer */
	uint32_t ggml_type;
	int ndim;			/* 1..4 */
	uint64_t shape[CK_MAX_DIMS];	/* PyTorch order; the writer reverses it */
	uint64_t nbytes;		/* computed by the writer */
	uint64_t offset;		/* relative to the data section, computed */
};

/*
 * Start a GGUF v3 into o (CK_OUT_FILE).  alignment 0 means the value of a
 * general.alignment KV if one is added, else 32.  A non-zero alignment other
 * than 32 must also be given as general.alignment (u32, the same value) by
 * the caller, or ck_ggw_begin fails: a reader knows it only from that key.
 */
int ck_ggw_new(struct ck_ggw **out, struct ck_out *o, uint32_t alignment, struct ck_diag *d);

/*
 * Add KVs (before ck_ggw_begin), written in the order added.  Strings and
 * arrays are copied.  Keys must be non-empty UTF-8; duplicates are refused
 * by ck_ggw_begin.
 */
int ck_ggw_kv_u32(struct ck_ggw *w, const char *key, uint32_t v, struct ck_diag *d);
int ck_ggw_kv_i32(struct ck_ggw *w, const char *key, int32_t v, struct ck_diag *d);
int ck_ggw_kv_u64(struct ck_ggw *w, const char *key, uint64_t v, struct ck_diag *d);
int ck_ggw_kv_f32(struct ck_ggw *w, const char *key, float v, struct ck_diag *d);
int ck_ggw_kv_bool(struct ck_ggw *w, const char *key, int v, struct ck_diag *d);
int ck_ggw_kv_str(struct ck_ggw *w, const char *key, const char *s, size_t len,
		  struct ck_diag *d);
/* An array of n scalars of elem_type (not STRING/ARRAY), packed little-endian in data. */
int ck_ggw_kv_arr(struct ck_ggw *w, const char *key, uint32_t elem_type, const void *data,
		  uint64_t n, struct ck_diag *d);
/* An array of n strings (lens[i] bytes at strs[i]). */
int ck_ggw_kv_strs(struct ck_ggw *w, const char *key, const char *const *strs,
		   const size_t *lens, uint64_t n, struct ck_diag *d);
/* Copy a KV read by the reader (any type, nested arrays included). */
int ck_ggw_kv_copy(struct ck_ggw *w, const struct ck_gguf_kv *kv, struct ck_diag *d);

/* Add a tensor (before ck_ggw_begin); fails on duplicates, bad shapes, unknown types. */
int ck_ggw_tensor(struct ck_ggw *w, const struct ck_ggw_tensor *t, struct ck_diag *d);

/* Write the header (KVs, tensor infos, padding).  No KV or tensor may be added after. */
int ck_ggw_begin(struct ck_ggw *w, struct ck_diag *d);
size_t ck_ggw_count(const struct ck_ggw *w);
const struct ck_ggw_tensor *ck_ggw_get(const struct ck_ggw *w, size_t k);
/*
 * Append data of the current tensor, in order (ck_ggw_get(w, 0), 1, ...),
 * exactly nbytes per tensor in all; calls may span tensors.  The padding
 * after each tensor is written by the writer.
 */
int ck_ggw_write(struct ck_ggw *w, const void *buf, size_t len, struct ck_diag *d);
int ck_ggw_copy_fd(struct ck_ggw *w, int fd, uint64_t off, uint64_t len, struct ck_diag *d);
/* Check every byte was written.  Does not commit o. */
int ck_ggw_finish(struct ck_ggw *w, struct ck_diag *d);
void ck_ggw_free(struct ck_ggw *w);

#endif
