/*
 * tensor.h - what every container reader hands out: a tensor descriptor
 * with a read-only view of its bytes.
 *
 * Shapes are in PyTorch (row-major, slowest first) order for every format;
 * the GGUF reader reverses ggml's fastest-first ne[] into this order, so
 * a [E, OUT, IN] tensor reads the same from safetensors and GGUF.
 *
 * Ownership: descriptors, names and data views are borrowed from the
 * container (struct ck_st_file, struct ck_gguf, struct ck_model) and stay
 * valid until it is closed.  data points into a read-only private mmap.
 */
#ifndef CK_TENSOR_H
#define CK_TENSOR_H

#include <stddef.h>
#include <stdint.h>
#include "dtype.h"

#define CK_MAX_DIMS 8

struct ck_tensor {
	const char *name;		/* NUL-terminated, valid UTF-8, no NUL inside */
	enum ck_dtype dtype;		/* safetensors dtype; for GGUF the plain
					   equivalent (F32, F16, BF16, I8...) or
					   CK_DT_UNKNOWN for block types */
	int32_t ggml_type;		/* ggml type id for GGUF tensors, -1 otherwise */
	int ndim;			/* 0 .. CK_MAX_DIMS */
	uint64_t shape[CK_MAX_DIMS];	/* PyTorch order */
	uint64_t nelem;			/* product of shape (1 for a scalar) */
	uint64_t nbytes;		/* bytes of data */
	uint64_t offset;		/* absolute offset of data in its file */
	const uint8_t *data;		/* borrowed view of nbytes bytes */
	uint32_t file;			/* index of the file that holds it (shard) */
};

/* "BF16", "q8_0", "unknown(77)" ...: the type as ls shows it. */
const char *ck_tensor_type_name(const struct ck_tensor *t, char *buf, size_t cap);

/* "[32, 5760, 90, 16]" into buf; returns buf. */
char *ck_shape_str(const uint64_t *shape, int ndim, char *buf, size_t cap);

#endif
