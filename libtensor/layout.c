/*
 * layout.c - recognize MXFP4, bitsandbytes 4-bit and per-expert layouts by
 * name, dtype and shape (see layout.h).
 */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "layout.h"

const char *ck_layout_kind_name(enum ck_layout_kind k)
{
	switch (k) {
	case CK_LAYOUT_MXFP4_BLOCKS:
		return "mxfp4_blocks";
	case CK_LAYOUT_MXFP4_SCALES:
		return "mxfp4_scales";
	case CK_LAYOUT_BNB_WEIGHT:
		return "bnb4_weight";
	case CK_LAYOUT_BNB_STATE:
		return "bnb4_state";
	case CK_LAYOUT_EXPERT:
		return "expert";
	default:
		return "plain";
	}
}

/* name with its suffix (of length cut) replaced by repl, or NULL if too long. */
static const char *swap_suffix(const char *name, size_t cut, const char *repl, char *buf, size_t cap)
{
	size_t keep = strlen(name) - cut;
	if (keep + strlen(repl) + 1 > cap)
		return NULL;
	memcpy(buf, name, keep);
	strcpy(buf + keep, repl);
	return buf;
}

static int detect_mxfp4(const struct ck_model *m, const struct ck_tensor *t, struct ck_layout *l)
{
	static const char *const pairs[][2] = { { "_blocks", "_scales" }, { ".blocks", ".scales" } };
	char other[1024];

	if (t->dtype != CK_DT_U8)
		return 0;
	for (size_t i = 0; i < CK_ARRAY_SIZE(pairs); i++) {
		for (int side = 0; side < 2; side++) {
			const struct ck_tensor *o;
			const struct ck_tensor *blocks, *scales;
			if (!ck_ends_with(t->name, pairs[i][side]))
				continue;
			if (!swap_suffix(t->name, strlen(pairs[i][side]), pairs[i][!side], other,
					 sizeof(other)))
				return 0;
			o = ck_model_find(m, other);
			if (!o || o->dtype != CK_DT_U8)
				return 0;
			blocks = side ? o : t;
			scales = side ? t : o;
			/* blocks [..., OUT, G, 16], scales [..., OUT, G] */
			if (blocks->ndim < 2 || blocks->ndim != scales->ndim + 1 ||
			    blocks->shape[blocks->ndim - 1] != 16)
				return 0;
			for (int k = 0; k < scales->ndim; k++)
				if (blocks->shape[k] != scales->shape[k])
					return 0;
			l->kind = side ? CK_LAYOUT_MXFP4_SCALES : CK_LAYOUT_MXFP4_BLOCKS;
			snprintf(l->quant, sizeof(l->quant), "mxfp4");
			snprintf(l->dtype, sizeof(l->dtype), "BF16");
			l->ndim = scales->ndim;
			memcpy(l->shape, scales->shape, sizeof(uint64_t) * (size_t)scales->ndim);
			l->shape[l->ndim - 1] *= 32;
			return 1;
		}
	}
	return 0;
}

int ck_layout_bnb_state(const uint8_t *json, size_t len, struct ck_layout *l)
{
	const char *endp = NULL;
	cJSON *root = cJSON_ParseWithLengthOpts((const char *)json, len, &endp, 0);
	const cJSON *qt, *bs, *dt, *sh, *dim;
	int rc = CK_EINVAL;

	if (!root || !cJSON_IsObject(root))
		goto out;
	qt = cJSON_GetObjectItemCaseSensitive(root, "quant_type");
	bs = cJSON_GetObjectItemCaseSensitive(root, "blocksize");
	dt = cJSON_GetObjectItemCaseSensitive(root, "dtype");
	sh = cJSON_GetObjectItemCaseSensitive(root, "shape");
	if (!cJSON_IsString(qt) || !cJSON_IsNumber(bs) || !cJSON_IsArray(sh))
		goto out;
	snprintf(l->quant, sizeof(l->quant), "%s", qt->valuestring);
	if (bs->valuedouble < 1 || bs->valuedouble > 1e9)
		goto out;
	l->blocksize = (uint64_t)bs->valuedouble;
	if (cJSON_IsString(dt))
		snprintf(l->dtype, sizeof(l->dtype), "%s", dt->valuestring);
	l->ndim = 0;
	cJSON_ArrayForEach(dim, sh) {
		if (l->ndim == CK_MAX_DIMS || !cJSON_IsNumber(dim) || dim->valuedouble < 0 ||
		    dim->valuedouble > 9.0e15)
			goto out;
		l->shape[l->ndim++] = (uint64_t)dim->valuedouble;
	}
	rc = 0;
out:
	cJSON_Delete(root);
	return rc;
}

static int detect_bnb(const struct ck_model *m, const struct ck_tensor *t, struct ck_layout *l)
{
	static const char *const aux[] = { ".absmax", ".quant_map", ".nested_absmax",
					   ".nested_quant_map", ".quant_state.bitsandbytes__nf4",
					   ".quant_state.bitsandbytes__fp4" };
	char other[1024];
	const struct ck_tensor *st;

	for (size_t i = 0; i < CK_ARRAY_SIZE(aux); i++)
		if (ck_ends_with(t->name, aux[i])) {
			l->kind = CK_LAYOUT_BNB_STATE;
			snprintf(l->role, sizeof(l->role), "%s", aux[i] + 1);
			if (i >= 4)
				snprintf(l->role, sizeof(l->role), "quant_state");
			return 1;
		}
	if (t->dtype != CK_DT_U8 || strlen(t->name) + 40 > sizeof(other))
		return 0;
	for (int q = 0; q < 2; q++) {
		snprintf(other, sizeof(other), "%s.quant_state.bitsandbytes__%s", t->name,
			 q ? "fp4" : "nf4");
		st = ck_model_find(m, other);
		if (!st)
			continue;
		l->kind = CK_LAYOUT_BNB_WEIGHT;
		snprintf(l->quant, sizeof(l->quant), q ? "fp4" : "nf4");
		if (st->dtype == CK_DT_U8 && ck_layout_bnb_state(st->data, st->nbytes, l) < 0)
			snprintf(l->role, sizeof(l->role), "bad quant_state");
		return 1;
	}
	return 0;
}

/* "...experts.gate_up_projs.7..." or "...experts.down_proj.weights.7..." */
static int detect_expert(const struct ck_tensor *t, struct ck_layout *l)
{
	const char *p = strstr(t->name, "experts.");
	const char *q, *dot;
	char *end;
	long long e;

	if (!p)
		return 0;
	p += 8;
	dot = strchr(p, '.');
	if (!dot || dot - p >= (ptrdiff_t)sizeof(l->role))
		return 0;
	q = dot + 1;
	if (!strncmp(q, "weights.", 8))
		q += 8;
	else if (!(dot - p > 1 && dot[-1] == 's'))
		return 0;
	if (*q < '0' || *q > '9')
		return 0;
	e = strtoll(q, &end, 10);
	if (*end != '.' && *end)
		return 0;
	if (l->kind == CK_LAYOUT_PLAIN) {
		l->kind = CK_LAYOUT_EXPERT;
		snprintf(l->role, sizeof(l->role), "%.*s", (int)(dot - p), p);
	}
	l->expert = e;
	return 1;
}

void ck_layout_detect(const struct ck_model *m, const struct ck_tensor *t, struct ck_layout *l)
{
	memset(l, 0, sizeof(*l));
	l->expert = -1;
	if (!detect_mxfp4(m, t, l))
		detect_bnb(m, t, l);
	detect_expert(t, l);
}

char *ck_layout_note(const struct ck_layout *l, char *buf, size_t cap)
{
	char shape[160];
	size_t o = 0;

	buf[0] = 0;
	if (l->ndim)
		ck_shape_str(l->shape, l->ndim, shape, sizeof(shape));
	switch (l->kind) {
	case CK_LAYOUT_MXFP4_BLOCKS:
		o = (size_t)snprintf(buf, cap, "mxfp4 blocks -> BF16 %s", shape);
		break;
	case CK_LAYOUT_MXFP4_SCALES:
		o = (size_t)snprintf(buf, cap, "mxfp4 scales (E8M0)");
		break;
	case CK_LAYOUT_BNB_WEIGHT:
		if (l->role[0])
			o = (size_t)snprintf(buf, cap, "bnb %s (%s)", l->quant, l->role);
		else
			o = (size_t)snprintf(buf, cap, "bnb %s blocksize %" PRIu64 " -> %s %s", l->quant,
					     l->blocksize, l->dtype[0] ? l->dtype : "?", shape);
		break;
	case CK_LAYOUT_BNB_STATE:
		o = (size_t)snprintf(buf, cap, "bnb %s", l->role);
		break;
	case CK_LAYOUT_EXPERT:
		o = (size_t)snprintf(buf, cap, "expert %" PRId64 " of %s", l->expert, l->role);
		break;
	default:
		break;
	}
	if (l->kind != CK_LAYOUT_EXPERT && l->expert >= 0 && o < cap)
		snprintf(buf + o, cap - o, ", expert %" PRId64, l->expert);
	return buf;
}

uint64_t ck_layout_params(const struct ck_layout *l, const struct ck_tensor *t)
{
	uint64_t n = 1;
	switch (l->kind) {
	case CK_LAYOUT_MXFP4_BLOCKS:
		return t->nbytes * 2;
	case CK_LAYOUT_MXFP4_SCALES:
	case CK_LAYOUT_BNB_STATE:
		return 0;
	case CK_LAYOUT_BNB_WEIGHT:
		if (!l->ndim)
			return t->nbytes * 2;
		for (int i = 0; i < l->ndim; i++)
			n *= l->shape[i];
		return n;
	default:
		return t->nelem;
	}
}

size_t ck_layout_count(const struct ck_model *m, enum ck_layout_kind kind)
{
	size_t n = 0;
	for (size_t i = 0; i < ck_model_count(m); i++) {
		struct ck_layout l;
		ck_layout_detect(m, ck_model_tensor(m, i), &l);
		n += l.kind == kind;
	}
	return n;
}

int ck_layout_refuse(const struct ck_model *m, enum ck_layout_kind kind, const char *what_to_run,
		     struct ck_diag *d)
{
	for (size_t i = 0; i < ck_model_count(m); i++) {
		const struct ck_tensor *t = ck_model_tensor(m, i);
		struct ck_layout l;
		ck_layout_detect(m, t, &l);
		if (l.kind == kind)
			return ck_fail(d, CK_EUNSUPPORTED, "'%s': tensor '%s' is %s: run 'ckpt %s' first",
				       ck_model_path(m), t->name,
				       kind == CK_LAYOUT_BNB_WEIGHT ? "bitsandbytes 4-bit" : "MXFP4",
				       what_to_run);
	}
	return 0;
}
