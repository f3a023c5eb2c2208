/*
 * cp.c - copy a checkpoint: a .safetensors file or a model folder into a
 * file or a (sharded) folder, or a GGUF into a GGUF, optionally filtering,
 * renaming, converting float tensors, resharding.  The streaming baseline:
 * untouched tensors go through copy_file_range, converted ones through a
 * small buffer, so memory stays flat whatever the model size.
 */
#include <stdlib.h>
#include <string.h>
#include "ckpt.h"
#include "../libtensor/gguf.h"
#include "../libtensor/job.h"

struct cp_opts {
	struct ck_strlist filters, excludes, renames;
	const char *dtype;
	uint64_t shard_size;
	int force;
};

static int selected(const struct cp_opts *o, const char *name)
{
	return ck_job_selected(o->filters.v, o->filters.n, o->excludes.v, o->excludes.n, name);
}

/* The output name of a tensor: the first --rename FROM=TO whose FROM prefixes it. */
static char *out_name(const struct cp_opts *o, const char *name)
{
	for (size_t i = 0; i < o->renames.n; i++) {
		const char *r = o->renames.v[i], *eq = strchr(r, '=');
		size_t n = (size_t)(eq - r);
		if (!strncmp(name, r, n)) {
			size_t len = strlen(eq + 1) + strlen(name + n) + 1;
			char *s = ck_malloc(len);
			if (s)
				snprintf(s, len, "%s%s", eq + 1, name + n);
			return s;
		}
	}
	return ck_strdup(name);
}

static enum ck_dtype target_dtype(const struct cp_opts *o, enum ck_dtype src)
{
	if (!o->dtype || !ck_dtype_is_float(src))
		return src;
	return !strcmp(o->dtype, "bf16") ? CK_DT_BF16 : !strcmp(o->dtype, "f16") ? CK_DT_F16 : CK_DT_F32;
}

static int write_tensor(void *ctx, struct ck_stw *w, const struct ck_stw_tensor *pt,
			struct ck_diag *d)
{
	const struct ck_model *m = ctx;
	const struct ck_tensor *t = ck_model_tensor(m, pt->user);

	if (pt->dtype == t->dtype)
		return ck_job_copy(w, m, t, d);
	return ck_job_convert(w, t, pt->dtype, d);
}

static int cp_safetensors(const struct cp_opts *o, struct ck_model *m, const char *dst,
			  struct ck_diag *d)
{
	const char *inputs[] = { ck_model_path(m) };
	struct ck_job_out jo = { .dst = dst, .force = o->force, .inputs = inputs, .ninputs = 1,
				 .shard_size = o->shard_size, .meta = m, .aux = m,
				 .write = write_tensor, .ctx = m };
	struct ck_stw_tensor *plan = ck_calloc(ck_model_count(m), sizeof(*plan));
	size_t n = 0;
	int rc = 0;

	if (!plan)
		return ck_fail(d, CK_ENOMEM, "out of memory");
	for (size_t i = 0; i < ck_model_count(m); i++) {
		const struct ck_tensor *t = ck_model_tensor(m, i);
		if (!selected(o, t->name))
			continue;
		plan[n].name = out_name(o, t->name);
		if (!plan[n].name) {
			rc = ck_fail(d, CK_ENOMEM, "out of memory");
			goto out;
		}
		plan[n].dtype = target_dtype(o, t->dtype);
		plan[n].ndim = t->ndim;
		memcpy(plan[n].shape, t->shape, sizeof(t->shape));
		plan[n].user = i;
		n++;
	}
	rc = ck_job_write(&jo, plan, n, d);
out:
	for (size_t i = 0; i < n; i++)
		free((char *)plan[i].name);
	free(plan);
	return rc;
}

static int cp_gguf(const struct cp_opts *o, struct ck_model *m, const char *dst, struct ck_diag *d)
{
	enum { CHUNK = 1 << 20 };	/* elements converted at a time */
	const struct ck_gguf *g = ck_model_gguf(m);
	const char *inputs[] = { ck_model_path(m) };
	size_t *src = ck_calloc(ck_gguf_ntensors(g), sizeof(*src));
	struct ck_out *out = NULL;
	struct ck_ggw *w = NULL;
	void *buf = NULL;
	int rc;

	if (!src)
		return ck_fail(d, CK_ENOMEM, "out of memory");
	if (!ck_ends_with(dst, ".gguf")) {
		rc = ck_fail(d, CK_EUSAGE, "'%s': a GGUF source needs a .gguf destination", dst);
		goto out;
	}
	rc = ck_out_begin(&out, CK_OUT_FILE, dst, o->force, inputs, 1, d);
	if (!rc)
		rc = ck_ggw_new(&w, out, (uint32_t)ck_gguf_alignment(g), d);
	for (size_t i = 0; !rc && i < ck_gguf_nkv(g); i++)
		rc = ck_ggw_kv_copy(w, ck_gguf_kv(g, i), d);
	for (size_t i = 0; !rc && i < ck_gguf_ntensors(g); i++) {
		const struct ck_tensor *t = ck_gguf_tensor(g, i);
		enum ck_dtype to = target_dtype(o, t->dtype);
		struct ck_ggw_tensor gt = { .ggml_type = (uint32_t)t->ggml_type, .ndim = t->ndim };
		if (!selected(o, t->name))
			continue;
		if (to != t->dtype)
			gt.ggml_type = to == CK_DT_BF16 ? CK_GGML_BF16 : to == CK_DT_F16 ? CK_GGML_F16 :
				       CK_GGML_F32;
		memcpy(gt.shape, t->shape, sizeof(gt.shape));
		if (!(gt.name = out_name(o, t->name)))
			rc = ck_fail(d, CK_ENOMEM, "out of memory");
		else
			rc = ck_ggw_tensor(w, &gt, d);
		if (!rc)
			src[ck_ggw_count(w) - 1] = i;
		free((char *)gt.name);
	}
	if (!rc)
		rc = ck_ggw_begin(w, d);
	for (size_t k = 0; !rc && k < ck_ggw_count(w); k++) {
		const struct ck_ggw_tensor *gt = ck_ggw_get(w, k);
		const struct ck_tensor *t = ck_gguf_tensor(g, src[k]);
		enum ck_dtype to = gt->ggml_type == CK_GGML_BF16 ? CK_DT_BF16 :
				   gt->ggml_type == CK_GGML_F16 ? CK_DT_F16 : CK_DT_F32;
		size_t in_sz = ck_dtype_bits(t->dtype) / 8, out_sz = ck_dtype_bits(to) / 8;
		if (gt->ggml_type == (uint32_t)t->ggml_type) {
			rc = ck_ggw_copy_fd(w, ck_model_file_fd(m, 0), t->offset, t->nbytes, d);
			continue;
		}
		if (!buf && !(buf = ck_mallocarray(CHUNK, 4))) {
			rc = ck_fail(d, CK_ENOMEM, "out of memory");
			break;
		}
		for (uint64_t e = 0; e < t->nelem && !rc; e += CHUNK) {
			size_t n = t->nelem - e < CHUNK ? (size_t)(t->nelem - e) : CHUNK;
			const uint8_t *p = t->data + e * in_sz;
			ck_convert(t->dtype, p, to, buf, n);
			rc = ck_ggw_write(w, buf, n * out_sz, d);
			ck_model_done_range(p, n * in_sz);
		}
	}
	if (!rc)
		rc = ck_ggw_finish(w, d);
	if (!rc) {
		rc = ck_out_commit(out, d);
		out = NULL;
	}
out:
	ck_out_abort(out);
	ck_ggw_free(w);
	free(buf);
	free(src);
	return rc;
}

int cmd_cp(int argc, char **argv)
{
	struct cp_opts o = { .shard_size = CK_SHARD_SIZE_DEFAULT };
	const struct ck_option opts[] = {
		CK_OPT_STRINGS(0, "filter", &o.filters, "GLOB", "copy only tensors whose name matches (repeatable)"),
		CK_OPT_STRINGS(0, "exclude", &o.excludes, "GLOB", "leave out tensors whose name matches (repeatable)"),
		CK_OPT_STRINGS(0, "rename", &o.renames, "FROM=TO", "rename the prefix FROM to TO (repeatable; first match)"),
		CK_OPT_CHOICE(0, "dtype", &o.dtype, "bf16|f16|f32", "convert float tensors (F32/F16/BF16) to this type"),
		CK_OPT_SHARD_SIZE(&o.shard_size),
		CK_OPT_FORCE(&o.force),
		CK_OPT_END,
	};
	const struct ck_usage u = {
		.tool = "cp",
		.synopsis = "ckpt cp [options] SRC DST",
		.about = "Copy a checkpoint.  SRC is a .safetensors file, a model folder or a .gguf file.\n"
			 "DST ending in .safetensors is one file; otherwise a folder, sharded by --shard-size,\n"
			 "with the source folder's other files (config, tokenizer) copied along; a .gguf SRC\n"
			 "needs a .gguf DST (KVs kept as they are: --dtype does not rewrite general.file_type;\n"
			 "--shard-size does not apply).  The output appears only when complete.",
		.min_args = 2,
		.max_args = 2,
	};
	struct ck_diag d = CK_DIAG_INIT;
	struct ck_model *m = NULL;
	int rc = 0;

	ck_parse_options(argc, argv, opts, &u);
	for (size_t i = 0; i < o.renames.n; i++)
		if (!strchr(o.renames.v[i], '=') || o.renames.v[i][0] == '=') {
			rc = ck_usage_error("cp", "--rename needs FROM=TO, not '%s'", o.renames.v[i]);
			goto out;
		}
	if (ck_model_open(&m, argv[0], &d) < 0) {
		rc = ck_report("cp", &d);
		goto out;
	}
	if (ck_model_kind(m) == CK_MODEL_GGUF)
		rc = cp_gguf(&o, m, argv[1], &d);
	else
		rc = cp_safetensors(&o, m, argv[1], &d);
	if (rc)
		rc = ck_report("cp", &d);
out:
	ck_model_free(m);
	ck_strlist_release(&o.filters);
	ck_strlist_release(&o.excludes);
	ck_strlist_release(&o.renames);
	return rc;
}
