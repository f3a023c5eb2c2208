/*
 * model.h - one lookup API over every checkpoint we read:
 * open (a .safetensors file, a model folder, sharded or not, or a .gguf
 * file), iterate the tensors, find one by name, read its bytes.
 *
 * A folder is sharded when it holds model.safetensors.index.json: the shard
 * list is then the set of files named by its weight_map (never derived from
 * the "-of-N" pattern: gpt-oss numbers its shards from 00000), every name in
 * the index must be in the shard it names, and no shard may hold a tensor
 * the index does not name.  Otherwise the folder must hold
 * model.safetensors.  A folder whose only checkpoint is original/ (the
 * gpt-oss "original" flavor) is opened through original/model.safetensors.
 *
 * Tensors are listed in file order: by shard (in the order the shard names
 * sort) and by offset inside a shard.
 *
 * Ownership: ck_model_open returns a handle the caller frees with
 * ck_model_free (NULL is fine).  Everything it hands out is borrowed.
 */
#ifndef CK_MODEL_H
#define CK_MODEL_H

#include <stddef.h>
#include "ck.h"
#include "tensor.h"

struct ck_model;
struct ck_gguf;

enum ck_model_kind {
	CK_MODEL_SAFETENSORS,	/* a single .safetensors file */
	CK_MODEL_FOLDER,	/* a model folder (sharded or model.safetensors) */
	CK_MODEL_GGUF,		/* a .gguf file */
};

/* Open path; on failure returns < 0 with d naming the file and problem. */
int ck_model_open(struct ck_model **out, const char *path, struct ck_diag *d);
void ck_model_free(struct ck_model *m);

enum ck_model_kind ck_model_kind(const struct ck_model *m);
/* The path as given to ck_model_open. */
const char *ck_model_path(const struct ck_model *m);
/*
 * The folder that holds config.json and the tokenizer files: the path itself
 * for a folder, the file's directory otherwise.
 */
const char *ck_model_dir(const struct ck_model *m);

size_t ck_model_count(const struct ck_model *m);
/* Tensor i in file order (i < ck_model_count). */
const struct ck_tensor *ck_model_tensor(const struct ck_model *m, size_t i);
/* The tensor called name, or NULL. */
const struct ck_tensor *ck_model_find(const struct ck_model *m, const char *name);

/* Files that hold tensors (shards), in the order struct ck_tensor.file indexes. */
size_t ck_model_nfiles(const struct ck_model *m);
const char *ck_model_file(const struct ck_model *m, size_t i);

/*
 * safetensors __metadata__ of file i (key/value strings), or for GGUF
 * nothing (use ck_model_gguf).  Returns the number of pairs.
 */
size_t ck_model_meta(const struct ck_model *m, size_t file, const char *const **keys,
		     const char *const **vals);

/* A read-only fd of file i (for copy_file_range); owned by the model. */
int ck_model_file_fd(const struct ck_model *m, size_t i);

/* The GGUF handle of a CK_MODEL_GGUF model, else NULL. */
const struct ck_gguf *ck_model_gguf(const struct ck_model *m);

/*
 * Tell the kernel how a tensor's bytes will be read (sequentially, soon) and
 * let it drop pages already read, so a streaming pass over a model larger
 * than memory does not push everything else out of the page cache.
 */
void ck_model_willneed(const struct ck_tensor *t);
void ck_model_done(const struct ck_tensor *t);
/* Drop the whole pages inside p[0..len) (a chunk of a tensor already read). */
void ck_model_done_range(const void *p, size_t len);

#endif
