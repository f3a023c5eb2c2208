/*
 * gptoss.c - the gpt-oss name and layout table, and config.json (gptoss.h).
 *
 * Name patterns: "{L}" stands for a layer number and "{E}" for an expert
 * number, written in plain decimal.  The first pattern of a role in a
 * flavor is the one we write; later ones are aliases we accept.  A GGUF
 * expert weight holds blocks and scales together (ggml MXFP4) or plain
 * floats, so the BF16 role and the blocks role share its name; parsing it
 * gives the BF16 role (listed first).
 */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "files.h"
#include "gptoss.h"
#include "jsonedit.h"

#define L "model.layers.{L}."
#define B "block.{L}."
#define K "blk.{L}."

/* Flag shorthands for the table below. */
#define LY CK_GO_F_LAYER
#define EX CK_GO_F_EXPERTS
#define E1 CK_GO_F_ONE_EXPERT
#define TR CK_GO_F_HF_TRANSPOSED
#define IL CK_GO_F_INTERLEAVED
#define MB CK_GO_F_MX_BLOCKS
#define MS CK_GO_F_MX_SCALES
#define BI CK_GO_F_BIAS
#define NO CK_GO_F_NORM
#define QP CK_GO_F_QKV_PART
#define R(r, name, fl) [r] = { .role = r, .id = name, .flags = fl }
#define GU .bf16 = CK_GO_GATE_UP, .blocks = CK_GO_GATE_UP_BLOCKS, .scales = CK_GO_GATE_UP_SCALES, \
	.bias = CK_GO_GATE_UP_BIAS, .expert_w = CK_GO_GATE_UP_W
#define DN .bf16 = CK_GO_DOWN, .blocks = CK_GO_DOWN_BLOCKS, .scales = CK_GO_DOWN_SCALES, \
	.bias = CK_GO_DOWN_BIAS, .expert_w = CK_GO_DOWN_W
#define RX(r, name, fl, rel) [r] = { .role = r, .id = name, .flags = fl, rel }

static const struct ck_gptoss_role_info roles[CK_GO_NROLES] = {
	R(CK_GO_NONE, "none", 0),
	R(CK_GO_EMBED, "embed", 0),
	R(CK_GO_NORM, "norm", NO),
	R(CK_GO_LM_HEAD, "lm_head", 0),
	R(CK_GO_ATTN_NORM, "attn_norm", LY | NO),
	R(CK_GO_POST_NORM, "post_norm", LY | NO),
	R(CK_GO_Q, "q", LY | QP),
	R(CK_GO_Q_BIAS, "q_bias", LY | QP | BI),
	R(CK_GO_K, "k", LY | QP),
	R(CK_GO_K_BIAS, "k_bias", LY | QP | BI),
	R(CK_GO_V, "v", LY | QP),
	R(CK_GO_V_BIAS, "v_bias", LY | QP | BI),
	R(CK_GO_QKV, "qkv", LY),
	R(CK_GO_QKV_BIAS, "qkv_bias", LY | BI),
	R(CK_GO_O, "o", LY),
	R(CK_GO_O_BIAS, "o_bias", LY | BI),
	R(CK_GO_SINKS, "sinks", LY),
	R(CK_GO_ROUTER, "router", LY),
	R(CK_GO_ROUTER_BIAS, "router_bias", LY | BI),
	RX(CK_GO_GATE_UP, "gate_up", LY | EX | TR | IL, GU),
	RX(CK_GO_GATE_UP_BLOCKS, "gate_up_blocks", LY | EX | IL | MB, GU),
	RX(CK_GO_GATE_UP_SCALES, "gate_up_scales", LY | EX | IL | MS, GU),
	RX(CK_GO_GATE_UP_BIAS, "gate_up_bias", LY | EX | IL | BI, GU),
	RX(CK_GO_GATE_UP_W, "gate_up_w", LY | E1 | IL, GU),
	RX(CK_GO_DOWN, "down", LY | EX | TR, DN),
	RX(CK_GO_DOWN_BLOCKS, "down_blocks", LY | EX | MB, DN),
	RX(CK_GO_DOWN_SCALES, "down_scales", LY | EX | MS, DN),
	RX(CK_GO_DOWN_BIAS, "down_bias", LY | EX | BI, DN),
	RX(CK_GO_DOWN_W, "down_w", LY | E1, DN),
	R(CK_GO_GATE_EXPS, "gate_exps", LY | EX),
	R(CK_GO_GATE_EXPS_BIAS, "gate_exps_bias", LY | EX | BI),
	R(CK_GO_UP_EXPS, "up_exps", LY | EX),
	R(CK_GO_UP_EXPS_BIAS, "up_exps_bias", LY | EX | BI),
};
#undef R
#undef RX
#undef GU
#undef DN
#undef LY
#undef EX
#undef E1
#undef TR
#undef IL
#undef MB
#undef MS
#undef BI
#undef NO
#undef QP

struct name_row {
	enum ck_gptoss_role role;
	enum ck_gptoss_flavor flavor;
	const char *pattern;
};

/*
 * Sources: transformers convert_gpt_oss_weights_to_hf.py (HF <-> original),
 * gguf-py constants.py / tensor_mapping.py for GPT_OSS (GGUF), Unsloth's
 * per-expert Linear modules (EXPERT).  GGUF's MXFP4 experts are named
 * "...exps.weight" whether they hold blocks or BF16, and the fused qkv of an
 * original-flavor GGUF (Ollama) is attn_qkv.
 */
static const struct name_row names[] = {
	{ CK_GO_EMBED, CK_GPTOSS_HF, "model.embed_tokens.weight" },
	{ CK_GO_EMBED, CK_GPTOSS_ORIGINAL, "embedding.weight" },
	{ CK_GO_EMBED, CK_GPTOSS_GGUF, "token_embd.weight" },
	{ CK_GO_NORM, CK_GPTOSS_HF, "model.norm.weight" },
	{ CK_GO_NORM, CK_GPTOSS_ORIGINAL, "norm.scale" },
	{ CK_GO_NORM, CK_GPTOSS_GGUF, "output_norm.weight" },
	{ CK_GO_LM_HEAD, CK_GPTOSS_HF, "lm_head.weight" },
	{ CK_GO_LM_HEAD, CK_GPTOSS_ORIGINAL, "unembedding.weight" },
	{ CK_GO_LM_HEAD, CK_GPTOSS_GGUF, "output.weight" },

	{ CK_GO_ATTN_NORM, CK_GPTOSS_HF, L "input_layernorm.weight" },
	{ CK_GO_ATTN_NORM, CK_GPTOSS_ORIGINAL, B "attn.norm.scale" },
	{ CK_GO_ATTN_NORM, CK_GPTOSS_GGUF, K "attn_norm.weight" },
	{ CK_GO_POST_NORM, CK_GPTOSS_HF, L "post_attention_layernorm.weight" },
	{ CK_GO_POST_NORM, CK_GPTOSS_ORIGINAL, B "mlp.norm.scale" },
	{ CK_GO_POST_NORM, CK_GPTOSS_GGUF, K "post_attention_norm.weight" },
	{ CK_GO_POST_NORM, CK_GPTOSS_GGUF, K "ffn_norm.weight" },	/* Ollama "gptoss" */

	{ CK_GO_Q, CK_GPTOSS_HF, L "self_attn.q_proj.weight" },
	{ CK_GO_Q, CK_GPTOSS_GGUF, K "attn_q.weight" },
	{ CK_GO_Q_BIAS, CK_GPTOSS_HF, L "self_attn.q_proj.bias" },
	{ CK_GO_Q_BIAS, CK_GPTOSS_GGUF, K "attn_q.bias" },
	{ CK_GO_K, CK_GPTOSS_HF, L "self_attn.k_proj.weight" },
	{ CK_GO_K, CK_GPTOSS_GGUF, K "attn_k.weight" },
	{ CK_GO_K_BIAS, CK_GPTOSS_HF, L "self_attn.k_proj.bias" },
	{ CK_GO_K_BIAS, CK_GPTOSS_GGUF, K "attn_k.bias" },
	{ CK_GO_V, CK_GPTOSS_HF, L "self_attn.v_proj.weight" },
	{ CK_GO_V, CK_GPTOSS_GGUF, K "attn_v.weight" },
	{ CK_GO_V_BIAS, CK_GPTOSS_HF, L "self_attn.v_proj.bias" },
	{ CK_GO_V_BIAS, CK_GPTOSS_GGUF, K "attn_v.bias" },
	{ CK_GO_QKV, CK_GPTOSS_ORIGINAL, B "attn.qkv.weight" },
	{ CK_GO_QKV, CK_GPTOSS_GGUF, K "attn_qkv.weight" },
	{ CK_GO_QKV_BIAS, CK_GPTOSS_ORIGINAL, B "attn.qkv.bias" },
	{ CK_GO_QKV_BIAS, CK_GPTOSS_GGUF, K "attn_qkv.bias" },
	{ CK_GO_O, CK_GPTOSS_HF, L "self_attn.o_proj.weight" },
	{ CK_GO_O, CK_GPTOSS_ORIGINAL, B "attn.out.weight" },
	{ CK_GO_O, CK_GPTOSS_GGUF, K "attn_output.weight" },
	{ CK_GO_O, CK_GPTOSS_GGUF, K "attn_out.weight" },		/* Ollama "gptoss" */
	{ CK_GO_O_BIAS, CK_GPTOSS_HF, L "self_attn.o_proj.bias" },
	{ CK_GO_O_BIAS, CK_GPTOSS_ORIGINAL, B "attn.out.bias" },
	{ CK_GO_O_BIAS, CK_GPTOSS_GGUF, K "attn_output.bias" },
	{ CK_GO_O_BIAS, CK_GPTOSS_GGUF, K "attn_out.bias" },
	{ CK_GO_SINKS, CK_GPTOSS_HF, L "self_attn.sinks" },
	{ CK_GO_SINKS, CK_GPTOSS_ORIGINAL, B "attn.sinks" },
	{ CK_GO_SINKS, CK_GPTOSS_GGUF, K "attn_sinks.weight" },
	{ CK_GO_SINKS, CK_GPTOSS_GGUF, K "attn_sinks" },
	{ CK_GO_ROUTER, CK_GPTOSS_HF, L "mlp.router.weight" },
	{ CK_GO_ROUTER, CK_GPTOSS_ORIGINAL, B "mlp.gate.weight" },
	{ CK_GO_ROUTER, CK_GPTOSS_GGUF, K "ffn_gate_inp.weight" },
	{ CK_GO_ROUTER, CK_GPTOSS_EXPERT, L "mlp.router.linear.weight" },
	{ CK_GO_ROUTER_BIAS, CK_GPTOSS_HF, L "mlp.router.bias" },
	{ CK_GO_ROUTER_BIAS, CK_GPTOSS_ORIGINAL, B "mlp.gate.bias" },
	{ CK_GO_ROUTER_BIAS, CK_GPTOSS_GGUF, K "ffn_gate_inp.bias" },
	{ CK_GO_ROUTER_BIAS, CK_GPTOSS_EXPERT, L "mlp.router.linear.bias" },

	{ CK_GO_GATE_UP, CK_GPTOSS_HF, L "mlp.experts.gate_up_proj" },
	{ CK_GO_GATE_UP_BLOCKS, CK_GPTOSS_HF, L "mlp.experts.gate_up_proj_blocks" },
	{ CK_GO_GATE_UP_BLOCKS, CK_GPTOSS_ORIGINAL, B "mlp.mlp1_weight.blocks" },
	{ CK_GO_GATE_UP_SCALES, CK_GPTOSS_HF, L "mlp.experts.gate_up_proj_scales" },
	{ CK_GO_GATE_UP_SCALES, CK_GPTOSS_ORIGINAL, B "mlp.mlp1_weight.scales" },
	{ CK_GO_GATE_UP_BIAS, CK_GPTOSS_HF, L "mlp.experts.gate_up_proj_bias" },
	{ CK_GO_GATE_UP_BIAS, CK_GPTOSS_ORIGINAL, B "mlp.mlp1_bias" },
	/* Ollama before 2025-10 kept gate/up fused (and interleaved) */
	{ CK_GO_GATE_UP, CK_GPTOSS_GGUF, K "ffn_gate_up_exps.weight" },
	{ CK_GO_GATE_UP_BLOCKS, CK_GPTOSS_GGUF, K "ffn_gate_up_exps.weight" },
	{ CK_GO_GATE_UP_BIAS, CK_GPTOSS_GGUF, K "ffn_gate_up_exps.bias" },
	{ CK_GO_GATE_UP_W, CK_GPTOSS_EXPERT, L "mlp.experts.gate_up_projs.{E}.weight" },
	{ CK_GO_GATE_UP_W, CK_GPTOSS_EXPERT, L "mlp.experts.gate_up_proj.weights.{E}.weight" },
	{ CK_GO_GATE_UP_BIAS, CK_GPTOSS_EXPERT, L "mlp.experts.gate_up_projs.{E}.bias" },
	{ CK_GO_GATE_UP_BIAS, CK_GPTOSS_EXPERT, L "mlp.experts.gate_up_proj.weights.{E}.bias" },

	{ CK_GO_DOWN, CK_GPTOSS_HF, L "mlp.experts.down_proj" },
	{ CK_GO_DOWN, CK_GPTOSS_GGUF, K "ffn_down_exps.weight" },	/* MXFP4 or BF16 */
	{ CK_GO_DOWN_BLOCKS, CK_GPTOSS_GGUF, K "ffn_down_exps.weight" },
	{ CK_GO_DOWN_BLOCKS, CK_GPTOSS_HF, L "mlp.experts.down_proj_blocks" },
	{ CK_GO_DOWN_BLOCKS, CK_GPTOSS_ORIGINAL, B "mlp.mlp2_weight.blocks" },
	{ CK_GO_DOWN_SCALES, CK_GPTOSS_HF, L "mlp.experts.down_proj_scales" },
	{ CK_GO_DOWN_SCALES, CK_GPTOSS_ORIGINAL, B "mlp.mlp2_weight.scales" },
	{ CK_GO_DOWN_BIAS, CK_GPTOSS_HF, L "mlp.experts.down_proj_bias" },
	{ CK_GO_DOWN_BIAS, CK_GPTOSS_ORIGINAL, B "mlp.mlp2_bias" },
	{ CK_GO_DOWN_BIAS, CK_GPTOSS_GGUF, K "ffn_down_exps.bias" },
	{ CK_GO_DOWN_W, CK_GPTOSS_EXPERT, L "mlp.experts.down_projs.{E}.weight" },
	{ CK_GO_DOWN_W, CK_GPTOSS_EXPERT, L "mlp.experts.down_proj.weights.{E}.weight" },
	{ CK_GO_DOWN_BIAS, CK_GPTOSS_EXPERT, L "mlp.experts.down_projs.{E}.bias" },
	{ CK_GO_DOWN_BIAS, CK_GPTOSS_EXPERT, L "mlp.experts.down_proj.weights.{E}.bias" },

	{ CK_GO_GATE_EXPS, CK_GPTOSS_GGUF, K "ffn_gate_exps.weight" },
	{ CK_GO_GATE_EXPS_BIAS, CK_GPTOSS_GGUF, K "ffn_gate_exps.bias" },
	{ CK_GO_UP_EXPS, CK_GPTOSS_GGUF, K "ffn_up_exps.weight" },
	{ CK_GO_UP_EXPS_BIAS, CK_GPTOSS_GGUF, K "ffn_up_exps.bias" },
};
#undef L
#undef B
#undef K

const struct ck_gptoss_role_info *ck_gptoss_role(enum ck_gptoss_role role)
{
	if ((int)role <= CK_GO_NONE || role >= CK_GO_NROLES)
		return &roles[CK_GO_NONE];
	return &roles[role];
}

/* A decimal number without sign or leading zeros, < 2^31; advances *s. */
static int take_number(const char **s, int64_t *v)
{
	const char *p = *s;
	int64_t n = 0;

	if (*p < '0' || *p > '9' || (p[0] == '0' && p[1] >= '0' && p[1] <= '9'))
		return 0;
	for (; *p >= '0' && *p <= '9'; p++) {
		n = n * 10 + (*p - '0');
		if (n >= (int64_t)1 << 31)
			return 0;
	}
	*s = p;
	*v = n;
	return 1;
}

static int match(const char *pat, const char *s, int64_t *layer, int64_t *expert)
{
	while (*pat) {
		if (!strncmp(pat, "{L}", 3) || !strncmp(pat, "{E}", 3)) {
			if (!take_number(&s, pat[1] == 'L' ? layer : expert))
				return 0;
			pat += 3;
		} else if (*pat++ != *s++) {
			return 0;
		}
	}
	return !*s;
}

int ck_gptoss_parse(const char *name, struct ck_gptoss_name *out)
{
	for (size_t i = 0; i < CK_ARRAY_SIZE(names); i++) {
		int64_t layer = -1, expert = -1;
		if (match(names[i].pattern, name, &layer, &expert)) {
			out->role = names[i].role;
			out->flavor = names[i].flavor;
			out->layer = layer;
			out->expert = expert;
			return 0;
		}
	}
	return CK_EINVAL;
}

int ck_gptoss_name(enum ck_gptoss_role role, enum ck_gptoss_flavor flavor, int64_t layer,
		   int64_t expert, char *buf, size_t cap)
{
	for (size_t i = 0; i < CK_ARRAY_SIZE(names); i++) {
		const char *p = names[i].pattern;
		size_t o = 0;
		if (names[i].role != role || names[i].flavor != flavor)
			continue;
		while (*p) {
			int n;
			if (!strncmp(p, "{L}", 3) || !strncmp(p, "{E}", 3)) {
				n = snprintf(buf + o, cap - o, "%" PRId64, p[1] == 'L' ? layer : expert);
				p += 3;
			} else {
				n = snprintf(buf + o, cap - o, "%c", *p++);
			}
			if (n < 0 || (size_t)n >= cap - o)
				return CK_EINVAL;
			o += (size_t)n;
		}
		if (!o && cap)
			buf[0] = 0;
		return 0;
	}
	return CK_EUNSUPPORTED;
}

int ck_gptoss_rename(const char *name, enum ck_gptoss_flavor to, char *buf, size_t cap)
{
	struct ck_gptoss_name n;

	CK_TRY(ck_gptoss_parse(name, &n));
	return ck_gptoss_name(n.role, to, n.layer, n.expert, buf, cap);
}

/* ---- config.json ---- */

/* A config key, and where it lives in each dialect (NULL: not there). */
struct cfg_key {
	size_t off;		/* offset in struct ck_gptoss_config */
	int is_int, required;
	const char *hf;		/* top-level key of a HF config */
	const char *hf_alt;	/* another spelling seen in HF configs */
	const char *orig;	/* key of original/config.json */
};

#define OFF(f) offsetof(struct ck_gptoss_config, f)
static const struct cfg_key cfg_keys[] = {
	{ OFF(layers), 1, 1, "num_hidden_layers", NULL, "num_hidden_layers" },
	{ OFF(experts), 1, 1, "num_local_experts", NULL, "num_experts" },
	{ OFF(experts_per_tok), 1, 1, "num_experts_per_tok", "experts_per_token", "experts_per_token" },
	{ OFF(vocab), 1, 1, "vocab_size", NULL, "vocab_size" },
	{ OFF(hidden), 1, 1, "hidden_size", NULL, "hidden_size" },
	{ OFF(intermediate), 1, 1, "intermediate_size", NULL, "intermediate_size" },
	{ OFF(heads), 1, 1, "num_attention_heads", NULL, "num_attention_heads" },
	{ OFF(kv_heads), 1, 1, "num_key_value_heads", NULL, "num_key_value_heads" },
	{ OFF(head_dim), 1, 0, "head_dim", NULL, "head_dim" },
	{ OFF(sliding_window), 1, 0, "sliding_window", NULL, "sliding_window" },
	{ OFF(initial_context), 1, 0, "initial_context_length", NULL, "initial_context_length" },
	{ OFF(max_position), 1, 0, "max_position_embeddings", NULL, NULL },
	{ OFF(swiglu_limit), 0, 0, "swiglu_limit", NULL, "swiglu_limit" },
	{ OFF(rms_eps), 0, 0, "rms_norm_eps", NULL, NULL },
	{ OFF(rope_theta), 0, 0, "rope_theta", NULL, "rope_theta" },
	{ OFF(rope_factor), 0, 0, NULL, NULL, "rope_scaling_factor" },
	{ OFF(rope_beta_fast), 0, 0, NULL, NULL, "rope_ntk_beta" },
	{ OFF(rope_beta_slow), 0, 0, NULL, NULL, "rope_ntk_alpha" },
};

/* The YaRN keys inside rope_scaling (transformers 4) / rope_parameters (5). */
static const struct cfg_key rope_keys[] = {
	{ OFF(rope_theta), 0, 0, "rope_theta", NULL, NULL },
	{ OFF(rope_factor), 0, 0, "factor", NULL, NULL },
	{ OFF(rope_beta_fast), 0, 0, "beta_fast", NULL, NULL },
	{ OFF(rope_beta_slow), 0, 0, "beta_slow", NULL, NULL },
	{ OFF(rope_original_max), 1, 0, "original_max_position_embeddings", NULL, NULL },
};
#undef OFF

static int set_key(const cJSON *v, const struct cfg_key *k, struct ck_gptoss_config *c,
		   const char *path, const char *key, struct ck_diag *d)
{
	char *p = (char *)c + k->off;

	if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble))
		return ck_fail(d, CK_EINVAL, "'%s': key '%s' is not a number", path, key);
	if (k->is_int) {
		int64_t n;
		if (v->valuedouble < 0 || v->valuedouble > 9.0e15 ||
		    v->valuedouble != floor(v->valuedouble))
			return ck_fail(d, CK_EINVAL, "'%s': key '%s' is not a count (%g)", path, key,
				       v->valuedouble);
		n = (int64_t)v->valuedouble;
		memcpy(p, &n, sizeof(n));
	} else {
		memcpy(p, &v->valuedouble, sizeof(double));
	}
	return 0;
}

static int read_keys(const cJSON *obj, const struct cfg_key *keys, size_t n, int orig,
		     struct ck_gptoss_config *c, const char *path, struct ck_diag *d)
{
	for (size_t i = 0; i < n; i++) {
		const char *name = orig ? keys[i].orig : keys[i].hf;
		const cJSON *v = name ? cJSON_GetObjectItemCaseSensitive(obj, name) : NULL;
		if (!v && !orig && keys[i].hf_alt) {
			name = keys[i].hf_alt;
			v = cJSON_GetObjectItemCaseSensitive(obj, name);
		}
		if (v && !cJSON_IsNull(v)) {
			CK_TRY(set_key(v, &keys[i], c, path, name, d));
		} else if (keys[i].required && (orig ? keys[i].orig : keys[i].hf)) {
			return ck_fail(d, CK_EINVAL, "'%s': config key '%s' is missing", path,
				       orig ? keys[i].orig : keys[i].hf);
		}
	}
	return 0;
}

/* gpt-oss alternates sliding and full attention, sliding first (GptOssConfig's default). */
static void layer_types(const cJSON *lt, struct ck_gptoss_config *c)
{
	int n;

	if (!lt || cJSON_IsNull(lt))
		return;
	if (!cJSON_IsArray(lt)) {
		c->layer_types_n = -2;
		return;
	}
	n = cJSON_GetArraySize(lt);
	c->layer_types_n = n;
	for (int i = 0; i < n; i++) {
		const cJSON *e = cJSON_GetArrayItem(lt, i);
		if (!cJSON_IsString(e)) {
			c->layer_types_n = -2;
			return;
		}
		if (c->layer_types_break < 0 &&
		    strcmp(e->valuestring, i % 2 ? "full_attention" : "sliding_attention"))
			c->layer_types_break = i;
	}
}

int ck_gptoss_config_parse(const char *json, size_t len, const char *path,
			   struct ck_gptoss_config *c, struct ck_diag *d)
{
	cJSON *root = cJSON_ParseWithLength(json, len);
	const cJSON *rope, *t;
	int rc;

	memset(c, 0, sizeof(*c));
	c->swiglu_limit = 7.0;
	c->rms_eps = 1e-5;
	c->rope_theta = 150000;
	c->rope_truncate = -1;
	if (!root || !cJSON_IsObject(root)) {
		cJSON_Delete(root);
		return ck_fail(d, CK_EINVAL, "'%s': not a JSON object", path);
	}
	c->layer_types_n = c->layer_types_break = -1;
	/* original/config.json has num_experts and no model_type */
	c->original = cJSON_HasObjectItem(root, "num_experts") && !cJSON_HasObjectItem(root, "model_type");
	t = cJSON_GetObjectItemCaseSensitive(root, "model_type");
	if (!c->original && cJSON_IsString(t)) {
		snprintf(c->model_type, sizeof(c->model_type), "%s", t->valuestring);
		if (strcmp(t->valuestring, "gpt_oss")) {
			rc = ck_fail(d, CK_EUNSUPPORTED, "'%s': model_type '%s' is not gpt_oss (unknown "
				     "architecture)", path, c->model_type);
			goto out;
		}
	}
	t = cJSON_GetObjectItemCaseSensitive(root, "rope_theta");
	c->rope_theta_given = t && !cJSON_IsNull(t);
	rc = read_keys(root, cfg_keys, CK_ARRAY_SIZE(cfg_keys), c->original, c, path, d);
	if (rc)
		goto out;
	if (c->original) {
		snprintf(c->rope_type, sizeof(c->rope_type), "yarn");
		c->rope_original_max = c->initial_context;
		c->rope_truncate = 0;
		if (c->rope_factor > 0 && c->initial_context > 0)
			c->max_position = (int64_t)(c->rope_factor * (double)c->initial_context);
	} else {
		rope = cJSON_GetObjectItemCaseSensitive(root, "rope_parameters");
		if (!cJSON_IsObject(rope))
			rope = cJSON_GetObjectItemCaseSensitive(root, "rope_scaling");
		if (cJSON_IsObject(rope)) {
			rc = read_keys(rope, rope_keys, CK_ARRAY_SIZE(rope_keys), 0, c, path, d);
			if (rc)
				goto out;
			t = cJSON_GetObjectItemCaseSensitive(rope, "rope_theta");
			c->rope_theta_given |= t && !cJSON_IsNull(t);
			t = cJSON_GetObjectItemCaseSensitive(rope, "rope_type");
			if (!t || cJSON_IsNull(t))	/* the older spelling */
				t = cJSON_GetObjectItemCaseSensitive(rope, "type");
			if (cJSON_IsString(t))
				snprintf(c->rope_type, sizeof(c->rope_type), "%s", t->valuestring);
			t = cJSON_GetObjectItemCaseSensitive(rope, "truncate");
			if (cJSON_IsBool(t))
				c->rope_truncate = cJSON_IsTrue(t);
		}
		c->has_quant = cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(root, "quantization_config"));
		layer_types(cJSON_GetObjectItemCaseSensitive(root, "layer_types"), c);
	}
	if (!c->head_dim && c->heads)
		c->head_dim = c->hidden / c->heads;
	if (c->layers < 1 || c->experts < 1 || c->hidden < 1 || c->intermediate < 1 || c->heads < 1 ||
	    c->kv_heads < 1 || c->vocab < 1 || c->head_dim < 1 || c->layers > 100000 ||
	    c->experts > 1000000)
		rc = ck_fail(d, CK_EINVAL, "'%s': implausible gpt-oss shape keys", path);
	else if (c->experts_per_tok > c->experts)
		rc = ck_fail(d, CK_EINVAL, "'%s': %" PRId64 " experts per token but %" PRId64 " experts",
			     path, c->experts_per_tok, c->experts);
out:
	cJSON_Delete(root);
	return rc;
}

int ck_gptoss_config_load(const char *dir, struct ck_gptoss_config *c, struct ck_diag *d)
{
	static const char *const rel[] = { "config.json", "original/config.json" };
	char path[4096];
	char *buf = NULL;
	size_t len = 0;
	int rc = CK_EINVAL;

	for (size_t i = 0; i < CK_ARRAY_SIZE(rel); i++) {
		if ((size_t)snprintf(path, sizeof(path), "%s/%s", dir, rel[i]) >= sizeof(path))
			return ck_fail(d, CK_EINVAL, "'%s': path too long", dir);
		rc = ck_read_file(path, 1 << 20, &buf, &len, d);
		if (!rc)
			break;
	}
	if (rc)
		return ck_fail(d, CK_EINVAL, "'%s': no config.json (nor original/config.json)", dir);
	rc = ck_gptoss_config_parse(buf, len, path, c, d);
	free(buf);
	return rc;
}

void ck_gptoss_qkv_rows(const struct ck_gptoss_config *c, uint64_t rows[3])
{
	rows[0] = (uint64_t)c->heads * (uint64_t)c->head_dim;
	rows[1] = rows[2] = (uint64_t)c->kv_heads * (uint64_t)c->head_dim;
}

/* The quantization_config OpenAI's HF checkpoints carry (Mxfp4Config.to_dict). */
static const char mx_quant_config[] =
	"{\"modules_to_not_convert\": [\"model.layers.*.self_attn\", \"model.layers.*.mlp.router\", "
	"\"model.embed_tokens\", \"lm_head\"], \"quant_method\": \"mxfp4\"}";

/*
 * A float the way Python's json writes it: integral values keep ".0"
 * (transformers 5 validates config fields by type and refuses 7 for a
 * float), others in the shortest form that reads back the same.
 */
static cJSON *py_float(double v)
{
	char buf[40];

	if (v == floor(v) && fabs(v) < 1e16) {
		snprintf(buf, sizeof(buf), "%.1f", v);
	} else {
		for (int prec = 1; prec <= 17; prec++) {
			snprintf(buf, sizeof(buf), "%.*g", prec, v);
			if (strtod(buf, NULL) == v)
				break;
		}
	}
	return cJSON_CreateRaw(buf);
}

/* A HF config.json for c, keys in the sorted order save_pretrained writes. */
static cJSON *hf_from_original(const struct ck_gptoss_config *c, int mxfp4)
{
	cJSON *o = cJSON_CreateObject(), *rope, *types;
	const char *arch = "GptOssForCausalLM";

	if (!o)
		return NULL;
	cJSON_AddItemToObject(o, "architectures", cJSON_CreateStringArray(&arch, 1));
	cJSON_AddTrueToObject(o, "attention_bias");
	cJSON_AddItemToObject(o, "attention_dropout", py_float(0.0));
	/* gpt-oss's <|return|> and <|endoftext|>; a vocabulary too small for them gets null */
	if (c->vocab > 200002)
		cJSON_AddNumberToObject(o, "eos_token_id", 200002);
	else
		cJSON_AddNullToObject(o, "eos_token_id");
	cJSON_AddNumberToObject(o, "experts_per_token", (double)c->experts_per_tok);
	cJSON_AddNumberToObject(o, "head_dim", (double)c->head_dim);
	cJSON_AddStringToObject(o, "hidden_act", "silu");
	cJSON_AddNumberToObject(o, "hidden_size", (double)c->hidden);
	cJSON_AddNumberToObject(o, "initial_context_length", (double)c->initial_context);
	cJSON_AddItemToObject(o, "initializer_range", py_float(0.02));
	cJSON_AddNumberToObject(o, "intermediate_size", (double)c->intermediate);
	types = cJSON_AddArrayToObject(o, "layer_types");
	/* even layers use the sliding window (OpenAI model.py: layer_idx % 2 == 0) */
	for (int64_t i = 0; types && i < c->layers; i++)
		cJSON_AddItemToArray(types, cJSON_CreateString(i % 2 ? "full_attention"
								   : "sliding_attention"));
	cJSON_AddNumberToObject(o, "max_position_embeddings", (double)c->max_position);
	cJSON_AddStringToObject(o, "model_type", "gpt_oss");
	cJSON_AddNumberToObject(o, "num_attention_heads", (double)c->heads);
	cJSON_AddNumberToObject(o, "num_experts_per_tok", (double)c->experts_per_tok);
	cJSON_AddNumberToObject(o, "num_hidden_layers", (double)c->layers);
	cJSON_AddNumberToObject(o, "num_key_value_heads", (double)c->kv_heads);
	cJSON_AddNumberToObject(o, "num_local_experts", (double)c->experts);
	cJSON_AddFalseToObject(o, "output_router_logits");
	if (c->vocab > 199999)
		cJSON_AddNumberToObject(o, "pad_token_id", 199999);
	else
		cJSON_AddNullToObject(o, "pad_token_id");
	if (mxfp4)
		cJSON_AddItemToObject(o, "quantization_config", cJSON_CreateRaw(mx_quant_config));
	cJSON_AddItemToObject(o, "rms_norm_eps", py_float(c->rms_eps));
	rope = cJSON_AddObjectToObject(o, "rope_scaling");
	if (rope) {
		cJSON_AddItemToObject(rope, "beta_fast", py_float(c->rope_beta_fast));
		cJSON_AddItemToObject(rope, "beta_slow", py_float(c->rope_beta_slow));
		cJSON_AddItemToObject(rope, "factor", py_float(c->rope_factor));
		cJSON_AddNumberToObject(rope, "original_max_position_embeddings",
					(double)c->rope_original_max);
		cJSON_AddStringToObject(rope, "rope_type", "yarn");
		cJSON_AddFalseToObject(rope, "truncate");
	}
	cJSON_AddItemToObject(o, "rope_theta", py_float(c->rope_theta));
	cJSON_AddItemToObject(o, "router_aux_loss_coef", py_float(0.9));
	cJSON_AddNumberToObject(o, "sliding_window", (double)c->sliding_window);
	cJSON_AddItemToObject(o, "swiglu_limit", py_float(c->swiglu_limit));
	cJSON_AddFalseToObject(o, "tie_word_embeddings");
	cJSON_AddTrueToObject(o, "use_cache");
	cJSON_AddNumberToObject(o, "vocab_size", (double)c->vocab);
	return o;
}

int ck_gptoss_config_hf_json(const char *src, size_t len, const char *path, int mxfp4, char **out,
			     struct ck_diag *d)
{
	struct ck_gptoss_config c;
	cJSON *root;

	*out = NULL;
	CK_TRY(ck_gptoss_config_parse(src, len, path, &c, d));
	if (!c.original) {
		/* kept as is, key order too; quantization_config at its sorted place */
		size_t n;
		int rc = ck_json_set_key(src, len, "quantization_config", mxfp4 ? mx_quant_config : NULL,
					 CK_JSON_AT_SORTED, out, &n, d);
		if (rc)
			ck_diag_prefix(d, "'%s'", path);
		return rc;
	}
	root = hf_from_original(&c, mxfp4);
	*out = root ? cJSON_Print(root) : NULL;
	cJSON_Delete(root);
	if (!*out)
		return ck_fail(d, CK_ENOMEM, "out of memory");
	return 0;
}
