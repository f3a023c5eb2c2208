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
#include "../quant/bnb.h"
#include "../quant/mxfp4.h"
#include "../libtensor/job.h"

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
	uint8_t *qblocks;		/* requant: the expert's new blocks */
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
	/* Read once: kept, the adapter's pages grew RSS with every layer merged. */
	ck_model_done(t);
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

#define GROUP 4	/* rows that share the factor rows v[k] and go through the kernel together */
#define RCHUNK 64	/* rows whose groups share one pass over a column tile */
#define CTILE 256	/* columns per tile: r x 1 KB of factor rows stay in cache */
#define LANES 8

/*
 * acc[i][c] = sum over k (in order, from 0) of u[k][i] * v[k][c], for i < nr;
 * each element the same chain whatever nr is: the grouping only lets one
 * load of v[k][c..c+8) serve four rows.
 *
 * PyTorch's CPU matmul (MKL / oneDNN sgemm) sums B@A over k in order as a
 * chain of fused multiply-adds: acc = fma(b_k, a_k, acc) from acc = 0.  We
 * do the same, explicitly (fmaf; -ffp-contract=off only forbids the
 * compiler from fusing behind our back), so d matches PEFT's bit for bit
 * instead of differing in the last fp32 bit, which shows after a
 * cancellation in W + d.  With AVX2+FMA the chains of 4 rows x 8 columns
 * run in vector registers; elsewhere the same chains run through fmaf.
 */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define HAVE_FMA_KERNEL 1

__attribute__((target("avx2,fma")))
static void kernel_avx2(int nr, uint64_t r, const float *u, const float *const *v, uint64_t c0, uint64_t c1,
			float *acc, uint64_t ldc)
{
	uint64_t c = c0;

	/* 4 rows x 16 columns: eight accumulators, two loads and four broadcasts per k */
	for (; c + 2 * LANES <= c1; c += 2 * LANES) {
		__m256 a00 = _mm256_setzero_ps(), a01 = _mm256_setzero_ps();
		__m256 a10 = _mm256_setzero_ps(), a11 = _mm256_setzero_ps();
		__m256 a20 = _mm256_setzero_ps(), a21 = _mm256_setzero_ps();
		__m256 a30 = _mm256_setzero_ps(), a31 = _mm256_setzero_ps();
		for (uint64_t k = 0; k < r; k++) {
			const float *uk = u + k * GROUP;
			__m256 x0 = _mm256_loadu_ps(v[k] + c), x1 = _mm256_loadu_ps(v[k] + c + LANES);
			__m256 b0 = _mm256_broadcast_ss(uk), b1 = _mm256_broadcast_ss(uk + 1);
			__m256 b2 = _mm256_broadcast_ss(uk + 2), b3 = _mm256_broadcast_ss(uk + 3);
			a00 = _mm256_fmadd_ps(b0, x0, a00);
			a01 = _mm256_fmadd_ps(b0, x1, a01);
			a10 = _mm256_fmadd_ps(b1, x0, a10);
			a11 = _mm256_fmadd_ps(b1, x1, a11);
			a20 = _mm256_fmadd_ps(b2, x0, a20);
			a21 = _mm256_fmadd_ps(b2, x1, a21);
			a30 = _mm256_fmadd_ps(b3, x0, a30);
			a31 = _mm256_fmadd_ps(b3, x1, a31);
		}
		{
			float out[GROUP][2 * LANES];
			_mm256_storeu_ps(out[0], a00);
			_mm256_storeu_ps(out[0] + LANES, a01);
			_mm256_storeu_ps(out[1], a10);
			_mm256_storeu_ps(out[1] + LANES, a11);
			_mm256_storeu_ps(out[2], a20);
			_mm256_storeu_ps(out[2] + LANES, a21);
			_mm256_storeu_ps(out[3], a30);
			_mm256_storeu_ps(out[3] + LANES, a31);
			for (int i = 0; i < nr; i++)
				memcpy(acc + (uint64_t)i * ldc + c, out[i], sizeof(out[i]));
		}
	}
	for (; c + LANES <= c1; c += LANES) {
		__m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
		__m256 a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
		for (uint64_t k = 0; k < r; k++) {
			const float *uk = u + k * GROUP;
			__m256 x = _mm256_loadu_ps(v[k] + c);
			a0 = _mm256_fmadd_ps(_mm256_broadcast_ss(uk), x, a0);
			a1 = _mm256_fmadd_ps(_mm256_broadcast_ss(uk + 1), x, a1);
			a2 = _mm256_fmadd_ps(_mm256_broadcast_ss(uk + 2), x, a2);
			a3 = _mm256_fmadd_ps(_mm256_broadcast_ss(uk + 3), x, a3);
		}
		{
			float out[GROUP][LANES];
			_mm256_storeu_ps(out[0], a0);
			_mm256_storeu_ps(out[1], a1);
			_mm256_storeu_ps(out[2], a2);
			_mm256_storeu_ps(out[3], a3);
			for (int i = 0; i < nr; i++)
				memcpy(acc + (uint64_t)i * ldc + c, out[i], sizeof(out[i]));
		}
	}
	for (; c < c1; c++)
		for (int i = 0; i < nr; i++) {
			float x = 0.0f;
			for (uint64_t k = 0; k < r; k++)
				x = fmaf(u[k * GROUP + (uint64_t)i], v[k][c], x);
			acc[(uint64_t)i * ldc + c] = x;
		}
}
#endif

static void kernel(int nr, uint64_t r, const float *u, const float *const *v, uint64_t c0, uint64_t c1,
		   float *acc, uint64_t ldc)
{
#ifdef HAVE_FMA_KERNEL
	static int have = -1;
	if (have < 0) {
		__builtin_cpu_init();
		have = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
	}
	if (have) {
		kernel_avx2(nr, r, u, v, c0, c1, acc, ldc);
		return;
	}
#endif
	for (uint64_t c = c0; c < c1; c++)
		for (int i = 0; i < nr; i++) {
			float x = 0.0f;
			for (uint64_t k = 0; k < r; k++)
				x = fmaf(u[k * GROUP + (uint64_t)i], v[k][c], x);
			acc[(uint64_t)i * ldc + c] = x;
		}
}

/* The factors of row gr: u[k*GROUP + i] for this row (slot i), v[k] shared by its group. */
static void factors(const struct job *j, uint64_t gr, int i, int grouped, float *u, const float **v)
{
	const struct ck_lora_item *it = j->it;
	uint64_t r = j->r;

	switch (it->op) {
	case CK_LOP_LINEAR:
		for (uint64_t k = 0; k < r; k++) {
			if (!it->fifo) {
				u[k * GROUP + (uint64_t)i] = j->B[gr * r + k];
				v[k] = j->A + k * j->C;
			} else {
				u[k * GROUP + (uint64_t)i] = j->A[k * j->R + gr];
				v[k] = j->Bt + k * j->C;
			}
		}
		break;
	case CK_LOP_EMBED:
		for (uint64_t k = 0; k < r; k++) {
			u[k * GROUP + (uint64_t)i] = j->A[k * j->R + gr];
			v[k] = j->Bt + k * j->C;
		}
		break;
	case CK_LOP_EXPERTS:
	case CK_LOP_PEREXPERT: {
		uint64_t d1 = it->shape[1], e = gr / d1, x = gr % d1;
		for (uint64_t k = 0; k < r; k++) {
			/* PEFT reads lora_B expert-fastest; old Unsloth packed it expert-major. */
			uint64_t col = grouped ? e * r + k : k * it->E + e;
			if (it->layout == CK_MOE_STANDARD) {
				u[k * GROUP + (uint64_t)i] = j->A[(e * r + k) * d1 + x];
				v[k] = j->Bt + col * j->C;
			} else {
				u[k * GROUP + (uint64_t)i] = j->B[x * j->rE + col];
				v[k] = j->A + (e * r + k) * j->C;
			}
		}
		break;
	}
	default:
		break;
	}
}

/* BF16 round to nearest even and back, for finite x (an Inf or NaN sum is caught later). */
static inline float bf16_round(float x)
{
	uint32_t u;
	memcpy(&u, &x, 4);
	u = (u + 0x7FFFu + ((u >> 16) & 1u)) & 0xFFFF0000u;
	memcpy(&x, &u, 4);
	return x;
}

/*
 * W' = W + d with d = rn32(acc * s), first rounded to the base dtype for
 * the parameters PEFT casts (rdt BF16/F16; F32 for none).  Tracks max |d|
 * and non-finite results.
 */
static void finish_row(float *w, const float *ac, uint64_t C, float s32, enum ck_dtype rdt, double *maxd,
		       int *bad)
{
	float m = (float)*maxd;
	int finite = 1;

	if (rdt == CK_DT_BF16) {
		for (uint64_t c = 0; c < C; c++) {
			float dl = ac[c] * s32;
			dl = isfinite(dl) ? bf16_round(dl) : dl;
			m = fabsf(dl) > m ? fabsf(dl) : m;
			w[c] = w[c] + dl;
		}
	} else {
		for (uint64_t c = 0; c < C; c++) {
			float dl = through(rdt, ac[c] * s32);
			m = fabsf(dl) > m ? fabsf(dl) : m;
			w[c] = w[c] + dl;
		}
	}
	for (uint64_t c = 0; c < C; c++)
		finite &= isfinite(w[c]);
	if (!finite)
		*bad = 1;
	if (m > *maxd)
		*maxd = m;
}

/* Rows [a, b) of the block: delta, then W' in place in j->w. */
static void do_rows(struct job *j, uint64_t a, uint64_t b, int grouped, float *u, const float **v,
		    float *acc, double *maxd, int *bad)
{
	const struct ck_lora_item *it = j->it;
	uint64_t C = j->C, r = j->r, d1 = it->op == CK_LOP_EXPERTS || it->op == CK_LOP_PEREXPERT ? it->shape[1] : UINT64_MAX;
	enum ck_dtype bdt = it->dtype;

	/*
	 * RCHUNK rows at a time, in groups of up to GROUP rows of one expert;
	 * columns in tiles of CTILE so that the r factor rows of a tile stay in
	 * cache while every group of the chunk uses them.
	 */
	for (uint64_t row = a; row < b;) {
		uint64_t n = b - row < RCHUNK ? b - row : RCHUNK;
		int ng = 0, gn[RCHUNK];
		uint64_t g0[RCHUNK];

		for (uint64_t i = 0; i < n; ng++) {
			uint64_t gr = j->r0 + row + i;
			float *ug = u + (uint64_t)ng * r * GROUP;
			int nr = 0;
			memset(ug, 0, r * GROUP * sizeof(float));
			while (nr < GROUP && i + (uint64_t)nr < n && (gr + (uint64_t)nr) / d1 == gr / d1) {
				factors(j, gr + (uint64_t)nr, nr, grouped, ug, v + (uint64_t)ng * r);
				nr++;
			}
			g0[ng] = i;
			gn[ng] = nr;
			i += (uint64_t)nr;
		}
		for (uint64_t c0 = 0; c0 < C; c0 += CTILE) {
			uint64_t c1 = C - c0 < CTILE ? C : c0 + CTILE;
			for (int g = 0; g < ng; g++)
				kernel(gn[g], r, u + (uint64_t)g * r * GROUP, v + (uint64_t)g * r, c0, c1,
				       acc + g0[g] * C, C);
		}
		for (uint64_t i = 0; i < n; i++, row++) {
			float *w = j->w + row * C, *ac = acc + i * C;
			if (j->mag) {
				/* DoRA: W' = (m / ||W + d||) * (W + d), row-wise. */
				double ss = 0;
				float f;
				for (uint64_t c = 0; c < C; c++) {
					ac[c] = w[c] + ac[c] * j->s32;
					ss += (double)ac[c] * ac[c];
				}
				f = j->mag[j->r0 + row] / (float)sqrt(ss);
				for (uint64_t c = 0; c < C; c++) {
					float o = f * ac[c];
					double dd = fabs((double)o - w[c]);
					if (dd > *maxd)
						*maxd = dd;
					if (!isfinite(o))
						*bad = 1;
					w[c] = o;
				}
				continue;
			}
			finish_row(w, ac, C, j->s32,
				   it->op == CK_LOP_LINEAR || it->op == CK_LOP_PEREXPERT ? CK_DT_F32 : bdt, maxd, bad);
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
	float *u = ck_mallocarray(r ? r * GROUP * RCHUNK : 1, sizeof(float));
	const float **v = ck_mallocarray(r ? r * RCHUNK : 1, sizeof(float *));
	float *acc = ck_mallocarray(C ? C * RCHUNK : 1, sizeof(float));

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

/*
 * Elements [first, first+n) of a bnb weight as floats, rounded through its
 * logical dtype: transformers dequantizes to the model dtype before PEFT
 * merges, so the base PEFT sees is BF16.
 */
static int bnb_rows(const struct ck_lora_item *it, uint64_t first, uint64_t n, float *w, int jobs,
		    struct ck_diag *d)
{
	CK_TRY(ck_bnb_group_dequant(it->bnb, first, n, CK_DT_F32, w, jobs, d));
	if (it->dtype != CK_DT_F32)
		for (uint64_t i = 0; i < n; i++)
			w[i] = through(it->dtype, w[i]);
	return 0;
}

/* An untouched bnb weight: dequantize chunk by chunk into the output dtype. */
static int write_bnb_plain(struct ck_stw *w, const struct ck_lora_item *it, enum ck_dtype to, int jobs,
			   struct ck_diag *d)
{
	enum { CHUNK = 1 << 20 };
	uint64_t n = it->bnb->n;
	size_t sz = ck_dtype_bits(to) / 8;
	void *buf = ck_mallocarray(CHUNK, sz);
	int rc = 0;

	if (!buf)
		return ck_fail(d, CK_ENOMEM, "out of memory");
	for (uint64_t i = 0; i < n && !rc; i += CHUNK) {
		uint64_t k = n - i < CHUNK ? n - i : CHUNK;
		rc = ck_bnb_group_dequant(it->bnb, i, k, to, buf, jobs, d);
		if (!rc)
			rc = ck_stw_write(w, buf, k * sz, d);
	}
	free(buf);
	return rc;
}

/* Trainable tokens: the rows of the weight (or its replacement), some rows taken from the delta. */
static int write_tokens(struct ck_stw *w, struct ck_lora_item *it, enum ck_dtype to, struct ck_diag *d)
{
	const struct ck_tensor *src = it->replace ? it->replace : it->base;
	uint64_t C = it->shape[1], R = it->shape[0], n = it->tt->shape[0];
	size_t in_sz = ck_dtype_bits(src->dtype) / 8, sz = ck_dtype_bits(to) / 8;
	float *row = ck_mallocarray(C, sizeof(float));
	void *buf = ck_mallocarray(C, sz);
	int rc = 0;

	if (!row || !buf)
		rc = ck_fail(d, CK_ENOMEM, "out of memory");
	for (uint64_t i = 0; i < R && !rc; i++) {
		ck_convert(src->dtype, src->data + i * C * in_sz, CK_DT_F32, row, C);
		for (uint64_t k = 0; k < n; k++)
			if ((uint64_t)it->tt_ids[k] == i) {
				/* last one wins, as index_copy; the config refuses repeats anyway */
				for (uint64_t c = 0; c < C; c++) {
					float v = through(it->dtype, ck_load_float(it->tt->dtype, it->tt->data, k * C + c));
					if (fabsf(v - row[c]) > it->max_delta)
						it->max_delta = fabsf(v - row[c]);
					row[c] = v;
				}
			}
		ck_convert(CK_DT_F32, row, to, buf, C);
		rc = ck_stw_write(w, buf, C * sz, d);
	}
	free(row);
	free(buf);
	return rc;
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
	j.R = it->op == CK_LOP_EXPERTS || it->op == CK_LOP_PEREXPERT ? it->shape[0] * it->shape[1] : it->shape[0];
	j.C = it->shape[it->ndim - 1];
	j.jobs = jobs;
	j.r = it->r;
	j.rE = it->r * it->E;
	if (it->op == CK_LOP_PEREXPERT) {
		/* Stack the experts as a grouped_by_expert pair: A [rE, in], B [out, rE]. */
		uint64_t d1 = it->shape[1], d2 = it->shape[2], r = it->r, E = it->E;
		j.A = ck_calloc(j.rE * d1, sizeof(float));
		j.B = ck_calloc(d2 * j.rE, sizeof(float));
		if (!j.A || !j.B)
			goto nomem;
		for (uint64_t e = 0; e < E; e++) {
			float *a, *b;
			if (!it->pA[e])
				continue;
			a = load_floats(it->pA[e]);
			b = load_floats(it->pB[e]);
			if (!a || !b) {
				free(a);
				free(b);
				goto nomem;
			}
			memcpy(j.A + e * r * d1, a, r * d1 * sizeof(float));
			for (uint64_t y = 0; y < d2; y++)
				memcpy(j.B + y * j.rE + e * r, b + y * r, r * sizeof(float));
			free(a);
			free(b);
		}
		grouped = 1;
	} else {
		j.A = load_floats(it->A);
		j.B = load_floats(it->B);
	}
	if (!j.A || !j.B)
		goto nomem;
	if (it->mag && !(j.mag = load_floats(it->mag)))
		goto nomem;
	/* Factors read along columns get a transposed copy: B^T [cols of B][rows of B]. */
	if ((it->op == CK_LOP_LINEAR && it->fifo) || it->op == CK_LOP_EMBED || it->op == CK_LOP_PEREXPERT ||
	    (it->op == CK_LOP_EXPERTS && it->layout == CK_MOE_STANDARD)) {
		uint64_t br = it->op == CK_LOP_PEREXPERT ? it->shape[2] : it->B->shape[0];
		uint64_t bc = it->op == CK_LOP_PEREXPERT ? j.rE : it->B->shape[1];
		j.Bt = ck_mallocarray(br * bc, sizeof(float));
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
	if (it->requant) {
		it->stash = ck_malloc(it->mx_scales->nbytes);
		if (!it->stash)
			goto nomem;
		out_sz = 2;	/* BF16, then quantized */
	}
	j.w = ck_mallocarray(block * j.C, sizeof(float));
	obuf = ck_mallocarray(block * j.C, out_sz);
	if (!j.w || !obuf)
		goto nomem;
	if (it->requant && !(j.qblocks = ck_mallocarray(block * j.C / 2 ? block * j.C / 2 : 1, 1)))
		goto nomem;
	for (uint64_t r0 = 0; r0 < j.R && !rc; r0 += block) {
		uint64_t n = j.R - r0 < block ? j.R - r0 : block;
		const uint8_t *p = it->mx_scales || (it->bnb && !it->replace) ? NULL : src->data + r0 * j.C * in_sz;
		j.r0 = r0;
		j.nrows = n;
		if (it->mx_scales) {
			rc = mx_expert(it, r0 / block, j.slice, jobs, d);
			if (rc)
				break;
			ck_bf16_to_f32_n(j.slice, j.w, n * j.C);
		} else if (it->bnb && !it->replace) {
			rc = bnb_rows(it, r0 * j.C, n * j.C, j.w, jobs, d);
			if (rc)
				break;
		} else {
			ck_convert(src->dtype, p, CK_DT_F32, j.w, n * j.C);
		}
		rc = run_block(&j, jobs, grouped, d);
		if (!rc && j.bad)
			rc = ck_fail(d, CK_EINVAL, "merged tensor '%s': non-finite value (the adapter overflows "
				     "the base dtype)", it->out_name);
		if (!rc && it->requant) {
			/* MXFP4 again, from the BF16 merged expert (as a BF16 checkpoint would be) */
			uint64_t o = it->base->shape[1], g = it->base->shape[2], e = r0 / block;
			struct ck_mx_where wh;
			struct ck_mx_rule rule = CK_MX_RULE_DEFAULT;
			ck_convert(CK_DT_F32, j.w, CK_DT_BF16, obuf, n * j.C);
			rc = ck_mx_quant_slice(obuf, CK_DT_BF16, o, g * CK_MX_BLOCK, 1, rule, j.qblocks,
					       it->stash + e * o * g, jobs, &wh);
			if (rc)
				rc = ck_fail(d, rc, "merged tensor '%s': expert %" PRIu64 ": cannot quantize "
					     "to MXFP4 (non-finite value)", it->out_name, e);
			else
				rc = ck_stw_write(w, j.qblocks, o * g * CK_MX_BLOCK_BYTES, d);
		} else if (!rc) {
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
	free(j.qblocks);
	free(obuf);
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
		enum ck_dtype dt = it->dtype;
		if (it->drop || it->pair)
			continue;
		if (it->requant) {
			/* blocks, then its scales right after: they are made together */
			const struct ck_tensor *b = it->base, *sc = it->mx_scales;
			size_t k;
			plan[n].name = b->name;
			plan[n].dtype = b->dtype;
			plan[n].ndim = b->ndim;
			memcpy(plan[n].shape, b->shape, sizeof(b->shape));
			plan[n++].user = i;
			for (k = 0; k < p->nitems && p->items[k].base != sc; k++)
				;
			plan[n].name = sc->name;
			plan[n].dtype = sc->dtype;
			plan[n].ndim = sc->ndim;
			memcpy(plan[n].shape, sc->shape, sizeof(sc->shape));
			plan[n++].user = k;
			continue;
		}
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

		if (it->pair) {
			if (!it->pair->stash)
				rc = ck_fail(d, CK_EIO, "tensor '%s': written before its blocks", t->name);
			else
				rc = ck_stw_write(w, it->pair->stash, t->nbytes, d);
		} else if (it->op != CK_LOP_NONE)
			rc = write_merged(w, it, pt->dtype, jobs, grouped, d);
		else if (it->tt)
			rc = write_tokens(w, it, pt->dtype, d);
		else if (it->mx_scales)
			rc = write_mx_plain(w, it, pt->dtype, jobs, d);
		else if (it->bnb && !it->replace)
			rc = write_bnb_plain(w, it, pt->dtype, jobs, d);
		else if (it->replace)
			rc = ck_job_convert(w, it->replace, pt->dtype, d);
		else if (pt->dtype == t->dtype)
			rc = ck_job_copy(w, base, t, d);
		else
			rc = ck_job_convert(w, t, pt->dtype, d);
	}
	if (!rc)
		rc = ck_stw_finish(w, d);
	ck_stw_free(w);
	free(plan);
	return rc;
}
