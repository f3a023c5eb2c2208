/*
 * bnb_quant_model.c - the quant-bnb job: quantize the Linear weights of a
 * checkpoint to bitsandbytes 4-bit the way transformers + bitsandbytes save a
 * load_in_4bit model: the same keys, dtypes and shapes (U8 weight [(n+1)/2, 1], absmax, quant_map,
 * nested_absmax, nested_quant_map, quant_state.bitsandbytes__<type> holding
 * the JSON bnb writes, byte for byte), and a config.json quantization_config
 * transformers accepts, listing in llm_int8_skip_modules every module left
 * unquantized.
 *
 * What is a Linear weight: a 2-D float "<module>.weight" whose module is not
 * an embedding, lm_head, a norm or a router (nor matched by skips).  gpt-oss
 * experts are 3-D parameters, not Linear layers: kept as they are by
 * default; per_expert writes Unsloth's layout (one NF4 Linear per
 * expert: gate_up_projs.E [2I, H] = gate_up_proj[E] transposed, down_projs.E,
 * biases sliced, router renamed mlp.router.linear), which only Unsloth loads.
 *
 * Codes and absmax equal bnb's CUDA kernel for BF16 input (see quant/bnb.h).
 * The double-quant offset is the float32 mean of absmax summed in double in
 * block order (ck_bnb_mean); bnb's own is a float32 reduction whose order
 * depends on the device, so nested_offset lets a test inject bnb's.
 *
 * Memory: the output is planned first (the JSON length depends on the
 * offset, so a first pass computes every tensor's absmax mean), then each
 * tensor is quantized when the writer reaches it: one tensor (or expert) at
 * a time.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "bnb.h"
#include "../libtensor/job.h"
#include "../libtensor/layout.h"

/* A tensor to quantize: a plain 2-D weight, or one expert of a 3-D one. */
struct qsrc {
	const struct ck_tensor *t;
	long expert;		/* -1, or the expert slice of t */
	char module[512];	/* output module name */
	uint64_t rows, cols;	/* logical [rows, cols] */
	uint64_t n, nb;
	float offset;
	float *nabsmax;		/* double quant: ceil(nb/256) floats, from the first pass */
	char json[512];
	size_t json_len;
};

enum item_kind {
	IT_COPY,	/* t as is */
	IT_SLICE,	/* row `expert` of t (a per-expert bias) */
	IT_WEIGHT, IT_ABSMAX, IT_QMAP, IT_NABSMAX, IT_NMAP, IT_STATE,
};

struct item {
	enum item_kind kind;
	const struct ck_tensor *t;
	long expert;
	size_t q;		/* index into qs for IT_WEIGHT.. */
	char *name;
};

/* The quantized form of one qsrc, kept while the writer visits its tensors. */
struct qcache {
	long cur;		/* qs index held, -1 none */
	int full;		/* packed codes computed too */
	void *src;		/* transposed expert (source dtype) */
	uint8_t *packed, *qabsmax;
	float *absmax, *nabsmax;
	size_t cap_n, cap_nb;
};

struct qb_run {
	const struct ck_bnb_q_job *o;
	struct ck_model *m;
	enum ck_bnb_type type;
	struct qsrc *qs;
	size_t nq;
	struct item *items;
	size_t nitems, capitems;
	char **skipped;		/* modules left unquantized, for llm_int8_skip_modules */
	size_t nskipped;
	struct qcache c;
	enum ck_dtype compute;
};

/* Modules transformers does not (or must not) replace by Linear4bit. */
static int default_skip(const char *module)
{
	static const char *const pat[] = { "embed", "lm_head", "router", "norm", "wte", "wpe" };
	const char *last = strrchr(module, '.');
	last = last ? last + 1 : module;
	for (size_t i = 0; i < CK_ARRAY_SIZE(pat); i++)
		if (strstr(last, pat[i]))
			return 1;
	/* a MoE router called "gate" (Mixtral, Qwen-MoE), not gate_proj */
	return ck_ends_with(module, "mlp.gate") || ck_ends_with(module, "block_sparse_moe.gate");
}

static int user_skip(const struct ck_bnb_q_job *o, const char *module, const char *name)
{
	return ck_job_glob_any(o->skips, o->nskips, module) ||
	       ck_job_glob_any(o->skips, o->nskips, name);
}

static int add_item(struct qb_run *r, enum item_kind k, const struct ck_tensor *t, long e, size_t q,
		    const char *name, struct ck_diag *d)
{
	struct item *it;
	if (r->nitems == r->capitems) {
		size_t nc = r->capitems ? 2 * r->capitems : 64;
		struct item *ni = ck_reallocarray(r->items, nc, sizeof(*ni));
		if (!ni)
			return ck_fail(d, CK_ENOMEM, "out of memory");
		r->items = ni;
		r->capitems = nc;
	}
	it = &r->items[r->nitems];
	*it = (struct item){ k, t, e, q, ck_strdup(name) };
	if (!it->name)
		return ck_fail(d, CK_ENOMEM, "out of memory");
	r->nitems++;
	return 0;
}

static int note_skipped(struct qb_run *r, const char *module, struct ck_diag *d)
{
	char **ns = ck_reallocarray(r->skipped, r->nskipped + 1, sizeof(*ns));
	if (!ns)
		return ck_fail(d, CK_ENOMEM, "out of memory");
	r->skipped = ns;
	ns[r->nskipped] = ck_strdup(module);
	if (!ns[r->nskipped])
		return ck_fail(d, CK_ENOMEM, "out of memory");
	r->nskipped++;
	return 0;
}

static int add_qsrc(struct qb_run *r, const struct ck_tensor *t, long e, const char *module,
		    uint64_t rows, uint64_t cols, struct ck_diag *d)
{
	struct qsrc *q, *nq = ck_reallocarray(r->qs, r->nq + 1, sizeof(*nq));
	char name[600];
	static const char *const suf[] = { ".weight", ".weight.absmax", ".weight.quant_map",
					   ".weight.nested_absmax", ".weight.nested_quant_map" };
	static const enum item_kind kinds[] = { IT_WEIGHT, IT_ABSMAX, IT_QMAP, IT_NABSMAX, IT_NMAP };

	if (!nq)
		return ck_fail(d, CK_ENOMEM, "out of memory");
	r->qs = nq;
	q = &nq[r->nq];
	memset(q, 0, sizeof(*q));
	q->t = t;
	q->expert = e;
	if (strlen(module) >= sizeof(q->module))
		return ck_fail(d, CK_EINVAL, "'%s': tensor name too long", t->name);
	snprintf(q->module, sizeof(q->module), "%s", module);
	q->rows = rows;
	q->cols = cols;
	if (ck_mul_u64(rows, cols, &q->n) || q->n > (UINT64_MAX >> 2))
		return ck_fail(d, CK_EINVAL, "'%s': tensor '%s': too large", ck_model_path(r->m), t->name);
	q->nb = (q->n + r->o->blocksize - 1) / r->o->blocksize;
	for (size_t i = 0; i < CK_ARRAY_SIZE(suf); i++) {
		if (i >= 3 && !r->o->double_quant)
			break;
		snprintf(name, sizeof(name), "%s%s", module, suf[i]);
		CK_TRY(add_item(r, kinds[i], t, e, r->nq, name, d));
	}
	snprintf(name, sizeof(name), "%s.weight.quant_state.bitsandbytes__%s", module,
		 ck_bnb_type_name(r->type));
	CK_TRY(add_item(r, IT_STATE, t, e, r->nq, name, d));
	r->nq++;
	return 0;
}

/* "...mlp.experts.gate_up_proj" [E, H, 2I] etc. -> per-expert items (Unsloth). */
static int plan_experts(struct qb_run *r, const struct ck_tensor *t, struct ck_diag *d)
{
	const char *base = strrchr(t->name, '.');
	size_t plen = (size_t)(base - t->name) + 1;	/* "...mlp.experts." */
	int bias = ck_ends_with(t->name, "_bias");
	int gate = strstr(base, "gate_up") != NULL;
	char module[600];

	for (uint64_t e = 0; e < t->shape[0]; e++) {
		snprintf(module, sizeof(module), "%.*s%s.%" PRIu64, (int)plen, t->name,
			 gate ? "gate_up_projs" : "down_projs", e);
		if (bias) {
			char nm[640];
			snprintf(nm, sizeof(nm), "%s.bias", module);
			CK_TRY(add_item(r, IT_SLICE, t, (long)e, 0, nm, d));
		} else {
			/* expert e is [in, out]; its Linear weight is [out, in] */
			CK_TRY(add_qsrc(r, t, (long)e, module, t->shape[2], t->shape[1], d));
		}
	}
	return 0;
}

static int is_fused_expert(const struct ck_tensor *t)
{
	static const char *const n[] = { "mlp.experts.gate_up_proj", "mlp.experts.down_proj" };
	char b[64];

	for (size_t i = 0; i < CK_ARRAY_SIZE(n); i++) {
		snprintf(b, sizeof(b), "%s_bias", n[i]);
		if ((ck_ends_with(t->name, n[i]) && t->ndim == 3) || (ck_ends_with(t->name, b) && t->ndim == 2))
			return 1;
	}
	return 0;
}

static int plan(struct qb_run *r, struct ck_diag *d)
{
	int per_expert = r->o->per_expert;

	for (size_t i = 0; i < ck_model_count(r->m); i++) {
		const struct ck_tensor *t = ck_model_tensor(r->m, i);
		char module[600], nm[640];
		const char *p;

		if (ck_bnb_is_weight(r->m, t->name) || ck_bnb_is_aux(t->name))
			return ck_fail(d, CK_EINVAL, "'%s': tensor '%s' is already bitsandbytes-quantized",
				       ck_model_path(r->m), t->name);
		if (per_expert && strstr(t->name, "mlp.experts.") &&
		    (ck_ends_with(t->name, "_blocks") || ck_ends_with(t->name, "_scales")))
			return ck_fail(d, CK_EUNSUPPORTED, "'%s': tensor '%s': MXFP4 experts cannot be split "
				       "per expert (ckpt dequant-mxfp4 first)", ck_model_path(r->m), t->name);
		if (per_expert && is_fused_expert(t)) {
			if (!ck_dtype_is_float(t->dtype))
				return ck_fail(d, CK_EUNSUPPORTED, "'%s': tensor '%s': %s experts cannot be "
					       "split (dequantize them first)", ck_model_path(r->m),
					       t->name, ck_dtype_name(t->dtype));
			CK_TRY(plan_experts(r, t, d));
			continue;
		}
		if (per_expert && (p = strstr(t->name, "mlp.router.")) && !strstr(p, "router.linear.")) {
			snprintf(nm, sizeof(nm), "%.*smlp.router.linear.%s", (int)(p - t->name), t->name,
				 p + strlen("mlp.router."));
			if (ck_ends_with(t->name, ".weight")) {
				snprintf(module, sizeof(module), "%.*smlp.router.linear", (int)(p - t->name),
					 t->name);
				CK_TRY(note_skipped(r, module, d));
			}
			CK_TRY(add_item(r, IT_COPY, t, -1, 0, nm, d));
			continue;
		}
		if (!ck_ends_with(t->name, ".weight") || strlen(t->name) >= sizeof(module)) {
			CK_TRY(add_item(r, IT_COPY, t, -1, 0, t->name, d));
			continue;
		}
		snprintf(module, sizeof(module), "%.*s", (int)(strlen(t->name) - 7), t->name);
		if (t->ndim != 2 || !ck_dtype_is_float(t->dtype) || default_skip(module) ||
		    user_skip(r->o, module, t->name)) {
			if (t->ndim >= 2 || default_skip(module) || user_skip(r->o, module, t->name))
				CK_TRY(note_skipped(r, module, d));
			CK_TRY(add_item(r, IT_COPY, t, -1, 0, t->name, d));
			continue;
		}
		CK_TRY(add_qsrc(r, t, -1, module, t->shape[0], t->shape[1], d));
	}
	return 0;
}

/* ---- quantizing one source ------------------------------------------------ */

static size_t esize(enum ck_dtype dt)
{
	return ck_dtype_bits(dt) / 8;
}

/* The source elements of q in row-major [rows, cols] order. */
static const void *src_data(struct qb_run *r, const struct qsrc *q, struct ck_diag *d)
{
	size_t es = esize(q->t->dtype);
	const uint8_t *base;

	if (q->expert < 0)
		return q->t->data;
	/* expert e of [E, in, out], transposed to [out, in] = [rows, cols] */
	if (!r->c.src) {	/* room for cap_n elements of any float type */
		r->c.src = ck_mallocarray((size_t)r->c.cap_n, sizeof(float));
		if (!r->c.src) {
			ck_fail(d, CK_ENOMEM, "out of memory");
			return NULL;
		}
	}
	base = q->t->data + (uint64_t)q->expert * q->n * es;
	ck_bnb_transpose(base, r->c.src, q->cols, q->rows, es, r->o->threads);
	return r->c.src;
}

static int grow(struct qb_run *r, const struct qsrc *q, struct ck_diag *d)
{
	uint64_t nn = (q->n + 1) / 2;
	if (r->c.cap_n < q->n) {
		free(r->c.packed);
		free(r->c.src);
		r->c.src = NULL;
		r->c.packed = ck_malloc((size_t)nn);
		if (!r->c.packed)
			return ck_fail(d, CK_ENOMEM, "out of memory");
		r->c.cap_n = q->n;
	}
	if (r->c.cap_nb < q->nb) {
		free(r->c.absmax);
		free(r->c.qabsmax);
		free(r->c.nabsmax);
		r->c.absmax = ck_mallocarray((size_t)q->nb, sizeof(float));
		r->c.qabsmax = ck_malloc((size_t)q->nb);
		r->c.nabsmax = ck_mallocarray((size_t)(q->nb / CK_BNB_NESTED_BLOCKSIZE + 1), sizeof(float));
		if (!r->c.absmax || !r->c.qabsmax || !r->c.nabsmax)
			return ck_fail(d, CK_ENOMEM, "out of memory");
		r->c.cap_nb = q->nb;
	}
	return 0;
}

/* Make the cache hold q (with the packed codes when full). */
static int compute(struct qb_run *r, size_t qi, int full, struct ck_diag *d)
{
	const struct qsrc *q = &r->qs[qi];
	const void *src;

	if (r->c.cur == (long)qi && (r->c.full || !full))
		return 0;
	r->c.cur = -1;
	CK_TRY(grow(r, q, d));
	if (!full && q->expert >= 0 && q->cols % r->o->blocksize == 0) {
		/* absmax only: read the expert as it lies, no transposed copy */
		ck_bnb_absmax_t(r->o->blocksize, q->t->dtype,
				q->t->data + (uint64_t)q->expert * q->n * esize(q->t->dtype), q->cols,
				q->rows, r->c.absmax);
		ck_model_done_range(q->t->data + (uint64_t)q->expert * q->n * esize(q->t->dtype),
				    (size_t)(q->n * esize(q->t->dtype)));
		r->c.cur = (long)qi;
		r->c.full = 0;
		return 0;
	}
	src = src_data(r, q, d);
	if (!src)
		return d->status;
	if (full)
		CK_TRY(ck_bnb_quantize(r->type, r->o->blocksize, q->t->dtype, src, q->n,
				       r->c.packed, r->c.absmax, r->o->threads, d));
	else
		ck_bnb_absmax(r->o->blocksize, q->t->dtype, src, q->n, r->c.absmax);
	if (full && r->o->double_quant)
		ck_bnb_nested_quantize(r->c.absmax, q->nb, q->offset, ck_bnb_dynamic_map, r->c.qabsmax,
				       r->c.nabsmax);
	if (q->expert >= 0)
		ck_model_done_range(q->t->data + (uint64_t)q->expert * q->n * esize(q->t->dtype),
				    (size_t)(q->n * esize(q->t->dtype)));
	else
		ck_model_done(q->t);
	r->c.cur = (long)qi;
	r->c.full = full;
	return 0;
}

/* First pass: offsets (double quant) and the quant_state JSON of every source. */
static int prepare(struct qb_run *r, struct ck_diag *d)
{
	double inject = 0;
	char *end = NULL;

	if (r->o->nested_offset) {
		inject = strtod(r->o->nested_offset, &end);
		if (!*r->o->nested_offset || *end || !isfinite(inject))
			return ck_fail(d, CK_EUSAGE, "--nested-offset needs a number");
	}
	for (size_t i = 0; i < r->nq; i++) {
		struct qsrc *q = &r->qs[i];
		const char *dt = q->t->dtype == CK_DT_BF16 ? "bfloat16" :
				 q->t->dtype == CK_DT_F16 ? "float16" : "float32";
		char off[40];
		int n;

		if (r->o->double_quant) {
			CK_TRY(compute(r, i, 0, d));
			q->offset = r->o->nested_offset ? (float)inject : ck_bnb_mean(r->c.absmax, q->nb);
			q->nabsmax = ck_mallocarray((size_t)(q->nb + 255) / 256, sizeof(float));
			if (!q->nabsmax)
				return ck_fail(d, CK_ENOMEM, "out of memory");
			ck_bnb_nested_quantize(r->c.absmax, q->nb, q->offset, ck_bnb_dynamic_map,
					       r->c.qabsmax, q->nabsmax);
			ck_bnb_pyrepr((double)q->offset, off, sizeof(off));
			n = snprintf(q->json, sizeof(q->json), "{\"quant_type\": \"%s\", \"blocksize\": %"
				     PRIu64 ", \"dtype\": \"%s\", \"shape\": [%" PRIu64 ", %" PRIu64 "], "
				     "\"nested_blocksize\": 256, \"nested_dtype\": \"float32\", "
				     "\"nested_offset\": %s}", ck_bnb_type_name(r->type),
				     r->o->blocksize, dt, q->rows, q->cols, off);
		} else {
			n = snprintf(q->json, sizeof(q->json), "{\"quant_type\": \"%s\", \"blocksize\": %"
				     PRIu64 ", \"dtype\": \"%s\", \"shape\": [%" PRIu64 ", %" PRIu64 "]}",
				     ck_bnb_type_name(r->type), r->o->blocksize, dt, q->rows, q->cols);
		}
		q->json_len = (size_t)n;
		r->c.cur = -1;	/* the offset changed what compute() would give */
	}
	return 0;
}

static void item_shape(const struct qb_run *r, const struct item *it, struct ck_stw_tensor *p)
{
	const struct qsrc *q = it->kind >= IT_WEIGHT ? &r->qs[it->q] : NULL;

	p->ndim = 1;
	switch (it->kind) {
	case IT_COPY:
		p->dtype = it->t->dtype;
		p->ndim = it->t->ndim;
		memcpy(p->shape, it->t->shape, sizeof(p->shape));
		break;
	case IT_SLICE:
		p->dtype = it->t->dtype;
		p->shape[0] = it->t->shape[1];
		break;
	case IT_WEIGHT:
		p->dtype = CK_DT_U8;
		p->ndim = 2;
		p->shape[0] = (q->n + 1) / 2;
		p->shape[1] = 1;
		break;
	case IT_ABSMAX:
		p->dtype = r->o->double_quant ? CK_DT_U8 : CK_DT_F32;
		p->shape[0] = q->nb;
		break;
	case IT_QMAP:
		p->dtype = CK_DT_F32;
		p->shape[0] = 16;
		break;
	case IT_NABSMAX:
		p->dtype = CK_DT_F32;
		p->shape[0] = (q->nb + CK_BNB_NESTED_BLOCKSIZE - 1) / CK_BNB_NESTED_BLOCKSIZE;
		break;
	case IT_NMAP:
		p->dtype = CK_DT_F32;
		p->shape[0] = 256;
		break;
	case IT_STATE:
		p->dtype = CK_DT_U8;
		p->shape[0] = q->json_len;
		break;
	}
}

static int write_item(void *ctx, struct ck_stw *w, const struct ck_stw_tensor *pt, struct ck_diag *d)
{
	struct qb_run *r = ctx;
	const struct item *it = &r->items[pt->user];
	const struct qsrc *q = it->kind >= IT_WEIGHT ? &r->qs[it->q] : NULL;
	const struct ck_tensor *t = it->t;

	switch (it->kind) {
	case IT_COPY:
		return ck_job_copy(w, r->m, t, d);
	case IT_SLICE: {
		uint64_t row = t->nbytes / t->shape[0];
		return ck_stw_write(w, t->data + row * (uint64_t)it->expert, (size_t)row, d);
	}
	case IT_WEIGHT:
		CK_TRY(compute(r, it->q, 1, d));
		return ck_stw_write(w, r->c.packed, (size_t)((q->n + 1) / 2), d);
	case IT_ABSMAX:
		CK_TRY(compute(r, it->q, 0, d));
		if (r->o->double_quant)
			return ck_stw_write(w, r->c.qabsmax, (size_t)q->nb, d);
		return ck_stw_write(w, r->c.absmax, (size_t)q->nb * 4, d);
	case IT_QMAP:
		return ck_stw_write(w, ck_bnb_table(r->type), 16 * sizeof(float), d);
	case IT_NABSMAX:
		return ck_stw_write(w, q->nabsmax, (size_t)(q->nb + 255) / 256 * 4, d);
	case IT_NMAP:
		return ck_stw_write(w, ck_bnb_dynamic_map, 256 * sizeof(float), d);
	case IT_STATE:
		return ck_stw_write(w, q->json, q->json_len, d);
	}
	return 0;
}

/* append s to the growable buffer b (len n, capacity cap) */
static int put(char **b, size_t *n, size_t *cap, const char *s)
{
	size_t l = strlen(s);
	if (*n + l + 1 > *cap) {
		size_t nc = (*n + l + 1) * 2;
		char *nb = realloc(*b, nc);
		if (!nb)
			return -1;
		*b = nb;
		*cap = nc;
	}
	memcpy(*b + *n, s, l + 1);
	*n += l;
	return 0;
}

/*
 * quantization_config as transformers writes it (BitsAndBytesConfig.to_dict,
 * sorted keys), appended to config.json whose other text is kept as it is.
 */
static int write_config(void *ctx, struct ck_out *out, struct ck_diag *d)
{
	const struct qb_run *r = ctx;
	char line[1200], *qc = NULL;
	size_t qn = 0, qcap = 0;
	const char *cd = r->compute == CK_DT_F16 ? "float16" : r->compute == CK_DT_F32 ? "float32" :
			 "bfloat16";
	int rc, bad = 0;

	if (ck_model_kind(r->m) != CK_MODEL_FOLDER)
		return 0;
	snprintf(line, sizeof(line), "{\"_load_in_4bit\": true, \"_load_in_8bit\": false, "
		 "\"bnb_4bit_compute_dtype\": \"%s\", \"bnb_4bit_quant_storage\": \"uint8\", "
		 "\"bnb_4bit_quant_type\": \"%s\", \"bnb_4bit_use_double_quant\": %s, "
		 "\"llm_int8_enable_fp32_cpu_offload\": false, "
		 "\"llm_int8_has_fp16_weight\": false, \"llm_int8_skip_modules\": %s",
		 cd, ck_bnb_type_name(r->type), r->o->double_quant ? "true" : "false",
		 r->nskipped ? "[" : "null");
	bad |= put(&qc, &qn, &qcap, line);
	for (size_t i = 0; i < r->nskipped; i++) {
		char esc[1100];
		/* module names are tensor names: UTF-8 without controls once escaped */
		ck_escape(r->skipped[i], strlen(r->skipped[i]), esc, sizeof(esc));
		if (strchr(esc, '"') || strchr(esc, '\\')) {
			free(qc);
			return ck_fail(d, CK_EUNSUPPORTED, "module name '%s' needs JSON escaping", esc);
		}
		snprintf(line, sizeof(line), "%s\"%s\"", i ? ", " : "", esc);
		bad |= put(&qc, &qn, &qcap, line);
	}
	bad |= put(&qc, &qn, &qcap, r->nskipped ? "], " : ", ");
	bad |= put(&qc, &qn, &qcap, "\"llm_int8_threshold\": 6.0, \"load_in_4bit\": true, "
		   "\"load_in_8bit\": false, \"quant_method\": \"bitsandbytes\"}");
	if (bad) {
		free(qc);
		return ck_fail(d, CK_ENOMEM, "out of memory");
	}
	rc = ck_job_edit_config(out, ck_model_dir(r->m), "quantization_config", qc, CK_JSON_AT_SORTED, 1, d);
	free(qc);
	return rc;
}

static int run(struct qb_run *r, struct ck_diag *d)
{
	const char *inputs[] = { ck_model_path(r->m) };
	static const char *const skip[] = { "config.json" };
	const struct ck_job_out jo = { .dst = r->o->out, .force = r->o->force, .inputs = inputs,
				       .ninputs = 1, .shard_size = r->o->shard_size, .meta = r->m,
				       .aux = r->m, .skip = skip, .nskip = 1, .write = write_item,
				       .config = write_config, .ctx = r };
	struct ck_stw_tensor *p = NULL;
	int rc;

	rc = plan(r, d);
	if (!rc)
		rc = prepare(r, d);
	if (rc)
		return rc;
	r->compute = r->nq ? r->qs[0].t->dtype : CK_DT_BF16;
	p = ck_calloc(r->nitems ? r->nitems : 1, sizeof(*p));
	if (!p)
		return ck_fail(d, CK_ENOMEM, "out of memory");
	for (size_t k = 0; k < r->nitems; k++) {
		p[k].name = r->items[k].name;
		p[k].user = k;
		item_shape(r, &r->items[k], &p[k]);
	}
	rc = ck_job_write(&jo, p, r->nitems, d);
	free(p);
	return rc;
}

int ck_bnb_quant_model(const struct ck_bnb_q_job *job, struct ck_diag *d)
{
	struct qb_run r = { .o = job, .type = job->type, .c = { .cur = -1 } };
	int rc;

	rc = ck_model_open(&r.m, job->in, d);
	if (!rc && ck_model_kind(r.m) == CK_MODEL_GGUF)
		rc = ck_fail(d, CK_EUNSUPPORTED, "'%s': GGUF input is not supported", job->in);
	if (!rc)
		rc = ck_layout_refuse(r.m, CK_LAYOUT_MXFP4_BLOCKS, "dequant-mxfp4", d);
	if (!rc)
		rc = run(&r, d);
	for (size_t i = 0; i < r.nitems; i++)
		free(r.items[i].name);
	free(r.items);
	for (size_t i = 0; i < r.nskipped; i++)
		free(r.skipped[i]);
	free(r.skipped);
	for (size_t i = 0; i < r.nq; i++)
		free(r.qs[i].nabsmax);
	free(r.qs);
	free(r.c.src);
	free(r.c.packed);
	free(r.c.qabsmax);
	free(r.c.absmax);
	free(r.c.nabsmax);
	ck_model_free(r.m);
	return rc;
}
