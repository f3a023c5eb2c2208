/*
 * job.h - what every tool that writes a safetensors checkpoint from a model
 * shares: open the output through output.h (temp name + rename, --force,
 * an input refused as output), plan it with the streaming writer, let the
 * tool write each tensor in the writer's order, write config.json, copy the
 * source folder's other files, commit.  Nothing is left on failure.
 *
 * The plan and the model stay the caller's; the helpers below only borrow
 * them.  Every function returns 0 or a negative CK_E* status with d filled.
 */
#ifndef CK_JOB_H
#define CK_JOB_H

#include <stdbool.h>
#include "ck.h"
#include "files.h"
#include "jsonedit.h"
#include "model.h"
#include "output.h"
#include "stwriter.h"

struct ck_job_out {
	const char *dst;		/* ending in .safetensors: one file; else a folder */
	int folder;			/* a folder whatever dst's name */
	int force;			/* replace an existing dst */
	const char *const *inputs;	/* paths dst must not be (nor contain) */
	size_t ninputs;
	uint64_t shard_size;		/* folder outputs; 0: one shard */
	const struct ck_model *meta;	/* copy its first file's __metadata__; NULL: none */
	const struct ck_model *aux;	/* a folder model: its other files are copied; NULL: none */
	const char *const *skip;	/* aux files not copied (the tool writes them) */
	size_t nskip;
	/* Write tensor pt (the writer's order; pt->user is the caller's) into w. */
	int (*write)(void *ctx, struct ck_stw *w, const struct ck_stw_tensor *pt, struct ck_diag *d);
	/* Folder outputs only, before the aux files; NULL: none. */
	int (*config)(void *ctx, struct ck_out *out, struct ck_diag *d);
	void *ctx;
};

/* Write the n planned tensors and the rest, then commit. */
int ck_job_write(const struct ck_job_out *jo, const struct ck_stw_tensor *plan, size_t n,
		 struct ck_diag *d);

/*
 * The same in two halves, for a tool whose writer is not a plan of its own
 * (merge-lora): begin opens *out; end writes config.json (the config hook),
 * copies the aux files and commits, and frees out either way.
 */
int ck_job_begin(const struct ck_job_out *jo, struct ck_out **out, struct ck_diag *d);
int ck_job_end(const struct ck_job_out *jo, struct ck_out *out, struct ck_diag *d);

/* Does dst name a single-file output (".safetensors")? */
bool ck_job_to_file(const char *dst);

/* Tensor t of m copied byte for byte (copy_file_range). */
int ck_job_copy(struct ck_stw *w, const struct ck_model *m, const struct ck_tensor *t,
		struct ck_diag *d);

/* Float tensor t converted to `to` a chunk at a time; read pages dropped. */
int ck_job_convert(struct ck_stw *w, const struct ck_tensor *t, enum ck_dtype to, struct ck_diag *d);

/*
 * Write into out the config.json of dir with its top-level member key
 * removed (value NULL) or set (ck_json_set_key), every other byte kept.
 * With optional, a dir without a readable config.json writes nothing.
 */
int ck_job_edit_config(struct ck_out *out, const char *dir, const char *key, const char *value,
		       enum ck_json_at at, int optional, struct ck_diag *d);

/* Does name match one of globs[0..n) (ck_glob)? */
bool ck_job_glob_any(const char *const *globs, size_t n, const char *name);

/* Kept by --filter GLOB... (none: all) and not dropped by --exclude GLOB...? */
bool ck_job_selected(const char *const *filters, size_t nf, const char *const *excludes, size_t ne,
		     const char *name);

#endif
