/*
 * test_bnb.c - unit tests of quant/bnb.h: the per-element math and the
 * comment diagrams.  The values come from bitsandbytes (functional.py
 * get_4bit_type / create_dynamic_map, kernels.cu dQuantizeNF4 /
 * dQuantizeFP4, Python repr); the checkpoint-level comparisons with bnb's
 * own output are in tests/test_bnb.py.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>
#include "tap.h"
#include "../../quant/bnb.h"
#include "../../libtensor/dtype.h"

static uint32_t f2u(float f)
{
	uint32_t u;
	memcpy(&u, &f, 4);
	return u;
}

static float u2f(uint32_t u)
{
	float f;
	memcpy(&f, &u, 4);
	return f;
}

static void nf4_table_has_bnb_bits(void)
{
	CHECK(f2u(ck_bnb_nf4_table[1]) == 0xbf3239b1);
	CHECK(f2u(ck_bnb_nf4_table[8]) == 0x3da2faff);
	CHECK(f2u(ck_bnb_nf4_table[14]) == 0x3f3913b3);
	CHECK(ck_bnb_nf4_table[7] == 0.0f && ck_bnb_nf4_table[0] == -1.0f && ck_bnb_nf4_table[15] == 1.0f);
}

/* kernels.cu's decision-tree literals, rounded to float, are the midpoints. */
static void nf4_thresholds_are_cuda_literals(void)
{
	static const double lit[15] = { -0.8480964004993439, -0.6106329262256622, -0.4599952697753906,
		-0.33967943489551544, -0.23460740596055984, -0.13791173323988914, -0.045525018125772476,
		0.03979014977812767, 0.1202552504837513, 0.2035212516784668, 0.2920137718319893,
		0.3893125355243683, 0.5016634166240692, 0.6427869200706482, 0.8614784181118011 };
	for (int i = 0; i < 15; i++) {
		CHECK(ck_bnb_nf4_thresholds[i] == (float)lit[i]);
		CHECK(ck_bnb_nf4_thresholds[i] == (ck_bnb_nf4_table[i] + ck_bnb_nf4_table[i + 1]) * 0.5f);
	}
}

static void nf4_code_ties_go_to_the_lower_code(void)
{
	for (int i = 0; i < 15; i++) {
		float t = ck_bnb_nf4_thresholds[i];
		CHECK(ck_bnb_nf4_code(t) == i);
		CHECK(ck_bnb_nf4_code(nextafterf(t, 2.0f)) == i + 1);
	}
	CHECK(ck_bnb_nf4_code(NAN) == 0);
	CHECK(ck_bnb_nf4_code(0.0f) == 7);
	CHECK(ck_bnb_nf4_code(-1.0f) == 0 && ck_bnb_nf4_code(1.0f) == 15);
}

static void fp4_code_follows_the_cuda_tree(void)
{
	/* 0.583333f is a pivot, not the midpoint 0.58333337 of 0.5 and 0.6667 */
	CHECK(ck_bnb_fp4_code(0.583333f) == 5);
	CHECK(ck_bnb_fp4_code(nextafterf(0.583333f, 1.0f)) == 2);
	CHECK(ck_bnb_fp4_code(-1.0f) == 11 && ck_bnb_fp4_code(1.0f) == 3);
	CHECK(ck_bnb_fp4_code(-0.0f) == 0 && ck_bnb_fp4_code(-1e-30f) == 8);
	CHECK(ck_bnb_fp4_code(NAN) == 0);
	for (int q = 0; q < 16; q++)	/* every table value maps back to its code */
		if (q != 8)
			CHECK(ck_bnb_fp4_code(ck_bnb_fp4_table[q]) == q);
}

static void dynamic_map_matches_bnb(void)
{
	CHECK(f2u(ck_bnb_dynamic_map[0]) == 0xbf7e3333);
	CHECK(f2u(ck_bnb_dynamic_map[128]) == 0x3513a3b7);
	CHECK(f2u(ck_bnb_dynamic_map[254]) == 0x3f7e3333);
	CHECK(ck_bnb_dynamic_map[127] == 0.0f && ck_bnb_dynamic_map[255] == 1.0f);
	for (int i = 1; i < 256; i++)
		CHECK(ck_bnb_dynamic_map[i - 1] < ck_bnb_dynamic_map[i]);
	for (int i = 0; i <= 126; i++)
		CHECK(ck_bnb_dynamic_map[i] == -ck_bnb_dynamic_map[254 - i]);
}

static void nested_code_is_nearest_ties_to_even(void)
{
	const float *m = ck_bnb_dynamic_map;
	for (int i = 0; i < 256; i++)
		CHECK(ck_bnb_nested_code(m, m[i]) == i);
	for (int i = 1; i < 256; i++) {
		float mid = (m[i - 1] + m[i]) * 0.5f;
		int even = (i - 1) % 2 == 0 ? i - 1 : i;
		if (mid == m[i - 1] || mid == m[i])
			continue;
		CHECK(ck_bnb_nested_code(m, mid) == even);
		CHECK(ck_bnb_nested_code(m, nextafterf(mid, -2.0f)) == i - 1);
		CHECK(ck_bnb_nested_code(m, nextafterf(mid, 2.0f)) == i);
	}
	CHECK(ck_bnb_nested_code(m, -1.0f) == 0);
	CHECK(ck_bnb_nested_code(m, 2.0f) == 255);
	CHECK(ck_bnb_nested_code(m, NAN) == 0);
}

/* The diagram in bnb.h: byte 0xF7 holds codes 15 (element 0) and 7 (element 1). */
static void packing_is_high_nibble_first(void)
{
	const uint8_t packed[1] = { 0xF7 };
	const float absmax[1] = { 2.0f };
	float out[2];
	uint16_t src[2] = { ck_f32_to_bf16(2.0f), ck_f32_to_bf16(0.0f) };
	uint8_t p[1];
	float am[1];

	ck_bnb_dequant_range(CK_BNB_NF4, 64, packed, absmax, 0, 2, CK_DT_F32, out);
	CHECK(out[0] == 2.0f && out[1] == 0.0f);
	CHECK(ck_bnb_quantize(CK_BNB_NF4, 64, CK_DT_BF16, src, 2, p, am, 1, NULL) == 0);
	CHECK(p[0] == 0xF7 && am[0] == 2.0f);
}

static void zero_block_gives_code_0_as_on_cuda(void)
{
	uint16_t src[64] = { 0 };
	uint8_t p[32];
	float am[1];

	CHECK(ck_bnb_quantize(CK_BNB_NF4, 64, CK_DT_BF16, src, 64, p, am, 1, NULL) == 0);
	CHECK(am[0] == 0.0f && p[0] == 0x00 && p[31] == 0x00);
	CHECK(ck_bnb_quantize(CK_BNB_FP4, 64, CK_DT_BF16, src, 64, p, am, 1, NULL) == 0);
	CHECK(p[0] == 0x00);
}

static void odd_tail_pads_with_a_quantized_zero(void)
{
	float src[3] = { 1.0f, -1.0f, 0.5f };
	uint8_t p[2];
	float am[1];

	CHECK(ck_bnb_quantize(CK_BNB_NF4, 64, CK_DT_F32, src, 3, p, am, 1, NULL) == 0);
	CHECK(p[0] == 0xF0);
	CHECK(p[1] == ((ck_bnb_nf4_code(0.5f) << 4) | 7));
}

static void nested_dq_rounds_twice(void)
{
	/* map * nested_absmax rounds, then + offset rounds: an FMA would differ here */
	float map[256];
	float a = u2f(0x3f800001), b = u2f(0x3f7ffffe), off = -1.0f;
	memcpy(map, ck_bnb_dynamic_map, sizeof(map));
	map[3] = a;
	CHECK(ck_bnb_nested_dq(map, 3, b, off) == (float)((double)(float)((double)a * b) + off));
}

static void pyrepr_matches_python(void)
{
	char buf[40];
	struct { double v; const char *s; } c[] = {
		{ (double)0.1f, "0.10000000149011612" }, { 0.5, "0.5" }, { 1.0, "1.0" },
		{ (double)0.012345678f, "0.012345678173005581" }, { 1e-05, "1e-05" },
		{ (double)1.5e-5f, "1.4999999621068127e-05" }, { 1e16, "1e+16" }, { 123.0, "123.0" },
		{ 0.0001, "0.0001" }, { -2.5, "-2.5" }, { 1e15, "1000000000000000.0" },
	};
	for (size_t i = 0; i < CK_ARRAY_SIZE(c); i++) {
		ck_bnb_pyrepr(c[i].v, buf, sizeof(buf));
		CHECK_STR(buf, c[i].s);
	}
}

/* The block loop (vectorized) gives the scalar rule for every BF16 pattern. */
static void quantize_matches_the_scalar_rule_for_every_bf16(void)
{
	enum { BS = 64, PER = BS - 1 };
	static uint16_t src[65536 / PER * BS + BS];
	static uint8_t packed[sizeof(src) / 4];
	static float am[sizeof(src) / 2 / BS];
	uint32_t n = 0, v = 0, bad = 0;

	/* blocks of 63 consecutive bit patterns (NaN/Inf skipped) plus one more value */
	while (v < 65536) {
		uint32_t start = n;
		for (; n - start < PER && v < 65536; v++)
			if (((v >> 7) & 0xff) != 0xff)
				src[n++] = (uint16_t)v;
		while (n - start < PER)
			src[n++] = 0;
		{	/* the block's own max |x|, so the scaled values spread over [-1, 1] */
			float m = 0;
			for (uint32_t k = start; k < n; k++)
				m = fabsf(ck_bf16_to_f32(src[k])) > m ? fabsf(ck_bf16_to_f32(src[k])) : m;
			src[n++] = ck_f32_to_bf16(m * 0.75f);
		}
	}
	for (int t = 0; t < 2; t++) {
		enum ck_bnb_type ty = t ? CK_BNB_FP4 : CK_BNB_NF4;
		CHECK(ck_bnb_quantize(ty, BS, CK_DT_BF16, src, n, packed, am, 3, NULL) == 0);
		for (uint32_t i = 0; i < n; i++) {
			float a = am[i / BS], x = ck_bf16_to_f32(src[i]) * (1.0f / a);
			uint8_t q = i & 1 ? packed[i / 2] & 15 : packed[i / 2] >> 4;
			bad += q != ck_bnb_code(ty, x);
		}
	}
	CHECK_EQ_U64(bad, 0);
}

/* Any element range, odd start or end, gives the element-wise products. */
static void dequant_any_range(void)
{
	uint8_t packed[96];
	float absmax[3] = { 0.5f, 3.0f, 1e-3f }, out[192];
	uint16_t h[192];

	for (int i = 0; i < 96; i++)
		packed[i] = (uint8_t)(i * 37 + 11);
	for (uint64_t first = 0; first < 70; first += 7)
		for (uint64_t count = 1; first + count <= 190; count += 13) {
			uint64_t b0 = first / 64;
			ck_bnb_dequant_range(CK_BNB_NF4, 64, packed, absmax + b0, first, count, CK_DT_F32, out);
			ck_bnb_dequant_range(CK_BNB_FP4, 64, packed, absmax + b0, first, count, CK_DT_BF16, h);
			for (uint64_t k = 0; k < count; k++) {
				uint64_t e = first + k;
				uint8_t q = e & 1 ? packed[e / 2] & 15 : packed[e / 2] >> 4;
				CHECK(f2u(out[k]) == f2u(ck_bnb_nf4_table[q] * absmax[e / 64]));
				CHECK(h[k] == ck_f32_to_bf16(ck_bnb_fp4_table[q] * absmax[e / 64]));
			}
		}
}

static void transpose_any_shape_any_threads(void)
{
	static uint16_t a[70 * 45], b[70 * 45];
	static uint32_t c[33 * 65], e[33 * 65];

	for (int i = 0; i < 70 * 45; i++)
		a[i] = (uint16_t)i;
	for (int i = 0; i < 33 * 65; i++)
		c[i] = (uint32_t)i * 7u;
	for (int th = 1; th <= 3; th++) {
		ck_bnb_transpose(a, b, 70, 45, 2, th);
		ck_bnb_transpose(c, e, 33, 65, 4, th);
		for (int r = 0; r < 70; r++)
			for (int k = 0; k < 45; k++)
				CHECK(b[k * 70 + r] == a[r * 45 + k]);
		for (int r = 0; r < 33; r++)
			for (int k = 0; k < 65; k++)
				CHECK(e[k * 33 + r] == c[r * 65 + k]);
	}
}

static void blocksizes_are_bnb_s(void)
{
	CHECK(ck_bnb_blocksize_ok(32) && ck_bnb_blocksize_ok(64) && ck_bnb_blocksize_ok(4096));
	CHECK(!ck_bnb_blocksize_ok(16) && !ck_bnb_blocksize_ok(96) && !ck_bnb_blocksize_ok(8192));
}

int main(void)
{
	RUN(nf4_table_has_bnb_bits);
	RUN(nf4_thresholds_are_cuda_literals);
	RUN(nf4_code_ties_go_to_the_lower_code);
	RUN(fp4_code_follows_the_cuda_tree);
	RUN(dynamic_map_matches_bnb);
	RUN(nested_code_is_nearest_ties_to_even);
	RUN(packing_is_high_nibble_first);
	RUN(zero_block_gives_code_0_as_on_cuda);
	RUN(odd_tail_pads_with_a_quantized_zero);
	RUN(nested_dq_rounds_twice);
	RUN(pyrepr_matches_python);
	RUN(quantize_matches_the_scalar_rule_for_every_bf16);
	RUN(dequant_any_range);
	RUN(transpose_any_shape_any_threads);
	RUN(blocksizes_are_bnb_s);
	return tap_done();
}
