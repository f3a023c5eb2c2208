/*
 * stwriter.h - the streaming safetensors writer.
 *
 * Plan, then stream.  The caller lists every output tensor (name, dtype,
 * shape) first; the writer assigns tensors to shards in the order given,
 * filling each shard up to shard_size bytes (a tensor larger than the limit
 * gets a shard of its own), orders each shard's tensors as the reference
 * writer does (dtype alignment descending, then name), and writes each
 * shard's header before any of its data.  The caller then produces data in
 * the writer's order: for k in 0..ck_stw_count(), bytes of tensor
 * ck_stw_tensor(w, k), in as many ck_stw_write calls as it likes (one expert
 * slice at a time), exactly nbytes in all.
 *
 * Each header is JSON: {"__metadata__":{"format":"pt",...},"name":{"dtype":
 * ...,"shape":[...],"data_offsets":[b,e]},...}, padded with spaces so the
 * data starts at a multiple of 8.
 *
 * Output names: with a single shard in a folder, model.safetensors; with
 * more, model-00001-of-0000N.safetensors ... plus model.safetensors.index.json
 * ({"metadata":{"total_size":T},"weight_map":{...}}).  When the output is a
 * single file (CK_OUT_FILE) everything goes into that file.
 *
 * The writer writes into a struct ck_out the caller began and commits;
 * ck_stw_finish checks that every byte was produced and writes the index.
 */
#ifndef CK_STWRITER_H
#define CK_STWRITER_H

#include <stddef.h>
#include <stdint.h>
#include "ck.h"
#include "tensor.h"
#include "output.h"

struct ck_stw_tensor {
	const char *name;	/* copied by the writer */
	enum ck_dtype dtype;
	int ndim;
	uint64_t shape[CK_MAX_DIMS];
	uint64_t nbytes;	/* computed by the writer */
	uint32_t shard;		/* assigned by the writer */
	uint64_t offset;	/* data offset inside the shard's byte buffer */
	size_t user;		/* caller's index, kept as given */
};

struct ck_stw;

#define CK_SHARD_SIZE_DEFAULT 5000000000ULL	/* "5GB", as transformers writes */

/*
 * Plan the output.  tensors[0..n) are copied.  meta (n_meta key/value
 * pairs) is added to "__metadata__" after "format":"pt".  shard_size 0 means
 * one shard.  Fails on duplicate names, empty names, overflowing shapes.
 */
int ck_stw_plan(struct ck_stw **out, struct ck_out *o, const struct ck_stw_tensor *tensors,
		size_t n, uint64_t shard_size, const char *const *meta_keys,
		const char *const *meta_vals, size_t n_meta, struct ck_diag *d);

size_t ck_stw_count(const struct ck_stw *w);
/* Tensor k in write order. */
const struct ck_stw_tensor *ck_stw_tensor(const struct ck_stw *w, size_t k);
size_t ck_stw_nshards(const struct ck_stw *w);
uint64_t ck_stw_total_size(const struct ck_stw *w);

/* Append bytes of the current tensor (opens the next shard when due). */
int ck_stw_write(struct ck_stw *w, const void *buf, size_t len, struct ck_diag *d);

/*
 * Append len bytes read from fd at offset off (copy_file_range when the
 * kernel can, else pread/write): the zero-copy path for untouched tensors.
 */
int ck_stw_copy_fd(struct ck_stw *w, int fd, uint64_t off, uint64_t len, struct ck_diag *d);

/* Check completeness, write the index when sharded.  Does not commit. */
int ck_stw_finish(struct ck_stw *w, struct ck_diag *d);
void ck_stw_free(struct ck_stw *w);

#endif
