/*
 * mxfp4.h - MXFP4 as OpenAI's gpt-oss checkpoints store it, one 32-element
 * block at a time, plus the slice loops every tool shares.
 *
 * A block is 32 consecutive elements of one output row along the input
 * (reduction) dimension, stored as 16 bytes of FP4 E2M1 codes and one E8M0
 * scale byte kept in a separate tensor:
 *
 *	blocks [E, OUT, IN/32, 16]  U8   byte j = code[2j] | code[2j+1] << 4
 *	scales [E, OUT, IN/32]      U8   value 2^(s - 127); 255 is NaN, refused
 *
 *	  byte:   b0        b1        ...  b15
 *	  nibble: lo  hi    lo  hi         lo  hi
 *	  elem:   0   1     2   3          30  31
 *
 * The low nibble is the even element (OpenAI weights.py, transformers,
 * triton_kernels and CUDA's cvt.e2m1x2 all agree).  llama.cpp's block_mxfp4
 * uses split halves instead (qs[k] = elem[k] | elem[k+16] << 4);
 * ck_mx_pairs_to_ggml converts.
 *
 * The E2M1 codes (sign, 2 exponent bits with bias 1, 1 mantissa bit):
 *	0..7  = +0 0.5 1 1.5 2 3 4 6      8..15 = the same, negative (8 is -0.0)
 *
 * Dequantization is exact in BF16 for every scale byte but the edges, so
 * ck_mx_decode builds the BF16 bits with integer code (code 8 gives 0x8000
 * as transformers does; scales 253-254 with large codes overflow to Inf as
 * in transformers' ldexp).  Quantization follows one of the published rules
 * (struct ck_mx_rule); the default is transformers' current one, triton's
 * downcast_to_mxfp_torch: scale rounded up (no element ever clips),
 * elements rounded to nearest-even, the sign kept on values that round to 0.
 *
 * Everything per block is a static inline function of this header with no
 * tables and no libc, so a CUDA build can include the same code (CK_MX_FN).
 * Slice loops, transposes and threads are in mxfp4.c.
 */
#ifndef CK_MXFP4_H
#define CK_MXFP4_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include "../libtensor/ck.h"
#include "../libtensor/dtype.h"

#ifdef __CUDACC__
#define CK_MX_FN static inline __host__ __device__
#else
#define CK_MX_FN static inline
#endif

#define CK_MX_BLOCK 32		/* elements per block */
#define CK_MX_BLOCK_BYTES 16	/* packed bytes per block */
#define CK_MX_SCALE_NAN 255	/* the E8M0 NaN: never valid in a checkpoint */

/* How the shared scale is chosen from the block's largest magnitude amax. */
enum ck_mx_scale {
	CK_MX_SCALE_UP = 0,	/* 2^ceil(log2(amax/6)): triton ROUND_UP, transformers (default) */
	CK_MX_SCALE_OCP,	/* 2^(floor(log2 amax) - 2): OCP MX v1.0, ggml; values in (6,8) clip */
};

/* How an element, already divided by the scale, becomes a code. */
enum ck_mx_round {
	CK_MX_ROUND_RNE = 0,	/* nearest, ties to even code; -0 and tiny negatives -> 8 (default) */
	CK_MX_ROUND_HALF_UP,	/* ties away from zero: triton_kernels before 2025-09 */
	CK_MX_ROUND_GGML,	/* ties toward zero, zero is always +0: ggml / gguf-py */
};

struct ck_mx_rule {
	enum ck_mx_scale scale;
	enum ck_mx_round round;
};
#define CK_MX_RULE_DEFAULT { CK_MX_SCALE_UP, CK_MX_ROUND_RNE }

CK_MX_FN uint32_t ck_mx_f32_bits(float f)
{
	uint32_t u;
	memcpy(&u, &f, 4);
	return u;
}

CK_MX_FN float ck_mx_bits_f32(uint32_t u)
{
	float f;
	memcpy(&f, &u, 4);
	return f;
}

/*
 * BF16 bits of code c (0..15) times 2^(s-127), exactly as transformers'
 * convert_moe_packed_tensors computes it.  For magnitude m = c & 7 >= 2 the
 * value is 2^(m/2 - 1) * (1 + (m&1)/2), so the BF16 exponent is s + m/2 - 1
 * and the mantissa's top bit is m & 1; m = 1 is 0.5 (exponent s - 1).  When
 * that exponent is 0 or less the result is a BF16 subnormal, whose bits are
 * the value in units of 2^-133: v * 2^(s+6) with v the doubled code value.
 */
CK_MX_FN uint16_t ck_mx_decode(unsigned c, unsigned s)
{
	unsigned m = c & 7, sign = (c & 8) << 12;
	int e = m == 1 ? (int)s - 1 : (int)s + (int)(m >> 1) - 1;
	unsigned mant = m == 1 ? 0 : m & 1;

	if (!m)
		return (uint16_t)sign;
	if (e >= 255)
		return (uint16_t)(sign | 0x7F80);	/* Inf, as ldexp overflows */
	if (e <= 0) {
		/* doubled value 1,2,3,4,6,8,12 for m = 1..7 */
		unsigned v2 = m <= 4 ? m : (m == 5 ? 6 : m == 6 ? 8 : 12);
		return (uint16_t)(sign | (v2 << (s + 5)));
	}
	return (uint16_t)(sign | (unsigned)e << 7 | mant << 6);
}

/* Decode one block to 32 BF16 values; s must not be CK_MX_SCALE_NAN. */
CK_MX_FN void ck_mx_decode_block(const uint8_t *blk, unsigned s, uint16_t *out)
{
	for (int j = 0; j < CK_MX_BLOCK_BYTES; j++) {
		out[2 * j] = ck_mx_decode(blk[j] & 15u, s);
		out[2 * j + 1] = ck_mx_decode(blk[j] >> 4, s);
	}
}

/*
 * The scale byte for a block whose largest magnitude is amax (finite, >= 0).
 *
 * UP is triton's bit trick on ds = amax / 6 (an IEEE f32 division): adding
 * 0x7FFFFF to the bits and masking the exponent rounds ds up to a power of
 * two.  amax = 0 gives byte 0; a subnormal ds gives byte 1.  For a normal
 * BF16 amax with exponent field E this is E - 2 + (mantissa > 1.5).
 *
 * OCP is floor(log2 amax) - 2 + 127, i.e. the exponent field minus 2.  ggml
 * and gguf-py compute it with floorf(log2f(amax)) and let it wrap below 0;
 * we clamp it at byte 0 instead (only amax < 2^-125 is affected).
 */
CK_MX_FN unsigned ck_mx_scale_byte(float amax, enum ck_mx_scale rule)
{
	uint32_t b;
	int e;

	if (rule == CK_MX_SCALE_UP) {
		float ds = amax / 6.0f;
		b = (ck_mx_f32_bits(ds) + 0x7FFFFFu) & 0x7F800000u;
		return b >> 23;
	}
	if (amax == 0.0f)
		return 0;
	e = (int)(ck_mx_f32_bits(amax) >> 23 & 0xFF) - 2;
	return e < 0 ? 0u : (unsigned)e;
}

/* 2^(127 - s): the exact reciprocal of the scale (s <= 254). */
CK_MX_FN float ck_mx_inv_scale(unsigned s)
{
	if (s >= 254)
		return ck_mx_bits_f32(0x00400000u);	/* 2^-127, subnormal */
	return ck_mx_bits_f32((254u - s) << 23);
}

/*
 * The magnitude code (0..7) of |y|, y already divided by the scale, with
 * saturation at 6.  The round-to-nearest-even thresholds are
 *	<=0.25 -> 0; <0.75 -> 0.5; <=1.25 -> 1; <1.75 -> 1.5;
 *	<=2.5 -> 2;  <3.5 -> 3;    <=5 -> 4;    else 6
 * ("<=" where the even code is the lower one).  HALF_UP makes every
 * midpoint go up, GGML every midpoint go down.
 */
CK_MX_FN unsigned ck_mx_past(float a, float mid, int tie_up)
{
	return tie_up ? a >= mid : a > mid;
}

CK_MX_FN unsigned ck_mx_mag_code(float a, enum ck_mx_round r)
{
	/* midpoint i lies between codes i and i+1; under RNE its tie goes to the even one */
	int odd = r != CK_MX_ROUND_GGML, even = r == CK_MX_ROUND_HALF_UP;

	return ck_mx_past(a, 0.25f, even) + ck_mx_past(a, 0.75f, odd) +
	       ck_mx_past(a, 1.25f, even) + ck_mx_past(a, 1.75f, odd) +
	       ck_mx_past(a, 2.5f, even) + ck_mx_past(a, 3.5f, odd) + ck_mx_past(a, 5.0f, even);
}

/* The code of x (finite) in a block of inverse scale q, under rule r. */
CK_MX_FN unsigned ck_mx_encode(float x, float q, enum ck_mx_round r)
{
	float y = x * q;	/* exact: q is a power of two (or 0 for an all-zero block) */
	uint32_t u = ck_mx_f32_bits(y);
	unsigned neg = u >> 31;
	unsigned c = ck_mx_mag_code(ck_mx_bits_f32(u & 0x7FFFFFFFu), r);

	if (r == CK_MX_ROUND_GGML)
		neg &= c != 0;	/* ggml's argmin picks code 0 before code 8 */
	return c | neg << 3;
}

/*
 * Pack 32 elements with inverse scale q (r a constant, so each rule gets its
 * own loop): codes first, then nibbles, so the first loop can be vectorized.
 */
CK_MX_FN void ck_mx_pack(const float *x, float q, enum ck_mx_round r, uint8_t *blk)
{
	uint8_t c[CK_MX_BLOCK];

	for (int k = 0; k < CK_MX_BLOCK; k++)
		c[k] = (uint8_t)ck_mx_encode(x[k], q, r);
	for (int j = 0; j < CK_MX_BLOCK_BYTES; j++)
		blk[j] = (uint8_t)(c[2 * j] | c[2 * j + 1] << 4);
}

/*
 * Quantize one block of 32 floats into blk[16] and *scale.  Returns 0, or
 * 1 + the index of the first element that is NaN or Inf (nothing written).
 */
CK_MX_FN int ck_mx_encode_block(const float *x, struct ck_mx_rule rule, uint8_t *blk, uint8_t *scale)
{
	uint32_t umax = 0;
	float amax, q;
	unsigned s;

	/* |x| bits order like the magnitudes, Inf and NaN above every finite value */
	for (int k = 0; k < CK_MX_BLOCK; k++) {
		uint32_t u = ck_mx_f32_bits(x[k]) & 0x7FFFFFFFu;
		umax = u > umax ? u : umax;
	}
	if (umax >= 0x7F800000u) {
		for (int k = 0; k < CK_MX_BLOCK; k++)
			if ((ck_mx_f32_bits(x[k]) & 0x7FFFFFFFu) >= 0x7F800000u)
				return k + 1;
	}
	amax = ck_mx_bits_f32(umax);
	s = ck_mx_scale_byte(amax, rule.scale);
	/* triton multiplies by 1/scale, which is 0 for an all-zero block: signs survive */
	q = amax == 0.0f ? 0.0f : ck_mx_inv_scale(s);
	switch (rule.round) {
	case CK_MX_ROUND_HALF_UP:
		ck_mx_pack(x, q, CK_MX_ROUND_HALF_UP, blk);
		break;
	case CK_MX_ROUND_GGML:
		ck_mx_pack(x, q, CK_MX_ROUND_GGML, blk);
		break;
	default:
		ck_mx_pack(x, q, CK_MX_ROUND_RNE, blk);
		break;
	}
	*scale = (uint8_t)s;
	return 0;
}

/*
 * Checkpoint pairs order -> ggml block_mxfp4.qs order, 16 bytes:
 *	qs[k] = elem[k] | elem[k+16] << 4, elem[2j] = b[j] & 15, elem[2j+1] = b[j] >> 4
 * (llama.cpp transform_nibble_layout, Ollama mxfp4.WriteTo).  The scale byte
 * is copied unchanged in front: block_mxfp4 = { e, qs[16] }.
 */
CK_MX_FN void ck_mx_pairs_to_ggml(const uint8_t *b, uint8_t *qs)
{
	for (int k = 0; k < 16; k++) {
		unsigned lo = (b[k / 2] >> (4 * (k & 1))) & 15u;
		unsigned hi = (b[(k + 16) / 2] >> (4 * (k & 1))) & 15u;
		qs[k] = (uint8_t)(lo | hi << 4);
	}
}

/* The inverse: ggml qs[16] -> checkpoint pairs. */
CK_MX_FN void ck_mx_ggml_to_pairs(const uint8_t *qs, uint8_t *b)
{
	for (int j = 0; j < 16; j++) {
		unsigned e0 = 2 * j, e1 = 2 * j + 1;
		unsigned c0 = e0 < 16 ? qs[e0] & 15u : qs[e0 - 16] >> 4;
		unsigned c1 = e1 < 16 ? qs[e1] & 15u : qs[e1 - 16] >> 4;
		b[j] = (uint8_t)(c0 | c1 << 4);
	}
}

/* ---- slices: one expert's [OUT, IN] matrix (mxfp4.c) ---- */

/* Where a slice function found a bad value: row (output index) and block. */
struct ck_mx_where {
	uint64_t row, block;
	uint32_t elem;		/* element inside the block (quantization) */
};

/*
 * Dequantize one expert: blocks [out, g, 16] and scales [out, g] into BF16.
 * transposed = 0 writes dst [out, 32g] (OpenAI / per-row form);
 * transposed = 1 writes dst [32g, out] (the HF form, input dimension first).
 * threads <= 1 runs on the calling thread.  Returns 0, or CK_EINVAL with
 * *w set to the first scale byte 255 (lowest row, then block).
 */
int ck_mx_dequant_slice(const uint8_t *blocks, const uint8_t *scales, uint64_t out, uint64_t g,
			int transposed, uint16_t *dst, int threads, struct ck_mx_where *w);

/*
 * Quantize one expert from src (dtype F32, F16 or BF16) into blocks
 * [out, in/32, 16] and scales [out, in/32]; src is [out, in] (transposed =
 * 0) or [in, out] (transposed = 1, the HF form).  in must be a multiple of
 * 32.  Returns 0, CK_EINVAL with *w at the first NaN/Inf, or CK_EUNSUPPORTED
 * for another dtype.
 */
int ck_mx_quant_slice(const void *src, enum ck_dtype dt, uint64_t out, uint64_t in, int transposed,
		      struct ck_mx_rule rule, uint8_t *blocks, uint8_t *scales, int threads,
		      struct ck_mx_where *w);

/* ---- whole checkpoints (mxfp4_model.c) ---- */

/*
 * One dequant-mxfp4 or quant-mxfp4 run.  in: a .safetensors file or a model
 * folder (HF, or the original/ flavor); out: a folder (sharded by
 * shard_size, with config.json rewritten and the other small files copied)
 * or a .safetensors file.
 *
 * dequant: every blocks/scales pair becomes BF16; gpt-oss experts get the HF
 * name and layout ([E, IN, OUT]), any other pair "<base>" [..., OUT, IN].
 * Original-flavor names are mapped to HF names and attn.qkv is split into
 * q/k/v (sizes from config.json).  quantization_config leaves config.json.
 *
 * quant: HF gate_up_proj/down_proj (BF16/F16/F32 [E, IN, OUT]) and per-expert
 * tensors (experts.gate_up_projs.N.weight [OUT, IN], .bias) become
 * "_blocks"/"_scales" (+ a stacked "_bias"); config.json gets OpenAI's
 * quantization_config.  With keep_from (an MXFP4 checkpoint), an expert
 * whose BF16 input equals keep_from's dequantized expert is copied byte for
 * byte; the counts come back in experts_copied / experts_quantized.
 */
struct ck_mx_job {
	const char *in, *out;
	const char *keep_from;		/* quant only; NULL for none */
	struct ck_mx_rule rule;		/* quant only */
	int force;
	int threads;
	uint64_t shard_size;		/* 0: one shard */
	/* results */
	uint64_t experts_copied, experts_quantized;
	size_t tensors;
};

int ck_mx_dequant_model(struct ck_mx_job *job, struct ck_diag *d);
int ck_mx_quant_model(struct ck_mx_job *job, struct ck_diag *d);

/* "up"/"ocp", "rne"/"half-up"/"ggml" -> the enums; 0, or CK_EUSAGE. */
int ck_mx_parse_rule(const char *scale, const char *round, struct ck_mx_rule *r);

#endif
