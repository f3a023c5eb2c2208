/*
 * merge.c - the stream pass of merge-lora: produce every output tensor in
 * the writer's order; untouched ones by copy_file_range, merged ones row
 * block by row block (fp32 accumulation, PEFT's roundings), so memory is a
 * block of rows plus the adapter pair, whatever the size of the model.
 */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <cjson/cJSON.h>
#include "lora.h"
#include "../libtensor/model.h"
#include "../quant/mxfp4.h"
#include "../libtensor/stwriter.h"

#define BLOCK_ELEMS (1u << 21)	/* elements per row block (8 MB of fp32) */
#define PAR_MIN (1u << 15)	/* below this many elements a block is not split */

/* One merged tensor being produced: the factors as floats and the views. */
struct job {
	const struct ck_lora_item *it;
	const struct ck_tensor *src;	/* base data, or the replacement */
	enum ck_dtype out_dt;
	uint64_t R, C, r, rE;
	float s32;
	float *A, *B, *Bt, *mag;
	int jobs;
	uint16_t *slice;		/* MXFP4: the current expert dequantized, [IN, OUT] BF16 */
	/* per block */
	uint64_t r0, nrows;
	float *w;			/* nrows x C: in: W; out: W' */
	double max_delta;
	int bad;			/* a non-finite result appeared */
};

static float *load_floats(const struct ck_tensor *t)
{
	float *f = ck_mallocarray(t->nelem, sizeof(float));
	if (f)
		ck_convert(t->dtype, t->data, CK_DT_F32, f, t->nelem);
	return f;
}

/* Round a float through dtype dt and back (PEFT's .to(param.dtype) on a delta). */
static float through(enum ck_dtype dt, float x)
{
	if (dt == CK_DT_BF16)
		return ck_bf16_to_f32(ck_f32_to_bf16(x));
	if (dt == CK_DT_F16)
		return ck_f16_to_f32(ck_f32_to_f16(x));
	return x;
}

/* delta for rows [a, b) of the block into d (rows x C), then W' in j->w. */
static void do_rows(struct job *j, uint64_t a, uint64_t b, int grouped, float *u, const float **v,
		    float *acc, double *maxd, int *bad)
{
	const struct ck_lora_item *it = j->it;
	uint64_t C = j->C, r = j->r;
	enum ck_dtype bdt = it->mx_scales ? CK_DT_BF16 : it->base->dtype;

	for (uint64_t row = a; row < b; row++) {
		uint64_t gr = j->r0 + row;	/* row in the whole tensor */
		float *w = j->w + row * C;

		switch (it->op) {
		case CK_LOP_LINEAR:
			if (!it->fifo) {
				for (uint64_t k = 0; k < r; k++) {
					u[k] = j->B[gr * r + k];
					v[k] = j->A + k * C;
				}
			} else {
				for (uint64_t k = 0; k < r; k++) {
					u[k] = j->A[k * j->R + gr];
					v[k] = j->Bt + k * C;
				}
			}
			break;
		case CK_LOP_EMBED:
			for (uint64_t k = 0; k < r; k++) {
				u[k] = j->A[k * j->R + gr];
				v[k] = j->Bt + k * C;
			}
			break;
		case CK_LOP_EXPERTS: {
			uint64_t d1 = it->shape[1], e = gr / d1, x = gr % d1;
			for (uint64_t k = 0; k < r; k++) {
				uint64_t col = grouped ? e * r + k : k * it->E + e;
				if (it->layout == CK_MOE_STANDARD) {
					u[k] = j->A[(e * r + k) * d1 + x];
					v[k] = j->Bt + col * C;
				} else {
					u[k] = j->B[x * j->rE + col];
					v[k] = j->A + (e * r + k) * C;
				}
			}
			break;
		}
		default:
			break;
		}
		for (uint64_t c = 0; c < C; c++)
			acc[c] = 0.0f;
		for (uint64_t k = 0; k < r; k++) {
			const float uk = u[k], *vk = v[k];
			for (uint64_t c = 0; c < C; c++)
				acc[c] += uk * vk[c];
		}
		if (j->mag) {
			/* DoRA: W' = (m / ||W + d||) * (W + d), row-wise. */
			double ss = 0;
			float f;
			for (uint64_t c = 0; c < C; c++) {
				acc[c] = w[c] + acc[c] * j->s32;
				ss += (double)acc[c] * acc[c];
			}
			f = j->mag[gr] / (float)sqrt(ss);
			for (uint64_t c = 0; c < C; c++) {
				float o = f * acc[c];
				double dd = fabs((double)o - w[c]);
				if (dd > *maxd)
					*maxd = dd;
				if (!isfinite(o))
					*bad = 1;
				w[c] = o;
			}
			continue;
		}
		for (uint64_t c = 0; c < C; c++) {
			float dl = acc[c] * j->s32, o;
			if (it->op != CK_LOP_LINEAR)
				dl = through(bdt, dl);
			o = w[c] + dl;
			if (fabsf(dl) > *maxd)
				*maxd = fabsf(dl);
			if (!isfinite(o))
				*bad = 1;
			w[c] = o;
		}
	}
}

struct slice {
	struct job *j;
	uint64_t a, b;
	double maxd;
	int bad, grouped;
};

static void *slice_main(void *arg)
{
	struct slice *s = arg;
	uint64_t r = s->j->r, C = s->j->C;
	float *u = ck_mallocarray(r ? r : 1, sizeof(float));
	const float **v = ck_mallocarray(r ? r : 1, sizeof(float *));
	float *acc = ck_mallocarray(C ? C : 1, sizeof(float));

	if (!u || !v || !acc)
		s->bad = 2;
	else
		do_rows(s->j, s->a, s->b, s->grouped, u, v, acc, &s->maxd, &s->bad);
	free(u);
	free((void *)v);
	free(acc);
	return NULL;
}

static int run_block(struct job *j, int jobs, int grouped, struct ck_diag *d)
{
	struct slice sl[64];
	pthread_t th[64];
	uint64_t n = j->nrows;
	int nt = jobs < 1 ? 1 : jobs > 64 ? 64 : jobs;

	if (n * j->C < PAR_MIN || n < 2)
		nt = 1;
	if ((uint64_t)nt > n)
		nt = (int)n;
	for (int t = 0; t < nt; t++) {
		sl[t] = (struct slice){ .j = j, .a = n * (uint64_t)t / (uint64_t)nt,
					.b = n * (uint64_t)(t + 1) / (uint64_t)nt, .grouped = grouped };
	}
	for (int t = 1; t < nt; t++)
		if (pthread_create(&th[t], NULL, slice_main, &sl[t])) {
			/* No thread: do it here. */
			slice_main(&sl[t]);
			th[t] = 0;
		}
	slice_main(&sl[0]);
	for (int t = 1; t < nt; t++)
		if (th[t])
			pthread_join(th[t], NULL);
	for (int t = 0; t < nt; t++) {
		if (sl[t].bad == 2)
			return ck_fail(d, CK_ENOMEM, "out of memory");
		if (sl[t].bad)
			j->bad = 1;
		if (sl[t].maxd > j->max_delta)
			j->max_delta = sl[t].maxd;
	}
	return 0;
}

/* Dequantize expert e of an MXFP4 pair into slice ([IN, OUT] BF16, the HF layout). */
static int mx_expert(const struct ck_lora_item *it, uint64_t e, uint16_t *slice, int jobs, struct ck_diag *d)
{
	const struct ck_tensor *b = it->base, *s = it->mx_scales;
	uint64_t out = b->shape[1], g = b->shape[2];
	struct ck_mx_where w;
	const uint8_t *bp = b->data + e * out * g * CK_MX_BLOCK_BYTES, *sp = s->data + e * out * g;
	int rc = ck_mx_dequant_slice(bp, sp, out, g, 1, slice, jobs, &w);

	if (rc)
		return ck_fail(d, rc, "tensor '%s': expert %" PRIu64 " row %" PRIu64 " block %" PRIu64
			       ": scale byte 255 (NaN)", s->name, e, w.row, w.block);
	ck_model_done_range(bp, out * g * CK_MX_BLOCK_BYTES);
	ck_model_done_range(sp, out * g);
	return 0;
}

/* An untouched MXFP4 pair: dequantize expert by expert into the output dtype. */
static int write_mx_plain(struct ck_stw *w, const struct ck_lora_item *it, enum ck_dtype to, int jobs,
			  struct ck_diag *d)
{
	uint64_t n = it->shape[1] * it->shape[2];
	uint16_t *slice = ck_mallocarray(n, sizeof(uint16_t));
	void *buf = to == CK_DT_BF16 ? NULL : ck_mallocarray(n, ck_dtype_bits(to) / 8);
	int rc = 0;

	if (!slice || (to != CK_DT_BF16 && !buf))
		rc = ck_fail(d, CK_ENOMEM, "out of memory");
	for (uint64_t e = 0; e < it->shape[0] && !rc; e++) {
		rc = mx_expert(it, e, slice, jobs, d);
		if (rc)
			break;
		if (to == CK_DT_BF16) {
			rc = ck_stw_write(w, slice, n * 2, d);
		} else {
			ck_convert(CK_DT_BF16, slice, to, buf, n);
			rc = ck_stw_write(w, buf, n * (ck_dtype_bits(to) / 8), d);
		}
	}
	free(slice);
	free(buf);
	return rc;
}

/* bias += s * lora_B.bias (PEFT: in fp32, one rounding to the bias dtype). */
static int write_bias(struct ck_stw *w, struct ck_lora_item *it, enum ck_dtype out_dt, struct ck_diag *d)
{
	const struct ck_tensor *src = it->replace ? it->replace : it->base;
	uint64_t n = src->nelem;
	float *b = load_floats(src), *lb = load_floats(it->B), s32 = (float)it->scale;
	void *buf = ck_mallocarray(n, ck_dtype_bits(out_dt) / 8);
	int rc = 0;

	if (!b || !lb || !buf) {
		rc = ck_fail(d, CK_ENOMEM, "out of memory");
		goto out;
	}
	for (uint64_t i = 0; i < n; i++) {
		float dl = lb[i] * s32;
		if (fabsf(dl) > it->max_delta)
			it->max_delta = fabsf(dl);
		b[i] = b[i] + dl;
		if (!isfinite(b[i])) {
			rc = ck_fail(d, CK_EINVAL, "merged tensor '%s': non-finite value", it->base->name);
			goto out;
		}
	}
	ck_convert(CK_DT_F32, b, out_dt, buf, n);
	rc = ck_stw_write(w, buf, n * (ck_dtype_bits(out_dt) / 8), d);
out:
	free(b);
	free(lb);
	free(buf);
	return rc;
}

static int write_merged(struct ck_stw *w, struct ck_lora_item *it, enum ck_dtype out_dt, int jobs,
			int grouped, struct ck_diag *d)
{
	const struct ck_tensor *src = it->replace ? it->replace : it->base;
	struct job j = { .it = it, .src = src, .out_dt = out_dt, .s32 = (float)it->scale };
	size_t in_sz = ck_dtype_bits(src->dtype) / 8, out_sz = ck_dtype_bits(out_dt) / 8;
	uint64_t block;
	void *obuf = NULL;
	int rc = 0;

	if (it->op == CK_LOP_BIAS)
		return write_bias(w, it, out_dt, d);
	j.R = it->op == CK_LOP_EXPERTS ? it->shape[0] * it->shape[1] : it->shape[0];
	j.C = it->shape[it->ndim - 1];
	j.jobs = jobs;
	j.r = it->r;
	j.rE = it->r * it->E;
	j.A = load_floats(it->A);
	j.B = load_floats(it->B);
	if (!j.A || !j.B)
		goto nomem;
	if (it->mag && !(j.mag = load_floats(it->mag)))
		goto nomem;
	/* Factors read along columns get a transposed copy: B^T [cols of B][rows of B]. */
	if ((it->op == CK_LOP_LINEAR && it->fifo) || it->op == CK_LOP_EMBED ||
	    (it->op == CK_LOP_EXPERTS && it->layout == CK_MOE_STANDARD)) {
		uint64_t br = it->B->shape[0], bc = it->B->shape[1];
		j.Bt = ck_mallocarray(it->B->nelem, sizeof(float));
		if (!j.Bt)
			goto nomem;
		for (uint64_t a = 0; a < br; a++)
			for (uint64_t b = 0; b < bc; b++)
				j.Bt[b * br + a] = j.B[a * bc + b];
	}
	block = BLOCK_ELEMS / j.C ? BLOCK_ELEMS / j.C : 1;
	if (block > j.R)
		block = j.R;
	if (it->mx_scales) {
		/* One expert per block: it is dequantized whole. */
		block = it->shape[1];
		j.slice = ck_mallocarray(block * j.C, sizeof(uint16_t));
		if (!j.slice)
			goto nomem;
	}
	j.w = ck_mallocarray(block * j.C, sizeof(float));
	obuf = ck_mallocarray(block * j.C, out_sz);
	if (!j.w || !obuf)
		goto nomem;
	for (uint64_t r0 = 0; r0 < j.R && !rc; r0 += block) {
		uint64_t n = j.R - r0 < block ? j.R - r0 : block;
		const uint8_t *p = it->mx_scales ? NULL : src->data + r0 * j.C * in_sz;
		j.r0 = r0;
		j.nrows = n;
		if (it->mx_scales) {
			rc = mx_expert(it, r0 / block, j.slice, jobs, d);
			if (rc)
				break;
			ck_bf16_to_f32_n(j.slice, j.w, n * j.C);
		} else {
			ck_convert(src->dtype, p, CK_DT_F32, j.w, n * j.C);
		}
		rc = run_block(&j, jobs, grouped, d);
		if (!rc && j.bad)
			rc = ck_fail(d, CK_EINVAL, "merged tensor '%s': non-finite value (the adapter overflows "
				     "the base dtype)", it->out_name);
		if (!rc) {
			ck_convert(CK_DT_F32, j.w, out_dt, obuf, n * j.C);
			rc = ck_stw_write(w, obuf, n * j.C * out_sz, d);
		}
		if (p)
			ck_model_done_range(p, n * j.C * in_sz);
	}
	it->max_delta = j.max_delta;
	goto out;
nomem:
	rc = ck_fail(d, CK_ENOMEM, "out of memory");
out:
	free(j.A);
	free(j.B);
	free(j.Bt);
	free(j.mag);
	free(j.w);
	free(j.slice);
	free(obuf);
	return rc;
}

/* An unmerged tensor whose dtype changes, or a replacement: convert in chunks. */
static int write_converted(struct ck_stw *w, const struct ck_tensor *t, enum ck_dtype to, struct ck_diag *d)
{
	enum { CHUNK = 1 << 20 };
	size_t in_sz = ck_dtype_bits(t->dtype) / 8, out_sz = ck_dtype_bits(to) / 8;
	void *buf = ck_mallocarray(CHUNK, out_sz);
	int rc = 0;

	if (!buf)
		return ck_fail(d, CK_ENOMEM, "out of memory");
	for (uint64_t i = 0; i < t->nelem && !rc; i += CHUNK) {
		size_t n = t->nelem - i < CHUNK ? (size_t)(t->nelem - i) : CHUNK;
		ck_convert(t->dtype, t->data + i * in_sz, to, buf, n);
		rc = ck_stw_write(w, buf, n * out_sz, d);
	}
	free(buf);
	return rc;
}

int ck_lora_write(struct ck_lora_plan *p, const struct ck_model *base, struct ck_out *o,
		  uint64_t shard_size, enum ck_dtype out_dtype, int jobs, struct ck_diag *d)
{
	struct ck_stw_tensor *plan = ck_calloc(p->nitems, sizeof(*plan));
	struct ck_stw *w = NULL;
	int grouped = p->cfg.b_layout == CK_LORA_B_GROUPED;
	size_t n = 0;
	int rc;

	if (!plan)
		return ck_fail(d, CK_ENOMEM, "out of memory");
	for (size_t i = 0; i < p->nitems; i++) {
		const struct ck_lora_item *it = &p->items[i];
		enum ck_dtype dt = it->mx_scales ? CK_DT_BF16 : it->base->dtype;
		if (it->drop)
			continue;
		plan[n].name = it->out_name;
		plan[n].dtype = out_dtype != CK_DT_UNKNOWN && ck_dtype_is_float(dt) ? out_dtype : dt;
		plan[n].ndim = it->ndim;
		memcpy(plan[n].shape, it->shape, sizeof(it->shape));
		plan[n++].user = i;
	}
	rc = ck_stw_plan(&w, o, plan, n, shard_size, NULL, NULL, 0, d);
	for (size_t k = 0; !rc && k < ck_stw_count(w); k++) {
		const struct ck_stw_tensor *pt = ck_stw_tensor(w, k);
		struct ck_lora_item *it = &p->items[pt->user];
		const struct ck_tensor *t = it->base;

		if (it->op != CK_LOP_NONE)
			rc = write_merged(w, it, pt->dtype, jobs, grouped, d);
		else if (it->mx_scales)
			rc = write_mx_plain(w, it, pt->dtype, jobs, d);
		else if (it->replace)
			rc = write_converted(w, it->replace, pt->dtype, d);
		else if (pt->dtype == t->dtype)
			rc = ck_stw_copy_fd(w, ck_model_file_fd(base, t->file), t->offset, t->nbytes, d);
		else
			rc = write_converted(w, t, pt->dtype, d);
	}
	if (!rc)
		rc = ck_stw_finish(w, d);
	ck_stw_free(w);
	free(plan);
	return rc;
}
