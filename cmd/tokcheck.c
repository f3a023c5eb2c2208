/*
 * tokcheck.c - the identity of a tokenizer (file digests and component
 * hashes), or what differs between two and whether it breaks a merge.
 *
 * The work is in verify/tokenizer.h; this file parses options, finds the
 * weights for the embedding-row check, and prints.  Exit: 0 same in meaning
 * (cosmetic and warning differences are printed but pass), 1 a breaking
 * difference, a warning with --strict, an --expect mismatch or a token id
 * without an embedding row, 2 usage, 3 unreadable or invalid input.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include "ckpt.h"
#include "../libtensor/model.h"
#include "../verify/tokenizer.h"

struct tc_opts {
	int json, strict, diff, verbose, no_weights;
	struct ck_strlist expect;
};

/* Embedding rows of the weights in dir (0 when none); *adapter for PEFT adapters. */
static int find_rows(const char *dir, uint64_t *rows, const char **what, bool *adapter,
		     char *name, size_t cap, struct ck_diag *d)
{
	char path[4096];
	struct stat st;
	struct ck_model *m = NULL;
	const char *open_path = NULL, *tname = NULL;

	*rows = 0;
	*adapter = false;
	snprintf(path, sizeof(path), "%s/adapter_config.json", dir);
	*adapter = stat(path, &st) == 0;
	snprintf(path, sizeof(path), "%s/adapter_model.safetensors", dir);
	if (stat(path, &st) == 0) {
		open_path = path;
		*adapter = true;
	} else {
		snprintf(path, sizeof(path), "%s/model.safetensors.index.json", dir);
		bool idx = stat(path, &st) == 0;
		snprintf(path, sizeof(path), "%s/model.safetensors", dir);
		if (idx || stat(path, &st) == 0)
			open_path = dir;
	}
	if (!open_path)
		return 0;
	CK_TRY(ck_model_open(&m, open_path, d));
	ck_tok_embed_rows(m, rows, &tname);
	if (tname)
		snprintf(name, cap, "%s", tname);
	*what = name;
	ck_model_free(m);
	return 0;
}

/*
 * --expect [COMPONENT=]SHA256: a component, "all", or a file name.  With t
 * NULL only the syntax is checked (before any file is read).
 */
static int check_expect(const struct tc_opts *o, const struct ck_tok *t, FILE *f, int *mismatch)
{
	for (size_t i = 0; i < o->expect.n; i++) {
		const char *e = o->expect.v[i], *eq = strchr(e, '='), *hex = eq ? eq + 1 : e;
		char name[64] = "all";
		const char *have = NULL;
		bool known = false;

		if (eq) {
			if ((size_t)(eq - e) >= sizeof(name))
				return ck_usage_error("tokcheck", "--expect %s: unknown component", e);
			memcpy(name, e, (size_t)(eq - e));
			name[eq - e] = 0;
		}
		if (strlen(hex) != 64 || strspn(hex, "0123456789abcdefABCDEF") != 64)
			return ck_usage_error("tokcheck", "--expect %s: want [COMPONENT=]SHA256 (64 hex digits)", e);
		if (!strcmp(name, "all")) {
			have = t ? ck_tok_hash_all(t) : NULL;
			known = true;
		}
		for (int c = 0; c < CK_TOKC_COUNT; c++)
			if (!strcmp(name, ck_tok_comp_name((enum ck_tok_comp)c))) {
				have = t ? ck_tok_hash(t, (enum ck_tok_comp)c) : NULL;
				known = true;
			}
		for (int k = 0; k < CK_TOKF_COUNT; k++)
			if (!strcmp(name, ck_tok_file_name((enum ck_tok_file)k))) {
				const struct ck_tok_digest *g = t ? ck_tok_file_digest(t, (enum ck_tok_file)k) : NULL;
				have = g && g->present ? g->sha256 : NULL;
				known = true;
			}
		if (!known)
			return ck_usage_error("tokcheck", "--expect %s: unknown component '%s' (vocab, merges, added, "
					      "pipeline, roles, template, all, or a file name)", e, name);
		if (!t)
			continue;
		if (!have || strcasecmp(have, hex)) {
			if (!o->json)
				fprintf(f, "expect    %s: %s: %s, expected %s [mismatch]\n", ck_tok_dir(t), name,
					have ? have : "absent", hex);
			else	/* a JSON fragment for the identity document */
				fprintf(f, "%s{\"component\":\"%s\",\"expected\":\"%s\",\"actual\":%s%s%s}",
					*mismatch ? "," : "", name, hex, have ? "\"" : "", have ? have : "null",
					have ? "\"" : "");
			*mismatch = 1;
		}
	}
	return 0;
}

/* ==== one folder ==== */

static void print_role_text(FILE *f, const struct ck_tok *t)
{
	for (int r = 0; r < CK_TOK_NROLES; r++) {
		const struct ck_tok_role_tok *x = ck_tok_role(t, (enum ck_tok_role)r);
		char esc[200];
		fprintf(f, " %s ", ck_tok_role_name((enum ck_tok_role)r));
		if (x->token)
			fprintf(f, "'%s'(%" PRId64 ")", ck_escape(x->token, strlen(x->token), esc, sizeof(esc)),
				x->id);
		else
			fputs("-", f);
	}
	const struct ck_tok_ids *g = ck_tok_generation_ids(t, CK_TOK_EOS_ID);
	if (g->state == CK_TOK_IDS_SET) {
		fputs(" generation-eos ", f);
		for (size_t i = 0; i < g->n; i++)
			fprintf(f, "%s%" PRId64, i ? "," : "", g->v[i]);
	}
}

static void print_identity_text(FILE *f, const struct ck_tok *t, const char *emb, int ncons,
				const char *cons)
{
	bool legacy;
	size_t nm = ck_tok_merge_count(t, &legacy), tl;
	const char *origin, *hash;
	bool shadowed;

	fprintf(f, "path      %s\n", ck_tok_dir(t));
	fprintf(f, "model     %s", ck_tok_model_type(t) ? ck_tok_model_type(t) : "(no tokenizer.json)");
	if (ck_tok_config_model_type(t))
		fprintf(f, " (config.json model_type %s)", ck_tok_config_model_type(t));
	fprintf(f, "\ntokens    %" PRIu64 " ids: %zu vocab, %zu added; %zu merges%s\n", ck_tok_size(t),
		ck_tok_vocab_count(t), ck_tok_added_count(t), nm, nm ? (legacy ? " (legacy \"a b\")" : " (pairs)") : "");
	for (int k = 0; k < CK_TOKF_COUNT; k++) {
		const struct ck_tok_digest *g = ck_tok_file_digest(t, (enum ck_tok_file)k);
		if (k == CK_TOKF_CONFIG && !g->present)
			continue;
		fprintf(f, "file      %s", ck_tok_file_name((enum ck_tok_file)k));
		if (g->present)
			fprintf(f, " %" PRIu64 " bytes md5 %s sha256 %s\n", g->size, g->md5, g->sha256);
		else
			fputs(" absent\n", f);
	}
	for (int c = 0; c < CK_TOKC_COUNT; c++) {
		hash = ck_tok_hash(t, (enum ck_tok_comp)c);
		fprintf(f, "%-9s %s", ck_tok_comp_name((enum ck_tok_comp)c), hash ? hash : "-");
		if (c == CK_TOKC_ROLES)
			print_role_text(f, t);
		if (c == CK_TOKC_TEMPLATE) {
			if (ck_tok_chat_template(t, &tl, &origin, &shadowed))
				fprintf(f, " (%s%s)", origin, shadowed ? ", shadows chat_template.jinja" : "");
			else
				fputs(" (no chat template)", f);
		}
		fputc('\n', f);
	}
	fprintf(f, "all       %s\n", ck_tok_hash_all(t));
	if (ncons)
		fprintf(f, "consistency %d disagreement%s between the files [warning]\n%s", ncons,
			ncons > 1 ? "s" : "", cons);
	else
		fputs("consistency ok\n", f);
	if (emb)
		fprintf(f, "embedding %s\n", emb);
}

static void print_identity_json(FILE *f, const struct ck_tok *t, const char *emb, int emb_ok,
				const char *expect, const char *cons)
{
	bool legacy, shadowed;
	size_t nm = ck_tok_merge_count(t, &legacy), tl;
	const char *origin;

	fputs("{\"version\":1,\"path\":", f);
	ck_json_str(f, ck_tok_dir(t));
	fputs(",\"model_type\":", f);
	if (ck_tok_model_type(t))
		ck_json_str(f, ck_tok_model_type(t));
	else
		fputs("null", f);
	fprintf(f, ",\"tokens\":%" PRIu64 ",\"vocab\":%zu,\"added\":%zu,\"merges\":%zu,\"merges_format\":\"%s\"",
		ck_tok_size(t), ck_tok_vocab_count(t), ck_tok_added_count(t), nm,
		nm ? (legacy ? "legacy" : "pairs") : "none");
	fputs(",\"files\":{", f);
	for (int k = 0; k < CK_TOKF_COUNT; k++) {
		const struct ck_tok_digest *g = ck_tok_file_digest(t, (enum ck_tok_file)k);
		fprintf(f, "%s\"%s\":", k ? "," : "", ck_tok_file_name((enum ck_tok_file)k));
		if (g->present)
			fprintf(f, "{\"size\":%" PRIu64 ",\"md5\":\"%s\",\"sha256\":\"%s\"}", g->size, g->md5,
				g->sha256);
		else
			fputs("null", f);
	}
	fputs("},\"components\":", f);
	ck_tok_hashes_json(f, t);
	fputs(",\"roles\":{", f);
	for (int r = 0; r < CK_TOK_NROLES; r++) {
		const struct ck_tok_role_tok *x = ck_tok_role(t, (enum ck_tok_role)r);
		fprintf(f, "%s\"%s\":", r ? "," : "", ck_tok_role_name((enum ck_tok_role)r));
		if (!x->token) {
			fputs("null", f);
			continue;
		}
		fputs("{\"token\":", f);
		ck_json_str(f, x->token);
		fprintf(f, ",\"id\":%" PRId64 ",\"source\":\"%s\"}", x->id, x->source);
	}
	const struct ck_tok_ids *g = ck_tok_generation_ids(t, CK_TOK_EOS_ID);
	fputs(",\"generation_eos\":", f);
	if (g->state == CK_TOK_IDS_SET) {
		fputc('[', f);
		for (size_t i = 0; i < g->n; i++)
			fprintf(f, "%s%" PRId64, i ? "," : "", g->v[i]);
		fputc(']', f);
	} else {
		fputs("null", f);
	}
	fputs("},\"template\":", f);
	if (ck_tok_chat_template(t, &tl, &origin, &shadowed))
		fprintf(f, "{\"origin\":\"%s\",\"shadowed_jinja\":%s}", origin, shadowed ? "true" : "false");
	else
		fputs("null", f);
	fputs(",\"embedding\":", f);
	if (emb) {
		fprintf(f, "{\"ok\":%s,\"summary\":", emb_ok ? "true" : "false");
		ck_json_str(f, emb);
		fputc('}', f);
	} else {
		fputs("null", f);
	}
	fputs(",\"consistency\":[", f);
	for (const char *p = cons; p && *p;) {
		const char *nl = strchr(p, '\n');
		size_t n = nl ? (size_t)(nl - p) : strlen(p);
		char *line = ck_strndup(p, n);
		if (line) {
			fputs(p == cons ? "" : ",", f);
			ck_json_str(f, line + strspn(line, " "));
			free(line);
		}
		p += n + (nl != NULL);
	}
	fprintf(f, "],\"expect_mismatch\":[%s]}\n", expect ? expect : "");
}

static int one(const struct tc_opts *o, const char *dir)
{
	struct ck_diag d = CK_DIAG_INIT;
	struct ck_tok *t = NULL;
	uint64_t rows = 0;
	const char *what = NULL;
	char name[512], emb[1200];
	bool adapter, have_emb = false;
	int rc, mismatch = 0, emb_ok = 1;

	rc = ck_tok_load(&t, dir, 0, &d);
	if (!rc && !o->no_weights)
		rc = find_rows(dir, &rows, &what, &adapter, name, sizeof(name), &d);
	if (rc) {
		ck_tok_free(t);
		return ck_report("tokcheck", &d);
	}
	if (rows || ck_tok_config_vocab_size(t)) {
		uint64_t n = rows ? rows : ck_tok_config_vocab_size(t);
		have_emb = true;
		if (ck_tok_check_rows(t, n, &d)) {
			snprintf(emb, sizeof(emb), "%s [breaking]", d.msg);
			emb_ok = 0;
		} else {
			snprintf(emb, sizeof(emb), "ok: %" PRIu64 " rows (%s) for %" PRIu64 " token ids", n,
				 rows ? what : "config.json vocab_size", ck_tok_size(t));
		}
	}
	char *ej = NULL;
	size_t ejlen = 0;
	FILE *ef = o->json ? open_memstream(&ej, &ejlen) : stdout;
	if (!ef) {
		ck_tok_free(t);
		ck_fail(&d, CK_ENOMEM, "out of memory");
		return ck_report("tokcheck", &d);
	}
	rc = check_expect(o, t, ef, &mismatch);
	if (o->json)
		fclose(ef);
	if (rc) {
		free(ej);
		ck_tok_free(t);
		return rc;
	}
	char *cons = NULL;
	int ncons = ck_tok_consistency(t, &cons);
	if (ncons < 0) {
		free(ej);
		ck_tok_free(t);
		ck_fail(&d, CK_ENOMEM, "out of memory");
		return ck_report("tokcheck", &d);
	}
	if (o->json)
		print_identity_json(stdout, t, have_emb ? emb : NULL, emb_ok, ej, cons);
	else
		print_identity_text(stdout, t, have_emb ? emb : NULL, ncons, cons);
	free(ej);
	free(cons);
	ck_tok_free(t);
	return mismatch || !emb_ok || (ncons && o->strict) ? CK_EXIT_DIFF : CK_EXIT_OK;
}

/* ==== two folders ==== */

static int two(const struct tc_opts *o, const char *a, const char *b)
{
	struct ck_diag d = CK_DIAG_INIT;
	struct ck_tok_report *r = NULL;
	uint64_t ra = 0, rb = 0;
	const char *wa, *wb;
	char na[512], nb[512];
	bool aa = false, ab = false;
	unsigned flags = o->strict ? CK_TOK_STRICT : 0;
	int rc, mismatch = 0;

	/* A folder without tokenizer files (an adapter saved without one) is compared as absent. */
	rc = ck_tok_compare(a, b, flags | CK_TOK_ALLOW_EMPTY, &r, &d);
	if (rc < 0 && rc != CK_EDIFF)
		return ck_report("tokcheck", &d);
	if (ck_tok_empty(r->a) && ck_tok_empty(r->b)) {
		ck_tok_report_free(r);
		ck_fail(&d, CK_EINVAL, "'%s', '%s': no tokenizer files in either folder", a, b);
		return ck_report("tokcheck", &d);
	}
	if (!o->no_weights) {
		if (find_rows(a, &ra, &wa, &aa, na, sizeof(na), &d) || find_rows(b, &rb, &wb, &ab, nb, sizeof(nb), &d)) {
			ck_tok_report_free(r);
			return ck_report("tokcheck", &d);
		}
		if (ra || rb)
			rc = ck_tok_report_add_rows(r, ra, rb, aa == ab ? 0 : aa ? CK_TOK_ADAPTER_A : CK_TOK_ADAPTER_B,
						    flags);
		if (rc == CK_ENOMEM) {
			ck_tok_report_free(r);
			ck_fail(&d, CK_ENOMEM, "out of memory");
			return ck_report("tokcheck", &d);
		}
	}
	if ((rc = check_expect(o, r->a, stdout, &mismatch)) || (rc = check_expect(o, r->b, stdout, &mismatch))) {
		ck_tok_report_free(r);
		return rc;
	}
	if (o->json) {
		ck_tok_report_json(stdout, r, flags);
		fputc('\n', stdout);
	} else {
		ck_tok_report_print(stdout, r, o->verbose, o->diff);
		printf("verdict   %s%s\n", ck_tok_sev_name(r->worst),
		       ck_tok_report_verdict(r, flags) ? " (exit 1)" : "");
	}
	rc = ck_tok_report_verdict(r, flags) || mismatch ? CK_EXIT_DIFF : CK_EXIT_OK;
	ck_tok_report_free(r);
	return rc;
}

int cmd_tokcheck(int argc, char **argv)
{
	struct tc_opts o = { 0 };
	const struct ck_option opts[] = {
		CK_OPT_FLAG(0, "json", &o.json, "print one JSON document (with a severity per component)"),
		CK_OPT_FLAG(0, "strict", &o.strict, "warning-level differences (roles, template, generation eos; with "
			    "one folder, files that disagree) exit 1"),
		CK_OPT_FLAG(0, "diff", &o.diff, "show a unified diff of the chat templates when they differ"),
		CK_OPT_FLAG('v', "verbose", &o.verbose, "show the specifics of cosmetic differences too"),
		CK_OPT_STRINGS(0, "expect", &o.expect, "[COMP=]SHA256",
			       "exit 1 unless the hash matches (COMP: vocab, merges, added, pipeline, roles, "
			       "template, all [default], or a file name such as tokenizer.json); repeatable"),
		CK_OPT_FLAG(0, "no-weights", &o.no_weights, "skip the token-id vs embedding-rows check"),
		CK_OPT_END,
	};
	const struct ck_usage u = {
		.tool = "tokcheck",
		.synopsis = "ckpt tokcheck [options] DIR [DIR2]",
		.about = "With one folder, print the identity of its tokenizer: MD5 and SHA-256 of each tokenizer\n"
			 "file, and hashes of what it means (vocab, merges, added tokens, pipeline, special-token roles,\n"
			 "chat template) that reformatting does not change.  With two, say what differs, one line per\n"
			 "component: exit 0 when they are the same in meaning (cosmetic and warning-level differences\n"
			 "are printed but pass), 1 when a difference breaks a merge (vocab, merges, added tokens,\n"
			 "pipeline, token ids without embedding rows), 3 for unreadable or invalid input.",
		.min_args = 1,
		.max_args = 2,
	};
	int n = ck_parse_options(argc, argv, opts, &u), rc, unused = 0;

	rc = check_expect(&o, NULL, stdout, &unused);
	if (!rc)
		rc = n == 1 ? one(&o, argv[0]) : two(&o, argv[0], argv[1]);
	ck_strlist_release(&o.expect);
	return rc;
}
