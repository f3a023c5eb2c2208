/*
 * bnb_dequant_model.c - the dequant-nf4 job: turn every bitsandbytes 4-bit
 * group of a checkpoint (NF4 or FP4, double-quantized or not) back into a
 * plain tensor of its logical shape; copy the other tensors; drop
 * quantization_config from config.json.
 *
 * Unsloth's gpt-oss bnb-4bit keeps one Linear per expert
 * (mlp.experts.gate_up_projs.E.weight [2I, H], down_projs.E [H, I], BF16
 * biases).  The hf layout (the default when such names are present) regroups
 * them into the fused tensors transformers' GptOss loads:
 *	gate_up_proj [E, H, 2I] = gate_up_projs.E.weight transposed (rows stay
 *	interleaved gate, up, gate, ...), gate_up_proj_bias [E, 2I],
 *	down_proj [E, I, H], down_proj_bias [E, H],
 * and renames mlp.router.linear.* to mlp.router.*.  One expert is dequantized
 * and transposed at a time, so memory stays at one expert.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "bnb.h"
#include "../libtensor/job.h"
#include "../libtensor/layout.h"

/* A fused expert tensor being assembled from per-expert ones. */
struct fused {
	char *prefix;		/* "model.layers.0.mlp.experts." */
	char proj[16];		/* "gate_up_proj" / "down_proj" */
	int is_bias;
	size_t n, cap;		/* experts seen; names[e] may be NULL until seen */
	const char **names;	/* source tensor name of expert e */
};

/* What one output tensor is made of. */
enum src_kind { SRC_COPY, SRC_CONVERT, SRC_BNB, SRC_FUSED };

struct out_item {
	enum src_kind kind;
	const struct ck_tensor *t;	/* SRC_COPY / SRC_CONVERT / SRC_BNB: the source */
	size_t fused;			/* SRC_FUSED: index into the fused list */
	char *name;
};

struct dq_run {
	const struct ck_bnb_dq_job *o;
	struct ck_model *m;
	enum ck_dtype force_dt;		/* CK_DT_UNKNOWN: the group's own dtype */
	int hf;
	struct fused *fu;
	size_t nfu, capfu;
	struct out_item *items;
	size_t nitems;
};

/*
 * "<prefix>gate_up_projs.<e>.weight" -> prefix length, proj, e, is_bias.
 * Returns 0 when name is not a per-expert tensor.
 */
static int per_expert_name(const char *name, size_t *plen, const char **proj, long *e, int *is_bias)
{
	static const char *const projs[][2] = { { "experts.gate_up_projs.", "gate_up_proj" },
						 { "experts.down_projs.", "down_proj" } };
	for (size_t i = 0; i < CK_ARRAY_SIZE(projs); i++) {
		const char *p = strstr(name, projs[i][0]);
		char *end;
		if (!p)
			continue;
		p += strlen(projs[i][0]);
		if (*p < '0' || *p > '9')
			return 0;
		*e = strtol(p, &end, 10);
		if (*e < 0 || *e > 4096)
			return 0;
		if (!strcmp(end, ".weight"))
			*is_bias = 0;
		else if (!strcmp(end, ".bias"))
			*is_bias = 1;
		else
			return 0;
		*plen = (size_t)(strstr(name, projs[i][0]) - name) + strlen("experts.");
		*proj = projs[i][1];
		return 1;
	}
	return 0;
}

static int add_item(struct dq_run *r, enum src_kind k, const struct ck_tensor *t, size_t fused,
		    const char *name, struct ck_diag *d)
{
	struct out_item *it = &r->items[r->nitems];
	it->kind = k;
	it->t = t;
	it->fused = fused;
	it->name = ck_strdup(name);
	if (!it->name)
		return ck_fail(d, CK_ENOMEM, "out of memory");
	r->nitems++;
	return 0;
}

/* Find or add the fused tensor of (prefix, proj, is_bias); records expert e's name. */
static int fuse(struct dq_run *r, const char *name, size_t plen, const char *proj, long e,
		int is_bias, struct ck_diag *d)
{
	struct fused *f = NULL;
	size_t i;

	for (i = 0; i < r->nfu; i++)
		if (strlen(r->fu[i].prefix) == plen && !strncmp(r->fu[i].prefix, name, plen) &&
		    !strcmp(r->fu[i].proj, proj) && r->fu[i].is_bias == is_bias) {
			f = &r->fu[i];
			break;
		}
	if (!f) {
		char full[1024];
		if (r->nfu == r->capfu) {
			size_t nc = r->capfu ? 2 * r->capfu : 16;
			struct fused *nf = ck_reallocarray(r->fu, nc, sizeof(*nf));
			if (!nf)
				return ck_fail(d, CK_ENOMEM, "out of memory");
			r->fu = nf;
			r->capfu = nc;
		}
		f = &r->fu[r->nfu];
		memset(f, 0, sizeof(*f));
		f->prefix = ck_strndup(name, plen);
		snprintf(f->proj, sizeof(f->proj), "%s", proj);
		f->is_bias = is_bias;
		r->nfu++;
		if (!f->prefix)
			return ck_fail(d, CK_ENOMEM, "out of memory");
		snprintf(full, sizeof(full), "%s%s%s", f->prefix, proj, is_bias ? "_bias" : "");
		CK_TRY(add_item(r, SRC_FUSED, NULL, i, full, d));
	}
	if ((size_t)e >= f->cap) {
		size_t nc = (size_t)e + 16;
		const char **nn = ck_reallocarray(f->names, nc, sizeof(*nn));
		if (!nn)
			return ck_fail(d, CK_ENOMEM, "out of memory");
		memset(nn + f->cap, 0, (nc - f->cap) * sizeof(*nn));
		f->names = nn;
		f->cap = nc;
	}
	f->names[e] = name;
	if ((size_t)e + 1 > f->n)
		f->n = (size_t)e + 1;
	return 0;
}

/* Is t an auxiliary tensor of a bnb group of m (absmax, quant_map, ...)? */
static int is_group_aux(const struct ck_model *m, const char *name)
{
	static const char *const suf[] = { ".absmax", ".quant_map", ".nested_absmax",
					   ".nested_quant_map", ".quant_state.bitsandbytes__nf4",
					   ".quant_state.bitsandbytes__fp4" };
	size_t n = strlen(name);
	char base[1024];

	for (size_t i = 0; i < CK_ARRAY_SIZE(suf); i++) {
		size_t k = strlen(suf[i]);
		if (n > k && n - k < sizeof(base) && !strcmp(name + n - k, suf[i])) {
			memcpy(base, name, n - k);
			base[n - k] = 0;
			if (ck_bnb_is_weight(m, base))
				return 1;
		}
	}
	return 0;
}

/* The logical dtype/shape of a source tensor (a bnb group or a plain one). */
static int src_info(const struct dq_run *r, const char *name, enum ck_dtype *dt, int *ndim,
		    uint64_t *shape, struct ck_diag *d)
{
	const struct ck_tensor *t = ck_model_find(r->m, name);

	if (ck_bnb_is_weight(r->m, name)) {
		struct ck_bnb_group g;
		CK_TRY(ck_bnb_group_open(r->m, name, &g, d));
		*dt = r->force_dt != CK_DT_UNKNOWN ? r->force_dt : g.dtype;
		*ndim = g.ndim;
		memcpy(shape, g.shape, sizeof(g.shape));
		return 0;
	}
	if (!ck_dtype_is_float(t->dtype))
		return ck_fail(d, CK_EUNSUPPORTED, "'%s': tensor '%s': per-expert %s tensor is not a "
			       "float type", ck_model_file(r->m, t->file), name, ck_dtype_name(t->dtype));
	*dt = r->force_dt != CK_DT_UNKNOWN ? r->force_dt : t->dtype;
	*ndim = t->ndim;
	memcpy(shape, t->shape, sizeof(t->shape));
	return 0;
}

/* The planned dtype and shape of a fused tensor; all experts must agree. */
static int fused_plan(const struct dq_run *r, const struct fused *f, struct ck_stw_tensor *p,
		      struct ck_diag *d)
{
	enum ck_dtype dt0 = CK_DT_UNKNOWN;
	int nd0 = 0;
	uint64_t sh0[CK_MAX_DIMS] = { 0 };

	for (size_t e = 0; e < f->n; e++) {
		enum ck_dtype dt;
		int nd;
		uint64_t sh[CK_MAX_DIMS] = { 0 };
		if (!f->names[e])
			return ck_fail(d, CK_EINVAL, "'%s': expert %zu of %s%s%s is missing",
				       ck_model_path(r->m), e, f->prefix, f->proj, f->is_bias ? "_bias" : "");
		CK_TRY(src_info(r, f->names[e], &dt, &nd, sh, d));
		if (nd != (f->is_bias ? 1 : 2))
			return ck_fail(d, CK_EINVAL, "'%s': tensor '%s': expected a %s, found %d dims",
				       ck_model_path(r->m), f->names[e], f->is_bias ? "vector" : "matrix", nd);
		if (e == 0) {
			dt0 = dt;
			nd0 = nd;
			memcpy(sh0, sh, sizeof(sh));
		} else if (dt != dt0 || memcmp(sh, sh0, sizeof(sh))) {
			return ck_fail(d, CK_EINVAL, "'%s': tensor '%s': dtype or shape differs from expert 0",
				       ck_model_path(r->m), f->names[e]);
		}
	}
	p->dtype = dt0;
	p->ndim = nd0 + 1;
	p->shape[0] = f->n;
	if (f->is_bias) {
		p->shape[1] = sh0[0];
	} else {			/* [E, in, out]: each expert's [out, in] transposed */
		p->shape[1] = sh0[1];
		p->shape[2] = sh0[0];
	}
	return 0;
}

/* "…mlp.router.linear.weight" -> "…mlp.router.weight" (hf layout). */
static void router_name(const char *name, char *buf, size_t cap)
{
	const char *p = strstr(name, "mlp.router.linear.");
	if (!p) {
		snprintf(buf, cap, "%s", name);
		return;
	}
	snprintf(buf, cap, "%.*smlp.router.%s", (int)(p - name), name, p + strlen("mlp.router.linear."));
}

static int plan(struct dq_run *r, struct ck_stw_tensor **out, struct ck_diag *d)
{
	size_t n = ck_model_count(r->m);
	struct ck_stw_tensor *p;

	r->items = ck_calloc(n, sizeof(*r->items));
	if (!r->items)
		return ck_fail(d, CK_ENOMEM, "out of memory");
	for (size_t i = 0; i < n; i++) {
		const struct ck_tensor *t = ck_model_tensor(r->m, i);
		size_t plen;
		const char *proj;
		long e;
		int bias;
		char nm[1024];

		if (is_group_aux(r->m, t->name))
			continue;
		if (r->hf && per_expert_name(t->name, &plen, &proj, &e, &bias)) {
			CK_TRY(fuse(r, t->name, plen, proj, e, bias, d));
			continue;
		}
		router_name(t->name, nm, sizeof(nm));
		if (!r->hf)
			snprintf(nm, sizeof(nm), "%s", t->name);
		if (ck_bnb_is_weight(r->m, t->name))
			CK_TRY(add_item(r, SRC_BNB, t, 0, nm, d));
		else
			CK_TRY(add_item(r, SRC_COPY, t, 0, nm, d));
	}
	p = ck_calloc(r->nitems ? r->nitems : 1, sizeof(*p));
	if (!p)
		return ck_fail(d, CK_ENOMEM, "out of memory");
	*out = p;
	for (size_t k = 0; k < r->nitems; k++) {
		struct out_item *it = &r->items[k];
		p[k].name = it->name;
		p[k].user = k;
		if (it->kind == SRC_FUSED) {
			CK_TRY(fused_plan(r, &r->fu[it->fused], &p[k], d));
		} else if (it->kind == SRC_BNB) {
			CK_TRY(src_info(r, it->t->name, &p[k].dtype, &p[k].ndim, p[k].shape, d));
		} else {
			p[k].dtype = it->t->dtype;
			p[k].ndim = it->t->ndim;
			memcpy(p[k].shape, it->t->shape, sizeof(it->t->shape));
		}
	}
	return 0;
}

/* Dequantize a whole group into the writer, a few MiB at a time. */
static int write_bnb(struct dq_run *r, struct ck_stw *w, const char *name, enum ck_dtype to,
		     struct ck_diag *d)
{
	enum { CHUNK = 1 << 22 };
	struct ck_bnb_group g;
	size_t osz = ck_dtype_bits(to) / 8;
	void *buf;
	int rc = 0;

	CK_TRY(ck_bnb_group_open(r->m, name, &g, d));
	buf = ck_mallocarray(CHUNK, osz);
	if (!buf)
		return ck_fail(d, CK_ENOMEM, "out of memory");
	for (uint64_t i = 0; i < g.n && !rc; i += CHUNK) {
		size_t cnt = g.n - i < CHUNK ? (size_t)(g.n - i) : CHUNK;
		rc = ck_bnb_group_dequant(&g, i, cnt, to, buf, r->o->threads, d);
		if (!rc)
			rc = ck_stw_write(w, buf, cnt * osz, d);
	}
	ck_model_done(g.weight);
	free(buf);
	return rc;
}

/* A whole source tensor (bnb group or plain float) as type `to` in buf. */
static int read_as(struct dq_run *r, const char *name, enum ck_dtype to, void *buf, uint64_t n,
		   struct ck_diag *d)
{
	const struct ck_tensor *t = ck_model_find(r->m, name);

	if (ck_bnb_is_weight(r->m, name)) {
		struct ck_bnb_group g;
		CK_TRY(ck_bnb_group_open(r->m, name, &g, d));
		if (g.n != n)
			return ck_fail(d, CK_EINVAL, "'%s': tensor '%s': size differs from expert 0",
				       ck_model_path(r->m), name);
		CK_TRY(ck_bnb_group_dequant(&g, 0, n, to, buf, r->o->threads, d));
		ck_model_done(g.weight);
		return 0;
	}
	if (t->nelem != n)
		return ck_fail(d, CK_EINVAL, "'%s': tensor '%s': size differs from expert 0",
			       ck_model_path(r->m), name);
	if (ck_convert(t->dtype, t->data, to, buf, (size_t)n) < 0)
		return ck_fail(d, CK_EUNSUPPORTED, "'%s': cannot convert", name);
	ck_model_done(t);
	return 0;
}

/*
 * One expert at a time: dequantize straight to the output type (one
 * rounding of the float32 product, as bnb), transpose [R, C] -> [C, R], write.
 */
static int write_fused(struct dq_run *r, struct ck_stw *w, const struct ck_stw_tensor *pt,
		       const struct fused *f, struct ck_diag *d)
{
	uint64_t per = 1;
	size_t osz = ck_dtype_bits(pt->dtype) / 8;
	void *src = NULL, *tr = NULL;
	int rc = 0;

	for (int i = 1; i < pt->ndim; i++)
		per *= pt->shape[i];
	src = ck_mallocarray((size_t)per, osz);
	tr = ck_mallocarray((size_t)per, osz);
	if (!src || !tr) {
		rc = ck_fail(d, CK_ENOMEM, "out of memory");
		goto out;
	}
	for (size_t e = 0; e < f->n && !rc; e++) {
		rc = read_as(r, f->names[e], pt->dtype, src, per, d);
		if (rc)
			break;
		if (!f->is_bias)	/* source [R = out, C = in], output [in, out] */
			ck_bnb_transpose(src, tr, pt->shape[2], pt->shape[1], osz, r->o->threads);
		rc = ck_stw_write(w, f->is_bias ? src : tr, (size_t)per * osz, d);
	}
out:
	free(src);
	free(tr);
	return rc;
}

static int write_item(void *ctx, struct ck_stw *w, const struct ck_stw_tensor *pt, struct ck_diag *d)
{
	struct dq_run *r = ctx;
	const struct out_item *it = &r->items[pt->user];

	switch (it->kind) {
	case SRC_BNB:
		return write_bnb(r, w, it->t->name, pt->dtype, d);
	case SRC_FUSED:
		return write_fused(r, w, pt, &r->fu[it->fused], d);
	default:
		return ck_job_copy(w, r->m, it->t, d);
	}
}

/* config.json without quantization_config (the rest of its text unchanged). */
static int write_config(void *ctx, struct ck_out *out, struct ck_diag *d)
{
	const struct dq_run *r = ctx;

	if (ck_model_kind(r->m) != CK_MODEL_FOLDER)
		return 0;
	return ck_job_edit_config(out, ck_model_dir(r->m), "quantization_config", NULL, CK_JSON_AT_END,
				  1, d);
}

static int has_per_expert(const struct ck_model *m)
{
	for (size_t i = 0; i < ck_model_count(m); i++) {
		size_t plen;
		const char *proj;
		long e;
		int b;
		if (per_expert_name(ck_model_tensor(m, i)->name, &plen, &proj, &e, &b))
			return 1;
	}
	return 0;
}

static int run(struct dq_run *r, struct ck_diag *d)
{
	const char *inputs[] = { ck_model_path(r->m) };
	static const char *const skip[] = { "config.json" };
	const struct ck_job_out jo = { .dst = r->o->out, .force = r->o->force, .inputs = inputs,
				       .ninputs = 1, .shard_size = r->o->shard_size, .meta = r->m,
				       .aux = r->m, .skip = skip, .nskip = 1, .write = write_item,
				       .config = write_config, .ctx = r };
	struct ck_stw_tensor *p = NULL;
	int rc;

	rc = plan(r, &p, d);
	if (!rc)
		rc = ck_job_write(&jo, p, r->nitems, d);
	free(p);
	return rc;
}

int ck_bnb_dequant_model(const struct ck_bnb_dq_job *job, struct ck_diag *d)
{
	struct dq_run r = { .o = job, .force_dt = job->dtype };
	int rc;

	rc = ck_model_open(&r.m, job->in, d);
	if (!rc && ck_model_kind(r.m) == CK_MODEL_GGUF)
		rc = ck_fail(d, CK_EUNSUPPORTED, "'%s': a GGUF file holds no bitsandbytes tensors", job->in);
	if (!rc)
		rc = ck_layout_refuse(r.m, CK_LAYOUT_MXFP4_BLOCKS, "dequant-mxfp4", d);
	if (!rc) {
		r.hf = job->hf >= 0 ? job->hf : has_per_expert(r.m);
		rc = run(&r, d);
	}
	for (size_t i = 0; i < r.nitems; i++)
		free(r.items[i].name);
	free(r.items);
	for (size_t i = 0; i < r.nfu; i++) {
		free(r.fu[i].prefix);
		free(r.fu[i].names);
	}
	free(r.fu);
	ck_model_free(r.m);
	return rc;
}
