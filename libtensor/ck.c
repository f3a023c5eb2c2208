/*
 * ck.c - diagnostics, allocation, and the small string helpers every module
 * needs (escaping hostile names, UTF-8 validation, globs, sizes).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ck.h"

int ck_vfail(struct ck_diag *d, int status, const char *fmt, va_list ap)
{
	if (d) {
		d->status = status;
		vsnprintf(d->msg, sizeof(d->msg), fmt, ap);
	}
	return status;
}

int ck_fail(struct ck_diag *d, int status, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	ck_vfail(d, status, fmt, ap);
	va_end(ap);
	return status;
}

int ck_diag_prefix(struct ck_diag *d, const char *fmt, ...)
{
	char pre[CK_DIAG_MAX], old[CK_DIAG_MAX];
	va_list ap;

	if (!d)
		return CK_EIO;
	va_start(ap, fmt);
	vsnprintf(pre, sizeof(pre), fmt, ap);
	va_end(ap);
	memcpy(old, d->msg, sizeof(old));
	size_t n = strnlen(pre, sizeof(pre) - 1);
	if (n > sizeof(d->msg) - 3)
		n = sizeof(d->msg) - 3;
	memcpy(d->msg, pre, n);
	memcpy(d->msg + n, ": ", 2);
	size_t rest = sizeof(d->msg) - n - 3;
	size_t m = strnlen(old, rest);
	memcpy(d->msg + n + 2, old, m);
	d->msg[n + 2 + m] = 0;
	return d->status;
}

int ck_exit_code(int status)
{
	switch (status) {
	case CK_OK:
		return CK_EXIT_OK;
	case CK_EDIFF:
		return CK_EXIT_DIFF;
	case CK_EUSAGE:
		return CK_EXIT_USAGE;
	case CK_EINVAL:
	case CK_EUNSUPPORTED:
		return CK_EXIT_INVALID;
	default:
		return CK_EXIT_IO;
	}
}

void *ck_malloc(size_t n)
{
	return malloc(n ? n : 1);
}

void *ck_calloc(size_t n, size_t size)
{
	return calloc(n ? n : 1, size ? size : 1);
}

void *ck_mallocarray(size_t n, size_t size)
{
	size_t total;
	if (__builtin_mul_overflow(n, size, &total)) {
		errno = ENOMEM;
		return NULL;
	}
	return ck_malloc(total);
}

void *ck_reallocarray(void *p, size_t n, size_t size)
{
	size_t total;
	if (__builtin_mul_overflow(n, size, &total)) {
		errno = ENOMEM;
		return NULL;
	}
	return realloc(p, total ? total : 1);
}

char *ck_strndup(const char *s, size_t n)
{
	char *p = ck_malloc(n + 1);
	if (p) {
		memcpy(p, s, n);
		p[n] = 0;
	}
	return p;
}

char *ck_strdup(const char *s)
{
	return ck_strndup(s, strlen(s));
}

/* Length of the valid UTF-8 sequence at s (at most left bytes), or 0. */
static size_t utf8_seq(const unsigned char *s, size_t left)
{
	unsigned c = s[0];
	size_t n;
	unsigned cp;

	if (c < 0x80)
		return 1;
	if (c >= 0xc2 && c <= 0xdf)
		n = 2, cp = c & 0x1f;
	else if (c >= 0xe0 && c <= 0xef)
		n = 3, cp = c & 0x0f;
	else if (c >= 0xf0 && c <= 0xf4)
		n = 4, cp = c & 0x07;
	else
		return 0;
	if (n > left)
		return 0;
	for (size_t i = 1; i < n; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return 0;
		cp = cp << 6 | (s[i] & 0x3f);
	}
	if ((n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
	    (cp >= 0xd800 && cp <= 0xdfff))
		return 0;
	return n;
}

bool ck_utf8_valid(const char *s, size_t len)
{
	const unsigned char *p = (const unsigned char *)s;
	for (size_t i = 0; i < len;) {
		size_t n = utf8_seq(p + i, len - i);
		if (!n)
			return false;
		i += n;
	}
	return true;
}

char *ck_escape(const char *s, size_t len, char *out, size_t cap)
{
	const unsigned char *p = (const unsigned char *)s;
	size_t o = 0;

	if (!cap)
		return out;
	for (size_t i = 0; i < len;) {
		size_t n = utf8_seq(p + i, len - i);
		if (n == 1 && (p[i] < 0x20 || p[i] == 0x7f || p[i] == '\\'))
			n = 0;
		if (n) {
			if (o + n >= cap)
				break;
			memcpy(out + o, p + i, n);
			o += n;
			i += n;
		} else {
			if (o + 4 >= cap)
				break;
			if (p[i] == '\\') {
				out[o++] = '\\';
				out[o++] = '\\';
			} else {
				snprintf(out + o, 5, "\\x%02x", p[i]);
				o += 4;
			}
			i++;
		}
	}
	out[o] = 0;
	return out;
}

/* fnmatch-style glob without flags: '*' matches '/' too (tensor names use '.'). */
static bool glob_at(const char *p, const char *s)
{
	for (; *p; p++, s++) {
		switch (*p) {
		case '*':
			while (p[1] == '*')
				p++;
			if (!p[1])
				return true;
			for (; *s; s++)
				if (glob_at(p + 1, s))
					return true;
			return false;
		case '?':
			if (!*s)
				return false;
			break;
		case '[': {
			const char *q = p + 1;
			bool neg = false, hit = false;
			if (!*s)
				return false;
			if (*q == '!' || *q == '^')
				neg = true, q++;
			for (bool first = true; *q && (first || *q != ']'); q++, first = false) {
				if (q[1] == '-' && q[2] && q[2] != ']') {
					if ((unsigned char)*s >= (unsigned char)q[0] &&
					    (unsigned char)*s <= (unsigned char)q[2])
						hit = true;
					q += 2;
				} else if (*q == *s) {
					hit = true;
				}
			}
			if (!*q)	/* no closing ']': match '[' literally */
				return *s == '[' && glob_at(p + 1, s + 1);
			if (hit == neg)
				return false;
			p = q;
			break;
		}
		case '\\':
			if (p[1])
				p++;
			/* fall through */
		default:
			if (*p != *s)
				return false;
		}
	}
	return !*s;
}

void ck_json_str(FILE *f, const char *s)
{
	fputc('"', f);
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		if (*p == '"' || *p == '\\')
			fprintf(f, "\\%c", *p);
		else if (*p < 0x20 || *p == 0x7f)
			fprintf(f, "\\u%04x", *p);
		else
			fputc(*p, f);
	}
	fputc('"', f);
}

bool ck_ends_with(const char *s, const char *suffix)
{
	size_t a = strlen(s), b = strlen(suffix);
	return a >= b && !strcmp(s + a - b, suffix);
}

bool ck_glob(const char *pattern, const char *s)
{
	return glob_at(pattern, s);
}

int ck_parse_size(const char *s, uint64_t *out)
{
	char *end;
	uint64_t mult = 1, v, frac = 0, den = 1;
	unsigned long long x;

	if (!s || !*s || *s == '-' || *s == '+')
		return CK_EUSAGE;
	errno = 0;
	x = strtoull(s, &end, 10);
	if (errno || end == s)
		return CK_EUSAGE;
	if (*end == '.') {	/* "1.5GB": up to 6 decimals, with a unit */
		for (end++; *end >= '0' && *end <= '9'; end++) {
			if (den == 1000000)
				return CK_EUSAGE;
			frac = frac * 10 + (uint64_t)(*end - '0');
			den *= 10;
		}
		if (den == 1 || !*end)
			return CK_EUSAGE;
	}
	if (*end) {
		static const char units[] = "KMGT";
		const char *u = strchr(units, end[0] & ~0x20);
		if (!u || !end[0])
			return CK_EUSAGE;
		int power = (int)(u - units) + 1;
		const char *rest = end + 1;
		uint64_t base = 1024;
		if (!strcmp(rest, "B") || !strcmp(rest, "b"))
			base = 1000;
		else if (*rest && strcmp(rest, "iB") && strcmp(rest, "ib"))
			return CK_EUSAGE;
		for (int i = 0; i < power; i++)
			mult *= base;
	}
	/* frac < 10^6 and mult <= 2^40, so frac * mult cannot overflow */
	if (ck_mul_u64(x, mult, &v) || ck_add_u64(v, frac * mult / den, &v))
		return CK_EUSAGE;
	*out = v;
	return 0;
}
