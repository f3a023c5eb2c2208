/*
 * dtype.c - dtype tables and the F32/F16/BF16 conversions (see dtype.h).
 */
#include <stdio.h>
#include <string.h>
#include "dtype.h"

static const struct {
	const char *name;
	unsigned bits;
} dtypes[CK_DT_COUNT] = {
	[CK_DT_UNKNOWN] = { "unknown", 0 },
	[CK_DT_BOOL] = { "BOOL", 8 },
	[CK_DT_F4] = { "F4", 4 },
	[CK_DT_F6_E2M3] = { "F6_E2M3", 6 },
	[CK_DT_F6_E3M2] = { "F6_E3M2", 6 },
	[CK_DT_U8] = { "U8", 8 },
	[CK_DT_I8] = { "I8", 8 },
	[CK_DT_F8_E5M2] = { "F8_E5M2", 8 },
	[CK_DT_F8_E4M3] = { "F8_E4M3", 8 },
	[CK_DT_F8_E8M0] = { "F8_E8M0", 8 },
	[CK_DT_F8_E4M3FNUZ] = { "F8_E4M3FNUZ", 8 },
	[CK_DT_F8_E5M2FNUZ] = { "F8_E5M2FNUZ", 8 },
	[CK_DT_I16] = { "I16", 16 },
	[CK_DT_U16] = { "U16", 16 },
	[CK_DT_F16] = { "F16", 16 },
	[CK_DT_BF16] = { "BF16", 16 },
	[CK_DT_I32] = { "I32", 32 },
	[CK_DT_U32] = { "U32", 32 },
	[CK_DT_F32] = { "F32", 32 },
	[CK_DT_C64] = { "C64", 64 },
	[CK_DT_F64] = { "F64", 64 },
	[CK_DT_I64] = { "I64", 64 },
	[CK_DT_U64] = { "U64", 64 },
};

enum ck_dtype ck_dtype_from_name(const char *s, size_t len)
{
	for (int i = 1; i < CK_DT_COUNT; i++)
		if (strlen(dtypes[i].name) == len && !memcmp(dtypes[i].name, s, len))
			return (enum ck_dtype)i;
	return CK_DT_UNKNOWN;
}

const char *ck_dtype_name(enum ck_dtype dt)
{
	return (unsigned)dt < CK_DT_COUNT ? dtypes[dt].name : "unknown";
}

unsigned ck_dtype_bits(enum ck_dtype dt)
{
	return (unsigned)dt < CK_DT_COUNT ? dtypes[dt].bits : 0;
}

int ck_dtype_is_float(enum ck_dtype dt)
{
	return dt == CK_DT_F32 || dt == CK_DT_F16 || dt == CK_DT_BF16;
}

/* ggml type_traits: id, name, block size, bytes per block (ggml.c). */
static const struct ck_ggml_type ggml_types[] = {
	{ 0, "f32", 1, 4 },
	{ 1, "f16", 1, 2 },
	{ 2, "q4_0", 32, 18 },
	{ 3, "q4_1", 32, 20 },
	{ 6, "q5_0", 32, 22 },
	{ 7, "q5_1", 32, 24 },
	{ 8, "q8_0", 32, 34 },
	{ 9, "q8_1", 32, 36 },
	{ 10, "q2_K", 256, 84 },
	{ 11, "q3_K", 256, 110 },
	{ 12, "q4_K", 256, 144 },
	{ 13, "q5_K", 256, 176 },
	{ 14, "q6_K", 256, 210 },
	{ 15, "q8_K", 256, 292 },
	{ 16, "iq2_xxs", 256, 66 },
	{ 17, "iq2_xs", 256, 74 },
	{ 18, "iq3_xxs", 256, 98 },
	{ 19, "iq1_s", 256, 50 },
	{ 20, "iq4_nl", 32, 18 },
	{ 21, "iq3_s", 256, 110 },
	{ 22, "iq2_s", 256, 82 },
	{ 23, "iq4_xs", 256, 136 },
	{ 24, "i8", 1, 1 },
	{ 25, "i16", 1, 2 },
	{ 26, "i32", 1, 4 },
	{ 27, "i64", 1, 8 },
	{ 28, "f64", 1, 8 },
	{ 29, "iq1_m", 256, 56 },
	{ 30, "bf16", 1, 2 },
	{ 34, "tq1_0", 256, 54 },
	{ 35, "tq2_0", 256, 66 },
	{ 39, "mxfp4", 32, 17 },
};

const struct ck_ggml_type *ck_ggml_type(uint32_t id)
{
	for (size_t i = 0; i < sizeof(ggml_types) / sizeof(ggml_types[0]); i++)
		if (ggml_types[i].id == id)
			return &ggml_types[i];
	return NULL;
}

const char *ck_ggml_type_name(uint32_t id, char *buf, size_t cap)
{
	const struct ck_ggml_type *t = ck_ggml_type(id);
	if (t)
		return t->name;
	snprintf(buf, cap, "unknown(%u)", id);
	return buf;
}

/*
 * The conversions work on the bit patterns.  f32 -> bf16: add 0x7FFF plus
 * the lowest kept bit and truncate (round to nearest even; a carry into the
 * exponent rounds up to the next binade or to Inf, as it should); NaN
 * becomes the quiet NaN 0x7FC0 with its sign, as ml_dtypes (Eigen) does.
 * f32 -> f16 keeps the top 10 payload bits of a NaN, as numpy does.
 */
static inline uint32_t f32_bits(float f)
{
	uint32_t u;
	memcpy(&u, &f, 4);
	return u;
}

static inline float bits_f32(uint32_t u)
{
	float f;
	memcpy(&f, &u, 4);
	return f;
}

static inline uint16_t bf16_from_bits(uint32_t u)
{
	if ((u & 0x7FFFFFFFu) > 0x7F800000u)	/* NaN: canonical quiet NaN, sign kept */
		return (uint16_t)(((u >> 16) & 0x8000u) | 0x7FC0u);
	return (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

uint16_t ck_f32_to_bf16(float f)
{
	return bf16_from_bits(f32_bits(f));
}

float ck_bf16_to_f32(uint16_t h)
{
	return bits_f32((uint32_t)h << 16);
}

/*
 * f32 -> f16, round to nearest even, in integer arithmetic:
 *  - |x| >= 65520 (the midpoint past the largest f16, 65504) -> Inf;
 *  - normal range: add the rounding bias to the mantissa and shift;
 *  - below 2^-14: denormalize with the implicit bit, shift right with RNE;
 *    values below half the smallest subnormal become (signed) zero.
 */
static inline uint16_t f16_from_bits(uint32_t u)
{
	uint32_t sign = (u >> 16) & 0x8000u;
	uint32_t a = u & 0x7FFFFFFFu;

	if (a > 0x7F800000u) {	/* NaN: top payload bits, never Inf (numpy) */
		uint32_t m = (a >> 13) & 0x3FFu;
		return (uint16_t)(sign | 0x7C00u | (m ? m : 1u));
	}
	if (a >= 0x477FF000u)	/* >= 65520 rounds to Inf (and Inf stays Inf) */
		return (uint16_t)(sign | 0x7C00u);
	if (a >= 0x38800000u) {	/* normal f16: exponent >= -14 */
		uint32_t r = a + 0xFFFu + ((a >> 13) & 1u);
		return (uint16_t)(sign | ((r - 0x38000000u) >> 13));
	}
	if (a < 0x33000000u)	/* < 2^-25: rounds to zero (2^-25 itself ties to 0) */
		return (uint16_t)sign;
	{
		uint32_t e = a >> 23;			/* 102 .. 112 */
		uint32_t m = (a & 0x7FFFFFu) | 0x800000u;
		uint32_t shift = 126 - e;		/* 14 .. 24 */
		uint32_t q = m >> shift;
		uint32_t rem = m & ((1u << shift) - 1);
		uint32_t half = 1u << (shift - 1);
		if (rem > half || (rem == half && (q & 1u)))
			q++;
		return (uint16_t)(sign | q);
	}
}

uint16_t ck_f32_to_f16(float f)
{
	return f16_from_bits(f32_bits(f));
}

static inline uint32_t f16_to_bits(uint16_t h)
{
	uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
	uint32_t e = (h >> 10) & 0x1Fu;
	uint32_t m = h & 0x3FFu;

	if (e == 0x1F)
		return sign | 0x7F800000u | (m << 13);
	if (e)
		return sign | ((e + 112) << 23) | (m << 13);
	if (!m)
		return sign;
	/* subnormal: normalize */
	e = 113;
	while (!(m & 0x400u)) {
		m <<= 1;
		e--;
	}
	return sign | (e << 23) | ((m & 0x3FFu) << 13);
}

float ck_f16_to_f32(uint16_t h)
{
	return bits_f32(f16_to_bits(h));
}

void ck_f32_to_bf16_n(const float *restrict src, uint16_t *restrict dst, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		uint32_t u;
		memcpy(&u, &src[i], 4);
		dst[i] = bf16_from_bits(u);
	}
}

void ck_bf16_to_f32_n(const uint16_t *restrict src, float *restrict dst, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		uint32_t u = (uint32_t)src[i] << 16;
		memcpy(&dst[i], &u, 4);
	}
}

void ck_f32_to_f16_n(const float *restrict src, uint16_t *restrict dst, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		uint32_t u;
		memcpy(&u, &src[i], 4);
		dst[i] = f16_from_bits(u);
	}
}

void ck_f16_to_f32_n(const uint16_t *restrict src, float *restrict dst, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		uint32_t u = f16_to_bits(src[i]);
		memcpy(&dst[i], &u, 4);
	}
}

static size_t float_size(enum ck_dtype dt)
{
	return dt == CK_DT_F32 ? 4 : (dt == CK_DT_F16 || dt == CK_DT_BF16) ? 2 : 0;
}

int ck_convert(enum ck_dtype from, const void *src, enum ck_dtype to, void *dst, size_t n)
{
	enum { CHUNK = 1024 };
	float tmp[CHUNK];
	const unsigned char *s = src;
	unsigned char *o = dst;
	size_t fs = float_size(from), ts = float_size(to);

	if (!fs || !ts)
		return -1;
	if (from == to) {
		memcpy(dst, src, n * fs);
		return 0;
	}
	if (from == CK_DT_F32) {
		if (to == CK_DT_BF16)
			ck_f32_to_bf16_n(src, dst, n);
		else
			ck_f32_to_f16_n(src, dst, n);
		return 0;
	}
	if (to == CK_DT_F32) {
		if (from == CK_DT_BF16)
			ck_bf16_to_f32_n(src, dst, n);
		else
			ck_f16_to_f32_n(src, dst, n);
		return 0;
	}
	/* F16 <-> BF16 through F32 (exact), in chunks */
	for (size_t i = 0; i < n; i += CHUNK) {
		size_t k = n - i < CHUNK ? n - i : CHUNK;
		if (from == CK_DT_BF16)
			ck_bf16_to_f32_n((const uint16_t *)(const void *)(s + 2 * i), tmp, k);
		else
			ck_f16_to_f32_n((const uint16_t *)(const void *)(s + 2 * i), tmp, k);
		if (to == CK_DT_BF16)
			ck_f32_to_bf16_n(tmp, (uint16_t *)(void *)(o + 2 * i), k);
		else
			ck_f32_to_f16_n(tmp, (uint16_t *)(void *)(o + 2 * i), k);
	}
	return 0;
}

float ck_load_float(enum ck_dtype dt, const void *src, size_t i)
{
	const unsigned char *p = src;
	uint16_t h;
	float f;

	switch (dt) {
	case CK_DT_F32:
		memcpy(&f, p + 4 * i, 4);
		return f;
	case CK_DT_BF16:
		memcpy(&h, p + 2 * i, 2);
		return ck_bf16_to_f32(h);
	case CK_DT_F16:
		memcpy(&h, p + 2 * i, 2);
		return ck_f16_to_f32(h);
	default:
		return 0.0f;
	}
}
