/*
 * job.c - the output side every checkpoint-writing tool shares (see job.h).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "job.h"

bool ck_job_to_file(const char *dst)
{
	return ck_ends_with(dst, ".safetensors");
}

static bool to_file(const struct ck_job_out *jo)
{
	return !jo->folder && ck_job_to_file(jo->dst);
}

int ck_job_begin(const struct ck_job_out *jo, struct ck_out **out, struct ck_diag *d)
{
	return ck_out_begin(out, to_file(jo) ? CK_OUT_FILE : CK_OUT_DIR, jo->dst, jo->force, jo->inputs,
			    jo->ninputs, d);
}

int ck_job_end(const struct ck_job_out *jo, struct ck_out *out, struct ck_diag *d)
{
	int rc = 0;

	if (!to_file(jo) && jo->config)
		rc = jo->config(jo->ctx, out, d);
	if (!rc && !to_file(jo) && jo->aux && ck_model_kind(jo->aux) == CK_MODEL_FOLDER &&
	    ck_copy_aux_files(out, ck_model_dir(jo->aux), jo->skip, jo->nskip, d) < 0)
		rc = d->status;
	if (!rc)
		return ck_out_commit(out, d);
	ck_out_abort(out);
	return rc;
}

int ck_job_write(const struct ck_job_out *jo, const struct ck_stw_tensor *plan, size_t n,
		 struct ck_diag *d)
{
	struct ck_out *out = NULL;
	struct ck_stw *w = NULL;
	const char *const *mk = NULL, *const *mv = NULL;
	size_t nmeta = 0;
	int rc;

	rc = ck_job_begin(jo, &out, d);
	if (rc)
		return rc;
	if (jo->meta)
		nmeta = ck_model_meta(jo->meta, 0, &mk, &mv);
	rc = ck_stw_plan(&w, out, plan, n, to_file(jo) ? 0 : jo->shard_size, mk, mv, nmeta, d);
	for (size_t k = 0; !rc && k < ck_stw_count(w); k++)
		rc = jo->write(jo->ctx, w, ck_stw_tensor(w, k), d);
	if (!rc)
		rc = ck_stw_finish(w, d);
	ck_stw_free(w);
	if (rc) {
		ck_out_abort(out);
		return rc;
	}
	return ck_job_end(jo, out, d);
}

int ck_job_copy(struct ck_stw *w, const struct ck_model *m, const struct ck_tensor *t,
		struct ck_diag *d)
{
	return ck_stw_copy_fd(w, ck_model_file_fd(m, t->file), t->offset, t->nbytes, d);
}

int ck_job_convert(struct ck_stw *w, const struct ck_tensor *t, enum ck_dtype to, struct ck_diag *d)
{
	enum { CHUNK = 1 << 20 };	/* elements */
	size_t in_sz = ck_dtype_bits(t->dtype) / 8, out_sz = ck_dtype_bits(to) / 8;
	void *buf = ck_mallocarray(CHUNK, out_sz);
	int rc = 0;

	if (!buf)
		return ck_fail(d, CK_ENOMEM, "out of memory");
	for (uint64_t i = 0; i < t->nelem && !rc; i += CHUNK) {
		size_t n = t->nelem - i < CHUNK ? (size_t)(t->nelem - i) : CHUNK;
		const uint8_t *src = t->data + i * in_sz;
		ck_convert(t->dtype, src, to, buf, n);
		rc = ck_stw_write(w, buf, n * out_sz, d);
		ck_model_done_range(src, n * in_sz);
	}
	free(buf);
	return rc;
}

bool ck_job_glob_any(const char *const *globs, size_t n, const char *name)
{
	for (size_t i = 0; i < n; i++)
		if (ck_glob(globs[i], name))
			return true;
	return false;
}

bool ck_job_selected(const char *const *filters, size_t nf, const char *const *excludes, size_t ne,
		     const char *name)
{
	return (!nf || ck_job_glob_any(filters, nf, name)) && !ck_job_glob_any(excludes, ne, name);
}

int ck_job_edit_config(struct ck_out *out, const char *dir, const char *key, const char *value,
		       enum ck_json_at at, int optional, struct ck_diag *d)
{
	char path[4096], *text = NULL, *res = NULL;
	size_t len, rlen;
	int rc;

	if ((size_t)snprintf(path, sizeof(path), "%s/config.json", dir) >= sizeof(path))
		return ck_fail(d, CK_EINVAL, "'%s': path too long", dir);
	rc = ck_read_file(path, 16 << 20, &text, &len, d);
	if (rc)
		return optional && d->status == CK_EINVAL ? 0 : rc;
	rc = ck_json_set_key(text, len, key, value, at, &res, &rlen, d);
	if (!rc)
		rc = ck_out_write_file(out, "config.json", res, rlen, d);
	else
		ck_diag_prefix(d, "'%s'", path);
	free(res);
	free(text);
	return rc;
}
