/*
 * lora.c - adapter_config.json, PEFT's pattern rules, and the merge plan:
 * every adapter tensor classified and mapped to exactly one base tensor.
 */
#include <math.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cjson/cJSON.h>
#include "lora.h"
#include "../libtensor/model.h"
#include "../quant/bnb.h"

/* ==================== adapter_config.json ==================== */

void ck_lora_config_release(struct ck_lora_config *c)
{
	for (size_t i = 0; i < c->nrank_pat; i++)
		free(c->rank_pat[i].key);
	for (size_t i = 0; i < c->nalpha_pat; i++)
		free(c->alpha_pat[i].key);
	for (size_t i = 0; i < c->ntarget_params; i++)
		free(c->target_params[i]);
	for (size_t i = 0; i < c->ntokens; i++) {
		free(c->tokens[i].module);
		free(c->tokens[i].ids);
	}
	free(c->tokens);
	free(c->rank_pat);
	free(c->alpha_pat);
	free(c->target_params);
	free(c->peft_version);
	memset(c, 0, sizeof(*c));
}

static int is_set(const cJSON *v)
{
	if (!v || cJSON_IsNull(v))
		return 0;
	if (cJSON_IsBool(v))
		return cJSON_IsTrue(v);
	if (cJSON_IsObject(v) || cJSON_IsArray(v))
		return cJSON_GetArraySize(v) > 0;
	if (cJSON_IsString(v))
		return v->valuestring[0] != 0;
	return 1;
}

static int get_bool(const cJSON *root, const char *key, bool *out, const char *path, struct ck_diag *d)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
	if (!v || cJSON_IsNull(v))
		return 0;
	if (!cJSON_IsBool(v))
		return ck_fail(d, CK_EINVAL, "'%s': \"%s\" must be true or false", path, key);
	*out = cJSON_IsTrue(v);
	return 0;
}

static int get_num(const cJSON *root, const char *key, double *out, const char *path, struct ck_diag *d)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
	if (!v || cJSON_IsNull(v))
		return 0;
	if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) || v->valuedouble <= 0)
		return ck_fail(d, CK_EINVAL, "'%s': \"%s\" must be a positive number", path, key);
	*out = v->valuedouble;
	return 0;
}

static int get_patterns(const cJSON *root, const char *key, struct ck_lora_pat **out, size_t *n,
			const char *path, struct ck_diag *d)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key), *e;
	size_t k = 0;

	if (!v || cJSON_IsNull(v))
		return 0;
	if (!cJSON_IsObject(v))
		return ck_fail(d, CK_EINVAL, "'%s': \"%s\" must be an object", path, key);
	*out = ck_calloc((size_t)cJSON_GetArraySize(v), sizeof(**out));
	if (!*out)
		return ck_fail(d, CK_ENOMEM, "out of memory");
	cJSON_ArrayForEach(e, v) {
		if (!cJSON_IsNumber(e) || !isfinite(e->valuedouble) || e->valuedouble <= 0)
			return ck_fail(d, CK_EINVAL, "'%s': %s \"%s\" must be a positive number", path, key,
				       e->string);
		(*out)[k].key = ck_strdup(e->string);
		if (!(*out)[k].key)
			return ck_fail(d, CK_ENOMEM, "out of memory");
		(*out)[k++].value = e->valuedouble;
		*n = k;
	}
	return 0;
}

/* Inits that rewrite the base weights when the adapter is created. */
static const char *const mutating_inits[] = { "pissa", "olora", "corda", "lora_ga" };
/* Config keys of LoRA variants whose merge we do not do (v1). */
static const char *const variants[] = {
	"alora_invocation_tokens", "use_qalora", "use_bdlora", "arrow_config", "kasa_config",
	"velora_config", "monteclora_config", "layer_replication",
};

static int get_ids(const cJSON *v, struct ck_lora_tokens *t, const char *path, struct ck_diag *d)
{
	const cJSON *e;
	size_t k = 0;

	if (!cJSON_IsArray(v))
		return ck_fail(d, CK_EINVAL, "'%s': \"trainable_token_indices\" must list token ids", path);
	t->ids = ck_calloc((size_t)cJSON_GetArraySize(v), sizeof(int64_t));
	if (!t->ids)
		return ck_fail(d, CK_ENOMEM, "out of memory");
	cJSON_ArrayForEach(e, v) {
		if (!cJSON_IsNumber(e) || e->valuedouble < 0 || e->valuedouble > 1e15 ||
		    e->valuedouble != (double)(int64_t)e->valuedouble)
			return ck_fail(d, CK_EINVAL, "'%s': \"trainable_token_indices\": not a token id", path);
		for (size_t i = 0; i < k; i++)
			if (t->ids[i] == (int64_t)e->valuedouble)
				return ck_fail(d, CK_EINVAL, "'%s': \"trainable_token_indices\": id %" PRId64
					       " twice", path, t->ids[i]);
		t->ids[k++] = (int64_t)e->valuedouble;
		t->n = k;
	}
	return 0;
}

static int get_tokens(const cJSON *root, struct ck_lora_config *c, const char *path, struct ck_diag *d)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, "trainable_token_indices"), *e;

	if (!v || cJSON_IsNull(v))
		return 0;
	c->tokens = ck_calloc(cJSON_IsObject(v) ? (size_t)cJSON_GetArraySize(v) : 1, sizeof(*c->tokens));
	if (!c->tokens)
		return ck_fail(d, CK_ENOMEM, "out of memory");
	if (cJSON_IsArray(v)) {
		c->ntokens = 1;
		if (!(c->tokens[0].module = ck_strdup("embed_tokens")))
			return ck_fail(d, CK_ENOMEM, "out of memory");
		return get_ids(v, &c->tokens[0], path, d);
	}
	if (!cJSON_IsObject(v))
		return ck_fail(d, CK_EINVAL, "'%s': \"trainable_token_indices\" must be a list or an object", path);
	cJSON_ArrayForEach(e, v) {
		struct ck_lora_tokens *t = &c->tokens[c->ntokens++];
		if (!(t->module = ck_strdup(e->string)))
			return ck_fail(d, CK_ENOMEM, "out of memory");
		CK_TRY(get_ids(e, t, path, d));
	}
	return 0;
}

int ck_lora_config_parse(struct ck_lora_config *c, const char *json, size_t len, const char *path,
			 struct ck_diag *d)
{
	cJSON *root = cJSON_ParseWithLengthOpts(json, len, NULL, 0);
	const cJSON *v;
	int rc = 0;

	memset(c, 0, sizeof(*c));
	c->r = 8;		/* LoraConfig defaults: a missing field takes them */
	c->alpha = 8;
	c->peft_ver[0] = c->peft_ver[1] = c->peft_ver[2] = -1;
	if (!root || !cJSON_IsObject(root)) {
		rc = ck_fail(d, CK_EINVAL, "'%s': not a JSON object", path);
		goto out;
	}
	v = cJSON_GetObjectItemCaseSensitive(root, "peft_type");
	if (!cJSON_IsString(v)) {
		rc = ck_fail(d, CK_EINVAL, "'%s': no \"peft_type\"", path);
		goto out;
	}
	if (strcmp(v->valuestring, "LORA")) {
		char esc[128];
		rc = ck_fail(d, CK_EUNSUPPORTED, "'%s': peft_type '%s' is not supported (only LORA merges)",
			     path, ck_escape(v->valuestring, strlen(v->valuestring), esc, sizeof(esc)));
		goto out;
	}
	v = cJSON_GetObjectItemCaseSensitive(root, "init_lora_weights");
	if (cJSON_IsString(v))
		for (size_t i = 0; i < CK_ARRAY_SIZE(mutating_inits); i++)
			if (!strncmp(v->valuestring, mutating_inits[i], strlen(mutating_inits[i]))) {
				rc = ck_fail(d, CK_EUNSUPPORTED, "'%s': init_lora_weights '%s' rewrites the base "
					     "weights at init, so this adapter fits only that residual base, not "
					     "BASE", path, mutating_inits[i]);
				goto out;
			}
	for (size_t i = 0; i < CK_ARRAY_SIZE(variants); i++)
		if (is_set(cJSON_GetObjectItemCaseSensitive(root, variants[i]))) {
			rc = ck_fail(d, CK_EUNSUPPORTED, "'%s': \"%s\" is set: this LoRA variant cannot be "
				     "merged by ckpt", path, variants[i]);
			goto out;
		}
	if ((rc = get_num(root, "r", &c->r, path, d)) || (rc = get_num(root, "lora_alpha", &c->alpha, path, d)) ||
	    (rc = get_bool(root, "use_rslora", &c->use_rslora, path, d)) ||
	    (rc = get_bool(root, "use_dora", &c->use_dora, path, d)) ||
	    (rc = get_bool(root, "lora_bias", &c->lora_bias, path, d)) ||
	    (rc = get_bool(root, "fan_in_fan_out", &c->fan_in_fan_out, path, d)) ||
	    (rc = get_patterns(root, "rank_pattern", &c->rank_pat, &c->nrank_pat, path, d)) ||
	    (rc = get_patterns(root, "alpha_pattern", &c->alpha_pat, &c->nalpha_pat, path, d)) ||
	    (rc = get_tokens(root, c, path, d)))
		goto out;
	v = cJSON_GetObjectItemCaseSensitive(root, "target_parameters");
	if (v && !cJSON_IsNull(v)) {
		const cJSON *e;
		if (!cJSON_IsArray(v)) {
			rc = ck_fail(d, CK_EINVAL, "'%s': \"target_parameters\" must be a list of names", path);
			goto out;
		}
		c->target_params = ck_calloc((size_t)cJSON_GetArraySize(v), sizeof(char *));
		if (!c->target_params) {
			rc = ck_fail(d, CK_ENOMEM, "out of memory");
			goto out;
		}
		cJSON_ArrayForEach(e, v) {
			if (!cJSON_IsString(e) || !e->valuestring[0]) {
				rc = ck_fail(d, CK_EINVAL, "'%s': \"target_parameters\" must be a list of names",
					     path);
				goto out;
			}
			if (!(c->target_params[c->ntarget_params++] = ck_strdup(e->valuestring))) {
				rc = ck_fail(d, CK_ENOMEM, "out of memory");
				goto out;
			}
		}
	}
	v = cJSON_GetObjectItemCaseSensitive(root, "peft_version");
	if (cJSON_IsString(v)) {
		if (!(c->peft_version = ck_strdup(v->valuestring))) {
			rc = ck_fail(d, CK_ENOMEM, "out of memory");
			goto out;
		}
		if (sscanf(v->valuestring, "%d.%d.%d", &c->peft_ver[0], &c->peft_ver[1], &c->peft_ver[2]) < 2)
			c->peft_ver[0] = c->peft_ver[1] = c->peft_ver[2] = -1;
	}
	v = cJSON_GetObjectItemCaseSensitive(root, "lora_B_layout");
	if (v && !cJSON_IsNull(v)) {
		if (cJSON_IsString(v) && !strcmp(v->valuestring, "rank_major"))
			c->b_layout = CK_LORA_B_RANK_MAJOR;
		else if (cJSON_IsString(v) && !strcmp(v->valuestring, "grouped_by_expert"))
			c->b_layout = CK_LORA_B_GROUPED;
		else {
			rc = ck_fail(d, CK_EUNSUPPORTED, "'%s': unknown \"lora_B_layout\" (expected rank_major "
				     "or grouped_by_expert)", path);
			goto out;
		}
		c->b_layout_given = true;
	}
out:
	cJSON_Delete(root);
	if (rc)
		ck_lora_config_release(c);
	return rc;
}

/* ==================== patterns (PEFT get_pattern_key) ==================== */

/* Python-only regex syntax we cannot read as POSIX ERE. */
static int python_only(const char *s)
{
	return strstr(s, "(?") || strstr(s, "\\d") || strstr(s, "\\w") || strstr(s, "\\s") ||
	       strstr(s, "\\D") || strstr(s, "\\W") || strstr(s, "\\S") || strstr(s, "\\b") ||
	       strstr(s, "*?") || strstr(s, "+?") || strstr(s, "??");
}

int ck_lora_pattern(const struct ck_lora_pat *p, size_t n, const char *key, double *v,
		    struct ck_diag *d)
{
	static const char plain[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.";

	for (size_t i = 0; i < n; i++) {
		const char *k = p[i].key;
		size_t kl = strlen(k), l = strlen(key);
		int hit;

		if (strspn(k, plain) == kl) {
			/* A name: a suffix on a '.' boundary.  Python reads each '.'
			 * as "any character"; on module paths that is a dot. */
			hit = (l == kl && !strcmp(key, k)) ||
			      (l > kl && key[l - kl - 1] == '.' && !strcmp(key + l - kl, k));
		} else {
			size_t cap = kl + 16;
			char *re, esc[128];
			regex_t rx;

			if (python_only(k))
				return ck_fail(d, CK_EUNSUPPORTED, "pattern '%s' uses Python-only regex syntax; "
					       "ckpt cannot apply it", ck_escape(k, kl, esc, sizeof(esc)));
			re = ck_malloc(cap);
			if (!re)
				return ck_fail(d, CK_ENOMEM, "out of memory");
			snprintf(re, cap, "^(.*\\.)?(%s)$", k);
			if (regcomp(&rx, re, REG_EXTENDED | REG_NOSUB)) {
				free(re);
				return ck_fail(d, CK_EUNSUPPORTED, "pattern '%s' is not a regex ckpt can read",
					       ck_escape(k, kl, esc, sizeof(esc)));
			}
			hit = !regexec(&rx, key, 0, NULL, 0);
			regfree(&rx);
			free(re);
		}
		if (hit) {
			*v = p[i].value;
			return 1;
		}
	}
	return 0;
}

/* ==================== the plan ==================== */

const char *ck_lora_op_name(enum ck_lora_op op)
{
	static const char *const names[] = { "copy", "linear", "embedding", "experts", "bias", "per-expert" };
	return (unsigned)op < CK_ARRAY_SIZE(names) ? names[op] : "?";
}

const char *ck_moe_layout_name(enum ck_moe_layout l)
{
	return l == CK_MOE_STANDARD ? "standard" : l == CK_MOE_SWAPPED ? "swapped" : "auto";
}

void ck_lora_plan_free(struct ck_lora_plan *p)
{
	if (!p)
		return;
	for (size_t i = 0; i < p->nitems; i++) {
		free(p->items[i].key);
		free(p->items[i].owned);
		free(p->items[i].stash);
		free(p->items[i].bnb);
		free(p->items[i].pA);
		free(p->items[i].pB);
	}
	free(p->items);
	ck_lora_config_release(&p->cfg);
	free(p);
}

static int ends_with(const char *s, size_t l, const char *suf)
{
	size_t n = strlen(suf);
	return l >= n && !memcmp(s + l - n, suf, n);
}

/* Adapter tensor kinds, by the end of the key. */
enum akind { AK_A, AK_B, AK_BBIAS, AK_EMB_A, AK_EMB_B, AK_MAG, AK_FULL };

static const struct {
	const char *suffix;
	enum akind kind;
} suffixes[] = {
	{ ".lora_A.weight", AK_A },
	{ ".lora_B.weight", AK_B },
	{ ".lora_B.bias", AK_BBIAS },
	{ ".lora_embedding_A", AK_EMB_A },
	{ ".lora_embedding_B", AK_EMB_B },
	{ ".lora_magnitude_vector.weight", AK_MAG },
	{ ".lora_magnitude_vector", AK_MAG },
};

/* One LoRA module of the adapter: its tensors, before it is mapped. */
struct amod {
	char *path;			/* module path with the .base_layer nesting kept */
	const struct ck_tensor *t[AK_FULL];
	size_t idx[AK_FULL];
};

struct planner {
	const struct ck_model *base, *adapter;
	struct ck_lora_plan *p;
	const struct ck_lora_opts *o;
	bool *used;			/* per adapter tensor */
	struct amod *mods;
	size_t nmods;
	struct ck_diag *d;
};

/*
 * Find the bitsandbytes 4-bit weights of the base: each packed weight
 * becomes its logical tensor (dequantized on the fly), its auxiliary
 * tensors (absmax, quant_map, nested_*, quant_state) are dropped.
 */
static int find_bnb(struct planner *pl)
{
	struct ck_lora_plan *p = pl->p;

	for (size_t i = 0; i < p->nitems; i++) {
		struct ck_lora_item *it = &p->items[i];
		struct ck_bnb_group *g;
		const struct ck_tensor *aux[5];

		if (!ck_bnb_is_weight(pl->base, it->base->name))
			continue;
		g = ck_calloc(1, sizeof(*g));
		if (!g)
			return ck_fail(pl->d, CK_ENOMEM, "out of memory");
		it->bnb = g;
		CK_TRY(ck_bnb_group_open(pl->base, it->base->name, g, pl->d));
		if (!ck_dtype_is_float(g->dtype))
			return ck_fail(pl->d, CK_EUNSUPPORTED, "'%s': tensor '%s': bnb logical dtype %s",
				       ck_model_path(pl->base), it->base->name, ck_dtype_name(g->dtype));
		it->dtype = g->dtype;
		it->ndim = g->ndim;
		memcpy(it->shape, g->shape, sizeof(it->shape));
		aux[0] = g->absmax;
		aux[1] = g->quant_map;
		aux[2] = g->nested_absmax;
		aux[3] = g->nested_quant_map;
		aux[4] = g->state;
		for (size_t j = 0; j < p->nitems; j++)
			for (size_t k = 0; k < CK_ARRAY_SIZE(aux); k++)
				if (aux[k] && p->items[j].base == aux[k])
					p->items[j].drop = true;
		p->nbnb++;
	}
	return 0;
}

static const char *strip_prefix(const char *name)
{
	static const char pre[] = "base_model.model.";
	return strncmp(name, pre, sizeof(pre) - 1) ? name : name + sizeof(pre) - 1;
}

/* The item whose output is called name (an MXFP4 pair answers to X). */
static struct ck_lora_item *item_of(struct planner *pl, const char *name)
{
	const struct ck_tensor *t = ck_model_find(pl->base, name);
	for (size_t i = 0; i < pl->p->nitems; i++) {
		struct ck_lora_item *it = &pl->p->items[i];
		if (t ? it->base == t && !it->drop && !it->mx_scales : it->mx_scales && !strcmp(it->out_name, name))
			return it;
	}
	return NULL;
}

/*
 * Find the MXFP4 expert pairs of the base: X_blocks [E, OUT, G, 16] U8 with
 * X_scales [E, OUT, G] U8.  Each becomes a BF16 X [E, 32G, OUT].
 */
static int find_mxfp4(struct planner *pl)
{
	struct ck_lora_plan *p = pl->p;
	const char *bp = ck_model_path(pl->base);

	for (size_t i = 0; i < p->nitems; i++) {
		struct ck_lora_item *it = &p->items[i];
		const struct ck_tensor *b = it->base, *s;
		size_t l = strlen(b->name);
		char *x, *sn;

		if (!ends_with(b->name, l, "_blocks"))
			continue;
		if (!(x = ck_strndup(b->name, l - 7)) || !(sn = ck_malloc(l + 1))) {
			free(x);
			return ck_fail(pl->d, CK_ENOMEM, "out of memory");
		}
		snprintf(sn, l + 1, "%s_scales", x);
		s = ck_model_find(pl->base, sn);
		free(sn);
		if (!s) {
			free(x);
			continue;
		}
		if (b->dtype != CK_DT_U8 || s->dtype != CK_DT_U8 || b->ndim != 4 || s->ndim != 3 ||
		    b->shape[3] != 16 || memcmp(b->shape, s->shape, 3 * sizeof(uint64_t))) {
			int rc = ck_fail(pl->d, CK_EINVAL, "'%s': tensor '%s': not an MXFP4 pair with '%s_scales' "
					 "(want U8 [E, OUT, G, 16] and [E, OUT, G])", bp, b->name, x);
			free(x);
			return rc;
		}
		if (b->shape[2] > UINT64_MAX / 32) {
			free(x);
			return ck_fail(pl->d, CK_EINVAL, "'%s': tensor '%s': too many blocks", bp, b->name);
		}
		it->out_name = it->owned = x;
		it->mx_scales = s;
		it->dtype = CK_DT_BF16;
		it->ndim = 3;
		it->shape[0] = b->shape[0];
		it->shape[1] = b->shape[2] * 32;
		it->shape[2] = b->shape[1];
		for (size_t j = 0; j < p->nitems; j++)
			if (p->items[j].base == s)
				p->items[j].drop = true;
		p->nmxfp4++;
	}
	return 0;
}

static char *esc_name(const char *s, char *buf, size_t cap)
{
	return ck_escape(s, strlen(s), buf, cap);
}

static int check_adapter_tensor(struct planner *pl, const struct ck_tensor *t)
{
	char e[256];
	const char *ap = ck_model_path(pl->adapter);

	if (t->dtype != CK_DT_F32 && t->dtype != CK_DT_BF16 && t->dtype != CK_DT_F16)
		return ck_fail(pl->d, CK_EUNSUPPORTED, "'%s': tensor '%s': dtype %s (an adapter tensor must "
			       "be F32, BF16 or F16)", ap, esc_name(t->name, e, sizeof(e)), ck_dtype_name(t->dtype));
	if (!t->nelem)
		return ck_fail(pl->d, CK_EINVAL, "'%s': tensor '%s': no elements (a ZeRO-3 shard saved "
			       "without gathering?)", ap, esc_name(t->name, e, sizeof(e)));
	for (uint64_t i = 0; i < t->nelem; i++)
		if (!isfinite(ck_load_float(t->dtype, t->data, i)))
			return ck_fail(pl->d, CK_EINVAL, "'%s': tensor '%s': non-finite value (NaN or Inf) "
				       "at element %" PRIu64, ap, esc_name(t->name, e, sizeof(e)), i);
	ck_model_done(t);	/* or the whole adapter stays resident through the merge */
	return 0;
}

static int same_shape(const struct ck_tensor *a, const struct ck_tensor *b)
{
	return a->ndim == b->ndim && !memcmp(a->shape, b->shape, sizeof(uint64_t) * (size_t)a->ndim);
}

static int find_mod(struct planner *pl, const char *path, size_t len, struct amod **out)
{
	for (size_t i = 0; i < pl->nmods; i++)
		if (strlen(pl->mods[i].path) == len && !memcmp(pl->mods[i].path, path, len)) {
			*out = &pl->mods[i];
			return 0;
		}
	pl->mods[pl->nmods].path = ck_strndup(path, len);
	if (!pl->mods[pl->nmods].path)
		return ck_fail(pl->d, CK_ENOMEM, "out of memory");
	*out = &pl->mods[pl->nmods++];
	return 0;
}

/*
 * trainable_tokens_delta of module m: rows ids[i] of m.weight become row i
 * (PEFT index_copy, the delta cast to the weight's dtype).  The ids come
 * from trainable_token_indices (a list means embed_tokens).
 */
static int map_tokens(struct planner *pl, const struct ck_tensor *t, const char *m, size_t mlen)
{
	const struct ck_lora_config *c = &pl->p->cfg;
	const char *ap = ck_model_path(pl->adapter);
	const struct ck_lora_tokens *tk = NULL;
	struct ck_lora_item *it;
	char name[1024];

	if (mlen + 8 >= sizeof(name))
		return ck_fail(pl->d, CK_EINVAL, "'%s': module path too long", ap);
	for (size_t i = 0; i < c->ntokens && !tk; i++) {
		size_t kl = strlen(c->tokens[i].module);
		if ((mlen == kl || (mlen > kl && m[mlen - kl - 1] == '.')) && !memcmp(m + mlen - kl,
										    c->tokens[i].module, kl))
			tk = &c->tokens[i];
	}
	if (!tk)
		return ck_fail(pl->d, CK_EINVAL, "'%s': tensor '%s': trainable_token_indices names no ids "
			       "for '%.*s'", ap, t->name, (int)mlen, m);
	snprintf(name, sizeof(name), "%.*s.weight", (int)mlen, m);
	it = item_of(pl, name);
	if (!it)
		return ck_fail(pl->d, CK_EINVAL, "'%s': module '%.*s': the base has no tensor '%s' for it", ap,
			       (int)mlen, m, name);
	if (it->ndim != 2 || t->ndim != 2 || t->shape[0] != tk->n || t->shape[1] != it->shape[1] || it->tt)
		return ck_fail(pl->d, CK_EINVAL, "'%s': tensor '%s': does not fit %zu token rows of '%s'", ap,
			       t->name, tk->n, name);
	for (size_t i = 0; i < tk->n; i++)
		if ((uint64_t)tk->ids[i] >= it->shape[0])
			return ck_fail(pl->d, CK_EINVAL, "'%s': trainable token id %" PRId64 " is past the %" PRIu64
				       " rows of '%s'", ap, tk->ids[i], it->shape[0], name);
	it->tt = t;
	it->tt_ids = tk->ids;
	return 0;
}

/* Pass 1: group the LoRA tensors by module; full tensors become replacements. */
static int collect(struct planner *pl)
{
	const struct ck_model *ad = pl->adapter;
	size_t n = ck_model_count(ad);
	char e[256];

	pl->mods = ck_calloc(n, sizeof(*pl->mods));
	if (!pl->mods)
		return ck_fail(pl->d, CK_ENOMEM, "out of memory");
	for (size_t i = 0; i < n; i++) {
		const struct ck_tensor *t = ck_model_tensor(ad, i);
		const char *name = strip_prefix(t->name);
		size_t l = strlen(name);
		int kind = -1;

		CK_TRY(check_adapter_tensor(pl, t));
		for (size_t k = 0; k < CK_ARRAY_SIZE(suffixes) && kind < 0; k++)
			if (ends_with(name, l, suffixes[k].suffix)) {
				struct amod *m = NULL;
				size_t ml = l - strlen(suffixes[k].suffix);
				kind = (int)suffixes[k].kind;
				CK_TRY(find_mod(pl, name, ml, &m));
				if (m->t[kind])
					return ck_fail(pl->d, CK_EINVAL, "'%s': tensor '%s': a second %s for "
						       "module '%s'", ck_model_path(ad),
						       esc_name(t->name, e, sizeof(e)), suffixes[k].suffix + 1,
						       m->path);
				m->t[kind] = t;
				m->idx[kind] = i;
			}
		if (kind >= 0)
			continue;
		if (ends_with(name, l, ".token_adapter.trainable_tokens_delta")) {
			CK_TRY(map_tokens(pl, t, name, l - strlen(".token_adapter.trainable_tokens_delta")));
			pl->used[i] = true;
			continue;
		}
		if (strstr(name, "lora_") || strstr(name, "trainable_tokens")) {
			return ck_fail(pl->d, CK_EUNSUPPORTED, "'%s': tensor '%s': unknown adapter tensor kind",
				       ck_model_path(ad), esc_name(t->name, e, sizeof(e)));
		}
		/* A full tensor: modules_to_save, save_embedding_layers (base_layer.weight), bias. */
		{
			char *bn = ck_strdup(name), *bl;
			struct ck_lora_item *it;
			if (!bn)
				return ck_fail(pl->d, CK_ENOMEM, "out of memory");
			while ((bl = strstr(bn, ".base_layer.")))
				memmove(bl, bl + 11, strlen(bl + 11) + 1);
			it = item_of(pl, bn);
			if (!it) {
				int rc = ck_fail(pl->d, CK_EINVAL, "'%s': tensor '%s': the base has no tensor '%s' "
						 "for it to replace", ck_model_path(ad),
						 esc_name(t->name, e, sizeof(e)), bn);
				free(bn);
				return rc;
			}
			free(bn);
			if (it->replace)
				return ck_fail(pl->d, CK_EINVAL, "'%s': tensor '%s': base tensor '%s' is replaced "
					       "twice", ck_model_path(ad), esc_name(t->name, e, sizeof(e)),
					       it->base->name);
			if (t->ndim != it->ndim || memcmp(t->shape, it->shape, sizeof(uint64_t) * (size_t)t->ndim)) {
				char s1[96], s2[96];
				return ck_fail(pl->d, CK_EUNSUPPORTED, "'%s': tensor '%s': shape %s but base "
					       "'%s' is %s (a resized vocabulary is not supported)",
					       ck_model_path(ad), esc_name(t->name, e, sizeof(e)),
					       ck_shape_str(t->shape, t->ndim, s1, sizeof(s1)), it->base->name,
					       ck_shape_str(it->shape, it->ndim, s2, sizeof(s2)));
			}
			if (!ck_dtype_is_float(it->dtype))
				return ck_fail(pl->d, CK_EUNSUPPORTED, "'%s': tensor '%s': base '%s' is %s, not "
					       "a float tensor", ck_model_path(ad), esc_name(t->name, e, sizeof(e)),
					       it->base->name, ck_dtype_name(it->dtype));
			it->replace = t;
			pl->used[i] = true;
		}
	}
	return 0;
}

/* Rank and alpha of a module or parameter path, as PEFT resolves them. */
static int resolve_scale(struct planner *pl, struct ck_lora_item *it, uint64_t r)
{
	const struct ck_lora_config *c = &pl->p->cfg;
	double cr = c->r, alpha = c->alpha;
	int rc;

	rc = ck_lora_pattern(c->rank_pat, c->nrank_pat, it->key, &cr, pl->d);
	if (rc < 0)
		return rc;
	rc = ck_lora_pattern(c->alpha_pat, c->nalpha_pat, it->key, &alpha, pl->d);
	if (rc < 0)
		return rc;
	if (cr != (double)r)
		return ck_fail(pl->d, CK_EINVAL, "'%s': module '%s': rank mismatch: the config says r=%g, "
			       "the tensors have rank %" PRIu64, ck_model_path(pl->adapter), it->key, cr, r);
	it->r = r;
	it->alpha = alpha;
	it->scale = pl->o->scale * (c->use_rslora ? alpha / sqrt((double)r) : alpha / (double)r);
	return 0;
}

/* Does a target_parameters entry select the parameter path? (suffix match on '.') */
static int param_targeted(const struct ck_lora_config *c, const char *path)
{
	size_t l = strlen(path);
	for (size_t i = 0; i < c->ntarget_params; i++) {
		const char *t = c->target_params[i];
		size_t tl = strlen(t);
		if ((l == tl && !strcmp(path, t)) || (l > tl && path[l - tl - 1] == '.' && !strcmp(path + l - tl, t)))
			return 1;
	}
	return 0;
}

/* Registration order of expert parameters in the transformers MoE classes. */
static const char *const param_order[] = { "gate_up_proj", "gate_up_proj_bias", "down_proj", "down_proj_bias" };

static int order_of(const char *param)
{
	for (size_t i = 0; i < CK_ARRAY_SIZE(param_order); i++)
		if (!strcmp(param, param_order[i]))
			return (int)i;
	return -1;
}

/*
 * The parameter a ParamWrapper module path belongs to: with k trailing
 * ".base_layer", the k-th targeted parameter of the module counted from the
 * last one wrapped (PEFT wraps in registration order; the first one wrapped
 * ends innermost).
 */
static int resolve_param(struct planner *pl, const char *mpath, size_t mlen, unsigned k,
			 struct ck_lora_item **out)
{
	const struct ck_model *b = pl->base;
	const char *targeted[CK_ARRAY_SIZE(param_order)] = { 0 };
	char name[1024];
	size_t nt = 0;

	if (mlen + 32 >= sizeof(name))
		return ck_fail(pl->d, CK_EINVAL, "'%s': module path too long", ck_model_path(pl->adapter));
	for (size_t i = 0; i < CK_ARRAY_SIZE(param_order); i++) {
		snprintf(name, sizeof(name), "%.*s.%s", (int)mlen, mpath, param_order[i]);
		if (item_of(pl, name) && param_targeted(&pl->p->cfg, name))
			targeted[nt++] = param_order[i];
	}
	/* A targeted parameter we do not know the registration order of. */
	for (size_t i = 0; i < ck_model_count(b); i++) {
		const struct ck_tensor *t = ck_model_tensor(b, i);
		const char *rest = t->name + mlen + 1;
		if (strlen(t->name) > mlen + 1 && !strncmp(t->name, mpath, mlen) && t->name[mlen] == '.' &&
		    !strchr(rest, '.') && order_of(rest) < 0 && param_targeted(&pl->p->cfg, t->name) && nt)
			return ck_fail(pl->d, CK_EUNSUPPORTED, "'%s': module '%.*s': parameter '%s' is targeted "
				       "but ckpt does not know its registration order", ck_model_path(pl->adapter),
				       (int)mlen, mpath, rest);
	}
	if (k >= nt)
		return ck_fail(pl->d, CK_EINVAL, "'%s': module '%.*s'%s: no targeted parameter of the base "
			       "fits (target_parameters names %zu here)", ck_model_path(pl->adapter), (int)mlen,
			       mpath, k ? " (nested base_layer)" : "", nt);
	snprintf(name, sizeof(name), "%.*s.%s", (int)mlen, mpath, targeted[nt - 1 - k]);
	*out = item_of(pl, name);
	return 0;
}

/* The orientation an expert A/B pair implies for param [E, d1, d2]; AUTO when square. */
static int expert_shapes(struct planner *pl, struct ck_lora_item *it, const struct amod *m)
{
	const struct ck_tensor *A = m->t[AK_A], *B = m->t[AK_B];
	uint64_t E = it->shape[0], d1 = it->shape[1], d2 = it->shape[2];
	const char *ap = ck_model_path(pl->adapter);

	if (A->ndim != 2 || B->ndim != 2 || A->shape[0] != B->shape[1] || A->shape[0] % E)
		return ck_fail(pl->d, CK_EINVAL, "'%s': module '%s': rank mismatch between lora_A [%" PRIu64
			       ", ...] and lora_B [..., %" PRIu64 "] for %" PRIu64 " experts of '%s'", ap, m->path,
			       A->shape[0], B->ndim == 2 ? B->shape[1] : 0, E, it->out_name);
	it->E = E;
	if (A->shape[1] == d1 && B->shape[0] == d2 && d1 != d2)
		it->layout = CK_MOE_STANDARD;
	else if (A->shape[1] == d2 && B->shape[0] == d1 && d1 != d2)
		it->layout = CK_MOE_SWAPPED;
	else if (A->shape[1] == d1 && B->shape[0] == d2)
		it->layout = CK_MOE_AUTO;	/* square: both read the same */
	else
		return ck_fail(pl->d, CK_EINVAL, "'%s': module '%s': lora_A [%" PRIu64 ", %" PRIu64 "] and "
			       "lora_B [%" PRIu64 ", %" PRIu64 "] do not fit '%s' [%" PRIu64 ", %" PRIu64 ", %" PRIu64
			       "] either way", ap, m->path, A->shape[0], A->shape[1], B->shape[0], B->shape[1],
			       it->out_name, E, d1, d2);
	it->layout_why = it->layout == CK_MOE_AUTO ? NULL : "shapes";
	return 0;
}

/*
 * Unsloth's per-expert Linear LoRA: module <m>.gate_up_projs.<e> (or
 * down_projs) when the base has the fused <m>.gate_up_proj [E, in, out].
 * Expert e's Linear weight is W[e]^T (bnb-nf4.md 5), so its delta goes in
 * as (B_e A_e)^T, one rounding (Unsloth folds in fp32).  Returns 1 when
 * the module is one, 0 when not, or a negative status.
 */
static int map_perexpert(struct planner *pl, struct amod *m, size_t mlen)
{
	static const struct {
		const char *seg, *param;
	} kinds[] = { { ".gate_up_projs.", "gate_up_proj" }, { ".down_projs.", "down_proj" } };
	const char *ap = ck_model_path(pl->adapter);
	char name[1024];

	for (size_t k = 0; k < CK_ARRAY_SIZE(kinds); k++) {
		const char *seg = NULL, *p = m->path, *q;
		struct ck_lora_item *it;
		const struct ck_tensor *A = m->t[AK_A], *B = m->t[AK_B];
		char *end;
		unsigned long long e;

		for (q = strstr(p, kinds[k].seg); q && q < p + mlen; q = strstr(q + 1, kinds[k].seg))
			seg = q;
		if (!seg)
			continue;
		q = seg + strlen(kinds[k].seg);
		if (*q < '0' || *q > '9')
			continue;
		e = strtoull(q, &end, 10);
		if (end != p + mlen)
			continue;
		snprintf(name, sizeof(name), "%.*s.%s", (int)(seg - p), p, kinds[k].param);
		it = item_of(pl, name);
		if (!it || it->ndim != 3)
			return 0;
		if (it->op != CK_LOP_NONE && it->op != CK_LOP_PEREXPERT)
			return ck_fail(pl->d, CK_EINVAL, "'%s': module '%s': '%s' is adapted twice", ap, m->path,
				       name);
		if (e >= it->shape[0])
			return ck_fail(pl->d, CK_EINVAL, "'%s': module '%s': expert %llu of %" PRIu64, ap, m->path,
				       e, it->shape[0]);
		if (m->t[AK_MAG] || m->t[AK_BBIAS] || !A || !B)
			return ck_fail(pl->d, CK_EUNSUPPORTED, "'%s': module '%s': per-expert LoRA needs lora_A "
				       "and lora_B only", ap, m->path);
		if (A->ndim != 2 || B->ndim != 2 || A->shape[0] != B->shape[1] || A->shape[1] != it->shape[1] ||
		    B->shape[0] != it->shape[2])
			return ck_fail(pl->d, CK_EINVAL, "'%s': module '%s': lora_A/B do not fit expert %llu of "
				       "'%s' (rank mismatch or wrong shape)", ap, m->path, e, name);
		if (it->op == CK_LOP_NONE) {
			it->op = CK_LOP_PEREXPERT;
			it->E = it->shape[0];
			it->layout = CK_MOE_STANDARD;
			it->layout_why = "per-expert Linear (W[e] is the Linear weight transposed)";
			it->pA = ck_calloc(it->E, sizeof(*it->pA));
			it->pB = ck_calloc(it->E, sizeof(*it->pB));
			it->key = ck_strndup(m->path, mlen);
			if (!it->pA || !it->pB || !it->key)
				return ck_fail(pl->d, CK_ENOMEM, "out of memory");
			CK_TRY(resolve_scale(pl, it, A->shape[0]));
		} else {
			struct ck_lora_item one = *it;
			if (it->pA[e])
				return ck_fail(pl->d, CK_EINVAL, "'%s': module '%s': expert %llu twice", ap, m->path, e);
			/* Every expert must resolve to the same rank and scale. */
			one.key = ck_strndup(m->path, mlen);
			if (!one.key)
				return ck_fail(pl->d, CK_ENOMEM, "out of memory");
			if (A->shape[0] != it->r) {
				free(one.key);
				return ck_fail(pl->d, CK_EUNSUPPORTED, "'%s': module '%s': rank %" PRIu64 " but expert "
					       "0's is %" PRIu64 " (per-expert ranks must agree)", ap, m->path,
					       A->shape[0], it->r);
			}
			{
				int rc = resolve_scale(pl, &one, A->shape[0]);
				free(one.key);
				if (rc)
					return rc;
			}
			if (one.scale != it->scale)
				return ck_fail(pl->d, CK_EUNSUPPORTED, "'%s': module '%s': another alpha than the "
					       "other experts of '%s'", ap, m->path, name);
		}
		it->pA[e] = A;
		it->pB[e] = B;
		pl->used[m->idx[AK_A]] = pl->used[m->idx[AK_B]] = true;
		return 1;
	}
	return 0;
}

/* Pass 2: map each LoRA module to its base tensor. */
static int map_module(struct planner *pl, struct amod *m)
{
	const char *ap = ck_model_path(pl->adapter);
	struct ck_lora_item *it = NULL;
	size_t plen = strlen(m->path), mlen = plen;
	unsigned nest = 0;
	char name[1024];

	while (ends_with(m->path, mlen, ".base_layer")) {
		mlen -= 11;
		nest++;
	}
	if (mlen + 16 >= sizeof(name))
		return ck_fail(pl->d, CK_EINVAL, "'%s': module path too long", ap);
	if (m->t[AK_EMB_A] || m->t[AK_EMB_B]) {
		if (!m->t[AK_EMB_A] || !m->t[AK_EMB_B] || m->t[AK_A] || m->t[AK_B] || m->t[AK_BBIAS] || nest)
			return ck_fail(pl->d, CK_EINVAL, "'%s': module '%s': lora_embedding_A and _B must come "
				       "as a pair, alone", ap, m->path);
		snprintf(name, sizeof(name), "%.*s.weight", (int)mlen, m->path);
		it = item_of(pl, name);
		if (!it)
			goto nobase;
		it->op = CK_LOP_EMBED;
		it->A = m->t[AK_EMB_A];
		it->B = m->t[AK_EMB_B];
		pl->used[m->idx[AK_EMB_A]] = pl->used[m->idx[AK_EMB_B]] = true;
		/* A [r, V], B [H, r], W [V, H] */
		if (it->ndim != 2 || it->A->ndim != 2 || it->B->ndim != 2 || it->A->shape[0] != it->B->shape[1] ||
		    it->A->shape[1] != it->shape[0] || it->B->shape[0] != it->shape[1])
			return ck_fail(pl->d, CK_EINVAL, "'%s': module '%s': lora_embedding_A/B do not fit '%s' "
				       "(rank mismatch or wrong shape)", ap, m->path, name);
		it->key = ck_strndup(m->path, mlen);
		if (!it->key)
			return ck_fail(pl->d, CK_ENOMEM, "out of memory");
		CK_TRY(resolve_scale(pl, it, it->A->shape[0]));
	} else {
		const struct ck_tensor *A = m->t[AK_A], *B = m->t[AK_B];
		int expert = 0;
		if (!A || !B)
			return ck_fail(pl->d, CK_EINVAL, "'%s': module '%s': lora_%s without lora_%s", ap, m->path,
				       A ? "A" : "B", A ? "B" : "A");
		snprintf(name, sizeof(name), "%.*s.weight", (int)mlen, m->path);
		if (!nest && !ck_model_find(pl->base, name)) {
			int rc = map_perexpert(pl, m, mlen);
			if (rc)
				return rc < 0 ? rc : 0;
		}
		if (pl->p->cfg.ntarget_params && (nest || !ck_model_find(pl->base, name))) {
			CK_TRY(resolve_param(pl, m->path, mlen, nest, &it));
			expert = 1;
		} else if (!nest) {
			it = item_of(pl, name);
		}
		if (!it)
			goto nobase;
		if (it->op != CK_LOP_NONE)
			return ck_fail(pl->d, CK_EINVAL, "'%s': module '%s': base tensor '%s' is adapted twice", ap,
				       m->path, it->base->name);
		it->A = A;
		it->B = B;
		pl->used[m->idx[AK_A]] = pl->used[m->idx[AK_B]] = true;
		if (expert && it->ndim == 3) {
			if (m->t[AK_MAG] || m->t[AK_BBIAS])
				return ck_fail(pl->d, CK_EUNSUPPORTED, "'%s': module '%s': DoRA or lora_bias on "
					       "expert parameters (PEFT refuses it too)", ap, m->path);
			it->op = CK_LOP_EXPERTS;
			it->key = ck_strdup(it->out_name);
			if (!it->key)
				return ck_fail(pl->d, CK_ENOMEM, "out of memory");
			CK_TRY(expert_shapes(pl, it, m));
			CK_TRY(resolve_scale(pl, it, A->shape[0] / it->E));
			return 0;
		}
		/* A Linear (or a 2-D ParamWrapper, which PEFT merges the same way). */
		it->op = CK_LOP_LINEAR;
		it->E = 1;
		it->fifo = pl->p->cfg.fan_in_fan_out;
		it->key = expert ? ck_strdup(it->base->name) : ck_strndup(m->path, mlen);
		if (!it->key)
			return ck_fail(pl->d, CK_ENOMEM, "out of memory");
		{
			uint64_t out = it->fifo ? it->shape[1] : it->shape[0];
			uint64_t in = it->fifo ? it->shape[0] : it->shape[1];
			if (it->ndim != 2 || A->ndim != 2 || B->ndim != 2 || A->shape[0] != B->shape[1])
				return ck_fail(pl->d, CK_EINVAL, "'%s': module '%s': rank mismatch between lora_A "
					       "and lora_B (or not a 2-D weight)", ap, m->path);
			if (A->shape[1] != in || B->shape[0] != out)
				return ck_fail(pl->d, CK_EINVAL, "'%s': module '%s': lora_A [%" PRIu64 ", %" PRIu64
					       "] and lora_B [%" PRIu64 ", %" PRIu64 "] do not fit '%s'", ap,
					       m->path, A->shape[0], A->shape[1], B->shape[0], B->shape[1],
					       it->base->name);
		}
		CK_TRY(resolve_scale(pl, it, A->shape[0]));
		if (m->t[AK_MAG]) {
			const struct ck_tensor *g = m->t[AK_MAG];
			if (it->fifo)
				return ck_fail(pl->d, CK_EUNSUPPORTED, "'%s': module '%s': DoRA with fan_in_fan_out "
					       "is not supported", ap, m->path);
			if (g->ndim != 1 || g->shape[0] != it->shape[0])
				return ck_fail(pl->d, CK_EINVAL, "'%s': module '%s': lora_magnitude_vector does not "
					       "fit '%s'", ap, m->path, it->base->name);
			it->mag = g;
			pl->used[m->idx[AK_MAG]] = true;
		}
		if (m->t[AK_BBIAS]) {
			struct ck_lora_item *bi;
			snprintf(name, sizeof(name), "%.*s.bias", (int)mlen, m->path);
			bi = item_of(pl, name);
			if (!bi)
				return ck_fail(pl->d, CK_EINVAL, "'%s': module '%s': lora_B.bias but the base has no "
					       "'%s'", ap, m->path, name);
			if (bi->op != CK_LOP_NONE || !same_shape(m->t[AK_BBIAS], bi->base))
				return ck_fail(pl->d, CK_EINVAL, "'%s': module '%s': lora_B.bias does not fit '%s'",
					       ap, m->path, name);
			bi->op = CK_LOP_BIAS;
			bi->B = m->t[AK_BBIAS];
			bi->r = it->r;
			bi->alpha = it->alpha;
			bi->scale = it->scale;
			bi->E = 1;
			bi->key = ck_strdup(it->key);
			if (!bi->key)
				return ck_fail(pl->d, CK_ENOMEM, "out of memory");
			pl->used[m->idx[AK_BBIAS]] = true;
		}
	}
	if (m->t[AK_MAG] && it->op != CK_LOP_LINEAR)
		return ck_fail(pl->d, CK_EUNSUPPORTED, "'%s': module '%s': DoRA is only supported on Linear "
			       "weights", ap, m->path);
	return 0;
nobase:
	return ck_fail(pl->d, CK_EINVAL, "'%s': module '%s': the base has no tensor '%s' for it", ap, m->path,
		       name);
}

/* Decide the orientation of square expert params from the evidence (2.4). */
static int decide_layout(struct planner *pl)
{
	struct ck_lora_plan *p = pl->p;
	enum ck_moe_layout seen = CK_MOE_AUTO;
	const int *v = p->cfg.peft_ver;
	int any = 0;

	for (size_t i = 0; i < p->nitems; i++) {
		struct ck_lora_item *it = &p->items[i];
		if (it->op != CK_LOP_EXPERTS)
			continue;
		any = 1;
		if (it->layout == CK_MOE_AUTO)
			continue;
		if (seen != CK_MOE_AUTO && seen != it->layout)
			return ck_fail(pl->d, CK_EINVAL, "'%s': expert adapters disagree on orientation ('%s' "
				       "is %s, another is %s)", ck_model_path(pl->adapter), it->base->name,
				       ck_moe_layout_name(it->layout), ck_moe_layout_name(seen));
		seen = it->layout;
	}
	if (!any)
		return 0;
	if (pl->o->moe_layout != CK_MOE_AUTO) {
		if (seen != CK_MOE_AUTO && seen != pl->o->moe_layout)
			return ck_fail(pl->d, CK_EUSAGE, "--moe-layout %s contradicts the adapter: its expert "
				       "shapes are %s", ck_moe_layout_name(pl->o->moe_layout),
				       ck_moe_layout_name(seen));
		p->moe_layout = pl->o->moe_layout;
		p->moe_why = "--moe-layout";
	} else if (seen != CK_MOE_AUTO) {
		p->moe_layout = seen;
		p->moe_why = "the shapes of the non-square expert parameters";
	} else if (v[0] == 0 && v[1] >= 17 && v[1] <= 18) {
		p->moe_layout = CK_MOE_STANDARD;
		p->moe_why = "peft_version <= 0.18 (never swapped)";
	} else {
		return ck_fail(pl->d, CK_EUSAGE, "'%s': the expert LoRA is square and nothing in the adapter "
			       "says its orientation (peft_version %s): pass --moe-layout standard|swapped",
			       ck_model_path(pl->adapter), p->cfg.peft_version ? p->cfg.peft_version : "absent");
	}
	for (size_t i = 0; i < p->nitems; i++) {
		struct ck_lora_item *it = &p->items[i];
		if (it->op == CK_LOP_EXPERTS && it->layout == CK_MOE_AUTO) {
			it->layout = p->moe_layout;
			it->layout_why = p->moe_why;
		}
	}
	return 0;
}

/*
 * --requant-mxfp4: a touched MXFP4 pair is written back as its two tensors
 * (the blocks item computes both, the scales item writes what it kept); an
 * untouched pair is copied byte for byte.
 */
static void requant_plan(struct ck_lora_plan *p)
{
	for (size_t i = 0; i < p->nitems; i++) {
		struct ck_lora_item *it = &p->items[i], *sc = NULL;
		if (!it->mx_scales)
			continue;
		for (size_t j = 0; j < p->nitems; j++)
			if (p->items[j].base == it->mx_scales)
				sc = &p->items[j];
		sc->drop = false;
		it->out_name = it->base->name;
		if (it->op == CK_LOP_NONE) {
			/* untouched: a plain copy of both tensors */
			it->mx_scales = NULL;
			it->ndim = it->base->ndim;
			it->dtype = it->base->dtype;
			memcpy(it->shape, it->base->shape, sizeof(it->shape));
			p->nmxfp4--;
			continue;
		}
		it->requant = true;
		sc->pair = it;
		p->nmxfp4--;
		p->nrequant++;
	}
}

int ck_lora_plan(struct ck_lora_plan **out, const struct ck_model *base, const struct ck_model *adapter,
		 struct ck_lora_config *cfg, const struct ck_lora_opts *o, struct ck_diag *d)
{
	struct ck_lora_plan *p = ck_calloc(1, sizeof(*p));
	struct planner pl = { .base = base, .adapter = adapter, .p = p, .o = o, .d = d };
	size_t na = ck_model_count(adapter);
	int rc = 0;

	*out = NULL;
	if (!p) {
		ck_lora_config_release(cfg);
		return ck_fail(d, CK_ENOMEM, "out of memory");
	}
	p->cfg = *cfg;
	memset(cfg, 0, sizeof(*cfg));
	p->nitems = ck_model_count(base);
	p->items = ck_calloc(p->nitems, sizeof(*p->items));
	pl.used = ck_calloc(na, sizeof(bool));
	if (!p->items || !pl.used) {
		rc = ck_fail(d, CK_ENOMEM, "out of memory");
		goto out;
	}
	for (size_t i = 0; i < p->nitems; i++) {
		struct ck_lora_item *it = &p->items[i];
		it->base = ck_model_tensor(base, i);
		it->out_name = it->base->name;
		it->ndim = it->base->ndim;
		it->dtype = it->base->dtype;
		memcpy(it->shape, it->base->shape, sizeof(it->shape));
	}
	if (!na) {
		rc = ck_fail(d, CK_EINVAL, "'%s': the adapter holds no tensors", ck_model_path(adapter));
		goto out;
	}
	if ((rc = find_mxfp4(&pl)) || (rc = find_bnb(&pl)) || (rc = collect(&pl)))
		goto out;
	for (size_t i = 0; i < pl.nmods && !rc; i++)
		rc = map_module(&pl, &pl.mods[i]);
	if (!rc)
		rc = decide_layout(&pl);
	for (size_t i = 0; i < na && !rc; i++)
		if (!pl.used[i]) {
			char e[256];
			rc = ck_fail(d, CK_EINVAL, "'%s': tensor '%s' maps to nothing in the base",
				     ck_model_path(adapter),
				     esc_name(ck_model_tensor(adapter, i)->name, e, sizeof(e)));
		}
	for (size_t i = 0; i < p->nitems && !rc; i++) {
		struct ck_lora_item *it = &p->items[i];
		if (it->op != CK_LOP_NONE && !ck_dtype_is_float(it->dtype))
			rc = ck_fail(d, CK_EUNSUPPORTED, "'%s': tensor '%s': dtype %s cannot take a LoRA delta "
				     "(F32, F16 or BF16 bases only)", ck_model_path(base), it->base->name,
				     ck_dtype_name(it->dtype));
		if (it->tt && it->op != CK_LOP_NONE)
			rc = ck_fail(d, CK_EUNSUPPORTED, "'%s': '%s' has both LoRA and trainable tokens",
				     ck_model_path(adapter), it->base->name);
		if (it->op != CK_LOP_NONE || it->replace || it->tt)
			p->nadapted++;
	}
	p->nadapter_tensors = na;
	if (!rc && o->requant_mxfp4)
		requant_plan(p);
out:
	for (size_t i = 0; i < pl.nmods; i++)
		free(pl.mods[i].path);
	free(pl.mods);
	free(pl.used);
	if (rc)
		ck_lora_plan_free(p);
	else
		*out = p;
	return rc;
}

