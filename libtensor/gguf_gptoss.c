/*
 * gguf_gptoss.c - gpt-oss checkpoint -> llama.cpp GGUF (see gguf_gptoss.h).
 *
 * Three passes: read config.json into the hyperparameters and the tokenizer
 * files into the tokenizer KVs; map every source tensor to the GGUF tensor
 * it feeds (one table per naming flavor) and check its shape; then plan the
 * GGUF header and stream the tensors, one expert at a time for the experts.
 */
#include <cjson/cJSON.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "dtype.h"
#include "files.h"
#include "gguf.h"
#include "gguf_gptoss.h"
#include "gptoss.h"
#include "model.h"
#include "output.h"
#include "../quant/bnb.h"
#include "../quant/mxfp4.h"
#include "../quant/q8_0.h"
#include "../verify/tokenizer.h"

#define CONFIG_MAX (4u << 20)

/* ===== hyperparameters ===== */

struct hp {
	int original;		/* the original/ flavor (OpenAI ModelConfig fields) */
	uint32_t n_layer, n_ctx, n_embd, n_ff, n_head, n_head_kv, head_dim;
	uint32_t n_expert, n_used, swa, orig_ctx, vocab;
	int yarn;		/* rope scaling given (it is always YaRN for gpt-oss) */
	float rope_base, rope_factor, beta_fast, beta_slow, eps;
};

/* A count the GGUF stores as u32: given, positive, below 2^32. */
static int u32_key(int64_t v, const char *key, const char *file, uint32_t *out, struct ck_diag *d)
{
	if (v == 0)
		return ck_fail(d, CK_EINVAL, "'%s': config key '%s' is missing", file, key);
	if (v < 1 || v > UINT32_MAX)
		return ck_fail(d, CK_EINVAL, "'%s': config key '%s' is not a positive integer below 2^32",
			       file, key);
	*out = (uint32_t)v;
	return 0;
}

/* A positive float; def when absent (0) and def > 0, else required. */
static int f32_key(double v, double def, const char *key, const char *file, float *out,
		   struct ck_diag *d)
{
	if (v == 0 && def > 0)
		v = def;
	if (v == 0)
		return ck_fail(d, CK_EINVAL, "'%s': config key '%s' is missing", file, key);
	if (!(v > 0 && v < 3.0e38))
		return ck_fail(d, CK_EINVAL, "'%s': config key '%s' is not a positive number", file, key);
	*out = (float)v;
	return 0;
}

/*
 * The hyperparameters from the family parser (ck_gptoss_config_parse), with
 * what llama.cpp's gpt-oss needs on top: every size given, YaRN the only
 * rope scaling, sliding attention on even layers only (it hard-codes that).
 */
static int hp_from_config(const struct ck_gptoss_config *c, const char *file, struct hp *h,
			  struct ck_diag *d)
{
	int orig = c->original;

	if (!orig && strcmp(c->model_type, "gpt_oss"))	/* the parser refused any other type */
		return ck_fail(d, CK_EUNSUPPORTED, "'%s': model_type '(none)' is not gpt_oss (unknown "
			       "architecture)", file);
	h->original = orig;
	CK_TRY(u32_key(c->layers, "num_hidden_layers", file, &h->n_layer, d));
	CK_TRY(u32_key(c->hidden, "hidden_size", file, &h->n_embd, d));
	CK_TRY(u32_key(c->intermediate, "intermediate_size", file, &h->n_ff, d));
	CK_TRY(u32_key(c->heads, "num_attention_heads", file, &h->n_head, d));
	CK_TRY(u32_key(c->kv_heads, "num_key_value_heads", file, &h->n_head_kv, d));
	CK_TRY(u32_key(c->head_dim, "head_dim", file, &h->head_dim, d));
	CK_TRY(u32_key(c->experts, orig ? "num_experts" : "num_local_experts", file, &h->n_expert, d));
	CK_TRY(u32_key(c->experts_per_tok, orig ? "experts_per_token" : "num_experts_per_tok", file,
		       &h->n_used, d));
	CK_TRY(u32_key(c->sliding_window, "sliding_window", file, &h->swa, d));
	CK_TRY(u32_key(c->vocab, "vocab_size", file, &h->vocab, d));
	CK_TRY(f32_key(c->rms_eps, 1e-5, "rms_norm_eps", file, &h->eps, d));
	if (!c->rope_theta_given)
		return ck_fail(d, CK_EINVAL, "'%s': config key 'rope_theta' is missing", file);
	CK_TRY(f32_key(c->rope_theta, 0, "rope_theta", file, &h->rope_base, d));
	if (orig) {
		uint32_t init_ctx = 0;
		uint64_t ctx;
		CK_TRY(u32_key(c->initial_context, "initial_context_length", file, &init_ctx, d));
		CK_TRY(f32_key(c->rope_factor, 0, "rope_scaling_factor", file, &h->rope_factor, d));
		/* The HF export sets max_position_embeddings = factor * initial_context_length. */
		ctx = (uint64_t)((double)h->rope_factor * init_ctx);
		if (ctx < 1 || ctx > UINT32_MAX)
			return ck_fail(d, CK_EINVAL, "'%s': rope_scaling_factor * initial_context_length is "
				       "out of range", file);
		h->n_ctx = (uint32_t)ctx;
		h->orig_ctx = init_ctx;
		h->yarn = 1;
	} else {
		CK_TRY(u32_key(c->max_position, "max_position_embeddings", file, &h->n_ctx, d));
		if (c->rope_type[0] || c->rope_factor != 0) {
			if (strcmp(c->rope_type, "yarn"))
				return ck_fail(d, CK_EUNSUPPORTED, "'%s': rope type '%s' is not yarn", file,
					       c->rope_type[0] ? c->rope_type : "(none)");
			h->yarn = 1;
			CK_TRY(f32_key(c->rope_factor, 0, "factor", file, &h->rope_factor, d));
			CK_TRY(u32_key(c->rope_original_max, "original_max_position_embeddings", file,
				       &h->orig_ctx, d));
		}
		if (c->layer_types_n == -2 || (c->layer_types_n >= 0 && c->layer_types_n != c->layers))
			return ck_fail(d, CK_EINVAL, "'%s': layer_types is not a list of %u entries", file,
				       h->n_layer);
		if (c->layer_types_break >= 0)
			return ck_fail(d, CK_EUNSUPPORTED, "'%s': layer_types[%" PRId64 "] is not '%s' "
				       "(llama.cpp's gpt-oss has sliding attention on even layers only)", file,
				       c->layer_types_break,
				       c->layer_types_break % 2 ? "full_attention" : "sliding_attention");
	}
	CK_TRY(f32_key(c->rope_beta_fast, 32.0, orig ? "rope_ntk_beta" : "beta_fast", file, &h->beta_fast, d));
	CK_TRY(f32_key(c->rope_beta_slow, 1.0, orig ? "rope_ntk_alpha" : "beta_slow", file, &h->beta_slow, d));
	return 0;
}

static int load_hparams(const char *dir, struct hp *h, struct ck_diag *d)
{
	struct ck_gptoss_config c;
	char path[4096];
	char *buf = NULL;
	size_t len;
	int rc;

	memset(h, 0, sizeof(*h));
	snprintf(path, sizeof(path), "%s/config.json", dir);
	CK_TRY(ck_read_file(path, CONFIG_MAX, &buf, &len, d));
	rc = ck_gptoss_config_parse(buf, len, path, &c, d);
	free(buf);
	if (!rc)
		rc = hp_from_config(&c, path, h, d);
	if (rc)
		return rc;
	if (h->n_head % h->n_head_kv)
		return ck_fail(d, CK_EINVAL, "'%s': %u heads is not a multiple of %u key/value heads", path,
			       h->n_head, h->n_head_kv);
	/* Keep every derived size below 2^31 so the plan's products cannot overflow. */
	if ((uint64_t)h->n_head * h->head_dim > INT32_MAX || h->n_expert > 4096 || h->n_layer > 4096 ||
	    h->n_embd > (1u << 20) || h->n_ff > (1u << 20))
		return ck_fail(d, CK_EUNSUPPORTED, "'%s': sizes out of the supported range", path);
	return 0;
}

/* ===== tokenizer ===== */

enum { TT_NORMAL = 1, TT_CONTROL = 3, TT_USER = 4, TT_UNUSED = 5 };

/* The tokenizer KVs, built from tokcheck's loader (verify/tokenizer.h). */
struct vocab {
	uint64_t n;		/* = embedding rows */
	const char **tok;
	size_t *len;
	int32_t *type;
	char *pads;		/* "[PAD<id>]" strings */
	const char **merge;
	size_t *mlen;
	size_t nmerge;
	char *marena;		/* merges as "a b" */
	int64_t bos, eos, pad;
	uint32_t eos_list[CK_TOK_MAX_IDS];
	size_t n_eos_list;
	const char *tmpl;
	size_t tmpl_len;
	struct ck_tok *t;	/* owns the strings above */
};

static void vocab_free(struct vocab *v)
{
	free(v->tok);
	free(v->len);
	free(v->type);
	free(v->pads);
	free(v->merge);
	free(v->mlen);
	free(v->marena);
	ck_tok_free(v->t);
	memset(v, 0, sizeof(*v));
}

struct tokref {
	const char *s;
	size_t len;
	uint32_t id;
};

static int tokref_cmp(const void *a, const void *b)
{
	const struct tokref *x = a, *y = b;
	int c = memcmp(x->s, y->s, x->len < y->len ? x->len : y->len);
	if (c)
		return c;
	return x->len < y->len ? -1 : x->len > y->len;
}

/* A role's id: the tokenizer_config token, else config.json's *_token_id (first of a list). */
static int64_t role_id(const struct ck_tok *t, enum ck_tok_role r, enum ck_tok_idkey k)
{
	const struct ck_tok_role_tok *rt = ck_tok_role(t, r);
	const struct ck_tok_ids *ids = ck_tok_config_ids(t, k);
	if (rt && rt->id >= 0)
		return rt->id;
	return ids && ids->state == CK_TOK_IDS_SET && ids->n ? ids->v[0] : -1;
}

/*
 * Load the tokenizer of dir for n_rows embedding rows: run tokcheck's
 * vocab-vs-embedding check, then one token per row ("[PAD<id>]", UNUSED,
 * for ids the tokenizer does not name), merges as "a b", roles, template.
 */
static int load_vocab(const char *dir, uint64_t n_rows, struct vocab *v, struct ck_diag *d)
{
	const char *model_type;
	size_t arena = 0, pos = 0, padlen = 0, padpos = 0;
	const struct ck_tok_ids *eos;
	struct tokref *refs;
	int rc = 0;

	memset(v, 0, sizeof(*v));
	v->n = n_rows;
	CK_TRY(ck_tok_load(&v->t, dir, CK_TOK_NEED_JSON, d));
	model_type = ck_tok_model_type(v->t);
	if (!model_type || strcmp(model_type, "BPE"))
		return ck_fail(d, CK_EUNSUPPORTED, "'%s/tokenizer.json': model type %s is not BPE", dir,
			       model_type ? model_type : "(none)");
	rc = ck_tok_check_rows(v->t, n_rows, d);
	if (rc)
		return rc == CK_EDIFF ? (d->status = CK_EINVAL) : rc;	/* bad input here, not a "difference" */

	v->tok = ck_calloc(n_rows, sizeof(*v->tok));
	v->len = ck_calloc(n_rows, sizeof(*v->len));
	v->type = ck_calloc(n_rows, sizeof(*v->type));
	if (!v->tok || !v->len || !v->type)
		return ck_fail(d, CK_ENOMEM, "out of memory");
	for (uint64_t i = 0; i < n_rows; i++) {
		uint32_t len;
		bool added;
		const char *s = ck_tok_token_str(v->t, (uint32_t)i, &len, &added);
		if (s) {
			v->tok[i] = s;
			v->len[i] = len;
			v->type[i] = TT_NORMAL;
		} else {
			padlen += 16 + 6;
		}
	}
	/* added tokens: CONTROL when special, USER_DEFINED otherwise */
	for (size_t k = 0; k < ck_tok_added_count(v->t); k++) {
		const struct ck_tok_added *a = ck_tok_added(v->t, k);
		v->type[a->id] = a->flags & CK_TOK_SPECIAL ? TT_CONTROL : TT_USER;
	}
	v->pads = ck_malloc(padlen ? padlen : 1);
	if (!v->pads)
		return ck_fail(d, CK_ENOMEM, "out of memory");
	for (uint64_t i = 0; i < n_rows; i++)
		if (!v->tok[i]) {
			int w = snprintf(v->pads + padpos, padlen - padpos, "[PAD%" PRIu64 "]", i);
			v->tok[i] = v->pads + padpos;
			v->len[i] = (size_t)w;
			v->type[i] = TT_UNUSED;
			padpos += (size_t)w + 1;
		}
	/* llama.cpp asserts that token texts are unique */
	refs = ck_calloc(n_rows, sizeof(*refs));
	if (!refs)
		return ck_fail(d, CK_ENOMEM, "out of memory");
	for (uint64_t i = 0; i < n_rows; i++)
		refs[i] = (struct tokref){ v->tok[i], v->len[i], (uint32_t)i };
	qsort(refs, n_rows, sizeof(*refs), tokref_cmp);
	for (uint64_t i = 1; i < n_rows && !rc; i++)
		if (!tokref_cmp(&refs[i - 1], &refs[i]))
			rc = ck_fail(d, CK_EINVAL, "'%s/tokenizer.json': ids %u and %u have the same text '%.64s'",
				     dir, refs[i - 1].id, refs[i].id, refs[i].s);
	free(refs);
	if (rc)
		return rc;

	v->nmerge = ck_tok_merge_count(v->t, NULL);
	v->merge = ck_calloc(v->nmerge ? v->nmerge : 1, sizeof(*v->merge));
	v->mlen = ck_calloc(v->nmerge ? v->nmerge : 1, sizeof(*v->mlen));
	if (!v->merge || !v->mlen)
		return ck_fail(d, CK_ENOMEM, "out of memory");
	for (size_t i = 0; i < v->nmerge; i++)
		arena += ck_tok_merge_str(v->t, i, NULL, 0) + 1;
	v->marena = ck_malloc(arena ? arena : 1);
	if (!v->marena)
		return ck_fail(d, CK_ENOMEM, "out of memory");
	for (size_t i = 0; i < v->nmerge; i++) {
		size_t n = ck_tok_merge_str(v->t, i, v->marena + pos, arena - pos);
		v->merge[i] = v->marena + pos;
		v->mlen[i] = n;
		pos += n + 1;
	}

	v->bos = role_id(v->t, CK_TOK_BOS, CK_TOK_BOS_ID);
	v->eos = role_id(v->t, CK_TOK_EOS, CK_TOK_EOS_ID);
	v->pad = role_id(v->t, CK_TOK_PAD, CK_TOK_PAD_ID);
	/* the end-of-generation list of generation_config.json */
	eos = ck_tok_generation_ids(v->t, CK_TOK_EOS_ID);
	if (eos && eos->state == CK_TOK_IDS_SET)
		for (size_t i = 0; i < eos->n && i < CK_ARRAY_SIZE(v->eos_list); i++)
			if (eos->v[i] >= 0 && (uint64_t)eos->v[i] < n_rows)
				v->eos_list[v->n_eos_list++] = (uint32_t)eos->v[i];
	/* the template in effect: tokenizer_config's wins over chat_template.jinja */
	v->tmpl = ck_tok_chat_template(v->t, &v->tmpl_len, NULL, NULL);
	return 0;
}

/* ===== source tensors -> GGUF roles ===== */

enum role {
	R_ATTN_K_B, R_ATTN_K_W, R_ATTN_NORM, R_ATTN_O_B, R_ATTN_O_W, R_ATTN_Q_B, R_ATTN_Q_W,
	R_SINKS, R_ATTN_V_B, R_ATTN_V_W, R_DOWN_B, R_DOWN_W, R_GATE_B, R_GATE_W,
	R_ROUTER_B, R_ROUTER_W, R_UP_B, R_UP_W, R_POST_NORM,
	R_LAYER_COUNT,
	/* non-layer, in llama-quantize order */
	R_OUTPUT = R_LAYER_COUNT, R_OUTPUT_NORM, R_EMBED,
	R_COUNT
};

/* The gptoss.h role of each GGUF tensor (its GGUF-flavor name is the one we write). */
static const enum ck_gptoss_role gguf_role[R_COUNT] = {
	CK_GO_K_BIAS, CK_GO_K, CK_GO_ATTN_NORM, CK_GO_O_BIAS, CK_GO_O,
	CK_GO_Q_BIAS, CK_GO_Q, CK_GO_SINKS, CK_GO_V_BIAS, CK_GO_V,
	CK_GO_DOWN_BIAS, CK_GO_DOWN, CK_GO_GATE_EXPS_BIAS, CK_GO_GATE_EXPS,
	CK_GO_ROUTER_BIAS, CK_GO_ROUTER, CK_GO_UP_EXPS_BIAS, CK_GO_UP_EXPS,
	CK_GO_POST_NORM,
	CK_GO_LM_HEAD, CK_GO_NORM, CK_GO_EMBED,
};

/* "blk.3.attn_q.weight" for role r of layer il (il = n_layer: no layer). */
static void gguf_name(int r, uint32_t il, char *buf, size_t cap)
{
	if (ck_gptoss_name(gguf_role[r], CK_GPTOSS_GGUF, il, -1, buf, cap))
		snprintf(buf, cap, "?");
}

/* A bitsandbytes-quantized source weight: read through the NF4/FP4 library. */
struct bnb_src {
	const struct ck_tensor *t;
	struct ck_bnb_group g;
};

static int bnb_cmp(const void *a, const void *b)
{
	const struct ck_tensor *x = ((const struct bnb_src *)a)->t, *y = ((const struct bnb_src *)b)->t;
	return x < y ? -1 : x > y;
}

/* The sources of one layer (or, for layer index n_layer, of the non-layer tensors). */
struct layer {
	const struct ck_tensor *plain[R_COUNT];
	const struct ck_tensor *qkv_w, *qkv_b, *gu_blocks, *gu_scales, *dn_blocks, *dn_scales;
	const struct ck_tensor *gu_bias, *gu_float, *dn_float;
	const struct ck_tensor **pe[4];		/* per expert: gate_up w, b, down w, b */
};

struct conv {
	const struct ck_togguf_opts *o;
	struct ck_mx_rule rule;		/* for float experts quantized to MXFP4 */
	struct hp hp;
	struct ck_model *m;
	struct layer *layers;	/* n_layer + 1: the last holds the non-layer tensors */
	int threads;		/* for the block quantizers, 1..ENC_THREADS */
	struct bnb_src *bnb;	/* bitsandbytes 4-bit weights, sorted by tensor address */
	size_t nbnb;
	uint64_t n_vocab;
};

static const struct ck_bnb_group *bnb_of(const struct conv *c, const struct ck_tensor *t)
{
	struct bnb_src key = { .t = t };
	const struct bnb_src *b = c->nbnb ? bsearch(&key, c->bnb, c->nbnb, sizeof(*c->bnb), bnb_cmp) : NULL;
	return b ? &b->g : NULL;
}


static int set_slot(const struct ck_tensor **slot, const struct ck_tensor *t, struct ck_diag *d)
{
	if (*slot)
		return ck_fail(d, CK_EINVAL, "tensor '%s': maps to the same GGUF tensor as '%s'", t->name,
			       (*slot)->name);
	*slot = t;
	return 0;
}

/* Slot k (gate_up w, b, down w, b) of expert e: the tables are made on first use. */
static int pe_slot(struct conv *c, struct layer *L, int k, int64_t e, const struct ck_tensor *t,
		   struct ck_diag *d)
{
	for (int i = 0; i < 4; i++)
		if (!L->pe[i] && !(L->pe[i] = ck_calloc(c->hp.n_expert, sizeof(void *))))
			return ck_fail(d, CK_ENOMEM, "out of memory");
	return set_slot(&L->pe[k][e], t, d);
}

/* Put source tensor t where it belongs, by its name in the gpt-oss table (gptoss.h). */
static int classify(struct conv *c, const struct ck_tensor *t, struct ck_diag *d)
{
	struct ck_gptoss_name n;
	struct layer *L;
	int per_layer;

	if (ck_gptoss_parse(t->name, &n) || n.flavor == CK_GPTOSS_GGUF)
		goto unmapped;
	per_layer = (ck_gptoss_role(n.role)->flags & CK_GO_F_LAYER) != 0;
	if (per_layer != (n.layer >= 0) || n.layer >= (int64_t)c->hp.n_layer ||
	    n.expert >= (int64_t)c->hp.n_expert)
		goto unmapped;
	L = &c->layers[n.layer >= 0 ? (uint32_t)n.layer : c->hp.n_layer];
	switch (n.role) {
	case CK_GO_EMBED: return set_slot(&L->plain[R_EMBED], t, d);
	case CK_GO_NORM: return set_slot(&L->plain[R_OUTPUT_NORM], t, d);
	case CK_GO_LM_HEAD: return set_slot(&L->plain[R_OUTPUT], t, d);
	case CK_GO_ATTN_NORM: return set_slot(&L->plain[R_ATTN_NORM], t, d);
	case CK_GO_POST_NORM: return set_slot(&L->plain[R_POST_NORM], t, d);
	case CK_GO_Q: return set_slot(&L->plain[R_ATTN_Q_W], t, d);
	case CK_GO_Q_BIAS: return set_slot(&L->plain[R_ATTN_Q_B], t, d);
	case CK_GO_K: return set_slot(&L->plain[R_ATTN_K_W], t, d);
	case CK_GO_K_BIAS: return set_slot(&L->plain[R_ATTN_K_B], t, d);
	case CK_GO_V: return set_slot(&L->plain[R_ATTN_V_W], t, d);
	case CK_GO_V_BIAS: return set_slot(&L->plain[R_ATTN_V_B], t, d);
	case CK_GO_QKV: return set_slot(&L->qkv_w, t, d);
	case CK_GO_QKV_BIAS: return set_slot(&L->qkv_b, t, d);
	case CK_GO_O: return set_slot(&L->plain[R_ATTN_O_W], t, d);
	case CK_GO_O_BIAS: return set_slot(&L->plain[R_ATTN_O_B], t, d);
	case CK_GO_SINKS: return set_slot(&L->plain[R_SINKS], t, d);
	case CK_GO_ROUTER: return set_slot(&L->plain[R_ROUTER_W], t, d);
	case CK_GO_ROUTER_BIAS: return set_slot(&L->plain[R_ROUTER_B], t, d);
	case CK_GO_GATE_UP: return set_slot(&L->gu_float, t, d);
	case CK_GO_GATE_UP_BLOCKS: return set_slot(&L->gu_blocks, t, d);
	case CK_GO_GATE_UP_SCALES: return set_slot(&L->gu_scales, t, d);
	case CK_GO_GATE_UP_BIAS:
		return n.expert >= 0 ? pe_slot(c, L, 1, n.expert, t, d) : set_slot(&L->gu_bias, t, d);
	case CK_GO_GATE_UP_W: return pe_slot(c, L, 0, n.expert, t, d);
	case CK_GO_DOWN: return set_slot(&L->dn_float, t, d);
	case CK_GO_DOWN_BLOCKS: return set_slot(&L->dn_blocks, t, d);
	case CK_GO_DOWN_SCALES: return set_slot(&L->dn_scales, t, d);
	case CK_GO_DOWN_BIAS:
		return n.expert >= 0 ? pe_slot(c, L, 3, n.expert, t, d) : set_slot(&L->plain[R_DOWN_B], t, d);
	case CK_GO_DOWN_W: return pe_slot(c, L, 2, n.expert, t, d);
	default: break;
	}
unmapped:
	return ck_fail(d, CK_EUNSUPPORTED, "'%s': tensor '%s' maps to no GGUF tensor of gpt-oss",
		       ck_model_path(c->m), t->name);
}

/* ===== shape checks ===== */

static int want_shape(const struct conv *c, const struct ck_tensor *t, int is_float, int ndim,
		      const uint64_t *shape, struct ck_diag *d)
{
	char a[96], b[96];
	const struct ck_bnb_group *g = bnb_of(c, t);
	/* a bitsandbytes weight is checked by its logical shape and dtype */
	int tnd = g ? g->ndim : t->ndim;
	const uint64_t *tsh = g ? g->shape : t->shape;
	enum ck_dtype tdt = g ? g->dtype : t->dtype;
	int ok = tnd == ndim;
	for (int i = 0; ok && i < ndim; i++)
		ok = tsh[i] == shape[i];
	if (!ok)
		return ck_fail(d, CK_EINVAL, "'%s': tensor '%s': shape %s, config.json says %s",
			       ck_model_path(c->m), t->name, ck_shape_str(tsh, tnd, a, sizeof(a)),
			       ck_shape_str(shape, ndim, b, sizeof(b)));
	if (g && !is_float)
		return ck_fail(d, CK_EUNSUPPORTED, "'%s': tensor '%s': bitsandbytes 4-bit where MXFP4 "
			       "blocks are expected", ck_model_path(c->m), t->name);
	if (is_float && !ck_dtype_is_float(tdt))
		return ck_fail(d, CK_EUNSUPPORTED, "'%s': tensor '%s': dtype %s, expected F32, F16 or BF16",
			       ck_model_path(c->m), t->name, ck_dtype_name(tdt));
	if (!is_float && t->dtype != CK_DT_U8)
		return ck_fail(d, CK_EUNSUPPORTED, "'%s': tensor '%s': dtype %s, expected U8 (MXFP4)",
			       ck_model_path(c->m), t->name, ck_dtype_name(t->dtype));
	return 0;
}

#define WANT(t, fl, ...) do { const uint64_t s_[] = { __VA_ARGS__ }; \
	CK_TRY(want_shape(c, t, fl, (int)CK_ARRAY_SIZE(s_), s_, d)); } while (0)

/* The GGUF shape (PyTorch order) of role r. */
static int role_shape(const struct conv *c, int r, uint64_t *shape)
{
	const struct hp *h = &c->hp;
	uint64_t H = h->n_embd, I = h->n_ff, E = h->n_expert;
	uint64_t Q = (uint64_t)h->n_head * h->head_dim, KV = (uint64_t)h->n_head_kv * h->head_dim;

	switch (r) {
	case R_EMBED: case R_OUTPUT: shape[0] = c->n_vocab; shape[1] = H; return 2;
	case R_OUTPUT_NORM: case R_ATTN_NORM: case R_POST_NORM: case R_ATTN_O_B: shape[0] = H; return 1;
	case R_ATTN_Q_W: shape[0] = Q; shape[1] = H; return 2;
	case R_ATTN_Q_B: shape[0] = Q; return 1;
	case R_ATTN_K_W: case R_ATTN_V_W: shape[0] = KV; shape[1] = H; return 2;
	case R_ATTN_K_B: case R_ATTN_V_B: shape[0] = KV; return 1;
	case R_ATTN_O_W: shape[0] = H; shape[1] = Q; return 2;
	case R_SINKS: shape[0] = h->n_head; return 1;
	case R_ROUTER_W: shape[0] = E; shape[1] = H; return 2;
	case R_ROUTER_B: shape[0] = E; return 1;
	case R_GATE_W: case R_UP_W: shape[0] = E; shape[1] = I; shape[2] = H; return 3;
	case R_GATE_B: case R_UP_B: shape[0] = E; shape[1] = I; return 2;
	case R_DOWN_W: shape[0] = E; shape[1] = H; shape[2] = I; return 3;
	case R_DOWN_B: shape[0] = E; shape[1] = H; return 2;
	default: return 0;
	}
}

static int missing(const struct conv *c, uint32_t il, int r, struct ck_diag *d)
{
	char name[64];
	gguf_name(r, il, name, sizeof(name));
	return ck_fail(d, CK_EINVAL, "'%s': no source tensor for %s", ck_model_path(c->m), name);
}

/* Check one layer's sources are complete, of one expert form, with the right shapes. */
static int check_layer(struct conv *c, uint32_t il, struct ck_diag *d)
{
	const struct hp *h = &c->hp;
	struct layer *L = &c->layers[il];
	uint64_t H = h->n_embd, I = h->n_ff, E = h->n_expert, shape[4];
	uint64_t QKV = ((uint64_t)h->n_head + 2ull * h->n_head_kv) * h->head_dim;
	int mx = L->gu_blocks || L->gu_scales || L->dn_blocks || L->dn_scales;
	int fl = L->gu_float || L->dn_float;
	int pe = L->pe[0] != NULL;

	if (mx + fl + pe > 1)
		return ck_fail(d, CK_EINVAL, "'%s': layer %u mixes expert layouts (MXFP4, fused float, "
			       "per-expert)", ck_model_path(c->m), il);
	if (L->qkv_w) {
		WANT(L->qkv_w, 1, QKV, H);
		if (L->plain[R_ATTN_Q_W] || L->plain[R_ATTN_K_W] || L->plain[R_ATTN_V_W])
			return ck_fail(d, CK_EINVAL, "'%s': tensor '%s': fused and separate q/k/v in one layer",
				       ck_model_path(c->m), L->qkv_w->name);
	}
	if (L->qkv_b) {
		WANT(L->qkv_b, 1, QKV);
		if (L->plain[R_ATTN_Q_B] || L->plain[R_ATTN_K_B] || L->plain[R_ATTN_V_B])
			return ck_fail(d, CK_EINVAL, "'%s': tensor '%s': fused and separate q/k/v in one layer",
				       ck_model_path(c->m), L->qkv_b->name);
	}
	for (int r = 0; r < R_LAYER_COUNT; r++) {
		int n;
		if ((r == R_ATTN_Q_W || r == R_ATTN_K_W || r == R_ATTN_V_W) && L->qkv_w)
			continue;
		if ((r == R_ATTN_Q_B || r == R_ATTN_K_B || r == R_ATTN_V_B) && L->qkv_b)
			continue;
		if (r == R_GATE_W || r == R_UP_W || r == R_DOWN_W || r == R_GATE_B || r == R_UP_B)
			continue;
		if (r == R_DOWN_B && pe)
			continue;
		if (!L->plain[r])
			return missing(c, il, r, d);
		n = role_shape(c, r, shape);
		CK_TRY(want_shape(c, L->plain[r], 1, n, shape, d));
	}
	if (mx) {
		if (!L->gu_blocks || !L->gu_scales)
			return missing(c, il, R_GATE_W, d);
		if (!L->dn_blocks || !L->dn_scales)
			return missing(c, il, R_DOWN_W, d);
		WANT(L->gu_blocks, 0, E, 2 * I, H / 32, 16);
		WANT(L->gu_scales, 0, E, 2 * I, H / 32);
		WANT(L->dn_blocks, 0, E, H, I / 32, 16);
		WANT(L->dn_scales, 0, E, H, I / 32);
	} else if (fl) {
		if (!L->gu_float)
			return missing(c, il, R_GATE_W, d);
		if (!L->dn_float)
			return missing(c, il, R_DOWN_W, d);
		WANT(L->gu_float, 1, E, H, 2 * I);
		WANT(L->dn_float, 1, E, I, H);
	} else if (pe) {
		for (uint32_t e = 0; e < E; e++) {
			if (!L->pe[0][e])
				return missing(c, il, R_GATE_W, d);
			if (!L->pe[1][e])
				return missing(c, il, R_GATE_B, d);
			if (!L->pe[2][e])
				return missing(c, il, R_DOWN_W, d);
			if (!L->pe[3][e])
				return missing(c, il, R_DOWN_B, d);
			WANT(L->pe[0][e], 1, 2 * I, H);
			WANT(L->pe[1][e], 1, 2 * I);
			WANT(L->pe[2][e], 1, H, I);
			WANT(L->pe[3][e], 1, H);
		}
	} else {
		return missing(c, il, R_GATE_W, d);
	}
	if (!pe) {
		if (!L->gu_bias)
			return missing(c, il, R_GATE_B, d);
		WANT(L->gu_bias, 1, E, 2 * I);
	}
	return 0;
}

/*
 * Open every bitsandbytes group; an auxiliary tensor (absmax, quant_map,
 * nested_*, quant_state) must belong to one, or it is an unmapped tensor.
 */
static int find_bnb(struct conv *c, struct ck_diag *d)
{
	size_t n = 0;

	for (size_t i = 0; i < ck_model_count(c->m); i++)
		n += ck_bnb_is_weight(c->m, ck_model_tensor(c->m, i)->name);
	c->bnb = ck_calloc(n ? n : 1, sizeof(*c->bnb));
	if (!c->bnb)
		return ck_fail(d, CK_ENOMEM, "out of memory");
	for (size_t i = 0; i < ck_model_count(c->m); i++) {
		const struct ck_tensor *t = ck_model_tensor(c->m, i);
		if (ck_bnb_is_weight(c->m, t->name)) {
			c->bnb[c->nbnb].t = t;
			CK_TRY(ck_bnb_group_open(c->m, t->name, &c->bnb[c->nbnb].g, d));
			c->nbnb++;
		}
	}
	qsort(c->bnb, c->nbnb, sizeof(*c->bnb), bnb_cmp);
	for (size_t i = 0; i < ck_model_count(c->m); i++) {
		const struct ck_tensor *t = ck_model_tensor(c->m, i);
		const char *w = strstr(t->name, ".weight.");
		char base[1024];
		int owned = 0;
		if (!ck_bnb_is_aux(t->name))
			continue;
		/* "<module>.weight.<aux>": the last ".weight." ends the group's name */
		for (const char *p = w; p; p = strstr(p + 1, ".weight."))
			w = p;
		if (w && (size_t)(w - t->name) + 8 < sizeof(base)) {
			memcpy(base, t->name, (size_t)(w - t->name) + 7);
			base[w - t->name + 7] = 0;
			owned = ck_bnb_is_weight(c->m, base);
		}
		if (!owned)
			return ck_fail(d, CK_EINVAL, "'%s': tensor '%s' is bitsandbytes state of no weight "
				       "(maps to no GGUF tensor)", ck_model_path(c->m), t->name);
	}
	return 0;
}

static int map_sources(struct conv *c, struct ck_diag *d)
{
	const struct hp *h = &c->hp;
	struct layer *G;
	uint64_t shape[2];

	c->layers = ck_calloc(h->n_layer + 1, sizeof(*c->layers));
	if (!c->layers)
		return ck_fail(d, CK_ENOMEM, "out of memory");
	CK_TRY(find_bnb(c, d));
	for (size_t i = 0; i < ck_model_count(c->m); i++) {
		const struct ck_tensor *t = ck_model_tensor(c->m, i);
		if (!ck_bnb_is_aux(t->name))
			CK_TRY(classify(c, t, d));
	}

	G = &c->layers[h->n_layer];
	for (int r = R_OUTPUT; r < R_COUNT; r++)
		if (!G->plain[r])
			return missing(c, h->n_layer, r, d);
	/* The vocabulary size is the embedding's row count; output must agree. */
	if (G->plain[R_EMBED]->ndim != 2)
		return ck_fail(d, CK_EINVAL, "'%s': tensor '%s' is not 2-D", ck_model_path(c->m),
			       G->plain[R_EMBED]->name);
	c->n_vocab = G->plain[R_EMBED]->shape[0];
	if (!c->n_vocab || c->n_vocab > (1u << 30))
		return ck_fail(d, CK_EINVAL, "'%s': tensor '%s' has %" PRIu64 " rows", ck_model_path(c->m),
			       G->plain[R_EMBED]->name, c->n_vocab);
	if (h->vocab && h->vocab != c->n_vocab)
		return ck_fail(d, CK_EINVAL, "'%s': tensor '%s' has %" PRIu64 " rows, config.json vocab_size %u",
			       ck_model_path(c->m), G->plain[R_EMBED]->name, c->n_vocab, h->vocab);
	for (int r = R_OUTPUT; r < R_COUNT; r++) {
		int n = role_shape(c, r, shape);
		CK_TRY(want_shape(c, G->plain[r], 1, n, shape, d));
	}
	for (uint32_t il = 0; il < h->n_layer; il++)
		CK_TRY(check_layer(c, il, d));
	return 0;
}

/* ===== block encoders ===== */

/* ggml refuses an MXFP4 scale of 255 (E8M0 NaN); so do we, naming where it is. */
static int bad_scale(const struct conv *c, const struct ck_tensor *scl, uint64_t row, uint64_t g,
		     struct ck_diag *d)
{
	return ck_fail(d, CK_EINVAL, "'%s': tensor '%s': scale byte 255 (NaN) at row %" PRIu64 ", block %" PRIu64,
		       ck_model_path(c->m), scl->name, row, g);
}

/* Bytes of a row of n elements of ggml type ty (n a multiple of the block). */
static uint64_t row_bytes(uint32_t ty, uint64_t n)
{
	const struct ck_ggml_type *t = ck_ggml_type(ty);
	return n / t->blck * t->type_size;
}

/* Encode rows x[nrows][n] (f32) into ggml type ty. */
/* Blocks [b0, b1) of x into Q8_0 or MXFP4; *bad = first element that is NaN/Inf (MXFP4), else UINT64_MAX. */
struct enc_job {
	const struct conv *c;
	uint32_t ty;
	const float *x;
	uint8_t *out;
	uint64_t b0, b1, bad;
};

static void *enc_blocks(void *arg)
{
	struct enc_job *j = arg;
	j->bad = UINT64_MAX;
	for (uint64_t b = j->b0; b < j->b1; b++) {
		if (j->ty == CK_GGML_Q8_0) {
			ck_q8_0_block(j->x + b * CK_Q8_0_BLOCK, j->out + b * CK_Q8_0_BYTES);
		} else {
			/* quant-mxfp4's block rule, then ggml's block_mxfp4 = { scale, split-halves qs } */
			uint8_t pairs[CK_MX_BLOCK_BYTES], *o = j->out + b * 17;
			int bad = ck_mx_encode_block(j->x + b * CK_MX_BLOCK, j->c->rule, pairs, o);
			if (bad) {
				j->bad = b * CK_MX_BLOCK + (uint64_t)(bad - 1);
				break;
			}
			ck_mx_pairs_to_ggml(pairs, o + 1);
		}
	}
	return NULL;
}

#define ENC_THREADS 8

/* Encode rows x[nrows][n] (f32) into ggml type ty; the block types on up to ENC_THREADS threads. */
static int encode_rows(const struct conv *c, uint32_t ty, const float *x, uint64_t nrows, uint64_t n,
		       uint8_t *out, const char *what, struct ck_diag *d)
{
	uint64_t total = nrows * n, nb = total / 32;
	struct enc_job jobs[ENC_THREADS];
	pthread_t tid[ENC_THREADS];
	int nt = c->threads, started[ENC_THREADS] = { 0 };

	switch (ty) {
	case CK_GGML_F32:
		memcpy(out, x, (size_t)total * 4);
		return 0;
	case CK_GGML_F16:
		ck_f32_to_f16_n(x, (uint16_t *)(void *)out, (size_t)total);
		return 0;
	case CK_GGML_BF16:
		ck_f32_to_bf16_n(x, (uint16_t *)(void *)out, (size_t)total);
		return 0;
	case CK_GGML_Q8_0:
	case CK_GGML_MXFP4:
		break;
	default:
		return ck_fail(d, CK_EUNSUPPORTED, "ggml type %u is not an output type", ty);
	}
	if (nb < 64 * (uint64_t)nt)	/* not worth a thread (the tiny test models still use them) */
		nt = 1;
	for (int k = 0; k < nt; k++)
		jobs[k] = (struct enc_job){ c, ty, x, out, nb * (uint64_t)k / (uint64_t)nt,
					    nb * (uint64_t)(k + 1) / (uint64_t)nt, UINT64_MAX };
	/* job 0 runs here; a thread that cannot start runs here too */
	for (int k = 1; k < nt; k++)
		started[k] = !pthread_create(&tid[k], NULL, enc_blocks, &jobs[k]);
	enc_blocks(&jobs[0]);
	for (int k = 1; k < nt; k++) {
		if (started[k])
			pthread_join(tid[k], NULL);
		else
			enc_blocks(&jobs[k]);
	}
	for (int k = 0; k < nt; k++)
		if (jobs[k].bad != UINT64_MAX)
			return ck_fail(d, CK_EINVAL, "'%s': %s: NaN or Inf at element %" PRIu64
				       ", cannot quantize to MXFP4", ck_model_path(c->m), what, jobs[k].bad);
	return 0;
}

/* ===== the output plan ===== */

struct otensor {
	char name[64];
	int role;
	uint32_t layer;		/* n_layer for the non-layer tensors */
	uint32_t type;
	int ndim;
	uint64_t shape[3];
};

static uint32_t role_type(const struct conv *c, int r)
{
	switch (r) {
	case R_EMBED: case R_OUTPUT: case R_ATTN_Q_W: case R_ATTN_K_W: case R_ATTN_V_W: case R_ATTN_O_W:
		return c->o->outtype;
	case R_GATE_W: case R_UP_W: case R_DOWN_W:
		return c->o->experts;
	default:
		return CK_GGML_F32;	/* norms, sinks, router, biases */
	}
}

static size_t plan(const struct conv *c, struct otensor *ot)
{
	size_t n = 0;
	/* the non-layer tensors first, then layer by layer, as llama-quantize orders them */
	for (uint32_t k = 0; k <= c->hp.n_layer; k++) {
		uint32_t il = k == 0 ? c->hp.n_layer : k - 1;
		int lo = il == c->hp.n_layer ? R_OUTPUT : 0, hi = il == c->hp.n_layer ? R_COUNT : R_LAYER_COUNT;
		for (int r = lo; r < hi; r++) {
			struct otensor *t = &ot[n++];
			gguf_name(r, il, t->name, sizeof(t->name));
			t->role = r;
			t->layer = il;
			t->type = role_type(c, r);
			t->ndim = role_shape(c, r, t->shape);
		}
	}
	return n;
}

/* A readable account of where a GGUF tensor comes from (for --dry-run). */
static void describe_source(const struct conv *c, const struct otensor *t, char *buf, size_t cap)
{
	const struct layer *L = &c->layers[t->layer];
	int r = t->role, gu = r == R_GATE_W || r == R_UP_W || r == R_GATE_B || r == R_UP_B;
	const char *half = r == R_GATE_W || r == R_GATE_B ? "even rows" : "odd rows";

	if (L->plain[r]) {
		snprintf(buf, cap, "%s", L->plain[r]->name);
	} else if (L->qkv_w && (r == R_ATTN_Q_W || r == R_ATTN_K_W || r == R_ATTN_V_W)) {
		snprintf(buf, cap, "%s (%s rows)", L->qkv_w->name, r == R_ATTN_Q_W ? "q" : r == R_ATTN_K_W ? "k" : "v");
	} else if (L->qkv_b && (r == R_ATTN_Q_B || r == R_ATTN_K_B || r == R_ATTN_V_B)) {
		snprintf(buf, cap, "%s (%s part)", L->qkv_b->name, r == R_ATTN_Q_B ? "q" : r == R_ATTN_K_B ? "k" : "v");
	} else if ((r == R_GATE_B || r == R_UP_B) && L->gu_bias) {
		snprintf(buf, cap, "%s (%s)", L->gu_bias->name, r == R_GATE_B ? "even columns" : "odd columns");
	} else if (L->gu_blocks && (r == R_GATE_W || r == R_UP_W)) {
		snprintf(buf, cap, "%s + %s (%s)", L->gu_blocks->name, L->gu_scales->name, half);
	} else if (L->dn_blocks && r == R_DOWN_W) {
		snprintf(buf, cap, "%s + %s", L->dn_blocks->name, L->dn_scales->name);
	} else if (L->gu_float && (r == R_GATE_W || r == R_UP_W)) {
		snprintf(buf, cap, "%s (transposed, %s)", L->gu_float->name,
			 r == R_GATE_W ? "even columns" : "odd columns");
	} else if (L->dn_float && r == R_DOWN_W) {
		snprintf(buf, cap, "%s (transposed)", L->dn_float->name);
	} else if (L->pe[0]) {
		int k = gu ? (r == R_GATE_W || r == R_UP_W ? 0 : 1) : (r == R_DOWN_W ? 2 : 3);
		snprintf(buf, cap, "%s .. %s%s%s", L->pe[k][0]->name, L->pe[k][c->hp.n_expert - 1]->name,
			 gu ? ", " : "", gu ? half : "");
	} else {
		snprintf(buf, cap, "?");
	}
}

/* ===== streaming the data ===== */

struct stream {
	struct conv *c;
	struct ck_ggw *w;
	float *f;		/* one expert (or one chunk of rows) as f32 */
	uint8_t *out;		/* its encoding */
	float *tmp;		/* source rows as f32 */
	size_t fcap;		/* floats in f, tmp; bytes/4 in out */
};

/* Elements [e0, e0+n) of a float (or bitsandbytes 4-bit) tensor, as f32. */
static int load_elems(const struct conv *c, const struct ck_tensor *t, uint64_t e0, uint64_t n, float *dst,
		      struct ck_diag *d)
{
	const struct ck_bnb_group *g = bnb_of(c, t);
	size_t es;
	const uint8_t *p;

	if (g) {
		/* the values bitsandbytes gives back are in the logical dtype (BF16 here): round to it */
		CK_TRY(ck_bnb_group_dequant(g, e0, n, CK_DT_F32, dst, 1, d));
		if (g->dtype == CK_DT_BF16)
			for (uint64_t i = 0; i < n; i++)
				dst[i] = ck_bf16_to_f32(ck_f32_to_bf16(dst[i]));
		else if (g->dtype == CK_DT_F16)
			for (uint64_t i = 0; i < n; i++)
				dst[i] = ck_f16_to_f32(ck_f32_to_f16(dst[i]));
		return 0;
	}
	es = ck_dtype_bits(t->dtype) / 8;
	p = t->data + e0 * es;
	ck_convert(t->dtype, p, CK_DT_F32, dst, (size_t)n);
	ck_model_done_range(p, (size_t)(n * es));
	return 0;
}

static int load_rows(const struct conv *c, const struct ck_tensor *t, uint64_t r0, uint64_t nrows, uint64_t n,
		     float *dst, struct ck_diag *d)
{
	return load_elems(c, t, r0 * n, nrows * n, dst, d);
}

/* Write elements [e0, e0 + nrows*n) of t as nrows rows of n, encoded as ty, in chunks. */
static int write_rows(struct stream *s, const struct ck_tensor *t, uint64_t e0, uint64_t nrows, uint64_t n,
		      uint32_t ty, struct ck_diag *d)
{
	uint64_t per = s->fcap / n;
	enum ck_dtype same = ty == CK_GGML_F32 ? CK_DT_F32 : ty == CK_GGML_F16 ? CK_DT_F16 :
			     ty == CK_GGML_BF16 ? CK_DT_BF16 : CK_DT_UNKNOWN;

	/* same type in and out: the bytes are copied by the kernel (copy_file_range) */
	if (t->dtype == same && !bnb_of(s->c, t)) {
		uint64_t es = ck_dtype_bits(t->dtype) / 8;
		return ck_ggw_copy_fd(s->w, ck_model_file_fd(s->c->m, t->file), t->offset + e0 * es,
				      nrows * n * es, d);
	}
	if (per == 0)
		per = 1;
	for (uint64_t r = 0; r < nrows; r += per) {
		uint64_t k = nrows - r < per ? nrows - r : per;
		CK_TRY(load_elems(s->c, t, e0 + r * n, k * n, s->f, d));
		CK_TRY(encode_rows(s->c, ty, s->f, k, n, s->out, t->name, d));
		CK_TRY(ck_ggw_write(s->w, s->out, (size_t)row_bytes(ty, k * n), d));
	}
	return 0;
}

/* Biases of gate (odd=0) or up (odd=1) from [E, 2I]: element 2i+odd of each expert's row. */
static int write_gu_bias(struct stream *s, const struct ck_tensor *t, int odd, struct ck_diag *d)
{
	uint64_t E = s->c->hp.n_expert, I = s->c->hp.n_ff;
	for (uint64_t e = 0; e < E; e++) {
		CK_TRY(load_rows(s->c, t, e, 1, 2 * I, s->tmp, d));
		for (uint64_t i = 0; i < I; i++)
			s->f[i] = s->tmp[2 * i + (uint64_t)odd];
		CK_TRY(ck_ggw_write(s->w, s->f, (size_t)I * 4, d));
	}
	return 0;
}

/* Dequantize one OpenAI MXFP4 row (G blocks) to f32; CK_EINVAL on the NaN scale 255. */
static int mxfp4_row_f32(const struct conv *c, const struct ck_tensor *scl, uint64_t row, const uint8_t *blk,
			 const uint8_t *sc, uint64_t G, float *dst, struct ck_diag *d)
{
	uint16_t bf[CK_MX_BLOCK];
	for (uint64_t g = 0; g < G; g++) {
		if (sc[g] == CK_MX_SCALE_NAN)
			return bad_scale(c, scl, row, g, d);
		ck_mx_decode_block(blk + g * CK_MX_BLOCK_BYTES, sc[g], bf);
		ck_bf16_to_f32_n(bf, dst + g * CK_MX_BLOCK, CK_MX_BLOCK);
	}
	return 0;
}

/* Let the kernel drop the mapped pages of expert e's blocks and scales (nblk blocks each). */
static void done_expert(const struct ck_tensor *blk, const struct ck_tensor *scl, uint64_t e, uint64_t nblk)
{
	ck_model_done_range(blk->data + e * nblk * CK_MX_BLOCK_BYTES, (size_t)(nblk * CK_MX_BLOCK_BYTES));
	ck_model_done_range(scl->data + e * nblk, (size_t)nblk);
}

/*
 * One expert tensor (gate: rows 2i, up: rows 2i+1, down: all rows of the
 * source's output dimension), expert by expert.
 */
static int write_experts(struct stream *s, const struct otensor *ot, struct ck_diag *d)
{
	struct conv *c = s->c;
	const struct layer *L = &c->layers[ot->layer];
	uint64_t E = c->hp.n_expert, rows = ot->shape[1], cols = ot->shape[2];
	uint64_t step = ot->role == R_DOWN_W ? 1 : 2, off = ot->role == R_UP_W ? 1 : 0;
	const struct ck_tensor *blk = ot->role == R_DOWN_W ? L->dn_blocks : L->gu_blocks;
	const struct ck_tensor *scl = ot->role == R_DOWN_W ? L->dn_scales : L->gu_scales;
	const struct ck_tensor *flt = ot->role == R_DOWN_W ? L->dn_float : L->gu_float;
	uint64_t G = cols / 32, src_rows = rows * step;

	for (uint64_t e = 0; e < E; e++) {
		if (blk && ot->type == CK_GGML_MXFP4) {
			/* MXFP4 in, MXFP4 out: move the scale in front, reorder the nibbles. */
			for (uint64_t r = 0; r < rows; r++) {
				uint64_t sr = e * src_rows + r * step + off;
				const uint8_t *b = blk->data + sr * G * 16, *sc = scl->data + sr * G;
				uint8_t *o = s->out + r * G * 17;
				for (uint64_t g = 0; g < G; g++) {
					if (sc[g] == CK_MX_SCALE_NAN)
						return bad_scale(c, scl, sr, g, d);
					o[g * 17] = sc[g];
					ck_mx_pairs_to_ggml(b + g * CK_MX_BLOCK_BYTES, o + g * 17 + 1);
				}
			}
			CK_TRY(ck_ggw_write(s->w, s->out, (size_t)(rows * G * 17), d));
			done_expert(blk, scl, e, src_rows * G);
			continue;
		}
		if (blk) {
			for (uint64_t r = 0; r < rows; r++) {
				uint64_t sr = e * src_rows + r * step + off;
				CK_TRY(mxfp4_row_f32(c, scl, sr, blk->data + sr * G * 16, scl->data + sr * G, G,
						     s->f + r * cols, d));
			}
			done_expert(blk, scl, e, src_rows * G);
		} else if (flt) {
			/* HF float experts are [E, IN, OUT]: transpose, taking every step-th column. */
			/* in tiles of 32 input rows, so the writes go 32 floats at a time */
			for (uint64_t in0 = 0; in0 < cols; in0 += 32) {
				uint64_t tn = cols - in0 < 32 ? cols - in0 : 32;
				CK_TRY(load_rows(c, flt, e * cols + in0, tn, src_rows, s->tmp, d));
				for (uint64_t r = 0; r < rows; r++) {
					const float *src = s->tmp + r * step + off;
					float *dst = s->f + r * cols + in0;
					for (uint64_t k = 0; k < tn; k++)
						dst[k] = src[k * src_rows];
				}
			}
			if (!bnb_of(c, flt))	/* rows share pages: drop the expert's slab as a whole */
				ck_model_done_range(flt->data + e * cols * src_rows * (ck_dtype_bits(flt->dtype) / 8),
						    (size_t)(cols * src_rows * (ck_dtype_bits(flt->dtype) / 8)));
		} else {
			/* one Linear per expert, [OUT, IN]: read it whole, keep every step-th row */
			const struct ck_tensor *t = L->pe[ot->role == R_DOWN_W ? 2 : 0][e];
			CK_TRY(load_rows(c, t, 0, src_rows, cols, s->tmp, d));
			for (uint64_t r = 0; r < rows; r++)
				memcpy(s->f + r * cols, s->tmp + (r * step + off) * cols, (size_t)cols * sizeof(float));
		}
		CK_TRY(encode_rows(c, ot->type, s->f, rows, cols, s->out, ot->name, d));
		CK_TRY(ck_ggw_write(s->w, s->out, (size_t)row_bytes(ot->type, rows * cols), d));
	}
	return 0;
}

static int write_tensor(struct stream *s, const struct otensor *ot, struct ck_diag *d)
{
	struct conv *c = s->c;
	const struct layer *L = &c->layers[ot->layer];
	const struct hp *h = &c->hp;
	uint64_t Q = (uint64_t)h->n_head * h->head_dim, KV = (uint64_t)h->n_head_kv * h->head_dim;
	int r = ot->role;
	uint64_t n = ot->shape[ot->ndim - 1], rows = ot->ndim == 2 ? ot->shape[0] : 1;

	if (r == R_GATE_W || r == R_UP_W || r == R_DOWN_W)
		return write_experts(s, ot, d);
	if (L->plain[r])
		return write_rows(s, L->plain[r], 0, rows, n, ot->type, d);
	if (r == R_ATTN_Q_W || r == R_ATTN_K_W || r == R_ATTN_V_W) {
		uint64_t r0 = r == R_ATTN_Q_W ? 0 : r == R_ATTN_K_W ? Q : Q + KV;
		return write_rows(s, L->qkv_w, r0 * n, rows, n, ot->type, d);
	}
	if (r == R_ATTN_Q_B || r == R_ATTN_K_B || r == R_ATTN_V_B) {
		uint64_t e0 = r == R_ATTN_Q_B ? 0 : r == R_ATTN_K_B ? Q : Q + KV;
		return write_rows(s, L->qkv_b, e0, 1, n, ot->type, d);
	}
	if ((r == R_GATE_B || r == R_UP_B) && L->gu_bias)
		return write_gu_bias(s, L->gu_bias, r == R_UP_B, d);
	if (r == R_GATE_B || r == R_UP_B || r == R_DOWN_B) {
		/* per-expert biases: one vector per expert */
		for (uint64_t e = 0; e < h->n_expert; e++) {
			const struct ck_tensor *t = L->pe[r == R_DOWN_B ? 3 : 1][e];
			uint64_t step = r == R_DOWN_B ? 1 : 2, off = r == R_UP_B ? 1 : 0;
			CK_TRY(load_rows(c, t, 0, 1, n * step, s->tmp, d));
			for (uint64_t i = 0; i < n; i++)
				s->f[i] = s->tmp[i * step + off];
			CK_TRY(ck_ggw_write(s->w, s->f, (size_t)n * 4, d));
		}
		return 0;
	}
	return ck_fail(d, CK_EINVAL, "internal: no source for %s", ot->name);
}

/* ===== KVs ===== */

static int add_kvs(struct conv *c, struct ck_ggw *w, const struct vocab *v, struct ck_diag *d)
{
	const struct hp *h = &c->hp;
	uint32_t ft;
	int32_t *types = NULL;
	int rc;

#define U32(k, x) CK_TRY(ck_ggw_kv_u32(w, "gpt-oss." k, x, d))
#define F32(k, x) CK_TRY(ck_ggw_kv_f32(w, "gpt-oss." k, x, d))
	CK_TRY(ck_ggw_kv_str(w, "general.architecture", "gpt-oss", 7, d));
	CK_TRY(ck_ggw_kv_str(w, "general.type", "model", 5, d));
	U32("block_count", h->n_layer);
	U32("context_length", h->n_ctx);
	U32("embedding_length", h->n_embd);
	U32("feed_forward_length", h->n_ff);
	U32("attention.head_count", h->n_head);
	U32("attention.head_count_kv", h->n_head_kv);
	F32("rope.freq_base", h->rope_base);
	F32("attention.layer_norm_rms_epsilon", h->eps);
	U32("expert_count", h->n_expert);
	U32("expert_used_count", h->n_used);
	U32("attention.key_length", h->head_dim);
	U32("attention.value_length", h->head_dim);
	U32("attention.sliding_window", h->swa);
	U32("expert_feed_forward_length", h->n_ff);
	if (h->yarn) {
		CK_TRY(ck_ggw_kv_str(w, "gpt-oss.rope.scaling.type", "yarn", 4, d));
		F32("rope.scaling.factor", h->rope_factor);
		U32("rope.scaling.original_context_length", h->orig_ctx);
		F32("rope.scaling.yarn_beta_fast", h->beta_fast);
		F32("rope.scaling.yarn_beta_slow", h->beta_slow);
	}
#undef U32
#undef F32
	/* llama_ftype: 38 MOSTLY_MXFP4_MOE, else by the main output type. */
	switch (c->o->experts == CK_GGML_MXFP4 ? CK_GGML_MXFP4 : c->o->outtype) {
	case CK_GGML_MXFP4: ft = 38; break;
	case CK_GGML_F32: ft = 0; break;
	case CK_GGML_F16: ft = 1; break;
	case CK_GGML_Q8_0: ft = 7; break;
	default: ft = 32; break;	/* BF16 */
	}
	CK_TRY(ck_ggw_kv_u32(w, "general.quantization_version", 2, d));
	CK_TRY(ck_ggw_kv_u32(w, "general.file_type", ft, d));

	CK_TRY(ck_ggw_kv_str(w, "tokenizer.ggml.model", "gpt2", 4, d));
	CK_TRY(ck_ggw_kv_str(w, "tokenizer.ggml.pre", "gpt-4o", 6, d));
	CK_TRY(ck_ggw_kv_strs(w, "tokenizer.ggml.tokens", v->tok, v->len, v->n, d));
	types = ck_mallocarray(v->n, sizeof(*types));
	if (!types)
		return ck_fail(d, CK_ENOMEM, "out of memory");
	memcpy(types, v->type, v->n * sizeof(*types));
	rc = ck_ggw_kv_arr(w, "tokenizer.ggml.token_type", CK_GGUF_I32, types, v->n, d);
	free(types);
	CK_TRY(rc);
	CK_TRY(ck_ggw_kv_strs(w, "tokenizer.ggml.merges", v->merge, v->mlen, v->nmerge, d));
	if (v->bos >= 0)
		CK_TRY(ck_ggw_kv_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)v->bos, d));
	if (v->eos >= 0)
		CK_TRY(ck_ggw_kv_u32(w, "tokenizer.ggml.eos_token_id", (uint32_t)v->eos, d));
	if (v->pad >= 0)
		CK_TRY(ck_ggw_kv_u32(w, "tokenizer.ggml.padding_token_id", (uint32_t)v->pad, d));
	if (v->n_eos_list)
		CK_TRY(ck_ggw_kv_arr(w, "tokenizer.ggml.eos_token_ids", CK_GGUF_U32, v->eos_list,
				     v->n_eos_list, d));
	CK_TRY(ck_ggw_kv_bool(w, "tokenizer.ggml.add_bos_token", 0, d));
	CK_TRY(ck_ggw_kv_bool(w, "tokenizer.ggml.add_eos_token", 0, d));
	if (v->tmpl)
		CK_TRY(ck_ggw_kv_str(w, "tokenizer.chat_template", v->tmpl, v->tmpl_len, d));
	return 0;
}

/* ===== driver ===== */

/* The folder with the tokenizer: the model's, or for original/ its parent. */
static void tokenizer_dir(const char *dir, char *buf, size_t cap)
{
	char probe[4096];
	size_t n = strlen(dir);

	snprintf(buf, cap, "%s", dir);
	snprintf(probe, sizeof(probe), "%s/tokenizer.json", dir);
	if (!access(probe, F_OK))
		return;
	while (n > 1 && dir[n - 1] == '/')
		n--;
	if (n >= 8 && !strncmp(dir + n - 8, "original", 8) && (n == 8 || dir[n - 9] == '/'))
		snprintf(buf, cap, "%.*s.", (int)(n - 8), dir);	/* "a/original" -> "a/." */
	if (n == 8)
		snprintf(buf, cap, "..");
}

static int check_blocks(const struct conv *c, struct ck_diag *d)
{
	const struct hp *h = &c->hp;
	uint64_t Q = (uint64_t)h->n_head * h->head_dim;
	if ((c->o->experts == CK_GGML_MXFP4 || c->o->experts == CK_GGML_Q8_0) && (h->n_embd % 32 || h->n_ff % 32))
		return ck_fail(d, CK_EUNSUPPORTED, "'%s': hidden_size %u or intermediate_size %u is not a multiple "
			       "of 32 (the %s block)", ck_model_path(c->m), h->n_embd, h->n_ff,
			       c->o->experts == CK_GGML_MXFP4 ? "MXFP4" : "Q8_0");
	if (c->o->outtype == CK_GGML_Q8_0 && (h->n_embd % 32 || Q % 32))
		return ck_fail(d, CK_EUNSUPPORTED, "'%s': hidden_size %u or heads*head_dim %" PRIu64 " is not a "
			       "multiple of 32 (the Q8_0 block)", ck_model_path(c->m), h->n_embd, Q);
	return 0;
}

int ck_togguf(const char *src, const char *dst, const struct ck_togguf_opts *o, struct ck_diag *d)
{
	struct conv c = { .o = o, .rule = CK_MX_RULE_DEFAULT };
	struct vocab v = { 0 };
	struct otensor *ot = NULL;
	struct stream s = { .c = &c };
	struct ck_out *out = NULL;
	struct ck_ggw *w = NULL;
	const char **inputs = NULL;
	char tokdir[4096];
	size_t nt = 0, ninputs = 0;
	uint64_t maxf = 1u << 20;
	int rc;

	c.threads = (int)sysconf(_SC_NPROCESSORS_ONLN);
	c.threads = c.threads < 1 ? 1 : c.threads > 8 ? 8 : c.threads;
	if (o->mxfp4_rule == CK_MXFP4_GGML)
		c.rule = (struct ck_mx_rule){ CK_MX_SCALE_OCP, CK_MX_ROUND_GGML };
	rc = ck_model_open(&c.m, src, d);
	if (rc)
		goto out;
	if (ck_model_kind(c.m) == CK_MODEL_GGUF) {
		rc = ck_fail(d, CK_EUNSUPPORTED, "'%s': already a GGUF file", src);
		goto out;
	}
	rc = load_hparams(ck_model_dir(c.m), &c.hp, d);
	if (!rc)
		rc = check_blocks(&c, d);
	if (!rc)
		rc = map_sources(&c, d);
	if (rc)
		goto out;
	if (o->tokenizer)
		snprintf(tokdir, sizeof(tokdir), "%s", o->tokenizer);
	else
		tokenizer_dir(ck_model_dir(c.m), tokdir, sizeof(tokdir));
	rc = load_vocab(tokdir, c.n_vocab, &v, d);
	if (rc)
		goto out;

	ot = ck_calloc((size_t)c.hp.n_layer * R_LAYER_COUNT + 3, sizeof(*ot));
	if (!ot) {
		rc = ck_fail(d, CK_ENOMEM, "out of memory");
		goto out;
	}
	nt = plan(&c, ot);
	if (o->dry_run) {
		char shp[96], tn[24], srcd[600];
		for (size_t i = 0; i < nt; i++) {
			describe_source(&c, &ot[i], srcd, sizeof(srcd));
			fprintf(o->dry_run, "%s -> %s %s %s\n", srcd, ot[i].name,
				ck_ggml_type_name(ot[i].type, tn, sizeof(tn)),
				ck_shape_str(ot[i].shape, ot[i].ndim, shp, sizeof(shp)));
		}
		goto out;
	}

	/* Inputs are the model path and every shard: the output may be none of them. */
	inputs = ck_calloc(ck_model_nfiles(c.m) + 1, sizeof(*inputs));
	if (!inputs) {
		rc = ck_fail(d, CK_ENOMEM, "out of memory");
		goto out;
	}
	inputs[ninputs++] = src;
	for (size_t i = 0; i < ck_model_nfiles(c.m); i++)
		inputs[ninputs++] = ck_model_file(c.m, i);
	rc = ck_out_begin(&out, CK_OUT_FILE, dst, o->force, inputs, ninputs, d);
	if (!rc)
		rc = ck_ggw_new(&w, out, 0, d);
	if (!rc)
		rc = add_kvs(&c, w, &v, d);
	vocab_free(&v);		/* the writer holds copies */
	for (size_t i = 0; !rc && i < nt; i++) {
		struct ck_ggw_tensor gt = { .name = ot[i].name, .ggml_type = ot[i].type, .ndim = ot[i].ndim };
		uint64_t per = ot[i].ndim == 3 ? ot[i].shape[1] * ot[i].shape[2] : 0;
		memcpy(gt.shape, ot[i].shape, sizeof(ot[i].shape));
		if (per > maxf)
			maxf = per;
		/* a whole gate_up source expert, or a tile of 32 of its input rows */
		if (ot[i].ndim == 3 && ot[i].shape[1] * 2 * ot[i].shape[2] > maxf)
			maxf = ot[i].shape[1] * 2 * ot[i].shape[2];
		if (ot[i].ndim == 3 && ot[i].shape[1] * 64 > maxf)
			maxf = ot[i].shape[1] * 64;
		rc = ck_ggw_tensor(w, &gt, d);
	}
	if (rc)
		goto out;
	/* Buffers for one expert: f32 values, source rows, encoded bytes (f32 is the widest). */
	s.w = w;
	s.fcap = (size_t)maxf;
	s.f = ck_mallocarray(s.fcap, sizeof(float));
	s.tmp = ck_mallocarray(s.fcap, sizeof(float));
	s.out = ck_mallocarray(s.fcap, sizeof(float));
	if (!s.f || !s.tmp || !s.out) {
		rc = ck_fail(d, CK_ENOMEM, "out of memory");
		goto out;
	}
	rc = ck_ggw_begin(w, d);
	for (size_t i = 0; !rc && i < nt; i++)
		rc = write_tensor(&s, &ot[i], d);
	if (!rc)
		rc = ck_ggw_finish(w, d);
	if (!rc) {
		rc = ck_out_commit(out, d);
		out = NULL;
	}
out:
	ck_ggw_free(w);
	ck_out_abort(out);
	free(s.f);
	free(s.tmp);
	free(s.out);
	free(inputs);
	free(ot);
	vocab_free(&v);
	if (c.layers) {
		for (uint32_t il = 0; il < c.hp.n_layer; il++)
			for (int k = 0; k < 4; k++)
				free(c.layers[il].pe[k]);
		free(c.layers);
	}
	free(c.bnb);
	ck_model_free(c.m);
	return rc;
}
