/*
 * gptoss.h - the one description of the gpt-oss family every tool reads:
 * which tensors a checkpoint has, what each is called in every flavor, how
 * it is laid out, and what config.json says about the shapes.
 *
 * Flavors (names of the same tensor):
 *	HF        model.layers.N.mlp.experts.gate_up_proj_blocks    (openai/gpt-oss-20b)
 *	ORIGINAL  block.N.mlp.mlp1_weight.blocks                    (its original/ folder)
 *	GGUF      blk.N.ffn_gate_exps.weight                        (llama.cpp convert_hf_to_gguf)
 *	EXPERT    model.layers.N.mlp.experts.gate_up_projs.E.weight (Unsloth per-expert; one
 *	          nn.Linear per expert, weight [OUT, IN])
 * A role has one canonical name per flavor (the one we write) and may have
 * aliases (accepted when reading).  Roles that exist in one flavor only
 * (the fused original attn.qkv, llama.cpp's split gate/up experts) have no
 * name in the others: ck_gptoss_name returns CK_EUNSUPPORTED there.
 *
 * Layouts (flags): an expert tensor starts with the expert dimension E;
 * the HF BF16 experts are [E, IN, OUT] (input first: transformers computes
 * x @ W), everything else [.., OUT, IN]; gate_up rows (OUT) interleave gate
 * (even) and up (odd); MXFP4 blocks/scales are pairs [E, OUT, IN/32, 16] and
 * [E, OUT, IN/32] (see quant/mxfp4.h).
 *
 * Ownership: the table and the strings it returns are static.  Names are
 * written into caller buffers.  Errors: 0 / negative enum ck_status.
 */
#ifndef CK_GPTOSS_H
#define CK_GPTOSS_H

#include <stddef.h>
#include <stdint.h>
#include "ck.h"

enum ck_gptoss_flavor {
	CK_GPTOSS_HF = 0,
	CK_GPTOSS_ORIGINAL,
	CK_GPTOSS_GGUF,
	CK_GPTOSS_EXPERT,
	CK_GPTOSS_NFLAVORS
};

enum ck_gptoss_role {
	CK_GO_NONE = 0,
	CK_GO_EMBED,		/* [V, H] */
	CK_GO_NORM,		/* final norm [H] */
	CK_GO_LM_HEAD,		/* [V, H] */
	CK_GO_ATTN_NORM,	/* input_layernorm [H] */
	CK_GO_POST_NORM,	/* post_attention_layernorm [H] */
	CK_GO_Q, CK_GO_Q_BIAS,	/* [heads*hd, H], [heads*hd] */
	CK_GO_K, CK_GO_K_BIAS,	/* [kv*hd, H] */
	CK_GO_V, CK_GO_V_BIAS,
	CK_GO_QKV, CK_GO_QKV_BIAS,	/* original/GGUF-original only: rows q, k, v */
	CK_GO_O, CK_GO_O_BIAS,	/* [H, heads*hd] */
	CK_GO_SINKS,		/* [heads] */
	CK_GO_ROUTER, CK_GO_ROUTER_BIAS,	/* [E, H], [E] */
	CK_GO_GATE_UP,		/* HF BF16 [E, H, 2I] */
	CK_GO_GATE_UP_BLOCKS,	/* [E, 2I, H/32, 16] */
	CK_GO_GATE_UP_SCALES,	/* [E, 2I, H/32] */
	CK_GO_GATE_UP_BIAS,	/* [E, 2I]; EXPERT flavor: [2I] of one expert */
	CK_GO_GATE_UP_W,	/* EXPERT flavor: one expert's [2I, H] */
	CK_GO_DOWN,		/* HF BF16 [E, I, H] */
	CK_GO_DOWN_BLOCKS,	/* [E, H, I/32, 16] */
	CK_GO_DOWN_SCALES,	/* [E, H, I/32] */
	CK_GO_DOWN_BIAS,	/* [E, H] */
	CK_GO_DOWN_W,		/* EXPERT flavor: one expert's [H, I] */
	CK_GO_GATE_EXPS, CK_GO_GATE_EXPS_BIAS,	/* GGUF: gate rows of gate_up */
	CK_GO_UP_EXPS, CK_GO_UP_EXPS_BIAS,	/* GGUF: up rows of gate_up */
	CK_GO_NROLES
};

/* Layout flags of a role. */
enum {
	CK_GO_F_LAYER = 1 << 0,		/* per layer (names carry N) */
	CK_GO_F_EXPERTS = 1 << 1,	/* leading dimension E (all experts) */
	CK_GO_F_ONE_EXPERT = 1 << 2,	/* one expert (names carry E) */
	CK_GO_F_HF_TRANSPOSED = 1 << 3,	/* [E, IN, OUT] rather than [E, OUT, IN] */
	CK_GO_F_INTERLEAVED = 1 << 4,	/* OUT alternates gate (even) and up (odd) rows */
	CK_GO_F_MX_BLOCKS = 1 << 5,	/* MXFP4 blocks (U8) */
	CK_GO_F_MX_SCALES = 1 << 6,	/* MXFP4 scales (U8, E8M0) */
	CK_GO_F_BIAS = 1 << 7,
	CK_GO_F_NORM = 1 << 8,		/* RMSNorm weight ("scale" in the original flavor) */
	CK_GO_F_QKV_PART = 1 << 9,	/* a row range of the original fused qkv */
};

struct ck_gptoss_role_info {
	enum ck_gptoss_role role;
	const char *id;			/* "gate_up_blocks": a stable short name */
	unsigned flags;
	/* for MXFP4 blocks/scales/BF16/bias/per-expert roles: the related roles */
	enum ck_gptoss_role bf16, blocks, scales, bias, expert_w;
};

/* The info of role (never NULL for a valid role). */
const struct ck_gptoss_role_info *ck_gptoss_role(enum ck_gptoss_role role);

/* A tensor name taken apart. */
struct ck_gptoss_name {
	enum ck_gptoss_role role;
	enum ck_gptoss_flavor flavor;
	int64_t layer;		/* -1 when the role is not per layer */
	int64_t expert;		/* -1 unless CK_GO_F_ONE_EXPERT */
};

/*
 * Recognize name in any flavor (canonical names and aliases).  Returns 0
 * and fills *out, or CK_EINVAL when name is not a gpt-oss tensor.  Layer and
 * expert numbers must be plain decimal (no sign, no leading zeros), < 2^31.
 */
int ck_gptoss_parse(const char *name, struct ck_gptoss_name *out);

/*
 * The canonical name of role in flavor, for layer/expert (ignored when the
 * role has none), into buf.  Returns 0, CK_EUNSUPPORTED when the flavor has
 * no such tensor, or CK_EINVAL when it does not fit in cap.
 */
int ck_gptoss_name(enum ck_gptoss_role role, enum ck_gptoss_flavor flavor, int64_t layer,
		   int64_t expert, char *buf, size_t cap);

/* Translate a name to another flavor: parse + name. */
int ck_gptoss_rename(const char *name, enum ck_gptoss_flavor to, char *buf, size_t cap);

/* ---- config.json ---- */

struct ck_gptoss_config {
	int64_t layers, experts, experts_per_tok, vocab, hidden, intermediate;
	int64_t heads, kv_heads, head_dim, sliding_window, initial_context, max_position;
	double swiglu_limit, rms_eps, rope_theta;
	/* YaRN (rope_scaling in transformers 4, rope_parameters in 5, flat in original) */
	char rope_type[16];
	double rope_factor, rope_beta_fast, rope_beta_slow;
	int64_t rope_original_max;
	int rope_truncate;		/* -1 unknown */
	int original;			/* parsed from an original/config.json */
	int has_quant;			/* HF config carries quantization_config */
	int rope_theta_given;		/* rope_theta was in the file (else transformers' default) */
	char model_type[32];		/* HF: "gpt_oss" (other types are refused); "" when absent */
	/*
	 * HF layer_types: -1 absent, -2 not a list of strings, else its length;
	 * layer_types_break is the first index that breaks gpt-oss's alternation
	 * (sliding_attention on even layers, full_attention on odd ones), or -1.
	 */
	int64_t layer_types_n, layer_types_break;
};

/*
 * Parse a gpt-oss config.json, any of: HF transformers 4 (top-level
 * rope_theta + rope_scaling), HF transformers 5 (rope_parameters), or the
 * original/config.json of OpenAI's repo.  Keys missing from the file keep
 * gpt-oss's defaults where transformers has one (rms 1e-5, swiglu 7.0,
 * head_dim = hidden/heads); the shape keys are required.  A HF model_type
 * other than gpt_oss is CK_EUNSUPPORTED.  path names the file in the error.
 */
int ck_gptoss_config_parse(const char *json, size_t len, const char *path,
			   struct ck_gptoss_config *c, struct ck_diag *d);

/* Read <dir>/config.json, or else <dir>/original/config.json. */
int ck_gptoss_config_load(const char *dir, struct ck_gptoss_config *c, struct ck_diag *d);

/*
 * The config.json to write for a HF-flavor output made from config src
 * (path for errors): a HF source is kept as is (key order too) with its
 * quantization_config removed, or, when mxfp4, set to the one OpenAI ships
 * ({"modules_to_not_convert": [self_attn, router, embed_tokens, lm_head],
 * "quant_method": "mxfp4"}) at its sorted place; an original/config.json is
 * rewritten in the HF form (transformers 4 rope_scaling, which 5 reads too).
 * *out is a new NUL-terminated string the caller frees.
 */
int ck_gptoss_config_hf_json(const char *src, size_t len, const char *path, int mxfp4, char **out,
			     struct ck_diag *d);

/* Rows of q, k and v in the fused qkv: heads*hd, kv*hd, kv*hd. */
void ck_gptoss_qkv_rows(const struct ck_gptoss_config *c, uint64_t rows[3]);

#endif
