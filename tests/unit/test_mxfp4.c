/*
 * test_mxfp4.c - the MXFP4 block math (quant/mxfp4.h) and the gpt-oss
 * name table (libtensor/gptoss.h).  The bit-exact comparison with
 * transformers, ml_dtypes and gguf-py is in tests/test_mxfp4.py; here the
 * header's diagrams and tables are checked against their own text.
 */
#include <math.h>
#include <stdlib.h>
#include "tap.h"
#include "../../quant/mxfp4.h"
#include "../../libtensor/gptoss.h"

/* The BF16 column of the E2M1 table in mxfp4.md §2.1 (scale byte 127). */
static const uint16_t e2m1_bf16[16] = { 0x0000, 0x3F00, 0x3F80, 0x3FC0, 0x4000, 0x4040, 0x4080,
					0x40C0, 0x8000, 0xBF00, 0xBF80, 0xBFC0, 0xC000, 0xC040,
					0xC080, 0xC0C0 };
static const double e2m1[8] = { 0, 0.5, 1, 1.5, 2, 3, 4, 6 };

static void mxfp4_decode_matches_e2m1_table(void)
{
	for (unsigned c = 0; c < 16; c++)
		CHECK_EQ_U64(ck_mx_decode(c, 127), e2m1_bf16[c]);
}

/* Every code at every valid scale is the exact value v * 2^(s-127), or Inf when it overflows. */
static void mxfp4_decode_is_exact_at_every_scale(void)
{
	int bad = 0;
	for (unsigned s = 0; s < 255; s++)
		for (unsigned c = 0; c < 16; c++) {
			double v = ldexp(e2m1[c & 7], (int)s - 127) * (c & 8 ? -1 : 1);
			uint16_t want = ck_f32_to_bf16((float)v);
			if (c == 8)
				want = 0x8000;
			bad += ck_mx_decode(c, s) != want;
		}
	CHECK(bad == 0);
}

/* The diagram: byte j = code[2j] | code[2j+1] << 4 (low nibble = even element). */
static void mxfp4_low_nibble_is_even_element(void)
{
	uint8_t blk[16] = { 0x72 };
	uint16_t out[32];
	ck_mx_decode_block(blk, 127, out);
	CHECK_EQ_U64(out[0], 0x3F80);	/* code 2: 1.0 */
	CHECK_EQ_U64(out[1], 0x40C0);	/* code 7: 6.0 */
	CHECK_EQ_U64(out[2], 0);
}

/* mxfp4.md §4.5 at scale 1 (a block whose amax is 6 gets byte 127 under UP). */
static void mxfp4_tie_table(void)
{
	static const float y[] = { -0.0f, -0.1f, 0.25f, 0.75f, 1.25f, 1.75f, 2.5f, 3.5f, 5.0f, -2.5f, 7.0f };
	/* expected codes: half-up (triton old), RNE (triton new, CUDA), ggml */
	static const uint8_t want[3][11] = {
		{ 8, 8, 1, 2, 3, 4, 5, 6, 7, 13, 7 },
		{ 8, 8, 0, 2, 2, 4, 4, 6, 6, 12, 7 },
		{ 0, 0, 0, 1, 2, 3, 4, 5, 6, 12, 7 },
	};
	static const enum ck_mx_round rr[3] = { CK_MX_ROUND_HALF_UP, CK_MX_ROUND_RNE, CK_MX_ROUND_GGML };
	for (int r = 0; r < 3; r++)
		for (size_t i = 0; i < CK_ARRAY_SIZE(y); i++) {
			unsigned c = ck_mx_encode(y[i], 1.0f, rr[r]);
			if (c != want[r][i])
				printf("# rule %d y=%g: code %u, want %u\n", r, (double)y[i], c, want[r][i]);
			CHECK(c == want[r][i]);
		}
}

static void mxfp4_scale_rules(void)
{
	/* UP: 2^ceil(log2(amax/6)); OCP: floor(log2 amax) - 2 */
	CHECK_EQ_U64(ck_mx_scale_byte(6.0f, CK_MX_SCALE_UP), 127);
	CHECK_EQ_U64(ck_mx_scale_byte(6.5f, CK_MX_SCALE_UP), 128);
	CHECK_EQ_U64(ck_mx_scale_byte(4.0f, CK_MX_SCALE_UP), 127);
	CHECK_EQ_U64(ck_mx_scale_byte(3.0f, CK_MX_SCALE_UP), 126);
	CHECK_EQ_U64(ck_mx_scale_byte(0.0f, CK_MX_SCALE_UP), 0);
	CHECK_EQ_U64(ck_mx_scale_byte(6.5f, CK_MX_SCALE_OCP), 127);
	CHECK_EQ_U64(ck_mx_scale_byte(4.0f, CK_MX_SCALE_OCP), 127);
	CHECK_EQ_U64(ck_mx_scale_byte(3.9f, CK_MX_SCALE_OCP), 126);
	CHECK_EQ_U64(ck_mx_scale_byte(0.0f, CK_MX_SCALE_OCP), 0);
	CHECK_EQ_U64(ck_mx_scale_byte(1e-38f, CK_MX_SCALE_OCP), 0);
}

/* Canonical blocks (max code 6 or 7) survive dequant -> quant under both scale rules. */
static void mxfp4_canonical_blocks_round_trip(void)
{
	int bad = 0;
	srand(5);
	for (int t = 0; t < 20000; t++) {
		uint8_t blk[16], back[16], s2 = 0;
		uint16_t v[32];
		float x[32];
		unsigned s = 1 + (unsigned)rand() % 250;
		struct ck_mx_rule rule = { t & 1 ? CK_MX_SCALE_OCP : CK_MX_SCALE_UP, CK_MX_ROUND_RNE };
		for (int j = 0; j < 16; j++)
			blk[j] = (uint8_t)rand();
		blk[rand() % 16] |= 0x06;	/* at least one 4.0 or 6.0 */
		ck_mx_decode_block(blk, s, v);
		for (int k = 0; k < 32; k++)
			x[k] = ck_bf16_to_f32(v[k]);
		bad += ck_mx_encode_block(x, rule, back, &s2) != 0;
		bad += s2 != s || memcmp(back, blk, 16) != 0;
	}
	CHECK(bad == 0);
}

static void mxfp4_rejects_nan_and_inf(void)
{
	float x[32] = { 0 };
	uint8_t blk[16], s;
	struct ck_mx_rule r = CK_MX_RULE_DEFAULT;
	x[5] = NAN;
	CHECK(ck_mx_encode_block(x, r, blk, &s) == 6);
	x[5] = 1;
	x[31] = -INFINITY;
	CHECK(ck_mx_encode_block(x, r, blk, &s) == 32);
}

/* ggml's split halves: qs[k] = elem[k] | elem[k+16] << 4, and back. */
static void mxfp4_ggml_reorder(void)
{
	uint8_t b[16], qs[16], back[16];
	for (int j = 0; j < 16; j++)
		b[j] = (uint8_t)(j * 37 + 11);
	ck_mx_pairs_to_ggml(b, qs);
	for (int k = 0; k < 16; k++) {
		unsigned e_k = k % 2 ? b[k / 2] >> 4 : b[k / 2] & 15u;
		unsigned e_k16 = (k + 16) % 2 ? b[(k + 16) / 2] >> 4 : b[(k + 16) / 2] & 15u;
		CHECK_EQ_U64(qs[k], e_k | e_k16 << 4);
	}
	ck_mx_ggml_to_pairs(qs, back);
	CHECK(!memcmp(back, b, 16));
}

/* The slice loops: transposed and plain, threaded or not, agree with the block function. */
static void mxfp4_slices_agree_with_blocks(void)
{
	enum { OUT = 150, G = 3, IN = 96 };
	static uint8_t blocks[OUT * G * 16], scales[OUT * G], qb[OUT * G * 16], qs[OUT * G];
	static uint16_t plain[OUT * IN], tr[IN * OUT];
	struct ck_mx_rule r = CK_MX_RULE_DEFAULT;
	struct ck_mx_where w;
	int bad = 0;

	for (size_t i = 0; i < sizeof(blocks); i++)
		blocks[i] = (uint8_t)(i * 7 + 3);
	for (size_t i = 0; i < sizeof(scales); i++)
		scales[i] = (uint8_t)(100 + i % 40);
	CHECK(ck_mx_dequant_slice(blocks, scales, OUT, G, 0, plain, 1, &w) == 0);
	CHECK(ck_mx_dequant_slice(blocks, scales, OUT, G, 1, tr, 3, &w) == 0);
	for (int o = 0; o < OUT; o++)
		for (int k = 0; k < IN; k++)
			bad += plain[o * IN + k] != tr[k * OUT + o] ||
			       plain[o * IN + k] != ck_mx_decode(blocks[(o * G + k / 32) * 16 + (k % 32) / 2] >>
								 (4 * (k & 1)) & 15u, scales[o * G + k / 32]);
	CHECK(bad == 0);
	CHECK(ck_mx_quant_slice(tr, CK_DT_BF16, OUT, IN, 1, r, qb, qs, 4, &w) == 0);
	memset(qb, 0, sizeof(qb));
	CHECK(ck_mx_quant_slice(plain, CK_DT_BF16, OUT, IN, 0, r, qb, qs, 1, &w) == 0);
	scales[77 * G + 2] = 255;
	scales[140 * G + 0] = 255;
	CHECK(ck_mx_dequant_slice(blocks, scales, OUT, G, 1, tr, 4, &w) == CK_EINVAL);
	CHECK_EQ_U64(w.row, 77);
	CHECK_EQ_U64(w.block, 2);
	tr[5 * OUT + 9] = 0x7FC0;
	CHECK(ck_mx_quant_slice(tr, CK_DT_BF16, OUT, IN, 1, r, qb, qs, 2, &w) == CK_EINVAL);
	CHECK_EQ_U64(w.row, 9);
	CHECK_EQ_U64(w.block, 0);
	CHECK_EQ_U64(w.elem, 5);
}

static void gptoss_names_round_trip(void)
{
	static const struct { const char *name; enum ck_gptoss_role role; int64_t layer, expert; } cases[] = {
		{ "model.layers.3.mlp.experts.gate_up_proj_blocks", CK_GO_GATE_UP_BLOCKS, 3, -1 },
		{ "block.3.mlp.mlp1_weight.blocks", CK_GO_GATE_UP_BLOCKS, 3, -1 },
		{ "block.11.mlp.mlp2_weight.scales", CK_GO_DOWN_SCALES, 11, -1 },
		{ "model.layers.0.mlp.experts.gate_up_projs.31.weight", CK_GO_GATE_UP_W, 0, 31 },
		{ "model.layers.0.mlp.experts.down_proj.weights.2.bias", CK_GO_DOWN_BIAS, 0, 2 },
		{ "blk.7.attn_output.weight", CK_GO_O, 7, -1 },
		{ "unembedding.weight", CK_GO_LM_HEAD, -1, -1 },
		{ "model.layers.12.self_attn.sinks", CK_GO_SINKS, 12, -1 },
	};
	struct ck_gptoss_name n;
	char buf[128];

	for (size_t i = 0; i < CK_ARRAY_SIZE(cases); i++) {
		CHECK(ck_gptoss_parse(cases[i].name, &n) == 0);
		CHECK(n.role == cases[i].role);
		CHECK(n.layer == cases[i].layer);
		CHECK(n.expert == cases[i].expert);
	}
	CHECK(ck_gptoss_parse("model.layers.03.mlp.router.weight", &n) < 0);
	CHECK(ck_gptoss_parse("model.layers.3.mlp.router.weightx", &n) < 0);
	CHECK(ck_gptoss_parse("model.layers.99999999999.mlp.router.weight", &n) < 0);
	CHECK(ck_gptoss_rename("block.5.attn.norm.scale", CK_GPTOSS_HF, buf, sizeof(buf)) == 0);
	CHECK_STR(buf, "model.layers.5.input_layernorm.weight");
	CHECK(ck_gptoss_rename("model.layers.5.self_attn.sinks", CK_GPTOSS_GGUF, buf, sizeof(buf)) == 0);
	CHECK_STR(buf, "blk.5.attn_sinks.weight");
	CHECK(ck_gptoss_rename("block.1.mlp.mlp2_bias", CK_GPTOSS_HF, buf, sizeof(buf)) == 0);
	CHECK_STR(buf, "model.layers.1.mlp.experts.down_proj_bias");
	CHECK(ck_gptoss_rename("block.1.attn.qkv.weight", CK_GPTOSS_HF, buf, sizeof(buf)) == CK_EUNSUPPORTED);
	CHECK(ck_gptoss_name(CK_GO_GATE_UP_W, CK_GPTOSS_EXPERT, 4, 17, buf, sizeof(buf)) == 0);
	CHECK_STR(buf, "model.layers.4.mlp.experts.gate_up_projs.17.weight");
	CHECK(ck_gptoss_name(CK_GO_GATE_UP_W, CK_GPTOSS_EXPERT, 4, 17, buf, 20) == CK_EINVAL);
	/* every role's canonical name parses back to it */
	for (int r = 1; r < CK_GO_NROLES; r++)
		for (int f = 0; f < CK_GPTOSS_NFLAVORS; f++) {
			if (ck_gptoss_name((enum ck_gptoss_role)r, (enum ck_gptoss_flavor)f, 6, 9, buf,
					   sizeof(buf)))
				continue;
			CHECK(ck_gptoss_parse(buf, &n) == 0);
			/* a GGUF expert name is shared by the BF16 and blocks roles */
			CHECK(n.role == (enum ck_gptoss_role)r ||
			      ck_gptoss_role((enum ck_gptoss_role)r)->bf16 == n.role);
		}
	CHECK(ck_gptoss_role(CK_GO_DOWN_SCALES)->blocks == CK_GO_DOWN_BLOCKS);
	CHECK(ck_gptoss_role(CK_GO_GATE_UP)->flags & CK_GO_F_HF_TRANSPOSED);
}

static void gptoss_config_all_dialects(void)
{
	static const char v4[] = "{\"model_type\":\"gpt_oss\",\"num_hidden_layers\":24,\"num_local_experts\":32,"
		"\"num_experts_per_tok\":4,\"vocab_size\":201088,\"hidden_size\":2880,\"intermediate_size\":2880,"
		"\"num_attention_heads\":64,\"num_key_value_heads\":8,\"head_dim\":64,\"rope_theta\":150000,"
		"\"rope_scaling\":{\"beta_fast\":32.0,\"beta_slow\":1.0,\"factor\":32.0,"
		"\"original_max_position_embeddings\":4096,\"rope_type\":\"yarn\",\"truncate\":false},"
		"\"quantization_config\":{\"quant_method\":\"mxfp4\"}}";
	static const char v5[] = "{\"model_type\":\"gpt_oss\",\"num_hidden_layers\":2,\"num_local_experts\":4,"
		"\"num_experts_per_tok\":2,\"vocab_size\":100,\"hidden_size\":64,\"intermediate_size\":64,"
		"\"num_attention_heads\":4,\"num_key_value_heads\":2,\"head_dim\":16,"
		"\"rope_parameters\":{\"rope_theta\":150000,\"factor\":32.0,\"rope_type\":\"yarn\"}}";
	static const char orig[] = "{\"num_hidden_layers\":24,\"num_experts\":32,\"experts_per_token\":4,"
		"\"vocab_size\":201088,\"hidden_size\":2880,\"intermediate_size\":2880,\"swiglu_limit\":7.0,"
		"\"head_dim\":64,\"num_attention_heads\":64,\"num_key_value_heads\":8,\"sliding_window\":128,"
		"\"initial_context_length\":4096,\"rope_theta\":150000,\"rope_scaling_factor\":32.0,"
		"\"rope_ntk_alpha\":1,\"rope_ntk_beta\":32}";
	struct ck_gptoss_config c;
	struct ck_diag d = CK_DIAG_INIT;
	uint64_t rows[3];
	char *js = NULL;

	CHECK(ck_gptoss_config_parse(v4, sizeof(v4) - 1, "v4", &c, &d) == 0);
	CHECK(c.experts == 32 && c.rope_factor == 32.0 && c.rope_original_max == 4096 && c.has_quant);
	CHECK(ck_gptoss_config_parse(v5, sizeof(v5) - 1, "v5", &c, &d) == 0);
	CHECK(c.experts == 4 && c.rope_theta == 150000 && !strcmp(c.rope_type, "yarn") && !c.original);
	CHECK(ck_gptoss_config_parse(orig, sizeof(orig) - 1, "orig", &c, &d) == 0);
	CHECK(c.original && c.experts == 32 && c.max_position == 131072 && c.rope_beta_fast == 32);
	ck_gptoss_qkv_rows(&c, rows);
	CHECK(rows[0] == 4096 && rows[1] == 512 && rows[2] == 512);
	CHECK(ck_gptoss_config_hf_json(orig, sizeof(orig) - 1, "orig", 1, &js, &d) == 0);
	CHECK(js && strstr(js, "\"num_local_experts\":\t32") && strstr(js, "\"quant_method\": \"mxfp4\"") &&
	      strstr(js, "\"swiglu_limit\":\t7.0") && strstr(js, "\"rms_norm_eps\":\t1e-05"));
	free(js);
	/* a HF config is edited as text: the member goes, everything else stays */
	CHECK(ck_gptoss_config_hf_json(v4, sizeof(v4) - 1, "v4", 0, &js, &d) == 0);
	CHECK(js && !strstr(js, "quantization_config") && strlen(js) == sizeof(v4) - 1 - 47);
	CHECK(js && !strcmp(js + strlen(js) - 7, "false}}"));
	free(js);
	CHECK(ck_gptoss_config_hf_json(v5, sizeof(v5) - 1, "v5", 1, &js, &d) == 0);
	/* before the first key that sorts after it */
	CHECK(js && strstr(js, "\"num_experts_per_tok\":2,\"quantization_config\": {\"modules_to_not_convert\"") &&
	      strstr(js, "\"quant_method\": \"mxfp4\"},\"vocab_size\":100,"));
	free(js);
	CHECK(ck_gptoss_config_parse("{\"num_hidden_layers\":-1}", 24, "bad", &c, &d) < 0);
	/* what to-gguf builds on: the model type, rope_theta given, the layer_types alternation */
	CHECK(c.model_type[0] == 0 && c.layer_types_n == -1);
	CHECK(ck_gptoss_config_parse(v4, sizeof(v4) - 1, "v4", &c, &d) == 0);
	CHECK(!strcmp(c.model_type, "gpt_oss") && c.rope_theta_given && c.layer_types_n == -1);
	CHECK(ck_gptoss_config_parse(v5, sizeof(v5) - 1, "v5", &c, &d) == 0 && c.rope_theta_given);
	{
		static const char lt[] = "{\"model_type\":\"gpt_oss\",\"num_hidden_layers\":3,\"num_local_experts\":4,"
			"\"num_experts_per_tok\":2,\"vocab_size\":100,\"hidden_size\":64,\"intermediate_size\":64,"
			"\"num_attention_heads\":4,\"num_key_value_heads\":2,\"rope_scaling\":{\"type\":\"yarn\"},"
			"\"layer_types\":[\"sliding_attention\",\"full_attention\",\"full_attention\"]}";
		static const char llama[] = "{\"model_type\":\"llama\",\"num_hidden_layers\":2}";
		static const char used[] = "{\"model_type\":\"gpt_oss\",\"num_hidden_layers\":2,\"num_local_experts\":4,"
			"\"num_experts_per_tok\":9,\"vocab_size\":100,\"hidden_size\":64,\"intermediate_size\":64,"
			"\"num_attention_heads\":4,\"num_key_value_heads\":2}";
		CHECK(ck_gptoss_config_parse(lt, sizeof(lt) - 1, "lt", &c, &d) == 0);
		CHECK(c.layer_types_n == 3 && c.layer_types_break == 2 && !c.rope_theta_given);
		CHECK(!strcmp(c.rope_type, "yarn") && c.rope_theta == 150000 && c.head_dim == 16);
		CHECK(ck_gptoss_config_parse(llama, sizeof(llama) - 1, "llama", &c, &d) == CK_EUNSUPPORTED);
		CHECK(strstr(d.msg, "model_type 'llama' is not gpt_oss") != NULL);
		CHECK(ck_gptoss_config_parse(used, sizeof(used) - 1, "used", &c, &d) == CK_EINVAL);
		CHECK(strstr(d.msg, "9 experts per token but 4 experts") != NULL);
	}
}

int main(void)
{
	RUN(mxfp4_decode_matches_e2m1_table);
	RUN(mxfp4_decode_is_exact_at_every_scale);
	RUN(mxfp4_low_nibble_is_even_element);
	RUN(mxfp4_tie_table);
	RUN(mxfp4_scale_rules);
	RUN(mxfp4_canonical_blocks_round_trip);
	RUN(mxfp4_rejects_nan_and_inf);
	RUN(mxfp4_ggml_reorder);
	RUN(mxfp4_slices_agree_with_blocks);
	RUN(gptoss_names_round_trip);
	RUN(gptoss_config_all_dialects);
	return tap_done();
}
