/*
 * test_libtensor.c - the small pieces of libtensor whose answers are facts:
 * dtype tables, float conversions at the edges, overflow helpers, globbing,
 * size parsing, escaping, and the safetensors parser on in-memory headers.
 * (Bulk conversion exactness is proven against ml_dtypes in test_ls_cp.py.)
 */
#include <stdint.h>
#include <math.h>
#include <stdlib.h>
#include "../../libtensor/ck.h"
#include "../../libtensor/dtype.h"
#include "../../libtensor/safetensors.h"
#include "tap.h"

static void dtype_names_round_trip(void)
{
	for (int i = 1; i < CK_DT_COUNT; i++) {
		const char *n = ck_dtype_name((enum ck_dtype)i);
		CHECK(ck_dtype_from_name(n, strlen(n)) == (enum ck_dtype)i);
	}
	CHECK(CK_DT_COUNT - 1 == 22);
	CHECK(ck_dtype_from_name("BF1", 3) == CK_DT_UNKNOWN);
	CHECK(ck_dtype_bits(CK_DT_F4) == 4 && ck_dtype_bits(CK_DT_F6_E3M2) == 6);
	CHECK(ck_dtype_bits(CK_DT_C64) == 64 && ck_dtype_bits(CK_DT_F8_E8M0) == 8);
	CHECK_STR(ck_dtype_name((enum ck_dtype)99), "unknown");
}

static void ggml_types_known_and_unknown(void)
{
	char buf[24];
	const struct ck_ggml_type *t = ck_ggml_type(CK_GGML_MXFP4);
	CHECK(t && t->blck == 32 && t->type_size == 17);
	t = ck_ggml_type(CK_GGML_Q8_0);
	CHECK(t && t->blck == 32 && t->type_size == 34);
	t = ck_ggml_type(12);
	CHECK(t && t->blck == 256 && t->type_size == 144);
	CHECK(ck_ggml_type(4) == NULL);
	CHECK_STR(ck_ggml_type_name(4, buf, sizeof(buf)), "unknown(4)");
	CHECK_STR(ck_ggml_type_name(4000000000u, buf, sizeof(buf)), "unknown(4000000000)");
	CHECK_STR(ck_ggml_type_name(30, buf, sizeof(buf)), "bf16");
}

static float from_bits(uint32_t u)
{
	float f;
	memcpy(&f, &u, 4);
	return f;
}

static void bf16_rounding_edges(void)
{
	CHECK(ck_f32_to_bf16(1.0f) == 0x3F80);
	CHECK(ck_f32_to_bf16(from_bits(0x3F808000)) == 0x3F80);	/* tie to even (down) */
	CHECK(ck_f32_to_bf16(from_bits(0x3F818000)) == 0x3F82);	/* tie to even (up) */
	CHECK(ck_f32_to_bf16(from_bits(0x3F808001)) == 0x3F81);
	CHECK(ck_f32_to_bf16(from_bits(0x7F7FFFFF)) == 0x7F80);	/* max float rounds to Inf */
	CHECK(ck_f32_to_bf16(from_bits(0xFF800000)) == 0xFF80);
	CHECK(ck_f32_to_bf16(from_bits(0x7FA00000)) == 0x7FC0);	/* NaN stays NaN */
	CHECK(ck_f32_to_bf16(from_bits(0xFF800001)) == 0xFFC0);
	CHECK(ck_f32_to_bf16(from_bits(0x00010000)) == 0x0001);	/* subnormal */
	CHECK(ck_bf16_to_f32(0x8000) == 0.0f && signbit(ck_bf16_to_f32(0x8000)));
}

static void f16_rounding_edges(void)
{
	CHECK(ck_f32_to_f16(65504.0f) == 0x7BFF);
	CHECK(ck_f32_to_f16(65519.996f) == 0x7BFF);
	CHECK(ck_f32_to_f16(65520.0f) == 0x7C00);
	CHECK(ck_f32_to_f16(from_bits(0x33000000)) == 0x0000);	/* 2^-25: tie to even 0 */
	CHECK(ck_f32_to_f16(from_bits(0x33000001)) == 0x0001);
	CHECK(ck_f32_to_f16(from_bits(0x33C00000)) == 0x0002);	/* 1.5 * 2^-24: tie to 2 */
	CHECK(ck_f32_to_f16(from_bits(0x387FC000)) == 0x03FF);
	CHECK(ck_f32_to_f16(from_bits(0x387FE000)) == 0x0400);	/* rounds up into the normals */
	CHECK(ck_f32_to_f16(-0.0f) == 0x8000);
	CHECK(ck_f32_to_f16(from_bits(0x7F800001)) == 0x7C01);	/* NaN never becomes Inf */
	CHECK(ck_f16_to_f32(0x0001) == from_bits(0x33800000));
	CHECK(ck_f16_to_f32(0x7C00) > 1e38f);
	for (uint32_t h = 0; h < 0x7C00; h++)			/* every finite f16 survives */
		if (ck_f32_to_f16(ck_f16_to_f32((uint16_t)h)) != h) {
			CHECK(!"f16 -> f32 -> f16 is not the identity");
			break;
		}
}

static void overflow_helpers(void)
{
	uint64_t r;
	CHECK(!ck_mul_u64(1ull << 31, 1ull << 32, &r) && r == 1ull << 63);
	CHECK(ck_mul_u64(1ull << 32, 1ull << 32, &r));
	CHECK(ck_add_u64(UINT64_MAX, 1, &r));
	CHECK(!ck_add_u64(1, 2, &r) && r == 3);
}

static void glob_and_sizes(void)
{
	uint64_t v;
	CHECK(ck_glob("model.layers.*.mlp.*", "model.layers.3.mlp.router.weight"));
	CHECK(!ck_glob("*.bias", "a.weight"));
	CHECK(ck_glob("a?c", "abc") && !ck_glob("a?c", "ac"));
	CHECK(ck_parse_size("5GB", &v) == 0 && v == 5000000000ull);
	CHECK(ck_parse_size("2GiB", &v) == 0 && v == 2ull << 30);
	CHECK(ck_parse_size("700", &v) == 0 && v == 700);
	CHECK(ck_parse_size("1.5GB", &v) == 0 && v == 1500000000ull);
	CHECK(ck_parse_size("0.5KiB", &v) == 0 && v == 512);
	CHECK(ck_parse_size("1.5", &v) < 0);		/* a fraction of a byte */
	CHECK(ck_parse_size("1.GB", &v) < 0);
	CHECK(ck_parse_size("1.1234567GB", &v) < 0);
	CHECK(ck_parse_size("lots", &v) < 0);
	CHECK(ck_parse_size("99999999999999999999999", &v) < 0);
}

static void escaping(void)
{
	char buf[64];
	CHECK_STR(ck_escape("a\x01" "b", 3, buf, sizeof(buf)), "a\\x01b");
	CHECK_STR(ck_escape("plain", 5, buf, sizeof(buf)), "plain");
	CHECK(strlen(ck_escape("0123456789012345678901234567890123456789", 40, buf, 16)) < 16);
}

static int parse(const char *header, size_t datalen, struct ck_diag *d)
{
	size_t hl = strlen(header), n = 8 + hl + datalen;
	uint8_t *buf = calloc(1, n);
	struct ck_st_file *f = NULL;
	int rc;
	for (int i = 0; i < 8; i++)
		buf[i] = (uint8_t)((uint64_t)hl >> (8 * i));
	memcpy(buf + 8, header, hl);
	rc = ck_st_parse(&f, buf, n, "mem", d);
	ck_st_close(f);
	free(buf);
	return rc;
}

static void safetensors_header_rules(void)
{
	struct ck_diag d = { 0 };
	CHECK(parse("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, &d) == 0);
	CHECK(parse("{}", 0, &d) == 0);
	CHECK(parse("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 9, &d) == CK_EINVAL);
	CHECK(strstr(d.msg, "trailing") != NULL);
	CHECK(parse("{\"a\":{\"dtype\":\"F32\",\"shape\":[1e3],\"data_offsets\":[0,4000]}}", 4000, &d) == CK_EINVAL);
	CHECK(parse("{\"a\":{\"dtype\":\"F32\",\"shape\":[9007199254740993],\"data_offsets\":[0,8]}}", 8, &d) == CK_EINVAL);
	CHECK(parse("{\"a\":{\"dtype\":\"BOOL\",\"shape\":[],\"data_offsets\":[0,1]}}", 1, &d) == 0);
	CHECK(parse("{\"a\":{\"dtype\":\"F32\",\"shape\":[0,5],\"data_offsets\":[0,0]}}", 0, &d) == 0);
}

int main(void)
{
	RUN(dtype_names_round_trip);
	RUN(ggml_types_known_and_unknown);
	RUN(bf16_rounding_edges);
	RUN(f16_rounding_edges);
	RUN(overflow_helpers);
	RUN(glob_and_sizes);
	RUN(escaping);
	RUN(safetensors_header_rules);
	return tap_done();
}
