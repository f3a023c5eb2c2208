/*
 * q8_0.h - ggml's Q8_0: blocks of 32 values stored as one f16 scale d and
 * 32 int8 codes (34 bytes, block_q8_0 in ggml-common.h), y = d * q.
 *
 * The quantizer is ggml's reference, quantize_row_q8_0_ref, bit for bit:
 *	amax = max |x|			(ggml's MAX: a NaN is kept only when last)
 *	d    = amax / 127		(float)
 *	id   = d ? 1/d : 0
 *	q[j] = roundf(x[j] * id)	(half away from zero; codes from the
 *					 float d, not the f16-rounded one)
 *	d is stored as f16, round to nearest even, overflow to inf.
 * gguf-py's numpy Q8_0 (gguf.quants) computes the same for finite input;
 * for NaN it differs (numpy's max propagates NaN), and we follow ggml.
 * Codes outside int8, which only a NaN can cause, are stored as x86 stores
 * them (truncate to int32, keep the low byte; NaN and huge give 0).
 *
 * The block math is static inline and free of library calls other than
 * fabsf/roundf, so a CUDA translation unit can include this header
 * (CK_Q8_0_HD marks the functions __host__ __device__ there) and produce
 * the same bytes; the loops over rows are in q8_0.c.
 */
#ifndef CK_Q8_0_H
#define CK_Q8_0_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifdef __CUDACC__
#define CK_Q8_0_HD __host__ __device__
#else
#define CK_Q8_0_HD
#endif

#define CK_Q8_0_BLOCK 32	/* values per block */
#define CK_Q8_0_BYTES 34	/* bytes per block: f16 d, then 32 int8 */

/* f32 -> f16 bits, round to nearest even, overflow to inf, NaN to 0x7E00 (ggml's). */
static inline CK_Q8_0_HD uint16_t ck_q8_0_f16(float f)
{
	uint32_t x, ax, m, rem, half, shift;
	uint16_t sign, h;

	memcpy(&x, &f, 4);
	sign = (uint16_t)((x >> 16) & 0x8000);
	ax = x & 0x7fffffff;
	if (ax > 0x7f800000)
		return sign | 0x7e00;
	if (ax >= 0x477ff000)		/* >= 65520: rounds to inf */
		return sign | 0x7c00;
	if (ax >= 0x38800000) {		/* normal in f16 */
		m = ax & 0x7fffff;
		h = (uint16_t)((((ax >> 23) - 112) << 10) | (m >> 13));
		rem = m & 0x1fff;
		if (rem > 0x1000 || (rem == 0x1000 && (h & 1)))
			h++;
		return sign | h;
	}
	if (ax <= 0x33000000)		/* <= 2^-25: rounds to zero */
		return sign;
	m = (ax & 0x7fffff) | 0x800000;	/* subnormal in f16: units of 2^-24 */
	shift = 126 - (ax >> 23);	/* 14 .. 24 */
	h = (uint16_t)(m >> shift);
	rem = m & ((1u << shift) - 1);
	half = 1u << (shift - 1);
	if (rem > half || (rem == half && (h & 1)))
		h++;
	return sign | h;
}

/* f16 bits -> f32 (exact). */
static inline CK_Q8_0_HD float ck_q8_0_f32(uint16_t h)
{
	uint32_t sign = (uint32_t)(h & 0x8000) << 16, e = (h >> 10) & 0x1f, m = h & 0x3ff, x;
	float f;

	if (e == 0x1f)
		x = sign | 0x7f800000 | (m << 13);
	else if (e)
		x = sign | ((e + 112) << 23) | (m << 13);
	else if (!m)
		x = sign;
	else {				/* subnormal: normalize */
		e = 113;
		while (!(m & 0x400)) {
			m <<= 1;
			e--;
		}
		x = sign | (e << 23) | ((m & 0x3ff) << 13);
	}
	memcpy(&f, &x, 4);
	return f;
}

/* Quantize one block of 32 floats into 34 bytes. */
static inline CK_Q8_0_HD void ck_q8_0_block(const float *x, uint8_t *out)
{
	float amax = 0.0f, d, id;
	uint16_t h;

	for (int j = 0; j < CK_Q8_0_BLOCK; j++) {
		float v = fabsf(x[j]);
		amax = amax > v ? amax : v;
	}
	d = amax / 127.0f;
	id = d != 0.0f ? 1.0f / d : 0.0f;
	h = ck_q8_0_f16(d);
	out[0] = (uint8_t)(h & 0xff);
	out[1] = (uint8_t)(h >> 8);
	for (int j = 0; j < CK_Q8_0_BLOCK; j++) {
		float r = roundf(x[j] * id);
		int32_t q = r >= -2147483648.0f && r < 2147483648.0f ? (int32_t)r : 0;
		out[2 + j] = (uint8_t)(uint32_t)q;
	}
}

/* Dequantize one block: 34 bytes into 32 floats, d * q. */
static inline CK_Q8_0_HD void ck_q8_0_block_dequant(const uint8_t *in, float *y)
{
	float d = ck_q8_0_f32((uint16_t)(in[0] | in[1] << 8));
	for (int j = 0; j < CK_Q8_0_BLOCK; j++)
		y[j] = (float)(int8_t)in[2 + j] * d;
}

/*
 * n values (a multiple of 32, else nothing is done and -1 returned) into
 * n / 32 * 34 bytes.  Returns 0.
 */
int ck_q8_0_quantize(const float *x, uint8_t *out, size_t n);
/* n values (a multiple of 32) from n / 32 * 34 bytes.  Returns 0, or -1. */
int ck_q8_0_dequantize(const uint8_t *in, float *y, size_t n);
/* Bytes of n values; 0 when n is not a multiple of 32 (or overflows). */
size_t ck_q8_0_nbytes(size_t n);

#endif
