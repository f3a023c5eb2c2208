/*
 * tokutil.c - string builder and JSON intake checks for the tokenizer module.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "tokutil.h"

static int sb_grow(struct tok_sb *b, size_t more)
{
	size_t cap;

	if (b->oom)
		return -1;
	if (more < b->cap - b->n)
		return 0;
	cap = b->cap ? b->cap : 256;
	while (more >= cap - b->n) {
		if (cap > SIZE_MAX / 2) {
			b->oom = 1;
			return -1;
		}
		cap *= 2;
	}
	char *p = realloc(b->p, cap);
	if (!p) {
		b->oom = 1;
		return -1;
	}
	b->p = p;
	b->cap = cap;
	return 0;
}

void tok_sb_put(struct tok_sb *b, const char *s, size_t n)
{
	if (sb_grow(b, n))
		return;
	memcpy(b->p + b->n, s, n);
	b->n += n;
	b->p[b->n] = 0;
}

void tok_sb_puts(struct tok_sb *b, const char *s)
{
	tok_sb_put(b, s, strlen(s));
}

void tok_sb_putc(struct tok_sb *b, char c)
{
	tok_sb_put(b, &c, 1);
}

void tok_sb_printf(struct tok_sb *b, const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	if (n < 0 || sb_grow(b, (size_t)n + 1))
		return;
	va_start(ap, fmt);
	vsnprintf(b->p + b->n, (size_t)n + 1, fmt, ap);
	va_end(ap);
	b->n += (size_t)n;
}

char *tok_sb_detach(struct tok_sb *b)
{
	char *p = b->oom ? NULL : b->p;

	if (b->oom)
		free(b->p);
	else if (!p)
		p = calloc(1, 1);
	b->p = NULL;
	b->n = b->cap = 0;
	b->oom = 0;
	return p;
}

void tok_sb_release(struct tok_sb *b)
{
	free(b->p);
	b->p = NULL;
	b->n = b->cap = 0;
	b->oom = 0;
}

/* Offset of the first invalid UTF-8 byte, or len. */
static size_t utf8_bad_at(const char *s, size_t len)
{
	size_t i = 0;
	while (i < len) {
		/* ASCII runs are most of a tokenizer file: skip them 8 bytes at a time. */
		while (i + 8 <= len) {
			uint64_t w;
			memcpy(&w, s + i, 8);
			if (w & 0x8080808080808080ull)
				break;
			i += 8;
		}
		if (i >= len)
			break;
		if (!(s[i] & 0x80)) {
			i++;
			continue;
		}
		size_t n = 2;
		unsigned char c = (unsigned char)s[i];
		if (c >= 0xe0)
			n = c >= 0xf0 ? 4 : 3;
		if (n > len - i || !ck_utf8_valid(s + i, n))
			return i;
		i += n;
	}
	return len;
}

int tok_json_precheck(const char *path, const char *buf, size_t len, struct ck_diag *d)
{
	size_t at = utf8_bad_at(buf, len);
	if (at < len)
		return ck_fail(d, CK_EINVAL, "'%s': not valid UTF-8 at byte %zu", path, at);
	if (memchr(buf, 0, len))
		return ck_fail(d, CK_EINVAL, "'%s': NUL byte at byte %zu", path,
			       (size_t)((const char *)memchr(buf, 0, len) - buf));
	/*
	 * Outside strings a backslash is a syntax error cJSON reports; inside,
	 * each one starts a two-character escape, so walking pairs is exact.
	 */
	for (const char *p = buf, *end = buf + len; (p = memchr(p, '\\', (size_t)(end - p)));) {
		if (end - p >= 6 && !memcmp(p, "\\u0000", 6))
			return ck_fail(d, CK_EINVAL, "'%s': a string holds a NUL character (\\u0000) at byte %zu",
				       path, (size_t)(p - buf));
		p += 2;
		if (p >= end)
			break;
	}
	return 0;
}

/*
 * Keys of one object go into an open-addressing hash set (FNV-1a): the
 * gpt-oss vocab is one object of 199,998 keys, and sorting them would cost
 * more than parsing the file.
 */
struct dupscan {
	const cJSON **slot;
	size_t cap;
};

static uint64_t fnv1a(const char *s)
{
	uint64_t h = 0xcbf29ce484222325ull;
	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
	return h;
}

static const cJSON *find_dup(const cJSON *o, struct dupscan *s, int *oom)
{
	size_t n = 0, cap = 16;
	const cJSON *e;

	cJSON_ArrayForEach(e, o)
		n++;
	if (n <= 8) {
		for (const cJSON *x = o->child; x; x = x->next)
			for (const cJSON *y = x->next; y; y = y->next)
				if (!strcmp(x->string, y->string))
					return y;
		return NULL;
	}
	while (cap < 2 * n) {
		if (cap > SIZE_MAX / 4) {
			*oom = 1;
			return NULL;
		}
		cap *= 2;
	}
	if (cap > s->cap) {
		free(s->slot);
		s->slot = ck_calloc(cap, sizeof(*s->slot));
		s->cap = s->slot ? cap : 0;
		if (!s->slot) {
			*oom = 1;
			return NULL;
		}
	} else {
		memset(s->slot, 0, cap * sizeof(*s->slot));
	}
	cJSON_ArrayForEach(e, o) {
		size_t i = (size_t)fnv1a(e->string) & (cap - 1);
		while (s->slot[i]) {
			if (!strcmp(s->slot[i]->string, e->string))
				return e;
			i = (i + 1) & (cap - 1);
		}
		s->slot[i] = e;
	}
	return NULL;
}

static const cJSON *walk(const cJSON *v, struct dupscan *s, int *oom)
{
	const cJSON *e, *dup;

	if (cJSON_IsObject(v) && (dup = find_dup(v, s, oom)))
		return dup;
	if (cJSON_IsObject(v) || cJSON_IsArray(v))
		for (e = v->child; e && !*oom; e = e->next)
			if ((e->child) && (dup = walk(e, s, oom)))
				return dup;
	return NULL;
}

int tok_json_check_dups(const char *path, const cJSON *root, struct ck_diag *d)
{
	struct dupscan s = { NULL, 0 };
	int oom = 0;
	const cJSON *dup = walk(root, &s, &oom);
	int rc = 0;

	if (oom) {
		rc = ck_fail(d, CK_ENOMEM, "out of memory");
	} else if (dup) {
		char esc[96];
		rc = ck_fail(d, CK_EINVAL, "'%s': duplicate key '%s' in one object", path,
			     ck_escape(dup->string, strlen(dup->string), esc, sizeof(esc)));
	}
	free(s.slot);
	return rc;
}
