/*
 * lora.h - merge a PEFT LoRA adapter into its base checkpoint, streaming.
 *
 * Two passes.  The plan (ck_lora_plan) reads adapter_config.json and the
 * adapter's tensors (small) and the base's headers only: it classifies every
 * adapter tensor (lora_A/B, lora_B.bias, lora_embedding_A/B, DoRA
 * magnitude, full replacements from modules_to_save / save_embedding_layers
 * / bias="all", expert ParamWrapper groups), maps each to exactly one base
 * tensor, resolves rank, alpha and scale as PEFT does, decides the MoE
 * orientation, and fails on anything it cannot account for: an adapter
 * tensor that maps to nothing is an error, never a warning.  The stream
 * (ck_lora_write) then produces the output tensor by tensor through the
 * streaming safetensors writer, row block by row block for merged tensors,
 * and copies untouched tensors without decoding them.
 *
 * Arithmetic follows PEFT merge_and_unload on CPU, so the output equals its
 * result bit for bit: d = rn32(fma-chain_k(B*A) * rn32(s)) (PyTorch's sgemm
 * sums over k as a chain of fused multiply-adds; merge.c does the same
 * explicitly); Linear W' = rn(W + d); Embedding and expert parameters round
 * d to the base dtype first (W' = rn(W + rn(d)): PEFT casts their delta);
 * DoRA scales rn32(W + d) by rn32(m / ||row||); trainable tokens replace
 * rows.  Quantized bases are dequantized first (MXFP4 experts to BF16 in
 * the HF layout, bitsandbytes 4-bit to its logical dtype), as transformers
 * does before PEFT merges; --requant-mxfp4 quantizes touched experts back.
 *
 * Ownership: ck_lora_plan returns a plan freed with ck_lora_plan_free; it
 * keeps borrowed pointers into the base and adapter models, which must stay
 * open until it is freed.  Errors follow ck.h (one line in the ck_diag).
 */
#ifndef CK_LORA_H
#define CK_LORA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "../libtensor/ck.h"
#include "../libtensor/dtype.h"
#include "../libtensor/tensor.h"

struct ck_model;
struct ck_out;
struct ck_bnb_group;

/* "alpha_pattern" / "rank_pattern" entries, in JSON order (first match wins). */
struct ck_lora_pat {
	char *key;
	double value;
};

enum ck_lora_blayout { CK_LORA_B_RANK_MAJOR, CK_LORA_B_GROUPED };

/* What adapter_config.json says (the fields that matter for merging). */
struct ck_lora_config {
	double r, alpha;
	bool use_rslora, use_dora, lora_bias, fan_in_fan_out;
	struct ck_lora_pat *rank_pat, *alpha_pat;
	size_t nrank_pat, nalpha_pat;
	char **target_params;		/* target_parameters */
	size_t ntarget_params;
	char *peft_version;		/* NULL when absent (PEFT <= 0.17) */
	int peft_ver[3];		/* major, minor, patch; -1 when absent */
	enum ck_lora_blayout b_layout;	/* Unsloth's lora_B_layout marker */
	bool b_layout_given;
	/* trainable_token_indices: a list (for embed_tokens), or per module name */
	struct ck_lora_tokens {
		char *module;		/* "embed_tokens", or the dict key */
		int64_t *ids;
		size_t n;
	} *tokens;
	size_t ntokens;
};

/*
 * Parse adapter_config.json text.  Refuses peft types other than LORA,
 * inits that mutate the base (pissa, olora, corda, lora_ga), layer
 * replication, aLoRA, QALoRA and the other non-vanilla variants, and
 * trainable_token_indices, with a message that says why.  path names the
 * file in messages.  Free with ck_lora_config_release.
 */
int ck_lora_config_parse(struct ck_lora_config *c, const char *json, size_t len, const char *path,
			 struct ck_diag *d);
void ck_lora_config_release(struct ck_lora_config *c);

/*
 * Pattern lookup as PEFT >= 0.15 (get_pattern_key): the first key k, in
 * JSON order, with re.match(r"(.*\.)?(k)$", key).  Keys without regex
 * metacharacters match literally; others as POSIX extended regexes; a key
 * using Python-only syntax (\d, (?...), lookarounds) is refused.  Returns 1
 * and *v on a match, 0 on none, or a negative status.
 */
int ck_lora_pattern(const struct ck_lora_pat *p, size_t n, const char *key, double *v,
		    struct ck_diag *d);

/* How expert deltas are oriented (lora-merge.md 2.4). */
enum ck_moe_layout {
	CK_MOE_AUTO,		/* decide from the adapter's evidence */
	CK_MOE_STANDARD,	/* A [r*E, d1], B [d2, r*E]: delta[e] = (B_e A_e)^T */
	CK_MOE_SWAPPED,		/* A [r*E, d2], B [d1, r*E]: delta[e] = B_e A_e */
};

enum ck_lora_op {
	CK_LOP_NONE,		/* copied (or only replaced) */
	CK_LOP_LINEAR,		/* nn.Linear weight [out, in] (or [in, out] with fan_in_fan_out) */
	CK_LOP_EMBED,		/* nn.Embedding weight [V, H] */
	CK_LOP_EXPERTS,		/* a 3-D ParamWrapper parameter [E, d1, d2] */
	CK_LOP_BIAS,		/* bias += s * lora_B.bias */
	CK_LOP_PEREXPERT,	/* Unsloth per-expert Linear LoRA (gate_up_projs.<e>) on a fused [E, in, out] */
};

/*
 * One output tensor: a base tensor, and what happens to it.  An MXFP4
 * expert pair (X_blocks [E, OUT, G, 16] + X_scales [E, OUT, G], gpt-oss)
 * is one item on the blocks tensor: it is written as X, BF16, in the HF
 * layout [E, IN = 32G, OUT], and the scales' item is dropped.  A
 * bitsandbytes 4-bit weight is one item on its packed tensor, written
 * dequantized in its logical dtype and shape; its auxiliary tensors are
 * dropped.
 */
struct ck_lora_item {
	const struct ck_tensor *base;
	const char *out_name;			/* the base's name, or X for an MXFP4 pair */
	int ndim;				/* the logical shape (the base's, or [E, IN, OUT]) */
	uint64_t shape[CK_MAX_DIMS];
	enum ck_dtype dtype;			/* the logical dtype (BF16 for MXFP4, bnb's stored one) */
	const struct ck_tensor *mx_scales;	/* MXFP4 pair: the scales (base is the blocks) */
	struct ck_bnb_group *bnb;		/* a bitsandbytes 4-bit weight, dequantized on the fly */
	bool drop;				/* not written: the scales of an MXFP4 pair */
	const struct ck_tensor *replace;	/* adapter tensor that replaces the data, or NULL */
	enum ck_lora_op op;
	const struct ck_tensor *A, *B;		/* lora_A, lora_B (LINEAR/EMBED/EXPERTS), lora_B.bias (BIAS: B) */
	const struct ck_tensor *mag;		/* DoRA magnitude, or NULL */
	char *key;				/* the module (or parameter) path patterns match */
	uint64_t r, E;				/* per-expert rank; experts (1 unless EXPERTS) */
	double alpha, scale;			/* scale includes --scale */
	bool fifo;				/* fan_in_fan_out */
	enum ck_moe_layout layout;		/* EXPERTS */
	const char *layout_why;			/* the evidence that decided it */
	double max_delta;			/* max |W' - W|, filled by ck_lora_write */
	const struct ck_tensor **pA, **pB;	/* PEREXPERT: lora_A/B of expert e, or NULL */
	char *owned;				/* out_name when the plan allocated it */
	bool requant;				/* MXFP4 pair written back as MXFP4 (blocks item) */
	struct ck_lora_item *pair;		/* requant: on the scales item, its blocks item */
	uint8_t *stash;				/* requant: the new scales, kept until their turn */
	const struct ck_tensor *tt;		/* trainable_tokens_delta: rows tt_ids[i] := tt[i] */
	const int64_t *tt_ids;
};

struct ck_lora_plan {
	struct ck_lora_config cfg;
	struct ck_lora_item *items;		/* one per base tensor, in base file order */
	size_t nitems;
	size_t nadapted;			/* items with op != NONE or a replacement */
	size_t nadapter_tensors;		/* every one consumed */
	enum ck_moe_layout moe_layout;		/* the decision for expert params (AUTO if none) */
	const char *moe_why;
	size_t nmxfp4;				/* MXFP4 expert pairs dequantized to BF16 */
	size_t nrequant;			/* MXFP4 expert pairs merged and quantized back */
	size_t nbnb;				/* bitsandbytes 4-bit weights dequantized */
};

struct ck_lora_opts {
	double scale;			/* user multiplier (1.0) */
	enum ck_moe_layout moe_layout;	/* forced by --moe-layout, else AUTO */
	bool requant_mxfp4;		/* touched MXFP4 experts go back to MXFP4; the rest is copied */
};

/*
 * Plan the merge of adapter (the adapter_model.safetensors, opened with
 * ck_model_open) into base, with cfg parsed from its adapter_config.json
 * (the plan takes ownership of cfg).  Returns 0, CK_EINVAL/CK_EUNSUPPORTED
 * for an adapter that does not fit the base, or CK_EUSAGE when the expert
 * layout is ambiguous and o->moe_layout does not decide it.
 */
int ck_lora_plan(struct ck_lora_plan **out, const struct ck_model *base, const struct ck_model *adapter,
		 struct ck_lora_config *cfg, const struct ck_lora_opts *o, struct ck_diag *d);
void ck_lora_plan_free(struct ck_lora_plan *p);

/*
 * Stream the merged checkpoint into the output folder o (begun by the
 * caller, committed by the caller): sharded safetensors + index.  out_dtype
 * CK_DT_UNKNOWN keeps each tensor's dtype; F32/F16/BF16 converts float
 * tensors.  jobs threads share the rows of each merged tensor.
 */
int ck_lora_write(struct ck_lora_plan *p, const struct ck_model *base, struct ck_out *o,
		  uint64_t shard_size, enum ck_dtype out_dtype, int jobs, struct ck_diag *d);

const char *ck_lora_op_name(enum ck_lora_op op);
const char *ck_moe_layout_name(enum ck_moe_layout l);

#endif
