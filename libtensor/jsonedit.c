/*
 * jsonedit.c - top-level members of a JSON object edited as text (see
 * jsonedit.h).  cJSON checks the text first, so the scanners below only
 * find the ends of what is known to be valid JSON.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cjson/cJSON.h>
#include "jsonedit.h"

static size_t skip_ws(const char *s, size_t i, size_t n)
{
	while (i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r'))
		i++;
	return i;
}

/* Just past the string opening at s[i]. */
static size_t skip_string(const char *s, size_t i, size_t n)
{
	for (i++; i < n && s[i] != '"'; i++)
		if (s[i] == '\\')
			i++;
	return i < n ? i + 1 : n;
}

/* Just past the value starting at s[i]. */
static size_t skip_value(const char *s, size_t i, size_t n)
{
	int depth = 0;

	do {
		if (i >= n)
			return n;
		if (s[i] == '"') {
			i = skip_string(s, i, n);
		} else if (s[i] == '{' || s[i] == '[') {
			depth++;
			i++;
		} else if (s[i] == '}' || s[i] == ']') {
			depth--;
			i++;
		} else if (depth) {
			i++;
		} else {
			while (i < n && !strchr(",}] \t\r\n", s[i]))
				i++;
		}
	} while (depth > 0);
	return i;
}

struct member {
	size_t key, klen;	/* the key with its quotes */
	size_t end;		/* the end of the value */
};

/* The top-level members of the object src (cJSON-checked); *open is just past '{', *close at '}'. */
static int scan(const char *s, size_t n, struct member **out, size_t *count, size_t *open,
		size_t *close, struct ck_diag *d)
{
	struct member *m = NULL;
	size_t cnt = 0, cap = 0, i = skip_ws(s, 0, n) + 1;

	*open = i;
	for (;;) {
		i = skip_ws(s, i, n);
		if (i >= n || s[i] != '"')
			break;
		if (cnt == cap) {
			size_t nc = cap ? 2 * cap : 64;
			struct member *nm = ck_reallocarray(m, nc, sizeof(*nm));
			if (!nm) {
				free(m);
				return ck_fail(d, CK_ENOMEM, "out of memory");
			}
			m = nm;
			cap = nc;
		}
		m[cnt].key = i;
		i = skip_string(s, i, n);
		m[cnt].klen = i - m[cnt].key;
		i = skip_ws(s, i, n) + 1;	/* ':' */
		i = skip_value(s, skip_ws(s, i, n), n);
		m[cnt++].end = i;
		i = skip_ws(s, i, n);
		if (i < n && s[i] == ',')
			i++;
	}
	*close = i;
	*out = m;
	*count = cnt;
	return 0;
}

static int key_cmp(const char *s, const struct member *m, const char *key)
{
	size_t kl = m->klen - 2, n = strlen(key);
	int c = memcmp(s + m->key + 1, key, kl < n ? kl : n);
	return c ? c : kl < n ? -1 : kl > n;
}

/* Append s[0..n) to o at *len; o NULL only counts. */
static void put(char *o, size_t *len, const char *s, size_t n)
{
	if (o)
		memcpy(o + *len, s, n);
	*len += n;
}

static void indent(char *o, size_t *len, size_t u, int level)
{
	put(o, len, "\n", 1);
	if (o)
		memset(o + *len, ' ', u * (size_t)level);
	*len += u * (size_t)level;
}

/*
 * The JSON value text v laid out as Python's json.dumps(indent=u) does for
 * a member of the top-level object (u 0: on one line with ", " and ": ").
 * Returns the length; o NULL only counts, else o gets the text and a NUL.
 */
static size_t layout(const char *v, size_t u, char *o)
{
	size_t n = strlen(v), len = 0, i = skip_ws(v, 0, n);
	int level = 1;

	while (i < n) {
		char c = v[i];
		if (c == '"') {
			size_t e = skip_string(v, i, n);
			put(o, &len, v + i, e - i);
			i = e;
			continue;
		}
		if (c == '{' || c == '[') {
			size_t j = skip_ws(v, i + 1, n);
			put(o, &len, &c, 1);
			if (j < n && (v[j] == '}' || v[j] == ']')) {
				put(o, &len, v + j, 1);	/* {} and [] stay empty */
				i = j + 1;
				continue;
			}
			level++;
			if (u)
				indent(o, &len, u, level);
		} else if (c == '}' || c == ']') {
			level--;
			if (u)
				indent(o, &len, u, level);
			put(o, &len, &c, 1);
		} else if (c == ',') {
			if (u)
				put(o, &len, ",", 1), indent(o, &len, u, level);
			else
				put(o, &len, ", ", 2);
		} else if (c == ':') {
			put(o, &len, ": ", 2);
		} else if (c != ' ' && c != '\t' && c != '\n' && c != '\r') {
			put(o, &len, &c, 1);
		}
		i = skip_ws(v, i + 1, n);
	}
	if (o)
		o[len] = 0;
	return len;
}

/* src[a, b) without what lies in [c0, c1). */
static void put_cut(char *o, size_t *len, const char *src, size_t a, size_t b, size_t c0, size_t c1)
{
	if (c1 <= a || c0 >= b || c0 == c1) {
		put(o, len, src + a, b - a);
		return;
	}
	if (c0 > a)
		put(o, len, src + a, c0 - a);
	if (c1 < b)
		put(o, len, src + c1, b - c1);
}

int ck_json_set_key(const char *src, size_t len, const char *key, const char *value,
		    enum ck_json_at at, char **out, size_t *outlen, struct ck_diag *d)
{
	cJSON *root = cJSON_ParseWithLength(src, len);
	int ok = root && cJSON_IsObject(root);
	struct member *m = NULL;
	size_t n = 0, open = 0, close = 0, cut0 = 0, cut1 = 0, pos = 0, wslen = 3, u = 0, vlen = 0;
	size_t left = 0, cap, olen = 0;
	const char *ws = "\n  ";
	char *o = NULL, *v = NULL;
	long found = -1, before = -1, last = -1;
	int rc;

	cJSON_Delete(root);
	*out = NULL;
	if (!ok)
		return ck_fail(d, CK_EINVAL, "not a JSON object");
	if (value) {
		root = cJSON_Parse(value);
		cJSON_Delete(root);
		if (!root)
			return ck_fail(d, CK_EINVAL, "internal: the new \"%s\" is not JSON", key);
	}
	CK_TRY(scan(src, len, &m, &n, &open, &close, d));
	for (size_t i = 0; i < n; i++) {
		if (key_cmp(src, &m[i], key) == 0) {
			found = (long)i;
			continue;
		}
		left++;
		last = (long)i;
		if (before < 0 && key_cmp(src, &m[i], key) > 0)
			before = (long)i;
	}
	if (found >= 0) {
		/* the member and the comma after it, or else the one before it */
		size_t f = (size_t)found;
		cut0 = m[f].key;
		cut1 = f + 1 < n ? m[f + 1].key : m[f].end;
		if (f + 1 == n && f > 0)
			cut0 = m[f - 1].end;
	}
	if (!left && value) {
		cut0 = open;	/* nothing else stays: the new member alone between the braces */
		cut1 = close;
	} else if (!left && found >= 0) {
		cut0 = open;
	}
	if (n > 1) {
		/* the whitespace between members, as the file has it */
		const char *b = memchr(src + m[0].end, ',', m[1].key - m[0].end);
		if (b) {
			ws = b + 1;
			wslen = (size_t)(src + m[1].key - ws);
		}
	}
	if (value) {
		const char *nl = NULL;
		for (size_t i = 0; i < wslen; i++)
			if (ws[i] == '\n')
				nl = ws + i;
		u = nl ? wslen - (size_t)(nl + 1 - ws) : 0;
		for (size_t i = 0; nl && i < u; i++)
			if (nl[1 + i] != ' ')
				nl = NULL;
		if (!nl || u > 16)
			u = 0;
		v = ck_malloc(layout(value, u, NULL) + 1);
		if (!v) {
			free(m);
			return ck_fail(d, CK_ENOMEM, "out of memory");
		}
		vlen = layout(value, u, v);
	}
	cap = len + vlen + strlen(key) + wslen + 16;
	o = ck_malloc(cap);
	if (!o) {
		rc = ck_fail(d, CK_ENOMEM, "out of memory");
		goto out;
	}
	if (!value) {
		put_cut(o, &olen, src, 0, len, cut0, cut1);
	} else {
		pos = !left ? open : at == CK_JSON_AT_SORTED && before >= 0 ? m[before].key : m[last].end;
		put_cut(o, &olen, src, 0, pos, cut0, cut1);
		if (left && pos != m[last].end) {	/* before a member */
			olen += (size_t)sprintf(o + olen, "\"%s\": ", key);
			put(o, &olen, v, vlen);
			put(o, &olen, ",", 1);
			put(o, &olen, ws, wslen);
		} else {
			if (left)
				put(o, &olen, ",", 1);
			put(o, &olen, ws, wslen);
			olen += (size_t)sprintf(o + olen, "\"%s\": ", key);
			put(o, &olen, v, vlen);
			if (!left && memchr(ws, '\n', wslen))
				put(o, &olen, "\n", 1);
		}
		put_cut(o, &olen, src, pos, len, cut0, cut1);
	}
	o[olen] = 0;
	/* the edit must leave an object that has the key exactly when it was set */
	root = cJSON_ParseWithLength(o, olen);
	ok = root && cJSON_IsObject(root) && !cJSON_GetObjectItemCaseSensitive(root, key) == !value;
	cJSON_Delete(root);
	if (!ok) {
		rc = ck_fail(d, CK_EINVAL, "cannot edit \"%s\" cleanly", key);
		goto out;
	}
	*out = o;
	*outlen = olen;
	o = NULL;
	rc = 0;
out:
	free(o);
	free(v);
	free(m);
	return rc;
}
