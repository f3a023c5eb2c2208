/*
 * ckpt.h - what the front-ends in cmd/ share.
 *
 * Adding a tool:
 *  1. write cmd/<tool>.c with int cmd_<tool>(int argc, char **argv): parse
 *     with ck_parse_options over a table of struct ck_option, then read like
 *     a short script over the libraries;
 *  2. add a row to commands[] in cmd/ckpt.c;
 *  3. add tests (tests/test_<tool>.py), including bad input;
 *  4. document it in README.md (the synopsis there must match -h; a test checks).
 *
 * Conventions: data to stdout, everything else to stderr; errors are one line
 * "ckpt <tool>: ..." (ck_report); exit codes are enum ck_exit (libtensor/ck.h).
 */
#ifndef CKPT_CMD_H
#define CKPT_CMD_H

#include <stdint.h>
#include <stdio.h>
#include "../libtensor/ck.h"

enum ck_opt_kind {
	CK_OPT_END_ = 0,
	CK_OPT_FLAG_,		/* int *: set to 1 */
	CK_OPT_STRING_,		/* const char **: last one wins */
	CK_OPT_STRINGS_,	/* struct ck_strlist *: repeatable */
	CK_OPT_INT_,		/* int64_t * */
	CK_OPT_SIZE_,		/* uint64_t *: 5GB, 512MiB... */
	CK_OPT_DOUBLE_,		/* double * */
	CK_OPT_CHOICE_,		/* const char **, value must be one of a '|' list */
};

struct ck_option {
	enum ck_opt_kind kind;
	char short_name;	/* 0 for none */
	const char *long_name;
	void *value;
	const char *arg;	/* placeholder in help, or the choice list for CHOICE */
	const char *help;
};

#define CK_OPT_FLAG(s, l, v, h)		{ CK_OPT_FLAG_, s, l, v, NULL, h }
#define CK_OPT_STRING(s, l, v, a, h)	{ CK_OPT_STRING_, s, l, v, a, h }
#define CK_OPT_STRINGS(s, l, v, a, h)	{ CK_OPT_STRINGS_, s, l, v, a, h }
#define CK_OPT_INT(s, l, v, a, h)	{ CK_OPT_INT_, s, l, v, a, h }
#define CK_OPT_SIZE(s, l, v, a, h)	{ CK_OPT_SIZE_, s, l, v, a, h }
#define CK_OPT_DOUBLE(s, l, v, a, h)	{ CK_OPT_DOUBLE_, s, l, v, a, h }
#define CK_OPT_CHOICE(s, l, v, list, h)	{ CK_OPT_CHOICE_, s, l, v, list, h }
#define CK_OPT_END			{ CK_OPT_END_, 0, NULL, NULL, NULL, NULL }

/* The options every checkpoint writer spells the same way. */
#define CK_OPT_SHARD_SIZE(v)	CK_OPT_SIZE(0, "shard-size", v, "SIZE", "largest shard of a folder output [5GB]")
#define CK_OPT_FORCE(v)		CK_OPT_FLAG('f', "force", v, "replace an existing output")
#define CK_OPT_JOBS(v, h)	CK_OPT_INT('j', "jobs", v, "N", h)

/* A growable list of borrowed strings (argv entries). */
struct ck_strlist {
	const char **v;
	size_t n, cap;
};
void ck_strlist_release(struct ck_strlist *l);

/* What a tool tells the parser about itself. */
struct ck_usage {
	const char *tool;	/* "ls" */
	const char *synopsis;	/* "ckpt ls [options] PATH..." */
	const char *about;	/* one paragraph, printed under the synopsis by -h */
	int min_args, max_args;	/* positional arguments; max -1 for any */
};

/*
 * Parse argv (argv[0] is the tool name) against opts.  Options may come
 * anywhere; "--" ends them; --opt=val and --opt val both work, and a value
 * that starts with '-' is refused for an option that needs one (except a
 * lone "-" or a negative number).  -h/--help prints the help to stdout and
 * exits 0.  A usage error prints one line plus "(see 'ckpt TOOL --help')"
 * to stderr and exits 2.  On return, argv[0..ret) are the positional
 * arguments.
 */
int ck_parse_options(int argc, char **argv, const struct ck_option *opts,
		     const struct ck_usage *u);

/* Print the help of a tool (synopsis, about, option table) to f. */
void ck_print_help(FILE *f, const struct ck_option *opts, const struct ck_usage *u);

/* Print "ckpt TOOL: message" for d and return its exit code. */
int ck_report(const char *tool, const struct ck_diag *d);

/* Print a usage error "ckpt TOOL: msg (see 'ckpt TOOL --help')" and return 2. */
int ck_usage_error(const char *tool, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Print a warning/notice line "ckpt TOOL: msg" to stderr unless quiet. */
void ck_note(const char *tool, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/*
 * After a dequant tool succeeded: say so on stderr when path held no tensor
 * of the layout kind it converts (layout.h enum ck_layout_kind), i.e. the
 * output is a plain copy, which is rarely what the user meant.
 */
void ck_note_if_none(const char *tool, const char *path, int layout_kind, const char *what);

/* Number of online CPUs (at least 1); used as the default for --jobs. */
int ck_ncpus(void);

/* 0 when 1 <= jobs <= max, else the usage error (2) for --jobs. */
int ck_jobs_check(const char *tool, int64_t jobs, int64_t max);

/*
 * The tools.  A tool whose file is not in this build is a NULL weak symbol:
 * ckpt says it is not built in, and --help leaves it out.
 */
#define CK_TOOL(fn) int fn(int argc, char **argv) __attribute__((weak))
CK_TOOL(cmd_ls);
CK_TOOL(cmd_cp);
CK_TOOL(cmd_tokcheck);
CK_TOOL(cmd_dequant_nf4);
CK_TOOL(cmd_quant_bnb);
CK_TOOL(cmd_quant_mxfp4);
CK_TOOL(cmd_dequant_mxfp4);
CK_TOOL(cmd_merge_lora);
CK_TOOL(cmd_to_gguf);

#endif
