/*
 * bnb.c - bitsandbytes 4-bit quantization: tables, block loops, threads,
 * and the reader of a quantized tensor group (see bnb.h).
 */
#include <cjson/cJSON.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "bnb.h"
#include "../libtensor/dtype.h"
#include "../libtensor/model.h"

/*
 * The tables as bitsandbytes defines them (functional.get_4bit_type,
 * create_dynamic_map); every literal is an exact float32.  FP4 code 8 is
 * +0.0 as in get_4bit_type (the stored quant_map) and bnb's CPU kernels;
 * bnb's CUDA kernel computes lut[0] * -1 = -0.0 there.  The two are equal
 * as numbers; we follow the library we can run.
 */
const float ck_bnb_nf4_table[16] = {
	-1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
	-0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
	0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
	0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f,
};
const float ck_bnb_fp4_table[16] = {
	0.0f, 0.0052083334885537624f, 0.6666666865348816f, 1.0f,
	0.3333333432674408f, 0.5f, 0.1666666716337204f, 0.25f,
	0.0f, -0.0052083334885537624f, -0.6666666865348816f, -1.0f,
	-0.3333333432674408f, -0.5f, -0.1666666716337204f, -0.25f,
};
const float ck_bnb_nf4_thresholds[15] = {
	-0.8480963706970215f, -0.6106328964233398f, -0.4599952697753906f, -0.33967941999435425f,
	-0.23460739850997925f, -0.13791173696517944f, -0.045525018125772476f, 0.03979014977812767f,
	0.120255246758461f, 0.2035212516784668f, 0.2920137643814087f, 0.3893125355243683f,
	0.5016634464263916f, 0.6427869200706482f, 0.8614784479141235f,
};
const float ck_bnb_dynamic_map[256] = {
	-0.992968738079071f, -0.9789062738418579f, -0.96484375f, -0.9507812261581421f,
	-0.936718761920929f, -0.922656238079071f, -0.9085937738418579f, -0.89453125f,
	-0.8804687261581421f, -0.866406261920929f, -0.852343738079071f, -0.8382812738418579f,
	-0.82421875f, -0.8101562261581421f, -0.796093761920929f, -0.782031238079071f,
	-0.7679687738418579f, -0.75390625f, -0.7398437261581421f, -0.725781261920929f,
	-0.7117187976837158f, -0.6976562738418579f, -0.68359375f, -0.6695312261581421f,
	-0.655468761920929f, -0.6414062976837158f, -0.6273437738418579f, -0.61328125f,
	-0.5992187261581421f, -0.585156261920929f, -0.5710937976837158f, -0.5570312738418579f,
	-0.54296875f, -0.5289062261581421f, -0.5148437023162842f, -0.500781238079071f,
	-0.48671871423721313f, -0.47265625f, -0.4585937261581421f, -0.44453126192092896f,
	-0.43046873807907104f, -0.4164062440395355f, -0.40234375f, -0.3882812261581421f,
	-0.37421876192092896f, -0.36015623807907104f, -0.3460937440395355f, -0.33203125f,
	-0.3179687261581421f, -0.30390626192092896f, -0.28984373807907104f, -0.2757812738418579f,
	-0.26171875f, -0.24765624105930328f, -0.23359374701976776f, -0.21953125298023224f,
	-0.20546874403953552f, -0.19140625f, -0.17734375596046448f, -0.16328124701976776f,
	-0.14921875298023224f, -0.13515624403953552f, -0.12109375f, -0.10703125596046448f,
	-0.09859374910593033f, -0.09578125923871994f, -0.09296875447034836f, -0.09015624970197678f,
	-0.08734375238418579f, -0.08453124761581421f, -0.08171875774860382f, -0.07890625298023224f,
	-0.07609374821186066f, -0.07328125089406967f, -0.07046874612569809f, -0.0676562562584877f,
	-0.06484375149011612f, -0.062031250447034836f, -0.05921875312924385f, -0.05640624836087227f,
	-0.053593751043081284f, -0.05078125f, -0.047968748956918716f, -0.04515625163912773f,
	-0.04234374687075615f, -0.039531249552965164f, -0.03671875223517418f, -0.033906251192092896f,
	-0.031093750149011612f, -0.028281250968575478f, -0.025468749925494194f, -0.02265625074505806f,
	-0.019843751564621925f, -0.017031250521540642f, -0.014218750409781933f, -0.011406250298023224f,
	-0.009718749672174454f, -0.009156249463558197f, -0.008593750186264515f, -0.008031249977648258f,
	-0.0074687497690320015f, -0.006906250026077032f, -0.006343749817460775f, -0.005781250074505806f,
	-0.0052187503315508366f, -0.0046562496572732925f, -0.004093749914318323f, -0.0035312497057020664f,
	-0.002968749962747097f, -0.002406249986961484f, -0.001843750011175871f, -0.001281249918974936f,
	-0.0009437500848434865f, -0.0008312499849125743f, -0.0007187500596046448f, -0.0006062500760890543f,
	-0.000493750034365803f, -0.0003812500217463821f, -0.0002687500382307917f, -0.00015625001105945557f,
	-8.874999912222847e-05f, -6.625000241911039e-05f, -4.374999844003469e-05f, -2.1249998098937795e-05f,
	-7.749999895168003e-06f, -3.250000190746505e-06f, -5.500000384017767e-07f, 0.0f,
	5.500000384017767e-07f, 3.250000190746505e-06f, 7.749999895168003e-06f, 2.1249998098937795e-05f,
	4.374999844003469e-05f, 6.625000241911039e-05f, 8.874999912222847e-05f, 0.00015625001105945557f,
	0.0002687500382307917f, 0.0003812500217463821f, 0.000493750034365803f, 0.0006062500760890543f,
	0.0007187500596046448f, 0.0008312499849125743f, 0.0009437500848434865f, 0.001281249918974936f,
	0.001843750011175871f, 0.002406249986961484f, 0.002968749962747097f, 0.0035312497057020664f,
	0.004093749914318323f, 0.0046562496572732925f, 0.0052187503315508366f, 0.005781250074505806f,
	0.006343749817460775f, 0.006906250026077032f, 0.0074687497690320015f, 0.008031249977648258f,
	0.008593750186264515f, 0.009156249463558197f, 0.009718749672174454f, 0.011406250298023224f,
	0.014218750409781933f, 0.017031250521540642f, 0.019843751564621925f, 0.02265625074505806f,
	0.025468749925494194f, 0.028281250968575478f, 0.031093750149011612f, 0.033906251192092896f,
	0.03671875223517418f, 0.039531249552965164f, 0.04234374687075615f, 0.04515625163912773f,
	0.047968748956918716f, 0.05078125f, 0.053593751043081284f, 0.05640624836087227f,
	0.05921875312924385f, 0.062031250447034836f, 0.06484375149011612f, 0.0676562562584877f,
	0.07046874612569809f, 0.07328125089406967f, 0.07609374821186066f, 0.07890625298023224f,
	0.08171875774860382f, 0.08453124761581421f, 0.08734375238418579f, 0.09015624970197678f,
	0.09296875447034836f, 0.09578125923871994f, 0.09859374910593033f, 0.10703125596046448f,
	0.12109375f, 0.13515624403953552f, 0.14921875298023224f, 0.16328124701976776f,
	0.17734375596046448f, 0.19140625f, 0.20546874403953552f, 0.21953125298023224f,
	0.23359374701976776f, 0.24765624105930328f, 0.26171875f, 0.2757812738418579f,
	0.28984373807907104f, 0.30390626192092896f, 0.3179687261581421f, 0.33203125f,
	0.3460937440395355f, 0.36015623807907104f, 0.37421876192092896f, 0.3882812261581421f,
	0.40234375f, 0.4164062440395355f, 0.43046873807907104f, 0.44453126192092896f,
	0.4585937261581421f, 0.47265625f, 0.48671871423721313f, 0.500781238079071f,
	0.5148437023162842f, 0.5289062261581421f, 0.54296875f, 0.5570312738418579f,
	0.5710937976837158f, 0.585156261920929f, 0.5992187261581421f, 0.61328125f,
	0.6273437738418579f, 0.6414062976837158f, 0.655468761920929f, 0.6695312261581421f,
	0.68359375f, 0.6976562738418579f, 0.7117187976837158f, 0.725781261920929f,
	0.7398437261581421f, 0.75390625f, 0.7679687738418579f, 0.782031238079071f,
	0.796093761920929f, 0.8101562261581421f, 0.82421875f, 0.8382812738418579f,
	0.852343738079071f, 0.866406261920929f, 0.8804687261581421f, 0.89453125f,
	0.9085937738418579f, 0.922656238079071f, 0.936718761920929f, 0.9507812261581421f,
	0.96484375f, 0.9789062738418579f, 0.992968738079071f, 1.0f,
};

const char *ck_bnb_type_name(enum ck_bnb_type t)
{
	return t == CK_BNB_FP4 ? "fp4" : "nf4";
}

/* ---- a tiny parallel for over blocks ------------------------------------- */

typedef void (*par_fn)(void *ctx, uint64_t lo, uint64_t hi);

struct par_job {
	par_fn fn;
	void *ctx;
	uint64_t lo, hi;
};

static void *par_worker(void *arg)
{
	struct par_job *j = arg;
	j->fn(j->ctx, j->lo, j->hi);
	return NULL;
}

/*
 * Run fn over [0, n) split in nthreads contiguous ranges.  A thread that
 * cannot be started is run inline, so the work is always done.
 */
static void par_for(uint64_t n, int nthreads, par_fn fn, void *ctx)
{
	enum { MAXT = 128 };
	pthread_t th[MAXT];
	struct par_job jobs[MAXT];
	int started[MAXT];
	int t;

	if (nthreads > MAXT)
		nthreads = MAXT;
	if ((uint64_t)nthreads > n)
		nthreads = (int)n;
	if (nthreads <= 1) {
		fn(ctx, 0, n);
		return;
	}
	for (t = 0; t < nthreads; t++) {
		jobs[t] = (struct par_job){ fn, ctx, n * (uint64_t)t / (uint64_t)nthreads,
					    n * (uint64_t)(t + 1) / (uint64_t)nthreads };
		started[t] = t > 0 && !pthread_create(&th[t], NULL, par_worker, &jobs[t]);
	}
	fn(ctx, jobs[0].lo, jobs[0].hi);
	for (t = 1; t < nthreads; t++) {
		if (started[t])
			pthread_join(th[t], NULL);
		else
			fn(ctx, jobs[t].lo, jobs[t].hi);
	}
}

/* ---- loading source elements ---------------------------------------------- */

/*
 * The hot loops use GCC/Clang vector extensions on 4 floats (SSE2/NEON
 * width, lowered to scalar code elsewhere): element-wise IEEE operations and
 * comparisons, so the results are the scalar ones bit for bit.
 */
typedef float v4f __attribute__((vector_size(16)));
typedef int32_t v4i __attribute__((vector_size(16)));
typedef uint32_t v4u __attribute__((vector_size(16)));
typedef uint16_t v4h __attribute__((vector_size(8)));

/* n elements of src from index i as float32, into out (a block at a time). */
static void load_floats(enum ck_dtype dt, const uint8_t *src, uint64_t i, size_t n, float *out)
{
	size_t k = 0;

	if (dt == CK_DT_BF16) {
		for (; k + 4 <= n; k += 4) {
			v4h h;
			v4u u;
			memcpy(&h, src + 2 * (i + k), 8);
			u = __builtin_convertvector(h, v4u) << 16;
			memcpy(&out[k], &u, 16);
		}
		for (; k < n; k++) {
			uint16_t h;
			uint32_t u;
			memcpy(&h, src + 2 * (i + k), 2);
			u = (uint32_t)h << 16;
			memcpy(&out[k], &u, 4);
		}
	} else if (dt == CK_DT_F16) {
		for (; k < n; k++) {
			uint16_t h;
			memcpy(&h, src + 2 * (i + k), 2);
			out[k] = ck_f16_to_f32(h);
		}
	} else {
		memcpy(out, src + 4 * i, 4 * n);
	}
}

/*
 * max |x| ignoring NaN, like CUDA's fmaxf (a NaN never compares greater).
 * Max is exact, so the lane-wise order gives the sequential result.
 */
static float max_abs(const float *x, size_t n)
{
	const v4i absmask = { 0x7fffffff, 0x7fffffff, 0x7fffffff, 0x7fffffff };
	v4f m4 = { 0, 0, 0, 0 };
	float m = 0.0f;
	size_t k = 0;

	for (; k + 4 <= n; k += 4) {
		v4f a;
		v4i gt;
		memcpy(&a, x + k, 16);
		a = (v4f)((v4i)a & absmask);
		gt = a > m4;
		m4 = (v4f)(((v4i)a & gt) | ((v4i)m4 & ~gt));
	}
	for (int j = 0; j < 4; j++)
		m = m4[j] > m ? m4[j] : m;
	for (; k < n; k++) {
		float a = fabsf(x[k]);
		m = a > m ? a : m;
	}
	return m;
}

/* q[k] = NF4 code of x[k] * r: the count of thresholds strictly below. */
static void nf4_codes(const float *x, float r, uint8_t *q, size_t n)
{
	size_t k = 0;

	for (; k + 4 <= n; k += 4) {
		v4f v;
		v4i s = { 0, 0, 0, 0 };
		memcpy(&v, x + k, 16);
		v = v * r;
		for (int i = 0; i < 15; i++)
			s -= v > ((v4f){ 0, 0, 0, 0 } + ck_bnb_nf4_thresholds[i]);
		for (int j = 0; j < 4; j++)
			q[k + j] = (uint8_t)s[j];
	}
	for (; k < n; k++)
		q[k] = ck_bnb_nf4_code(x[k] * r);
}

static float block_absmax(enum ck_dtype dt, const uint8_t *src, uint64_t lo, uint64_t hi)
{
	float buf[256], m = 0.0f;
	for (uint64_t i = lo; i < hi; i += 256) {
		size_t n = hi - i < 256 ? (size_t)(hi - i) : 256;
		float b;
		load_floats(dt, src, i, n, buf);
		b = max_abs(buf, n);
		m = b > m ? b : m;
	}
	return m;
}

/* ---- quantization -------------------------------------------------------- */

struct quant_ctx {
	enum ck_bnb_type type;
	uint64_t bs, n;
	enum ck_dtype dt;
	const uint8_t *src;
	uint8_t *packed;
	float *absmax;
};

/*
 * Blocks [lo, hi).  Blocksizes are even, so a block starts on a byte and
 * only the very last element of an odd-sized tensor shares its byte with a
 * pad (a 0 scaled like the rest of its block).
 */
static void quant_blocks(void *arg, uint64_t lo, uint64_t hi)
{
	const struct quant_ctx *c = arg;
	float x[4096 + 1];
	uint8_t q[4096 + 1];

	for (uint64_t b = lo; b < hi; b++) {
		uint64_t s = b * c->bs, e = s + c->bs < c->n ? s + c->bs : c->n;
		size_t n = (size_t)(e - s), k;
		float am, r;

		load_floats(c->dt, c->src, s, n, x);
		x[n] = 0.0f;			/* the pad of an odd tail */
		am = max_abs(x, n);
		r = 1.0f / am;
		c->absmax[b] = am;
		if (c->type == CK_BNB_NF4)
			nf4_codes(x, r, q, n + (n & 1));
		else
			for (k = 0; k < n + (n & 1); k++)
				q[k] = ck_bnb_fp4_code(x[k] * r);
		for (k = 0; k < n; k += 2)
			c->packed[(s + k) / 2] = (uint8_t)(q[k] << 4 | q[k + 1]);
	}
}

int ck_bnb_quantize(enum ck_bnb_type type, uint64_t blocksize, enum ck_dtype src_dtype,
		    const void *src, uint64_t n, uint8_t *packed, float *absmax, int nthreads,
		    struct ck_diag *d)
{
	struct quant_ctx c = { type, blocksize, n, src_dtype, src, packed, absmax };

	if (!ck_bnb_blocksize_ok(blocksize))
		return ck_fail(d, CK_EUNSUPPORTED, "blocksize %" PRIu64 " is not one of 32, 64 ... 4096",
			       blocksize);
	if (src_dtype != CK_DT_F32 && src_dtype != CK_DT_F16 && src_dtype != CK_DT_BF16)
		return ck_fail(d, CK_EUNSUPPORTED, "cannot quantize %s", ck_dtype_name(src_dtype));
	par_for((n + blocksize - 1) / blocksize, nthreads, quant_blocks, &c);
	return 0;
}

void ck_bnb_absmax(uint64_t blocksize, enum ck_dtype src_dtype, const void *src, uint64_t n,
		   float *absmax)
{
	for (uint64_t b = 0, s = 0; s < n; b++, s += blocksize)
		absmax[b] = block_absmax(src_dtype, src, s, s + blocksize < n ? s + blocksize : n);
}

void ck_bnb_absmax_t(uint64_t blocksize, enum ck_dtype src_dtype, const void *src, uint64_t A,
		     uint64_t B, float *absmax)
{
	uint64_t per = A / blocksize;
	float buf[256];

	memset(absmax, 0, (size_t)(per * B) * sizeof(float));
	for (uint64_t i = 0; i < A; i++)
		for (uint64_t j0 = 0; j0 < B; j0 += 256) {
			size_t n = B - j0 < 256 ? (size_t)(B - j0) : 256;
			float *am = absmax + j0 * per + i / blocksize;
			load_floats(src_dtype, src, i * B + j0, n, buf);
			for (size_t j = 0; j < n; j++) {
				float a = fabsf(buf[j]);
				am[j * per] = a > am[j * per] ? a : am[j * per];
			}
		}
}

float ck_bnb_mean(const float *absmax, uint64_t nb)
{
	double sum = 0.0;

	if (!nb)
		return 0.0f;
	for (uint64_t i = 0; i < nb; i++)
		sum += absmax[i];
	return (float)(sum / (double)nb);
}

void ck_bnb_nested_quantize(const float *absmax, uint64_t nb, float offset, const float *map,
			    uint8_t *q, float *nested_absmax)
{
	for (uint64_t s = 0, g = 0; s < nb; s += CK_BNB_NESTED_BLOCKSIZE, g++) {
		uint64_t e = s + CK_BNB_NESTED_BLOCKSIZE < nb ? s + CK_BNB_NESTED_BLOCKSIZE : nb;
		float m = 0.0f, r;

		for (uint64_t i = s; i < e; i++) {
			float a = fabsf(absmax[i] - offset);
			m = a > m ? a : m;
		}
		nested_absmax[g] = m;
		r = 1.0f / m;
		for (uint64_t i = s; i < e; i++)
			q[i] = ck_bnb_nested_code(map, (absmax[i] - offset) * r);
	}
}

/* ---- dequantization ------------------------------------------------------ */

/*
 * Per block, the 16 possible outputs are computed once (the same float32
 * products an element-wise loop would form) and converted; the elements are
 * then table lookups.
 */
void ck_bnb_dequant_range(enum ck_bnb_type type, uint64_t blocksize, const uint8_t *packed,
			  const float *absmax, uint64_t first, uint64_t count, enum ck_dtype to,
			  void *dst)
{
	const float *table = ck_bnb_table(type);
	uint64_t k = first, end = first + count;
	uint8_t *out = dst;
	size_t osz = to == CK_DT_F32 ? 4 : 2;

	while (k < end) {
		uint64_t b = k / blocksize, be = (b + 1) * blocksize < end ? (b + 1) * blocksize : end;
		float a = absmax[b - first / blocksize];
		float f[16];
		uint16_t h[16];

		for (int q = 0; q < 16; q++)
			f[q] = ck_bnb_dq(table, (uint8_t)q, a);
		if (to == CK_DT_BF16)
			for (int q = 0; q < 16; q++)
				h[q] = ck_f32_to_bf16(f[q]);
		else if (to == CK_DT_F16)
			for (int q = 0; q < 16; q++)
				h[q] = ck_f32_to_f16(f[q]);
		/* an odd start, then whole bytes (two elements), then an odd end */
		if ((k & 1) && k < be) {
			uint8_t q = packed[k / 2] & 15;
			memcpy(out, osz == 4 ? (void *)&f[q] : (void *)&h[q], osz);
			out += osz;
			k++;
		}
		if (osz == 4) {
			for (; k + 1 < be; k += 2, out += 8) {
				uint8_t byte = packed[k / 2];
				memcpy(out, &f[byte >> 4], 4);
				memcpy(out + 4, &f[byte & 15], 4);
			}
		} else {
			for (; k + 1 < be; k += 2, out += 4) {
				uint8_t byte = packed[k / 2];
				memcpy(out, &h[byte >> 4], 2);
				memcpy(out + 2, &h[byte & 15], 2);
			}
		}
		if (k < be) {
			uint8_t q = packed[k / 2] >> 4;
			memcpy(out, osz == 4 ? (void *)&f[q] : (void *)&h[q], osz);
			out += osz;
			k++;
		}
	}
}

/* dst[c][r] = src[r][c] for src [R, C], in 32x32 tiles so both sides stay in cache. */
struct tr_ctx {
	const uint8_t *src;
	void *dst;
	uint64_t R, C;
	size_t es;
};

/* Rows [32*lo, 32*hi) of the source. */
static void tr_part(void *arg, uint64_t lo, uint64_t hi)
{
	const struct tr_ctx *t = arg;
	const uint8_t *src = t->src;
	uint64_t R = t->R, C = t->C;
	enum { T = 32 };

	for (uint64_t r0 = lo * T; r0 < hi * T && r0 < R; r0 += T)
		for (uint64_t c0 = 0; c0 < C; c0 += T) {
			uint64_t r1 = r0 + T < R ? r0 + T : R, c1 = c0 + T < C ? c0 + T : C;
			if (t->es == 2) {
				uint16_t *d = t->dst;
				for (uint64_t r = r0; r < r1; r++)
					for (uint64_t c = c0; c < c1; c++) {
						uint16_t v;
						memcpy(&v, src + 2 * (r * C + c), 2);
						d[c * R + r] = v;
					}
			} else {
				uint32_t *d = t->dst;
				for (uint64_t r = r0; r < r1; r++)
					for (uint64_t c = c0; c < c1; c++) {
						uint32_t v;
						memcpy(&v, src + 4 * (r * C + c), 4);
						d[c * R + r] = v;
					}
			}
		}
}

void ck_bnb_transpose(const void *src, void *dst, uint64_t R, uint64_t C, size_t es, int nthreads)
{
	struct tr_ctx t = { src, dst, R, C, es };
	par_for((R + 31) / 32, nthreads, tr_part, &t);
}

/* ---- Python float repr ----------------------------------------------------- */

size_t ck_bnb_pyrepr(double v, char *buf, size_t cap)
{
	char tmp[40], digits[24];
	int p, exp, nd = 0, neg;
	char *e;

	if (isnan(v))
		return (size_t)snprintf(buf, cap, "NaN");
	if (isinf(v))
		return (size_t)snprintf(buf, cap, v < 0 ? "-Infinity" : "Infinity");
	if (v == 0)
		return (size_t)snprintf(buf, cap, signbit(v) ? "-0.0" : "0.0");
	for (p = 1; p <= 17; p++) {
		snprintf(tmp, sizeof(tmp), "%.*e", p - 1, v);
		if (strtod(tmp, NULL) == v)
			break;
	}
	/* tmp is [-]d[.ddd]e[+-]XX: collect the digits and the exponent */
	neg = tmp[0] == '-';
	for (char *c = tmp + neg; *c && *c != 'e'; c++)
		if (*c >= '0' && *c <= '9')
			digits[nd++] = *c;
	while (nd > 1 && digits[nd - 1] == '0')
		nd--;
	digits[nd] = 0;
	e = strchr(tmp, 'e');
	exp = atoi(e + 1);
	if (exp >= -4 && exp < 16) {
		char o[64];
		size_t n = 0;
		if (neg)
			o[n++] = '-';
		if (exp < 0) {
			o[n++] = '0';
			o[n++] = '.';
			for (int i = 0; i < -exp - 1; i++)
				o[n++] = '0';
			for (int i = 0; i < nd; i++)
				o[n++] = digits[i];
		} else {
			for (int i = 0; i <= exp; i++)
				o[n++] = i < nd ? digits[i] : '0';
			o[n++] = '.';
			if (nd > exp + 1)
				for (int i = exp + 1; i < nd; i++)
					o[n++] = digits[i];
			else
				o[n++] = '0';
		}
		o[n] = 0;
		return (size_t)snprintf(buf, cap, "%s", o);
	}
	return (size_t)snprintf(buf, cap, "%s%c%s%s%se%c%02d", neg ? "-" : "", digits[0],
				nd > 1 ? "." : "", nd > 1 ? digits + 1 : "", "", exp < 0 ? '-' : '+',
				exp < 0 ? -exp : exp);
}

/* ---- a quantized tensor of a checkpoint ----------------------------------- */

static const char *const aux_suffix[] = { ".absmax", ".quant_map", ".nested_absmax",
					  ".nested_quant_map", ".quant_state.bitsandbytes__nf4",
					  ".quant_state.bitsandbytes__fp4" };

bool ck_bnb_is_aux(const char *name)
{
	size_t n = strlen(name);
	for (size_t i = 0; i < CK_ARRAY_SIZE(aux_suffix); i++) {
		size_t k = strlen(aux_suffix[i]);
		if (n > k && !strcmp(name + n - k, aux_suffix[i]))
			return true;
	}
	return false;
}

static const struct ck_tensor *find_aux(const struct ck_model *m, const char *name, const char *suffix)
{
	char buf[1024];
	if ((size_t)snprintf(buf, sizeof(buf), "%s%s", name, suffix) >= sizeof(buf))
		return NULL;
	return ck_model_find(m, buf);
}

bool ck_bnb_is_weight(const struct ck_model *m, const char *name)
{
	return !ck_bnb_is_aux(name) && (find_aux(m, name, aux_suffix[4]) || find_aux(m, name, aux_suffix[5]));
}

/* A JSON number that is an integer in [lo, hi]. */
static bool json_uint(const cJSON *j, double lo, double hi, uint64_t *out)
{
	if (!cJSON_IsNumber(j) || !(j->valuedouble >= lo && j->valuedouble <= hi) ||
	    j->valuedouble != floor(j->valuedouble))
		return false;
	*out = (uint64_t)j->valuedouble;
	return true;
}

static enum ck_dtype torch_dtype(const char *s)
{
	if (!strcmp(s, "bfloat16"))
		return CK_DT_BF16;
	if (!strcmp(s, "float16"))
		return CK_DT_F16;
	if (!strcmp(s, "float32"))
		return CK_DT_F32;
	return CK_DT_UNKNOWN;
}

#define GFAIL(st, ...) ck_fail(d, st, "'%s': tensor '%s': " __VA_ARGS__)

/* The packed quant_state JSON: every key bnb writes, with the right types. */
static int parse_state(const struct ck_model *m, struct ck_bnb_group *g, bool want_fp4,
		       struct ck_diag *d)
{
	const struct ck_tensor *t = g->state;
	const char *path = ck_model_file(m, t->file);
	cJSON *root = NULL;
	const cJSON *it, *qt, *bs, *dt, *sh, *nbs, *ndt, *noff;
	int rc = CK_EINVAL;

	if (t->dtype != CK_DT_U8 || t->ndim != 1)
		return GFAIL(CK_EINVAL, "quant_state is not a 1-D U8 tensor", path, t->name);
	root = cJSON_ParseWithLength((const char *)t->data, t->nbytes);
	if (!root || !cJSON_IsObject(root)) {
		rc = GFAIL(CK_EINVAL, "quant_state is not a JSON object", path, t->name);
		goto out;
	}
	cJSON_ArrayForEach(it, root)
		for (const cJSON *o = it->next; o; o = o->next)
			if (!strcmp(it->string, o->string)) {
				rc = GFAIL(CK_EINVAL, "quant_state has key '%s' twice", path, t->name,
					   it->string);
				goto out;
			}
	qt = cJSON_GetObjectItemCaseSensitive(root, "quant_type");
	bs = cJSON_GetObjectItemCaseSensitive(root, "blocksize");
	dt = cJSON_GetObjectItemCaseSensitive(root, "dtype");
	sh = cJSON_GetObjectItemCaseSensitive(root, "shape");
	if (!cJSON_IsString(qt) || !cJSON_IsNumber(bs) || !cJSON_IsString(dt) || !cJSON_IsArray(sh)) {
		rc = GFAIL(CK_EINVAL, "quant_state lacks quant_type, blocksize, dtype or shape", path,
			   t->name);
		goto out;
	}
	if (strcmp(qt->valuestring, want_fp4 ? "fp4" : "nf4")) {
		rc = GFAIL(CK_EINVAL, "quant_state quant_type does not match its key", path, t->name);
		goto out;
	}
	g->type = want_fp4 ? CK_BNB_FP4 : CK_BNB_NF4;
	if (!json_uint(bs, 0, 1e9, &g->blocksize) || !ck_bnb_blocksize_ok(g->blocksize)) {
		rc = GFAIL(CK_EINVAL, "blocksize %g is not allowed (32, 64 ... 4096)", path, t->name,
			   bs->valuedouble);
		goto out;
	}
	g->dtype = torch_dtype(dt->valuestring);
	if (g->dtype == CK_DT_UNKNOWN) {
		rc = GFAIL(CK_EINVAL, "quant_state dtype is not bfloat16, float16 or float32", path,
			   t->name);
		goto out;
	}
	g->ndim = 0;
	g->n = 1;
	cJSON_ArrayForEach(it, sh) {
		if (g->ndim == CK_MAX_DIMS || !json_uint(it, 0, 9007199254740992.0, &g->shape[g->ndim]) ||
		    ck_mul_u64(g->n, g->shape[g->ndim], &g->n)) {
			rc = GFAIL(CK_EINVAL, "quant_state shape is not a list of at most 8 sizes with a 64-bit product", path,
				   t->name);
			goto out;
		}
		g->ndim++;
	}
	if (g->n > (UINT64_MAX >> 2)) {
		rc = GFAIL(CK_EINVAL, "quant_state shape is too large", path, t->name);
		goto out;
	}
	g->nblocks = (g->n + g->blocksize - 1) / g->blocksize;
	nbs = cJSON_GetObjectItemCaseSensitive(root, "nested_blocksize");
	ndt = cJSON_GetObjectItemCaseSensitive(root, "nested_dtype");
	noff = cJSON_GetObjectItemCaseSensitive(root, "nested_offset");
	g->nested = nbs || ndt || noff;
	if (g->nested) {
		if (!json_uint(nbs, 1, 1e9, &g->nested_blocksize) || !cJSON_IsString(ndt) ||
		    strcmp(ndt->valuestring, "float32") || !cJSON_IsNumber(noff) ||
		    !isfinite(noff->valuedouble)) {
			rc = GFAIL(CK_EINVAL, "quant_state nested_blocksize, nested_dtype or nested_offset "
				   "missing or invalid", path, t->name);
			goto out;
		}
		if (g->nested_blocksize < 32 || g->nested_blocksize > 4096 ||
		    (g->nested_blocksize & (g->nested_blocksize - 1))) {
			rc = GFAIL(CK_EINVAL, "nested_blocksize %" PRIu64 " is not allowed", path,
				   t->name, g->nested_blocksize);
			goto out;
		}
		g->offset = (float)noff->valuedouble;
	}
	rc = 0;
out:
	cJSON_Delete(root);
	return rc;
}

static int check_f32(const struct ck_model *m, const struct ck_tensor *t, uint64_t n, const char *what,
		     struct ck_diag *d)
{
	if (!t)
		return ck_fail(d, CK_EINVAL, "'%s': bnb tensor lacks its %s", what, what);
	if (t->dtype != CK_DT_F32 || t->nelem != n)
		return ck_fail(d, CK_EINVAL, "'%s': tensor '%s': expected F32 with %" PRIu64
			       " elements, found %s with %" PRIu64, ck_model_file(m, t->file), t->name,
			       n, ck_dtype_name(t->dtype), t->nelem);
	return 0;
}

int ck_bnb_group_open(const struct ck_model *m, const char *name, struct ck_bnb_group *g,
		      struct ck_diag *d)
{
	const struct ck_tensor *nf4, *fp4, *w;
	const char *path;
	uint64_t want;

	memset(g, 0, sizeof(*g));
	w = ck_model_find(m, name);
	if (!w || strlen(name) >= sizeof(g->name))
		return ck_fail(d, CK_EINVAL, "'%s': no tensor '%s'", ck_model_path(m), name);
	path = ck_model_file(m, w->file);
	snprintf(g->name, sizeof(g->name), "%s", name);
	g->weight = w;
	nf4 = find_aux(m, name, aux_suffix[4]);
	fp4 = find_aux(m, name, aux_suffix[5]);
	if (!nf4 == !fp4)
		return GFAIL(CK_EINVAL, "%s", path, name, nf4 ? "has both nf4 and fp4 quant_state" :
			     "has no quant_state.bitsandbytes__nf4|fp4");
	g->state = nf4 ? nf4 : fp4;
	CK_TRY(parse_state(m, g, fp4 != NULL, d));
	/* the packed codes: (n+1)/2 bytes whatever the storage dtype */
	want = (g->n + 1) / 2;
	if (w->nbytes != want)
		return GFAIL(CK_EINVAL, "%" PRIu64 " packed bytes do not hold the %" PRIu64
			     " elements of shape in quant_state (need %" PRIu64 ")", path, name,
			     w->nbytes, g->n, want);
	g->absmax = find_aux(m, name, ".absmax");
	g->quant_map = find_aux(m, name, ".quant_map");
	g->nested_absmax = find_aux(m, name, ".nested_absmax");
	g->nested_quant_map = find_aux(m, name, ".nested_quant_map");
	if (!g->absmax || !g->quant_map)
		return GFAIL(CK_EINVAL, "lacks its .absmax or .quant_map tensor", path, name);
	if (g->absmax->nelem != g->nblocks || g->absmax->ndim != 1 ||
	    g->absmax->dtype != (g->nested ? CK_DT_U8 : CK_DT_F32))
		return GFAIL(CK_EINVAL, "absmax is %s with %" PRIu64 " elements, expected %s with %"
			     PRIu64 " (one per block of %" PRIu64 ")", path, name,
			     ck_dtype_name(g->absmax->dtype), g->absmax->nelem,
			     g->nested ? "U8" : "F32", g->nblocks, g->blocksize);
	CK_TRY(check_f32(m, g->quant_map, 16, "quant_map", d));
	if (!g->nested) {
		if (g->nested_absmax || g->nested_quant_map)
			return GFAIL(CK_EINVAL, "has nested tensors but its quant_state is not nested",
				     path, name);
		return 0;
	}
	if (!g->nested_absmax || !g->nested_quant_map)
		return GFAIL(CK_EINVAL, "double quantized but lacks .nested_absmax or .nested_quant_map",
			     path, name);
	CK_TRY(check_f32(m, g->nested_absmax,
			 (g->nblocks + g->nested_blocksize - 1) / g->nested_blocksize, "nested_absmax", d));
	CK_TRY(check_f32(m, g->nested_quant_map, 256, "nested_quant_map", d));
	memcpy(g->nested_map, g->nested_quant_map->data, sizeof(g->nested_map));
	return 0;
}

void ck_bnb_group_absmax(const struct ck_bnb_group *g, uint64_t b0, uint64_t nb, float *out)
{
	if (!g->nested) {
		memcpy(out, g->absmax->data + 4 * b0, 4 * nb);
		return;
	}
	for (uint64_t i = 0; i < nb; i++) {
		uint64_t b = b0 + i;
		float na;
		memcpy(&na, g->nested_absmax->data + 4 * (b / g->nested_blocksize), 4);
		out[i] = ck_bnb_nested_dq(g->nested_map, g->absmax->data[b], na, g->offset);
	}
}

struct dq_ctx {
	const struct ck_bnb_group *g;
	uint64_t first, count;
	enum ck_dtype to;
	uint8_t *dst;
	const float *absmax;	/* of block first/blocksize onwards */
};

static void dq_part(void *arg, uint64_t lo, uint64_t hi)
{
	const struct dq_ctx *c = arg;
	size_t osz = c->to == CK_DT_F32 ? 4 : 2;
	/* lo/hi count units of 4096 elements, so parts never split a byte */
	uint64_t s = c->first + lo * 4096, e = c->first + hi * 4096;
	uint64_t b0 = c->first / c->g->blocksize;

	if (e > c->first + c->count)
		e = c->first + c->count;
	if (s >= e)
		return;
	ck_bnb_dequant_range(c->g->type, c->g->blocksize, c->g->weight->data,
			     c->absmax + (s / c->g->blocksize - b0), s, e - s, c->to,
			     c->dst + (s - c->first) * osz);
}

int ck_bnb_group_dequant(const struct ck_bnb_group *g, uint64_t first, uint64_t count,
			 enum ck_dtype to, void *dst, int nthreads, struct ck_diag *d)
{
	struct dq_ctx c = { g, first, count, to, dst, NULL };
	uint64_t b0, b1;
	float *am;

	if (!count)
		return 0;
	if (first > g->n || count > g->n - first)
		return ck_fail(d, CK_EINVAL, "'%s': range past the end", g->name);
	if (to != CK_DT_F32 && to != CK_DT_F16 && to != CK_DT_BF16)
		return ck_fail(d, CK_EUNSUPPORTED, "cannot dequantize to %s", ck_dtype_name(to));
	b0 = first / g->blocksize;
	b1 = (first + count - 1) / g->blocksize + 1;
	am = ck_mallocarray((size_t)(b1 - b0), sizeof(float));
	if (!am)
		return ck_fail(d, CK_ENOMEM, "out of memory");
	ck_bnb_group_absmax(g, b0, b1 - b0, am);
	c.absmax = am;
	par_for((count + 4095) / 4096, nthreads, dq_part, &c);
	free(am);
	/*
	 * Streaming callers read each range once: drop the pages of its codes
	 * and absmax (whole pages only).  Kept, the absmax of a 20b checkpoint's
	 * per-expert NF4 grew RSS by 50 MB a layer.
	 */
	ck_model_done_range(g->weight->data + first / 2, (size_t)(count / 2));
	ck_model_done_range(g->absmax->data + b0 * (ck_dtype_bits(g->absmax->dtype) / 8),
			    (size_t)((b1 - b0) * (ck_dtype_bits(g->absmax->dtype) / 8)));
	return 0;
}

