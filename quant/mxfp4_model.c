/*
 * mxfp4_model.c - whole checkpoints: dequant-mxfp4 and quant-mxfp4 as
 * streaming jobs over a model (see the job API at the end of mxfp4.h).
 *
 * Both jobs first plan every output tensor (name, dtype, shape, and where
 * its bytes come from: a copy of an input tensor, a row range of one, a
 * dequantized or quantized expert tensor, a stack of per-expert tensors),
 * hand the plan to the streaming safetensors writer, and then produce the
 * bytes in the writer's order, one expert slice at a time.  Memory: one
 * expert slice in, one out, plus the scales of one expert tensor while its
 * blocks are written (1/16 of the blocks), never the model.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "mxfp4.h"
#include "../libtensor/gptoss.h"
#include "../libtensor/job.h"
#include "../libtensor/layout.h"

enum item_kind {
	IT_COPY,	/* the bytes of t */
	IT_ROWS,	/* rows [row0, row0+nrows) of t (the original fused qkv) */
	IT_DEQ,		/* dequantize blocks t with scales s */
	IT_QBLOCKS,	/* quantize q, write its blocks */
	IT_QSCALES,	/* ... its scales */
	IT_STACK,	/* concatenate q's per-expert tensors (biases) */
};

/* One quantization source: a fused HF tensor [E, IN, OUT] or E per-expert [OUT, IN]. */
struct qsrc {
	const struct ck_tensor *fused;
	const struct ck_tensor **experts;
	uint64_t e, out, in;
	const struct ck_tensor *kb, *ks;	/* --keep-from blocks / scales */
	uint8_t *scales;			/* [e, out, in/32], filled with the blocks */
	uint64_t copied;
};

struct item {
	enum item_kind kind;
	struct ck_stw_tensor st;
	const struct ck_tensor *t, *s;
	uint64_t row0, nrows;
	int transposed;
	struct qsrc *q;
};

struct job {
	struct ck_mx_job *o;
	struct ck_model *m, *keep;
	struct item *items;
	size_t n, cap;
	struct qsrc **qs;
	size_t nq;
	struct ck_gptoss_config cfg;
	int have_cfg;
	char *config_json;
};

static int push(struct job *j, const struct item *it, struct ck_diag *d)
{
	if (j->n == j->cap) {
		size_t cap = j->cap ? 2 * j->cap : 64;
		struct item *p = ck_reallocarray(j->items, cap, sizeof(*p));
		if (!p)
			return ck_fail(d, CK_ENOMEM, "out of memory");
		j->items = p;
		j->cap = cap;
	}
	j->items[j->n] = *it;
	j->items[j->n].st.name = ck_strdup(it->st.name);
	if (!j->items[j->n].st.name)
		return ck_fail(d, CK_ENOMEM, "out of memory");
	j->items[j->n].st.user = j->n;
	j->n++;
	return 0;
}

static struct qsrc *new_qsrc(struct job *j)
{
	struct qsrc **p = ck_reallocarray(j->qs, j->nq + 1, sizeof(*p));
	if (!p)
		return NULL;
	j->qs = p;
	j->qs[j->nq] = ck_calloc(1, sizeof(struct qsrc));
	return j->qs[j->nq] ? j->qs[j->nq++] : NULL;
}

static void job_free(struct job *j)
{
	for (size_t i = 0; i < j->n; i++)
		free((char *)j->items[i].st.name);
	free(j->items);
	for (size_t i = 0; i < j->nq; i++) {
		free(j->qs[i]->experts);
		free(j->qs[i]->scales);
		free(j->qs[i]);
	}
	free(j->qs);
	free(j->config_json);
	ck_model_free(j->m);
	ck_model_free(j->keep);
}

static const char *in_path(const struct job *j)
{
	return ck_model_path(j->m);
}

/* ---- the config.json that goes with the output ---- */

static int load_config(struct job *j, int mxfp4, struct ck_diag *d)
{
	static const char *const rel[] = { "config.json", "original/config.json" };
	char path[4096];
	char *buf = NULL;
	size_t len = 0;
	int rc = 0;

	if (ck_model_kind(j->m) != CK_MODEL_FOLDER)
		return 0;
	for (size_t i = 0; i < CK_ARRAY_SIZE(rel); i++) {
		struct ck_diag tmp = CK_DIAG_INIT;
		if ((size_t)snprintf(path, sizeof(path), "%s/%s", ck_model_dir(j->m), rel[i]) >= sizeof(path))
			return ck_fail(d, CK_EINVAL, "'%s': path too long", ck_model_dir(j->m));
		if (!ck_read_file(path, 1 << 20, &buf, &len, &tmp))
			break;
		buf = NULL;
	}
	if (!buf)
		return 0;	/* no config: the output has none either */
	rc = ck_gptoss_config_parse(buf, len, path, &j->cfg, d);
	if (!rc)
		rc = ck_gptoss_config_hf_json(buf, len, path, mxfp4, &j->config_json, d);
	j->have_cfg = !rc;
	free(buf);
	return rc;
}

/* ---- writing ---- */

static int write_rows(struct ck_stw *w, const struct job *j, const struct item *it, struct ck_diag *d)
{
	uint64_t row = it->t->nelem / it->t->shape[0] * (ck_dtype_bits(it->t->dtype) / 8);
	return ck_stw_copy_fd(w, ck_model_file_fd(j->m, it->t->file),
			      it->t->offset + it->row0 * row, it->nrows * row, d);
}

static int write_deq(struct ck_stw *w, const struct job *j, const struct item *it, struct ck_diag *d)
{
	const struct ck_tensor *b = it->t, *s = it->s;
	uint64_t g = s->shape[s->ndim - 1], out = s->shape[s->ndim - 2];
	uint64_t e = s->nelem / (out * g), n = out * g * CK_MX_BLOCK;
	uint16_t *buf = ck_mallocarray(n, 2);
	struct ck_mx_where wh;
	int rc = 0;

	if (!buf)
		return ck_fail(d, CK_ENOMEM, "out of memory");
	for (uint64_t x = 0; x < e && !rc; x++) {
		const uint8_t *bp = b->data + x * out * g * CK_MX_BLOCK_BYTES, *sp = s->data + x * out * g;
		if (ck_mx_dequant_slice(bp, sp, out, g, it->transposed, buf, j->o->threads, &wh)) {
			rc = ck_fail(d, CK_EINVAL, "'%s': tensor '%s': expert %" PRIu64 ", row %" PRIu64
				     ", block %" PRIu64 ": scale byte 255 (the E8M0 NaN)", in_path(j),
				     s->name, x, wh.row, wh.block);
			break;
		}
		rc = ck_stw_write(w, buf, n * 2, d);
		ck_model_done_range(bp, out * g * CK_MX_BLOCK_BYTES);
		/* The scales too: kept, they grew RSS by 25 MB a 20b layer. */
		ck_model_done_range(sp, out * g);
	}
	ck_model_done(s);
	free(buf);
	return rc;
}

/* The input slice of expert x and whether it is [in, out] (the HF form). */
static const struct ck_tensor *q_slice(const struct qsrc *q, uint64_t x, const uint8_t **p, int *tr)
{
	if (q->fused) {
		size_t esz = ck_dtype_bits(q->fused->dtype) / 8;
		*p = q->fused->data + x * q->in * q->out * esz;
		*tr = 1;
		return q->fused;
	}
	*p = q->experts[x]->data;
	*tr = 0;
	return q->experts[x];
}

/*
 * Is expert x of the input exactly what --keep-from's expert dequantizes
 * to?  Then its bytes are copied instead of quantized again.
 */
static int unchanged(const struct job *j, struct qsrc *q, uint64_t x, const uint8_t *src, int tr,
		     enum ck_dtype dt, uint16_t *tmp)
{
	uint64_t g = q->in / CK_MX_BLOCK;
	struct ck_mx_where wh;

	if (!q->kb || dt != CK_DT_BF16)
		return 0;
	if (ck_mx_dequant_slice(q->kb->data + x * q->out * g * CK_MX_BLOCK_BYTES,
				q->ks->data + x * q->out * g, q->out, g, tr, tmp, j->o->threads, &wh))
		return 0;	/* a NaN scale in the reference: never "unchanged" */
	return !memcmp(tmp, src, q->out * q->in * 2);
}

/* Quantize (or copy) every expert of q; blocks go to w when blocks is set, scales to q->scales. */
static int run_q(struct ck_stw *w, struct job *j, struct qsrc *q, int blocks, struct ck_diag *d)
{
	uint64_t g = q->in / CK_MX_BLOCK, nb = q->out * g * CK_MX_BLOCK_BYTES, ns = q->out * g;
	uint8_t *bb = ck_malloc(nb);
	uint16_t *tmp = q->kb ? ck_mallocarray(q->out * q->in, 2) : NULL;
	int rc = 0;

	if (!q->scales)
		q->scales = ck_mallocarray(q->e, ns);
	if (!bb || !q->scales || (q->kb && !tmp)) {
		rc = ck_fail(d, CK_ENOMEM, "out of memory");
		goto out;
	}
	q->copied = 0;
	for (uint64_t x = 0; x < q->e && !rc; x++) {
		const uint8_t *src;
		int tr;
		const struct ck_tensor *t = q_slice(q, x, &src, &tr);
		struct ck_mx_where wh;
		if (unchanged(j, q, x, src, tr, t->dtype, tmp)) {
			memcpy(bb, q->kb->data + x * nb, nb);
			memcpy(q->scales + x * ns, q->ks->data + x * ns, ns);
			q->copied++;
		} else if (ck_mx_quant_slice(src, t->dtype, q->out, q->in, tr, j->o->rule, bb,
					     q->scales + x * ns, j->o->threads, &wh)) {
			rc = ck_fail(d, CK_EINVAL, "'%s': tensor '%s': expert %" PRIu64 ", row %" PRIu64
				     ", block %" PRIu64 ": NaN or Inf (input index %" PRIu64 ")",
				     in_path(j), t->name, x, wh.row, wh.block,
				     wh.block * CK_MX_BLOCK + wh.elem);
			break;
		}
		if (blocks)
			rc = ck_stw_write(w, bb, nb, d);
		/* done with this expert's pages: keep the page cache (and RSS) to one slice */
		ck_model_done_range(src, q->out * q->in * (ck_dtype_bits(t->dtype) / 8));
		if (q->kb)
			ck_model_done_range(q->kb->data + x * nb, nb);
	}
out:
	free(bb);
	free(tmp);
	return rc;
}

static int write_item(struct ck_stw *w, struct job *j, struct item *it, struct ck_diag *d)
{
	switch (it->kind) {
	case IT_COPY:
		return ck_job_copy(w, j->m, it->t, d);
	case IT_ROWS:
		return write_rows(w, j, it, d);
	case IT_DEQ:
		return write_deq(w, j, it, d);
	case IT_QBLOCKS:
		CK_TRY(run_q(w, j, it->q, 1, d));
		j->o->experts_copied += it->q->copied;
		j->o->experts_quantized += it->q->e - it->q->copied;
		return 0;
	case IT_QSCALES:
		if (!it->q->scales)	/* blocks not written yet: quantize for the scales */
			CK_TRY(run_q(w, j, it->q, 0, d));
		CK_TRY(ck_stw_write(w, it->q->scales, it->q->e * it->q->out * (it->q->in / CK_MX_BLOCK), d));
		free(it->q->scales);
		it->q->scales = NULL;
		return 0;
	case IT_STACK:
		for (uint64_t x = 0; x < it->q->e; x++) {
			const struct ck_tensor *t = it->q->experts[x];
			CK_TRY(ck_job_copy(w, j->m, t, d));
		}
		return 0;
	}
	return ck_fail(d, CK_EINVAL, "internal: bad plan item");
}

static int emit_item(void *ctx, struct ck_stw *w, const struct ck_stw_tensor *pt, struct ck_diag *d)
{
	struct job *j = ctx;
	return write_item(w, j, &j->items[pt->user], d);
}

static int emit_config(void *ctx, struct ck_out *out, struct ck_diag *d)
{
	const struct job *j = ctx;
	if (!j->config_json)
		return 0;
	return ck_out_write_file(out, "config.json", j->config_json, strlen(j->config_json), d);
}

static int emit(struct job *j, struct ck_diag *d)
{
	const char *inputs[2] = { ck_model_path(j->m), j->o->keep_from };
	static const char *const skip[] = { "config.json", "dtypes.json" };
	const struct ck_job_out jo = { .dst = j->o->out, .force = j->o->force, .inputs = inputs,
				       .ninputs = j->o->keep_from ? 2 : 1, .shard_size = j->o->shard_size,
				       .aux = j->m, .skip = skip, .nskip = CK_ARRAY_SIZE(skip),
				       .write = emit_item, .config = emit_config, .ctx = j };
	struct ck_stw_tensor *plan = ck_calloc(j->n, sizeof(*plan));
	int rc;

	if (!plan)
		return ck_fail(d, CK_ENOMEM, "out of memory");
	for (size_t i = 0; i < j->n; i++)
		plan[i] = j->items[i].st;
	rc = ck_job_write(&jo, plan, j->n, d);
	free(plan);
	j->o->tensors = j->n;
	return rc;
}

/* ---- dequant-mxfp4 ---- */

static void set_shape(struct item *it, enum ck_dtype dt, int ndim, const uint64_t *shape)
{
	it->st.dtype = dt;
	it->st.ndim = ndim;
	memcpy(it->st.shape, shape, sizeof(uint64_t) * (size_t)ndim);
}

/* The partner of an MXFP4 blocks/scales tensor: "_blocks" <-> "_scales", ".blocks" <-> ".scales". */
static const struct ck_tensor *partner(const struct ck_model *m, const char *name, char *base,
				       size_t cap, int *is_blocks)
{
	static const char *const sfx[][2] = { { "_blocks", "_scales" }, { ".blocks", ".scales" } };
	char other[1024];

	for (size_t i = 0; i < CK_ARRAY_SIZE(sfx); i++)
		for (int side = 0; side < 2; side++) {
			size_t n = strlen(name), k = strlen(sfx[i][side]);
			if (n <= k || strcmp(name + n - k, sfx[i][side]) || n - k + 8 > sizeof(other) ||
			    n - k + 1 > cap)
				continue;
			memcpy(base, name, n - k);
			base[n - k] = 0;
			snprintf(other, sizeof(other), "%s%s", base, sfx[i][!side]);
			*is_blocks = !side;
			return ck_model_find(m, other);
		}
	*is_blocks = -1;
	return NULL;
}

static int plan_deq_pair(struct job *j, const struct ck_tensor *b, const struct ck_tensor *s,
			 const char *base, struct ck_diag *d)
{
	struct ck_gptoss_name gn;
	struct item it = { .kind = IT_DEQ, .t = b, .s = s };
	char name[1024];
	uint64_t shape[CK_MAX_DIMS];
	int nd = s->ndim, gptoss;
	uint64_t g, out;

	if (b->dtype != CK_DT_U8 || s->dtype != CK_DT_U8)
		return ck_fail(d, CK_EINVAL, "'%s': tensor '%s': MXFP4 blocks and scales must be U8",
			       in_path(j), b->name);
	if (b->ndim != s->ndim + 1 || s->ndim < 2 || b->shape[b->ndim - 1] != CK_MX_BLOCK_BYTES ||
	    memcmp(b->shape, s->shape, sizeof(uint64_t) * (size_t)s->ndim)) {
		char bs[160], ss[160];
		return ck_fail(d, CK_EINVAL, "'%s': tensor '%s': blocks shape %s does not match scales "
			       "shape %s (want [..., OUT, G, 16] and [..., OUT, G])", in_path(j), b->name,
			       ck_shape_str(b->shape, b->ndim, bs, sizeof(bs)),
			       ck_shape_str(s->shape, s->ndim, ss, sizeof(ss)));
	}
	g = s->shape[nd - 1];
	out = s->shape[nd - 2];
	gptoss = !ck_gptoss_parse(b->name, &gn) && (ck_gptoss_role(gn.role)->flags & CK_GO_F_MX_BLOCKS);
	memcpy(shape, s->shape, sizeof(shape));
	if (gptoss) {
		/* the HF form: [E, IN, OUT] */
		if (nd != 3)
			return ck_fail(d, CK_EINVAL, "'%s': tensor '%s': expert blocks must be [E, OUT, G, 16]",
				       in_path(j), b->name);
		if (ck_gptoss_name(ck_gptoss_role(gn.role)->bf16, CK_GPTOSS_HF, gn.layer, -1, name,
				   sizeof(name)))
			return ck_fail(d, CK_EINVAL, "'%s': tensor '%s': name too long", in_path(j), b->name);
		shape[1] = g * CK_MX_BLOCK;
		shape[2] = out;
		it.transposed = 1;
	} else {
		snprintf(name, sizeof(name), "%s", base);
		shape[nd - 1] = g * CK_MX_BLOCK;
	}
	it.st.name = name;
	set_shape(&it, CK_DT_BF16, nd, shape);
	return push(j, &it, d);
}

/* The original fused qkv: three row ranges named q, k, v in the HF flavor. */
static int plan_qkv(struct job *j, const struct ck_tensor *t, const struct ck_gptoss_name *gn,
		    struct ck_diag *d)
{
	static const enum ck_gptoss_role w[3] = { CK_GO_Q, CK_GO_K, CK_GO_V };
	static const enum ck_gptoss_role b[3] = { CK_GO_Q_BIAS, CK_GO_K_BIAS, CK_GO_V_BIAS };
	uint64_t rows[3], row0 = 0;
	char name[256];

	if (!j->have_cfg)
		return ck_fail(d, CK_EINVAL, "'%s': tensor '%s': splitting qkv needs config.json",
			       in_path(j), t->name);
	ck_gptoss_qkv_rows(&j->cfg, rows);
	if (t->ndim < 1 || t->ndim > 2 || t->shape[0] != rows[0] + rows[1] + rows[2])
		return ck_fail(d, CK_EINVAL, "'%s': tensor '%s': %" PRIu64 " rows, config says q+k+v = %"
			       PRIu64, in_path(j), t->name, t->ndim ? t->shape[0] : 0,
			       rows[0] + rows[1] + rows[2]);
	for (int i = 0; i < 3; i++) {
		struct item it = { .kind = IT_ROWS, .t = t, .row0 = row0, .nrows = rows[i] };
		ck_gptoss_name(gn->role == CK_GO_QKV ? w[i] : b[i], CK_GPTOSS_HF, gn->layer, -1, name,
			       sizeof(name));
		it.st.name = name;
		set_shape(&it, t->dtype, t->ndim, t->shape);
		it.st.shape[0] = rows[i];
		CK_TRY(push(j, &it, d));
		row0 += rows[i];
	}
	return 0;
}

static int plan_dequant(struct job *j, struct ck_diag *d)
{
	char base[1024], name[1024];

	for (size_t i = 0; i < ck_model_count(j->m); i++) {
		const struct ck_tensor *t = ck_model_tensor(j->m, i);
		struct ck_gptoss_name gn;
		int is_blocks = -1;
		const struct ck_tensor *p = t->dtype == CK_DT_U8 ?
			partner(j->m, t->name, base, sizeof(base), &is_blocks) : NULL;
		int known = !ck_gptoss_parse(t->name, &gn);
		unsigned flags = known ? ck_gptoss_role(gn.role)->flags : 0;

		if (t->dtype != CK_DT_U8 && (flags & (CK_GO_F_MX_BLOCKS | CK_GO_F_MX_SCALES)))
			return ck_fail(d, CK_EINVAL, "'%s': tensor '%s': MXFP4 blocks and scales must be U8, "
				       "not %s", in_path(j), t->name, ck_dtype_name(t->dtype));
		if (t->dtype == CK_DT_U8 && (flags & (CK_GO_F_MX_BLOCKS | CK_GO_F_MX_SCALES)) && !p)
			return ck_fail(d, CK_EINVAL, "'%s': tensor '%s': MXFP4 %s without its %s partner",
				       in_path(j), t->name, is_blocks == 1 ? "blocks" : "scales",
				       is_blocks == 1 ? "scales" : "blocks");
		if (p && is_blocks == 1) {
			CK_TRY(plan_deq_pair(j, t, p, base, d));
			continue;
		}
		if (p && is_blocks == 0)
			continue;	/* written with its blocks */
		if (known && (gn.role == CK_GO_QKV || gn.role == CK_GO_QKV_BIAS) &&
		    gn.flavor == CK_GPTOSS_ORIGINAL) {
			CK_TRY(plan_qkv(j, t, &gn, d));
			continue;
		}
		struct item it = { .kind = IT_COPY, .t = t };
		it.st.name = t->name;
		if (known && gn.flavor == CK_GPTOSS_ORIGINAL &&
		    !ck_gptoss_name(gn.role, CK_GPTOSS_HF, gn.layer, gn.expert, name, sizeof(name)))
			it.st.name = name;
		set_shape(&it, t->dtype, t->ndim, t->shape);
		CK_TRY(push(j, &it, d));
	}
	return 0;
}

int ck_mx_dequant_model(struct ck_mx_job *o, struct ck_diag *d)
{
	struct job j = { .o = o };
	int rc = ck_model_open(&j.m, o->in, d);

	if (!rc)
		rc = ck_layout_refuse(j.m, CK_LAYOUT_BNB_WEIGHT, "dequant-nf4", d);
	if (!rc)
		rc = load_config(&j, 0, d);
	if (!rc)
		rc = plan_dequant(&j, d);
	if (!rc)
		rc = emit(&j, d);
	job_free(&j);
	return rc;
}

/* ---- quant-mxfp4 ---- */

/* Find role/layer in the --keep-from model (HF or original names) and check it fits q. */
static int find_keep(struct job *j, struct qsrc *q, enum ck_gptoss_role bf16, int64_t layer,
		     struct ck_diag *d)
{
	const struct ck_gptoss_role_info *ri = ck_gptoss_role(bf16);
	char nb[256], ns[256];

	if (!j->keep)
		return 0;
	for (int f = CK_GPTOSS_HF; f <= CK_GPTOSS_ORIGINAL && !q->kb; f++) {
		if (ck_gptoss_name(ri->blocks, (enum ck_gptoss_flavor)f, layer, -1, nb, sizeof(nb)) ||
		    ck_gptoss_name(ri->scales, (enum ck_gptoss_flavor)f, layer, -1, ns, sizeof(ns)))
			continue;
		q->kb = ck_model_find(j->keep, nb);
		q->ks = ck_model_find(j->keep, ns);
	}
	if (!q->kb || !q->ks)
		return ck_fail(d, CK_EINVAL, "'%s': no MXFP4 blocks/scales for layer %" PRId64 " %s",
			       j->o->keep_from, layer, ri->id);
	if (q->kb->dtype != CK_DT_U8 || q->ks->dtype != CK_DT_U8 || q->kb->ndim != 4 ||
	    q->ks->ndim != 3 || q->kb->shape[0] != q->e || q->kb->shape[1] != q->out ||
	    q->kb->shape[2] != q->in / CK_MX_BLOCK || q->kb->shape[3] != CK_MX_BLOCK_BYTES ||
	    memcmp(q->kb->shape, q->ks->shape, 3 * sizeof(uint64_t)))
		return ck_fail(d, CK_EINVAL, "'%s': tensor '%s': shape does not match the input's %s",
			       j->o->keep_from, q->kb->name, ri->id);
	return 0;
}

/* Plan blocks + scales (in HF names) for a quantization source. */
static int plan_q(struct job *j, struct qsrc *q, enum ck_gptoss_role bf16, int64_t layer,
		  const char *what, struct ck_diag *d)
{
	const struct ck_gptoss_role_info *ri = ck_gptoss_role(bf16);
	struct item b = { .kind = IT_QBLOCKS, .q = q }, s = { .kind = IT_QSCALES, .q = q };
	char nb[256], ns[256];
	uint64_t g = q->in / CK_MX_BLOCK;

	if (!q->in || q->in % CK_MX_BLOCK)
		return ck_fail(d, CK_EINVAL, "'%s': tensor '%s': input dimension %" PRIu64
			       " is not a multiple of 32", in_path(j), what, q->in);
	CK_TRY(find_keep(j, q, bf16, layer, d));
	ck_gptoss_name(ri->blocks, CK_GPTOSS_HF, layer, -1, nb, sizeof(nb));
	ck_gptoss_name(ri->scales, CK_GPTOSS_HF, layer, -1, ns, sizeof(ns));
	b.st.name = nb;
	s.st.name = ns;
	set_shape(&b, CK_DT_U8, 4, (uint64_t[]){ q->e, q->out, g, CK_MX_BLOCK_BYTES });
	set_shape(&s, CK_DT_U8, 3, (uint64_t[]){ q->e, q->out, g });
	CK_TRY(push(j, &b, d));
	return push(j, &s, d);
}

static int is_float(enum ck_dtype dt)
{
	return dt == CK_DT_BF16 || dt == CK_DT_F16 || dt == CK_DT_F32;
}

/*
 * Per-expert tensors (Unsloth's experts.gate_up_projs.N.weight [OUT, IN]
 * and .bias [OUT]): gather experts 0..E-1 of layer/role; all must be there
 * with one shape and dtype.
 */
static int gather(struct job *j, enum ck_gptoss_role role, int64_t layer, struct qsrc *q,
		  struct ck_diag *d)
{
	uint64_t e = 0;
	const struct ck_tensor *first = NULL;

	for (size_t i = 0; i < ck_model_count(j->m); i++) {
		const struct ck_tensor *t = ck_model_tensor(j->m, i);
		struct ck_gptoss_name gn;
		if (ck_gptoss_parse(t->name, &gn) || gn.role != role || gn.layer != layer ||
		    gn.flavor != CK_GPTOSS_EXPERT)
			continue;
		if ((uint64_t)gn.expert + 1 > e)
			e = (uint64_t)gn.expert + 1;
	}
	q->experts = ck_calloc(e, sizeof(*q->experts));
	if (!q->experts)
		return ck_fail(d, CK_ENOMEM, "out of memory");
	q->e = e;
	for (size_t i = 0; i < ck_model_count(j->m); i++) {
		const struct ck_tensor *t = ck_model_tensor(j->m, i);
		struct ck_gptoss_name gn;
		if (ck_gptoss_parse(t->name, &gn) || gn.role != role || gn.layer != layer ||
		    gn.flavor != CK_GPTOSS_EXPERT)
			continue;
		if (q->experts[gn.expert])
			return ck_fail(d, CK_EINVAL, "'%s': tensor '%s': expert %" PRId64 " given twice",
				       in_path(j), t->name, gn.expert);
		if (!first)
			first = t;
		if (!is_float(t->dtype) || t->dtype != first->dtype || t->ndim != first->ndim ||
		    memcmp(t->shape, first->shape, sizeof(t->shape)) ||
		    t->ndim != (ck_gptoss_role(role)->flags & CK_GO_F_BIAS ? 1 : 2))
			return ck_fail(d, CK_EINVAL, "'%s': tensor '%s': dtype or shape differs from '%s'",
				       in_path(j), t->name, first->name);
		q->experts[gn.expert] = t;
	}
	for (uint64_t x = 0; x < e; x++)
		if (!q->experts[x])
			return ck_fail(d, CK_EINVAL, "'%s': layer %" PRId64 " %s: expert %" PRIu64
				       " of %" PRIu64 " is missing", in_path(j), layer,
				       ck_gptoss_role(role)->id, x, e);
	q->out = first->shape[0];
	q->in = first->ndim == 2 ? first->shape[1] : 1;
	return 0;
}

static int plan_expert_group(struct job *j, const struct ck_gptoss_name *gn, struct ck_diag *d)
{
	struct qsrc *q = new_qsrc(j);
	const struct ck_gptoss_role_info *ri = ck_gptoss_role(gn->role);
	char name[256];

	if (!q)
		return ck_fail(d, CK_ENOMEM, "out of memory");
	CK_TRY(gather(j, gn->role, gn->layer, q, d));
	if (gn->role == ri->bias) {
		struct item it = { .kind = IT_STACK, .q = q };
		ck_gptoss_name(gn->role, CK_GPTOSS_HF, gn->layer, -1, name, sizeof(name));
		it.st.name = name;
		set_shape(&it, q->experts[0]->dtype, 2, (uint64_t[]){ q->e, q->out });
		return push(j, &it, d);
	}
	return plan_q(j, q, ri->bf16, gn->layer, q->experts[0]->name, d);
}

static int plan_quant(struct job *j, struct ck_diag *d)
{
	char name[256];

	for (size_t i = 0; i < ck_model_count(j->m); i++) {
		const struct ck_tensor *t = ck_model_tensor(j->m, i);
		struct ck_gptoss_name gn;
		int known = !ck_gptoss_parse(t->name, &gn);
		struct item it = { .kind = IT_COPY, .t = t };

		if (known && (gn.role == CK_GO_GATE_UP || gn.role == CK_GO_DOWN) &&
		    gn.flavor == CK_GPTOSS_HF) {
			struct qsrc *q = new_qsrc(j);
			if (!q)
				return ck_fail(d, CK_ENOMEM, "out of memory");
			if (t->ndim != 3 || !is_float(t->dtype))
				return ck_fail(d, CK_EINVAL, "'%s': tensor '%s': want a float [E, IN, OUT] tensor",
					       in_path(j), t->name);
			q->fused = t;
			q->e = t->shape[0];
			q->in = t->shape[1];
			q->out = t->shape[2];
			CK_TRY(plan_q(j, q, gn.role, gn.layer, t->name, d));
			continue;
		}
		if (known && gn.flavor == CK_GPTOSS_EXPERT && gn.expert >= 0) {
			/* one group per layer and role, planned at its expert 0 */
			if (gn.expert == 0)
				CK_TRY(plan_expert_group(j, &gn, d));
			continue;
		}
		it.st.name = t->name;
		if (known && gn.flavor == CK_GPTOSS_EXPERT &&
		    !ck_gptoss_name(gn.role, CK_GPTOSS_HF, gn.layer, -1, name, sizeof(name)))
			it.st.name = name;	/* mlp.router.linear -> mlp.router */
		set_shape(&it, t->dtype, t->ndim, t->shape);
		CK_TRY(push(j, &it, d));
	}
	return 0;
}

int ck_mx_quant_model(struct ck_mx_job *o, struct ck_diag *d)
{
	struct job j = { .o = o };
	int rc = ck_model_open(&j.m, o->in, d);

	o->experts_copied = o->experts_quantized = 0;
	if (!rc)
		rc = ck_layout_refuse(j.m, CK_LAYOUT_BNB_WEIGHT, "dequant-nf4", d);
	if (!rc && o->keep_from)
		rc = ck_model_open(&j.keep, o->keep_from, d);
	if (!rc)
		rc = load_config(&j, 1, d);
	if (!rc)
		rc = plan_quant(&j, d);
	if (!rc)
		rc = emit(&j, d);
	job_free(&j);
	return rc;
}
