/*
 * options.c - one table per tool gives both the parser and the -h text, so
 * the two cannot disagree (after git's parse-options).
 */
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "ckpt.h"
#include "../libtensor/layout.h"

void ck_strlist_release(struct ck_strlist *l)
{
	free(l->v);
	l->v = NULL;
	l->n = l->cap = 0;
}

static int strlist_push(struct ck_strlist *l, const char *s)
{
	if (l->n == l->cap) {
		size_t cap = l->cap ? 2 * l->cap : 8;
		const char **v = ck_reallocarray(l->v, cap, sizeof(*v));
		if (!v)
			return -1;
		l->v = v;
		l->cap = cap;
	}
	l->v[l->n++] = s;
	return 0;
}

int ck_ncpus(void)
{
	long n = sysconf(_SC_NPROCESSORS_ONLN);
	return n < 1 ? 1 : n > 256 ? 256 : (int)n;
}

int ck_jobs_check(const char *tool, int64_t jobs, int64_t max)
{
	if (jobs >= 1 && jobs <= max)
		return 0;
	return ck_usage_error(tool, "--jobs must be 1..%" PRId64 ", not %" PRId64, max, jobs);
}

int ck_report(const char *tool, const struct ck_diag *d)
{
	fprintf(stderr, "ckpt %s: %s\n", tool, d->msg[0] ? d->msg : "failed");
	return ck_exit_code(d->status ? d->status : CK_EIO);
}

int ck_usage_error(const char *tool, const char *fmt, ...)
{
	va_list ap;
	fprintf(stderr, "ckpt %s: ", tool);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, " (see 'ckpt %s --help')\n", tool);
	return CK_EXIT_USAGE;
}

void ck_note_if_none(const char *tool, const char *path, int layout_kind, const char *what)
{
	struct ck_diag d = CK_DIAG_INIT;
	struct ck_model *m;

	if (ck_model_open(&m, path, &d) < 0)
		return;
	if (!ck_layout_count(m, (enum ck_layout_kind)layout_kind))
		ck_note(tool, "'%s' holds no %s tensors: the output is a plain copy", path, what);
	ck_model_free(m);
}

void ck_note(const char *tool, const char *fmt, ...)
{
	va_list ap;
	fprintf(stderr, "ckpt %s: ", tool);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

static int needs_value(enum ck_opt_kind k)
{
	return k != CK_OPT_FLAG_;
}

/*
 * "  LEFT   help words..." with the help wrapped at 80 columns under column
 * 33; a LEFT wider than its column puts the help on the next line.
 */
static void print_option(FILE *f, const char *left, const char *help)
{
	enum { COL = 33, WIDTH = 80 };
	int col = fprintf(f, "  %-30s", left);
	const char *p = help;

	if (col > COL - 1) {
		fputc('\n', f);
		col = 0;
	}
	while (*p) {
		size_t w = strcspn(p, " ");
		if (col > COL && col + 1 + (int)w > WIDTH) {
			fputc('\n', f);
			col = 0;
		}
		if (col < COL)
			col += fprintf(f, "%*s", COL - col, "");
		else
			col += fprintf(f, " ");
		col += fprintf(f, "%.*s", (int)w, p);
		p += w;
		while (*p == ' ')
			p++;
	}
	fputc('\n', f);
}

void ck_print_help(FILE *f, const struct ck_option *opts, const struct ck_usage *u)
{
	fprintf(f, "usage: %s\n", u->synopsis);
	if (u->about)
		fprintf(f, "\n%s\n", u->about);
	fprintf(f, "\noptions:\n");
	for (const struct ck_option *o = opts; o->kind != CK_OPT_END_; o++) {
		char left[64];
		const char *arg = o->kind == CK_OPT_CHOICE_ ? o->arg : o->arg ? o->arg : "X";
		if (o->short_name)
			snprintf(left, sizeof(left), "-%c, --%s%s%s", o->short_name, o->long_name,
				 needs_value(o->kind) ? " " : "", needs_value(o->kind) ? arg : "");
		else
			snprintf(left, sizeof(left), "    --%s%s%s", o->long_name,
				 needs_value(o->kind) ? " " : "", needs_value(o->kind) ? arg : "");
		print_option(f, left, o->help);
	}
	fprintf(f, "  %-30s %s\n", "-h, --help", "show this help and exit");
	fprintf(f, "\nexit: 0 ok, 1 difference found, 2 usage, 3 invalid input, 4 I/O or resource failure\n");
}

static int is_number(const char *s)
{
	char *end;
	errno = 0;
	(void)strtod(s, &end);
	return *s && !*end && !errno;
}

static int choice_ok(const char *list, const char *v)
{
	size_t n = strlen(v);
	for (const char *p = list; p && *p;) {
		const char *bar = strchr(p, '|');
		size_t len = bar ? (size_t)(bar - p) : strlen(p);
		if (len == n && !memcmp(p, v, n))
			return 1;
		p = bar ? bar + 1 : NULL;
	}
	return 0;
}

static int set_value(const struct ck_option *o, const char *v, const char *tool)
{
	char *end;
	switch (o->kind) {
	case CK_OPT_STRING_:
		*(const char **)o->value = v;
		return 0;
	case CK_OPT_STRINGS_:
		if (strlist_push(o->value, v) < 0) {
			fprintf(stderr, "ckpt %s: out of memory\n", tool);
			exit(CK_EXIT_IO);
		}
		return 0;
	case CK_OPT_CHOICE_:
		if (!choice_ok(o->arg, v))
			return ck_usage_error(tool, "--%s must be one of %s, not '%s'", o->long_name,
					      o->arg, v);
		*(const char **)o->value = v;
		return 0;
	case CK_OPT_INT_: {
		errno = 0;
		long long x = strtoll(v, &end, 0);
		if (!*v || *end || errno)
			return ck_usage_error(tool, "--%s needs an integer, not '%s'", o->long_name, v);
		*(int64_t *)o->value = x;
		return 0;
	}
	case CK_OPT_DOUBLE_: {
		errno = 0;
		double x = strtod(v, &end);
		if (!*v || *end || errno)
			return ck_usage_error(tool, "--%s needs a number, not '%s'", o->long_name, v);
		*(double *)o->value = x;
		return 0;
	}
	case CK_OPT_SIZE_:
		if (ck_parse_size(v, o->value) < 0)
			return ck_usage_error(tool, "--%s needs a size such as 5GB or 512MiB, not '%s'",
					      o->long_name, v);
		return 0;
	default:
		return 0;
	}
}

static const struct ck_option *find_long(const struct ck_option *opts, const char *name, size_t len)
{
	for (const struct ck_option *o = opts; o->kind != CK_OPT_END_; o++)
		if (o->long_name && strlen(o->long_name) == len && !memcmp(o->long_name, name, len))
			return o;
	return NULL;
}

static const struct ck_option *find_short(const struct ck_option *opts, char c)
{
	for (const struct ck_option *o = opts; o->kind != CK_OPT_END_; o++)
		if (o->short_name == c)
			return o;
	return NULL;
}

int ck_parse_options(int argc, char **argv, const struct ck_option *opts, const struct ck_usage *u)
{
	int npos = 0, only_pos = 0;
	char **pos = argv;	/* positional args are compacted to the front */

	for (int i = 1; i < argc; i++) {
		char *a = argv[i];
		const struct ck_option *o;
		const char *val = NULL;

		if (only_pos || a[0] != '-' || !a[1]) {
			pos[npos++] = a;
			continue;
		}
		if (!strcmp(a, "--")) {
			only_pos = 1;
			continue;
		}
		if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
			ck_print_help(stdout, opts, u);
			exit(fflush(stdout) ? CK_EXIT_IO : 0);
		}
		if (a[1] == '-') {
			const char *name = a + 2, *eq = strchr(name, '=');
			o = find_long(opts, name, eq ? (size_t)(eq - name) : strlen(name));
			if (!o)
				exit(ck_usage_error(u->tool, "unknown option '%s'", a));
			if (eq) {
				if (!needs_value(o->kind))
					exit(ck_usage_error(u->tool, "--%s takes no value", o->long_name));
				val = eq + 1;
			}
		} else {
			/* -j4 (value attached) and -lf (bundled flags), as getopt takes them */
			o = find_short(opts, a[1]);
			if (!o)
				exit(ck_usage_error(u->tool, "unknown option '%s'", a));
			if (a[2] && needs_value(o->kind)) {
				val = a + 2;
			} else if (a[2]) {
				for (const char *c = a + 2; *c; c++) {
					const struct ck_option *f = find_short(opts, *c);
					if (!f || needs_value(f->kind))
						exit(ck_usage_error(u->tool, "unknown option '%s'", a));
					*(int *)f->value = 1;
				}
			}
		}
		if (!needs_value(o->kind)) {
			*(int *)o->value = 1;
			continue;
		}
		if (!val) {
			if (i + 1 >= argc)
				exit(ck_usage_error(u->tool, "--%s needs a value", o->long_name));
			val = argv[++i];
			if (val[0] == '-' && val[1] && !is_number(val))
				exit(ck_usage_error(u->tool, "--%s needs a value, not '%s'", o->long_name,
						    val));
		}
		if (set_value(o, val, u->tool))
			exit(CK_EXIT_USAGE);
	}
	if (npos < u->min_args)
		exit(ck_usage_error(u->tool, "expected %s%d argument%s, got %d",
				    u->max_args == u->min_args ? "" : "at least ", u->min_args,
				    u->min_args == 1 ? "" : "s", npos));
	if (u->max_args >= 0 && npos > u->max_args)
		exit(ck_usage_error(u->tool, "expected at most %d argument%s, got %d", u->max_args,
				    u->max_args == 1 ? "" : "s", npos));
	return npos;
}
