/*
 * tokcompare.c - compare two loaded tokenizers component by component and
 * say what differs, how much it matters (tokenizer.h, enum ck_tok_sev), and
 * print that as text or JSON.
 *
 * Component hashes decide "same"; when one differs we walk the parsed data
 * to name the specifics (ids whose strings changed, merges only in one side,
 * moved added tokens, role changes, template line counts).  A side that lacks
 * the files a component comes from is reported, not guessed at.
 */
#include <stdlib.h>
#include <string.h>
#include "tokenizer.h"
#include "tokutil.h"

#define SHOW 5	/* specifics listed per kind of difference */

static const char *const sev_names[] = { "same", "cosmetic", "warning", "breaking" };

const char *ck_tok_sev_name(enum ck_tok_sev s)
{
	return sev_names[s];
}

/* A report being built: one item per call to item_begin. */
struct build {
	struct ck_tok_report *r;
	struct tok_sb sum, det;
	int oom;
};

static void item_end(struct build *b, const char *name, enum ck_tok_sev sev)
{
	struct ck_tok_item *v = ck_reallocarray(b->r->items, b->r->nitems + 1, sizeof(*v));
	char *sum = tok_sb_detach(&b->sum), *det = b->det.n ? tok_sb_detach(&b->det) : NULL;

	tok_sb_release(&b->det);
	if (!v || !sum || b->sum.oom) {
		free(sum);
		free(det);
		b->oom = 1;
		return;
	}
	b->r->items = v;
	v[b->r->nitems].name = name;
	v[b->r->nitems].sev = sev;
	v[b->r->nitems].summary = sum;
	v[b->r->nitems].details = det;
	b->r->nitems++;
	if (sev > b->r->worst)
		b->r->worst = sev;
}

/* Append a token for display: quoted, escaped, cut at 60 bytes. */
static void put_tok(struct tok_sb *s, const char *p, size_t n)
{
	char esc[256];
	bool cut = n > 60;
	ck_escape(p, cut ? 60 : n, esc, sizeof(esc));
	tok_sb_printf(s, "'%s%s'", esc, cut ? "..." : "");
}

/* ==== vocab ==== */

static void cmp_vocab(struct build *b, const struct ck_tok *x, const struct ck_tok *y)
{
	size_t i = 0, j = 0, changed = 0, only_a = 0, only_b = 0;

	while (i < x->nvocab || j < y->nvocab) {
		const struct ck_tok_token *p = i < x->nvocab ? &x->vocab[i] : NULL;
		const struct ck_tok_token *q = j < y->nvocab ? &y->vocab[j] : NULL;
		if (p && q && p->id == q->id) {
			if (p->len != q->len || memcmp(p->s, q->s, p->len) || p->score != q->score) {
				if (changed++ < SHOW) {
					tok_sb_printf(&b->det, "  id %" PRIu32 ": ", p->id);
					put_tok(&b->det, p->s, p->len);
					tok_sb_puts(&b->det, " -> ");
					put_tok(&b->det, q->s, q->len);
					if (p->score != q->score)
						tok_sb_printf(&b->det, " (score %g -> %g)", p->score, q->score);
					tok_sb_putc(&b->det, '\n');
				}
			}
			i++, j++;
		} else if (p && (!q || p->id < q->id)) {
			if (only_a++ < SHOW) {
				tok_sb_printf(&b->det, "  id %" PRIu32 " only in A: ", p->id);
				put_tok(&b->det, p->s, p->len);
				tok_sb_putc(&b->det, '\n');
			}
			i++;
		} else {
			if (only_b++ < SHOW) {
				tok_sb_printf(&b->det, "  id %" PRIu32 " only in B: ", q->id);
				put_tok(&b->det, q->s, q->len);
				tok_sb_putc(&b->det, '\n');
			}
			j++;
		}
	}
	tok_sb_printf(&b->sum, "differs: %zu ids with another string, %zu only in A, %zu only in B "
		      "(%zu -> %zu entries)", changed, only_a, only_b, x->nvocab, y->nvocab);
}

/* ==== merges ==== */

static uint64_t merge_hash(const struct ck_tok_merge *m)
{
	uint64_t h = 0xcbf29ce484222325ull;
	for (uint32_t i = 0; i < m->alen; i++)
		h = (h ^ (unsigned char)m->a[i]) * 0x100000001b3ull;
	h = (h ^ 0x100) * 0x100000001b3ull;
	for (uint32_t i = 0; i < m->blen; i++)
		h = (h ^ (unsigned char)m->b[i]) * 0x100000001b3ull;
	return h;
}

static bool merge_eq(const struct ck_tok_merge *p, const struct ck_tok_merge *q)
{
	return p->alen == q->alen && p->blen == q->blen && !memcmp(p->a, q->a, p->alen) &&
	       !memcmp(p->b, q->b, p->blen);
}

/* Count (and list the first few of) merges of x that y does not have. */
static int merges_missing(struct build *b, const struct ck_tok *x, const struct ck_tok *y,
			  const char *side, size_t *count)
{
	size_t cap = 16;
	const struct ck_tok_merge **set;

	*count = 0;
	while (cap < 2 * y->nmerges + 2)
		cap *= 2;
	set = ck_calloc(cap, sizeof(*set));
	if (!set)
		return -1;
	for (size_t i = 0; i < y->nmerges; i++) {
		size_t h = (size_t)merge_hash(&y->merges[i]) & (cap - 1);
		while (set[h])
			h = (h + 1) & (cap - 1);
		set[h] = &y->merges[i];
	}
	for (size_t i = 0; i < x->nmerges; i++) {
		const struct ck_tok_merge *m = &x->merges[i];
		size_t h = (size_t)merge_hash(m) & (cap - 1);
		bool found = false;
		for (; set[h]; h = (h + 1) & (cap - 1))
			if (merge_eq(set[h], m)) {
				found = true;
				break;
			}
		if (found)
			continue;
		if ((*count)++ < SHOW) {
			tok_sb_printf(&b->det, "  rank %zu only in %s: ", i, side);
			put_tok(&b->det, m->a, m->alen);
			tok_sb_putc(&b->det, ' ');
			put_tok(&b->det, m->b, m->blen);
			tok_sb_putc(&b->det, '\n');
		}
	}
	free(set);
	return 0;
}

static void cmp_merges(struct build *b, const struct ck_tok *x, const struct ck_tok *y)
{
	size_t first = 0, na = 0, nb = 0;

	while (first < x->nmerges && first < y->nmerges && merge_eq(&x->merges[first], &y->merges[first]))
		first++;
	if (merges_missing(b, x, y, "A", &na) || merges_missing(b, y, x, "B", &nb)) {
		b->oom = 1;
		return;
	}
	tok_sb_printf(&b->sum, "differs: %zu -> %zu merges, %zu only in A, %zu only in B, "
		      "ranks differ from %zu on", x->nmerges, y->nmerges, na, nb, first);
}

/* ==== added tokens ==== */

static const struct ck_tok_added *added_by_content(const struct ck_tok *t, const struct ck_tok_added *a)
{
	for (size_t i = 0; i < t->nadded; i++)
		if (t->added[i].len == a->len && !memcmp(t->added[i].content, a->content, a->len))
			return &t->added[i];
	return NULL;
}

static void flags_str(struct tok_sb *s, unsigned f)
{
	static const char *const n[] = { "special", "normalized", "lstrip", "rstrip", "single_word" };
	bool any = false;
	for (int i = 0; i < 5; i++)
		if (f & (1u << i)) {
			tok_sb_printf(s, "%s%s", any ? "," : "", n[i]);
			any = true;
		}
	if (!any)
		tok_sb_puts(s, "-");
}

static enum ck_tok_sev cmp_added(struct build *b, const struct ck_tok *x, const struct ck_tok *y)
{
	size_t changed = 0, moved = 0, only_a = 0, only_b = 0, flags = 0, shown = 0;
	size_t i = 0, j = 0;

	while (i < x->nadded || j < y->nadded) {
		const struct ck_tok_added *p = i < x->nadded ? &x->added[i] : NULL;
		const struct ck_tok_added *q = j < y->nadded ? &y->added[j] : NULL;
		if (p && q && p->id == q->id) {
			if (p->len != q->len || memcmp(p->content, q->content, p->len)) {
				changed++;
				if (shown++ < SHOW) {
					tok_sb_printf(&b->det, "  id %" PRIu32 ": ", p->id);
					put_tok(&b->det, p->content, p->len);
					tok_sb_puts(&b->det, " -> ");
					put_tok(&b->det, q->content, q->len);
					tok_sb_putc(&b->det, '\n');
				}
			} else if (p->flags != q->flags) {
				flags++;
				if (shown++ < SHOW) {
					tok_sb_printf(&b->det, "  id %" PRIu32 " ", p->id);
					put_tok(&b->det, p->content, p->len);
					tok_sb_puts(&b->det, " flags ");
					flags_str(&b->det, p->flags);
					tok_sb_puts(&b->det, " -> ");
					flags_str(&b->det, q->flags);
					tok_sb_putc(&b->det, '\n');
				}
			}
			i++, j++;
		} else if (p && (!q || p->id < q->id)) {
			const struct ck_tok_added *o = added_by_content(y, p);
			if (o) {
				moved++;
				if (shown++ < SHOW) {
					tok_sb_puts(&b->det, "  ");
					put_tok(&b->det, p->content, p->len);
					tok_sb_printf(&b->det, " moved: id %" PRIu32 " -> %" PRIu32 "\n", p->id, o->id);
				}
			} else {
				only_a++;
				if (shown++ < SHOW) {
					tok_sb_printf(&b->det, "  id %" PRIu32 " only in A: ", p->id);
					put_tok(&b->det, p->content, p->len);
					tok_sb_putc(&b->det, '\n');
				}
			}
			i++;
		} else {
			if (!added_by_content(x, q)) {
				only_b++;
				if (shown++ < SHOW) {
					tok_sb_printf(&b->det, "  id %" PRIu32 " only in B: ", q->id);
					put_tok(&b->det, q->content, q->len);
					tok_sb_putc(&b->det, '\n');
				}
			}
			j++;
		}
	}
	tok_sb_printf(&b->sum, "differs: %zu ids with another content, %zu moved, %zu only in A, "
		      "%zu only in B, %zu with other flags", changed, moved, only_a, only_b, flags);
	return changed || moved || only_a || only_b ? CK_TOK_BREAKING : CK_TOK_WARNING;
}

/* ==== pipeline ==== */

static void cmp_pipeline(struct build *b, const struct ck_tok *x, const struct ck_tok *y)
{
	bool any = false;

	tok_sb_puts(&b->sum, "differs:");
	for (int i = 0; i < TOK_NPARTS; i++) {
		if (!strcmp(x->pipe_part[i], y->pipe_part[i]))
			continue;
		tok_sb_printf(&b->sum, "%s %s", any ? "," : "", tok_part_names[i]);
		any = true;
		char ea[200], eb[200];
		size_t la = strlen(x->pipe_part[i]), lb = strlen(y->pipe_part[i]);
		ck_escape(x->pipe_part[i], la > 160 ? 160 : la, ea, sizeof(ea));
		ck_escape(y->pipe_part[i], lb > 160 ? 160 : lb, eb, sizeof(eb));
		tok_sb_printf(&b->det, "  %s: %s%s\n  %*s  -> %s%s\n", tok_part_names[i], ea,
			      la > 160 ? "..." : "", (int)strlen(tok_part_names[i]), "", eb,
			      lb > 160 ? "..." : "");
	}
}

/* ==== roles ==== */

static bool has_role_files(const struct ck_tok *t)
{
	return t->dig[CK_TOKF_TOKENIZER_CONFIG].present || t->dig[CK_TOKF_SPECIAL_MAP].present;
}

static void put_role(struct tok_sb *s, const struct ck_tok_role_tok *r)
{
	if (!r->token) {
		tok_sb_puts(s, "(none)");
		return;
	}
	put_tok(s, r->token, strlen(r->token));
	tok_sb_printf(s, "(%" PRId64 ")", r->id);
}

static void put_ids(struct tok_sb *s, const struct ck_tok_ids *x)
{
	if (x->state == CK_TOK_IDS_ABSENT) {
		tok_sb_puts(s, "(absent)");
		return;
	}
	if (x->state == CK_TOK_IDS_NULL) {
		tok_sb_puts(s, "null");
		return;
	}
	tok_sb_puts(s, x->n == 1 ? "" : "[");
	for (size_t i = 0; i < x->n; i++)
		tok_sb_printf(s, "%s%" PRId64, i ? "," : "", x->v[i]);
	tok_sb_puts(s, x->n == 1 ? "" : "]");
}

static bool ids_eq(const struct ck_tok_ids *p, const struct ck_tok_ids *q)
{
	return p->state == q->state && p->n == q->n && !memcmp(p->v, q->v, p->n * sizeof(p->v[0]));
}

static const char *const idkeys[] = { "bos_token_id", "eos_token_id", "pad_token_id" };

/* Returns the number of differences found; notes what could not be compared. */
static int cmp_roles(struct build *b, const struct ck_tok *x, const struct ck_tok *y)
{
	struct tok_sb *s = &b->det;
	int n = 0;

	if (has_role_files(x) && has_role_files(y)) {
		for (int r = 0; r < CK_TOK_NROLES; r++) {
			const struct ck_tok_role_tok *p = &x->role[r], *q = &y->role[r];
			if ((!p->token) == (!q->token) && (!p->token || !strcmp(p->token, q->token)) &&
			    p->id == q->id)
				continue;
			tok_sb_printf(s, "  %s ", ck_tok_role_name((enum ck_tok_role)r));
			put_role(s, p);
			tok_sb_puts(s, " -> ");
			put_role(s, q);
			tok_sb_putc(s, '\n');
			n++;
		}
	}
	static const struct { enum ck_tok_file f; const char *label; } src[] = {
		{ CK_TOKF_CONFIG, "config.json" }, { CK_TOKF_GENERATION, "generation_config.json" },
	};
	for (int k = 0; k < 2; k++) {
		if (!x->dig[src[k].f].present || !y->dig[src[k].f].present)
			continue;
		const struct ck_tok_ids *p = k ? x->gen_ids : x->cfg_ids, *q = k ? y->gen_ids : y->cfg_ids;
		for (int i = 0; i < CK_TOK_NIDKEYS; i++) {
			if (ids_eq(&p[i], &q[i]))
				continue;
			tok_sb_printf(s, "  %s %s ", src[k].label, idkeys[i]);
			put_ids(s, &p[i]);
			tok_sb_puts(s, " -> ");
			put_ids(s, &q[i]);
			tok_sb_putc(s, '\n');
			n++;
		}
	}
	return n;
}

/* ==== template ==== */

struct lines {
	const char **p;
	size_t *len;
	size_t n;
};

static int split_lines(const char *s, size_t len, struct lines *l)
{
	size_t n = 0;
	for (size_t i = 0; i < len; i++)
		n += s[i] == '\n';
	n += len && s[len - 1] != '\n';
	l->p = ck_calloc(n, sizeof(*l->p));
	l->len = ck_calloc(n, sizeof(*l->len));
	l->n = 0;
	if (!l->p || !l->len)
		return -1;
	for (size_t i = 0; i < len;) {
		const char *nl = memchr(s + i, '\n', len - i);
		size_t e = nl ? (size_t)(nl - s) + 1 : len;
		l->p[l->n] = s + i;
		l->len[l->n++] = e - i;
		i = e;
	}
	return 0;
}

static bool line_eq(const struct lines *a, size_t i, const struct lines *b, size_t j)
{
	return a->len[i] == b->len[j] && !memcmp(a->p[i], b->p[j], a->len[i]);
}

#define MAX_DIFF_CELLS (16u << 20)	/* LCS table cells: 2000 x 8000 lines, 64 MB */

static void put_line(struct tok_sb *s, char tag, const struct lines *l, size_t i)
{
	tok_sb_putc(s, tag);
	tok_sb_put(s, l->p[i], l->len[i]);
	if (!l->len[i] || l->p[i][l->len[i] - 1] != '\n')
		tok_sb_puts(s, "\n\\ No newline at end of file\n");
}

/*
 * Line diff by longest common subsequence after trimming the common head
 * and tail (templates differ in a few lines).  Counts +/- lines and, when
 * out is given, writes a unified diff with 3 lines of context.
 */
static int diff_lines(const struct lines *a, const struct lines *b, size_t *plus, size_t *minus,
		      struct tok_sb *out)
{
	size_t pre = 0, suf = 0;
	while (pre < a->n && pre < b->n && line_eq(a, pre, b, pre))
		pre++;
	while (suf < a->n - pre && suf < b->n - pre && line_eq(a, a->n - 1 - suf, b, b->n - 1 - suf))
		suf++;
	size_t n = a->n - pre - suf, m = b->n - pre - suf;
	uint32_t *t;
	uint64_t cells;

	if (ck_mul_u64(n + 1, m + 1, &cells) || cells > MAX_DIFF_CELLS) {
		*minus = n;	/* too big to align: every middle line counts */
		*plus = m;
		if (out)
			tok_sb_printf(out, "(templates too different to diff: %zu and %zu lines)\n", n, m);
		return 0;
	}
	t = ck_calloc((size_t)cells, sizeof(*t));
	if (!t)
		return -1;
#define T(i, j) t[(size_t)(i) * (m + 1) + (j)]
	for (size_t i = n; i-- > 0;)
		for (size_t j = m; j-- > 0;)
			T(i, j) = line_eq(a, pre + i, b, pre + j) ? T(i + 1, j + 1) + 1 :
				  T(i + 1, j) > T(i, j + 1) ? T(i + 1, j) : T(i, j + 1);
	/* The edit script: 0 keep, 1 delete a[i], 2 insert b[j]. */
	unsigned char *op = ck_malloc(n + m + 1);
	size_t nop = 0, i = 0, j = 0;
	if (!op) {
		free(t);
		return -1;
	}
	while (i < n || j < m) {
		if (i < n && j < m && line_eq(a, pre + i, b, pre + j))
			op[nop++] = 0, i++, j++;
		else if (i < n && (j == m || T(i + 1, j) >= T(i, j + 1)))
			op[nop++] = 1, i++;	/* deletions first, as diff(1) and difflib print */
		else
			op[nop++] = 2, j++;
	}
#undef T
	free(t);
	*plus = *minus = 0;
	for (size_t k = 0; k < nop; k++)
		*plus += op[k] == 2, *minus += op[k] == 1;
	if (!out)
		goto done;
	/* Hunks over the whole files: positions include the trimmed head. */
	size_t k = 0;
	while (k < nop) {
		while (k < nop && !op[k])
			k++;
		if (k == nop)
			break;
		size_t end = k, keep = 0;
		for (size_t q = k; q < nop; q++) {
			if (op[q]) {
				end = q + 1;
				keep = 0;
			} else if (++keep > 6) {
				break;
			}
		}
		/* Positions of op[k] in a and b. */
		size_t ai = pre, bj = pre;
		for (size_t q = 0; q < k; q++)
			ai += op[q] != 2, bj += op[q] != 1;
		size_t ctx = ai >= 3 && bj >= 3 ? 3 : (ai < bj ? ai : bj);
		size_t as = ai - ctx, bs = bj - ctx, al = ctx, bl = ctx;
		for (size_t q = k; q < end; q++)
			al += op[q] != 2, bl += op[q] != 1;
		size_t ae = as + al, be = bs + bl, tail = 0;
		while (tail < 3 && ae + tail < a->n && be + tail < b->n)
			tail++;
		tok_sb_printf(out, "@@ -%zu,%zu +%zu,%zu @@\n", as + 1, al + tail, bs + 1, bl + tail);
		for (size_t q = 0; q < ctx; q++)
			put_line(out, ' ', a, as + q);
		size_t x = ai, y = bj;
		for (size_t q = k; q < end; q++) {
			if (op[q] == 0)
				put_line(out, ' ', a, x++), y++;
			else if (op[q] == 1)
				put_line(out, '-', a, x++);
			else
				put_line(out, '+', b, y++);
		}
		for (size_t q = 0; q < tail; q++)
			put_line(out, ' ', a, x + q);
		k = end;
	}
done:
	free(op);
	return 0;
}

static enum ck_tok_sev cmp_template(struct build *b, const struct ck_tok *x, const struct ck_tok *y)
{
	struct lines la = { 0 }, lb = { 0 };
	size_t plus = 0, minus = 0;
	struct tok_sb diff = TOK_SB_INIT;

	if (!x->tmpl && !y->tmpl) {
		tok_sb_puts(&b->sum, "same (none)");
		return CK_TOK_SAME;
	}
	if (!x->tmpl || !y->tmpl) {
		tok_sb_printf(&b->sum, "differs: only %s has a chat template (%s)", x->tmpl ? "A" : "B",
			      x->tmpl ? x->tmpl_origin : y->tmpl_origin);
		return CK_TOK_WARNING;
	}
	if (x->tmpl_len == y->tmpl_len && !memcmp(x->tmpl, y->tmpl, x->tmpl_len)) {
		tok_sb_printf(&b->sum, "same (%s", x->tmpl_origin);
		if (strcmp(x->tmpl_origin, y->tmpl_origin))
			tok_sb_printf(&b->sum, " -> %s", y->tmpl_origin);
		tok_sb_putc(&b->sum, ')');
		return CK_TOK_SAME;
	}
	if (split_lines(x->tmpl, x->tmpl_len, &la) || split_lines(y->tmpl, y->tmpl_len, &lb) ||
	    diff_lines(&la, &lb, &plus, &minus, &diff)) {
		b->oom = 1;
	} else {
		tok_sb_printf(&b->sum, "differs: +%zu/-%zu lines (%s -> %s)", plus, minus, x->tmpl_origin,
			      y->tmpl_origin);
		if (!diff.oom) {
			struct tok_sb u = TOK_SB_INIT;
			tok_sb_printf(&u, "--- A/%s\n+++ B/%s\n", x->tmpl_origin, y->tmpl_origin);
			tok_sb_put(&u, diff.p ? diff.p : "", diff.n);
			b->r->template_diff = tok_sb_detach(&u);
		}
	}
	tok_sb_release(&diff);
	free(la.p);
	free(la.len);
	free(lb.p);
	free(lb.len);
	return CK_TOK_WARNING;
}

/* ==== files and cosmetic keys ==== */

static void cmp_files(struct build *b, const struct ck_tok *x, const struct ck_tok *y)
{
	enum ck_tok_sev sev = CK_TOK_SAME;
	struct tok_sb *s = &b->sum;
	int n = 0;

	for (int f = 0; f < CK_TOKF_COUNT; f++) {
		const struct ck_tok_digest *p = &x->dig[f], *q = &y->dig[f];
		const char *what = NULL;
		if (!p->present && !q->present)
			continue;
		if (!q->present)
			what = "absent in B";
		else if (!p->present)
			what = "absent in A";
		else if (strcmp(p->sha256, q->sha256))
			what = "bytes differ";
		if (!what)
			continue;
		tok_sb_printf(s, "%s%s %s", n++ ? ", " : "differs: ", ck_tok_file_name((enum ck_tok_file)f),
			      what);
		sev = CK_TOK_COSMETIC;
	}
	if (!n)
		tok_sb_puts(s, "same bytes");
	item_end(b, "files", sev);
}

static const struct ck_tok_kv *find_kv(const struct ck_tok *t, const struct ck_tok_kv *k)
{
	for (size_t i = 0; i < t->ncosm; i++)
		if (!strcmp(t->cosm[i].file, k->file) && !strcmp(t->cosm[i].key, k->key))
			return &t->cosm[i];
	return NULL;
}

static void put_json_short(struct tok_sb *s, const char *j)
{
	char esc[120];
	size_t n = strlen(j);
	ck_escape(j, n > 80 ? 80 : n, esc, sizeof(esc));
	tok_sb_printf(s, "%s%s", esc, n > 80 ? "..." : "");
}

static void cmp_cosmetic(struct build *b, const struct ck_tok *x, const struct ck_tok *y)
{
	int n = 0;

	if (x->have_json && y->have_json && x->nmerges && y->nmerges && x->legacy_merges != y->legacy_merges) {
		tok_sb_printf(&b->sum, "%smerges format %s -> %s", n++ ? "; " : "",
			      x->legacy_merges ? "legacy \"a b\"" : "pairs",
			      y->legacy_merges ? "legacy \"a b\"" : "pairs");
	}
	/* Keys present on both sides whose value differs, then keys on one side only. */
	for (int side = 0; side < 2; side++) {
		const struct ck_tok *p = side ? y : x, *q = side ? x : y;
		for (size_t i = 0; i < p->ncosm; i++) {
			const struct ck_tok_kv *k = &p->cosm[i], *o = find_kv(q, k);
			bool both_files = !strcmp(k->file, "tokenizer.json") ?
				x->have_json && y->have_json :
				x->dig[CK_TOKF_TOKENIZER_CONFIG].present && y->dig[CK_TOKF_TOKENIZER_CONFIG].present;
			if (!both_files || (o && (side || !strcmp(k->json, o->json))))
				continue;
			tok_sb_printf(&b->sum, "%s%s %s ", n++ ? "; " : "", k->file, k->key);
			if (!o) {
				tok_sb_puts(&b->sum, side ? "only in B" : "only in A");
				continue;
			}
			put_json_short(&b->sum, k->json);
			tok_sb_puts(&b->sum, " -> ");
			put_json_short(&b->sum, o->json);
		}
	}
	if (!n)
		tok_sb_puts(&b->sum, "none");
	item_end(b, "cosmetic", n ? CK_TOK_COSMETIC : CK_TOK_SAME);
}

/* ==== the comparison ==== */

static void cmp_component(struct build *b, enum ck_tok_comp c, const struct ck_tok *x, const struct ck_tok *y)
{
	const char *hx = ck_tok_hash(x, c), *hy = ck_tok_hash(y, c);
	const char *src = c == CK_TOKC_ADDED ? "tokenizer.json or added_tokens_decoder" : "tokenizer.json";
	enum ck_tok_sev sev = CK_TOK_BREAKING;

	if (!hx || !hy) {
		if (!hx && !hy)
			tok_sb_printf(&b->sum, "not compared: no %s on either side", src);
		else
			tok_sb_printf(&b->sum, "not compared: no %s in %s", src, hx ? "B" : "A");
		item_end(b, ck_tok_comp_name(c), hx || hy ? CK_TOK_WARNING : CK_TOK_SAME);
		return;
	}
	if (!strcmp(hx, hy)) {
		tok_sb_puts(&b->sum, "same");
		item_end(b, ck_tok_comp_name(c), CK_TOK_SAME);
		return;
	}
	switch (c) {
	case CK_TOKC_VOCAB:
		cmp_vocab(b, x, y);
		break;
	case CK_TOKC_MERGES:
		cmp_merges(b, x, y);
		break;
	case CK_TOKC_ADDED:
		sev = cmp_added(b, x, y);
		break;
	default:
		cmp_pipeline(b, x, y);
		break;
	}
	item_end(b, ck_tok_comp_name(c), sev);
}

int ck_tok_report_verdict(const struct ck_tok_report *r, unsigned flags)
{
	if (r->worst == CK_TOK_BREAKING || (r->worst == CK_TOK_WARNING && (flags & CK_TOK_STRICT)))
		return CK_EDIFF;
	return 0;
}

int ck_tok_compare_loaded(struct ck_tok *a, struct ck_tok *b, unsigned flags,
			  struct ck_tok_report **out, struct ck_diag *d)
{
	struct ck_tok_report *r = ck_calloc(1, sizeof(*r));
	struct build bd = { .r = r, .sum = TOK_SB_INIT, .det = TOK_SB_INIT };

	*out = NULL;
	if (!r) {
		ck_tok_free(a);
		ck_tok_free(b);
		return ck_fail(d, CK_ENOMEM, "out of memory");
	}
	r->a = a;
	r->b = b;
	cmp_files(&bd, a, b);
	for (int c = CK_TOKC_VOCAB; c <= CK_TOKC_PIPELINE; c++)
		cmp_component(&bd, (enum ck_tok_comp)c, a, b);

	int nroles = cmp_roles(&bd, a, b);
	if (nroles)
		tok_sb_printf(&bd.sum, "differs: %d role%s changed", nroles, nroles > 1 ? "s" : "");
	else if (!has_role_files(a) && !has_role_files(b))
		tok_sb_puts(&bd.sum, "not compared: no tokenizer_config.json or special_tokens_map.json on either side");
	else if (has_role_files(a) != has_role_files(b))
		tok_sb_printf(&bd.sum, "not compared: no tokenizer_config.json or special_tokens_map.json in %s",
			      has_role_files(a) ? "B" : "A");
	else
		tok_sb_puts(&bd.sum, "same");
	item_end(&bd, "roles", nroles || has_role_files(a) != has_role_files(b) ? CK_TOK_WARNING : CK_TOK_SAME);

	enum ck_tok_sev ts = cmp_template(&bd, a, b);
	item_end(&bd, "template", ts);
	cmp_cosmetic(&bd, a, b);
	if (bd.oom) {
		ck_tok_report_free(r);
		return ck_fail(d, CK_ENOMEM, "out of memory");
	}
	*out = r;
	return ck_tok_report_verdict(r, flags);
}

bool ck_tok_empty(const struct ck_tok *t)
{
	for (int f = 0; f < CK_TOKF_COUNT; f++)
		if (f != CK_TOKF_CONFIG && f != CK_TOKF_GENERATION && t->dig[f].present)
			return false;
	return true;
}

int ck_tok_compare(const char *dir_a, const char *dir_b, unsigned flags,
		   struct ck_tok_report **r, struct ck_diag *d)
{
	struct ck_tok *a = NULL, *b = NULL;

	*r = NULL;
	CK_TRY(ck_tok_load(&a, dir_a, flags, d));
	int rc = ck_tok_load(&b, dir_b, flags, d);
	if (rc) {
		ck_tok_free(a);
		return rc;
	}
	return ck_tok_compare_loaded(a, b, flags, r, d);
}

int ck_tok_report_add_rows(struct ck_tok_report *r, uint64_t rows_a, uint64_t rows_b,
			   unsigned adapter, unsigned flags)
{
	struct build bd = { .r = r, .sum = TOK_SB_INIT, .det = TOK_SB_INIT };
	struct ck_diag d = CK_DIAG_INIT;
	int n = 0;

	if (rows_a && ck_tok_check_rows(r->a, rows_a, &d))
		tok_sb_printf(&bd.sum, "%sA: %s", n++ ? "; " : "", d.msg);
	if (rows_b && ck_tok_check_rows(r->b, rows_b, &d))
		tok_sb_printf(&bd.sum, "%sB: %s", n++ ? "; " : "", d.msg);
	if (rows_a && rows_b && (adapter == CK_TOK_ADAPTER_A || adapter == CK_TOK_ADAPTER_B)) {
		bool in_b = adapter == CK_TOK_ADAPTER_B;
		if (ck_tok_check_adapter_rows(in_b ? rows_a : rows_b, in_b ? rows_b : rows_a,
					      in_b ? r->b : r->a, &d))
			tok_sb_printf(&bd.sum, "%s%s: %s", n++ ? "; " : "", in_b ? "B" : "A", d.msg);
	}
	if (!n) {
		tok_sb_puts(&bd.sum, "ok:");
		for (int side = 0; side < 2; side++) {
			uint64_t rows = side ? rows_b : rows_a, ids = ck_tok_size(side ? r->b : r->a);
			if (!rows)
				continue;
			tok_sb_printf(&bd.sum, "%s %c %" PRIu64 " rows", side && rows_a ? ";" : "", side ? 'B' : 'A',
				      rows);
			if (ids)
				tok_sb_printf(&bd.sum, " for %" PRIu64 " token ids", ids);
		}
	}
	item_end(&bd, "embedding", n ? CK_TOK_BREAKING : CK_TOK_SAME);
	return bd.oom ? CK_ENOMEM : ck_tok_report_verdict(r, flags);
}

/* ==== one folder's files against each other ==== */

static void ids_vs_role(struct tok_sb *s, int *n, const char *file, const char *key,
			const struct ck_tok_ids *x, const struct ck_tok_role_tok *r, const char *role)
{
	bool hit = false;

	if (x->state != CK_TOK_IDS_SET || !r->token || r->id < 0)
		return;
	for (size_t i = 0; i < x->n; i++)
		hit |= x->v[i] == r->id;
	if (hit)
		return;
	tok_sb_printf(s, "  %s %s ", file, key);
	put_ids(s, x);
	tok_sb_printf(s, " does not %s the tokenizer's %s ", x->n == 1 ? "name" : "hold", role);
	put_role(s, r);
	tok_sb_putc(s, '\n');
	(*n)++;
}

int ck_tok_consistency(const struct ck_tok *t, char **text)
{
	struct tok_sb s = TOK_SB_INIT;
	int n = 0;

	*text = NULL;
	if (t->have_cfg_added) {
		size_t i = 0, j = 0;
		while (i < t->nadded || j < t->ncfg_added) {
			const struct ck_tok_added *p = i < t->nadded ? &t->added[i] : NULL;
			const struct ck_tok_added *q = j < t->ncfg_added ? &t->cfg_added[j] : NULL;
			if (p && q && p->id == q->id) {
				if (p->len != q->len || memcmp(p->content, q->content, p->len) ||
				    (p->flags & CK_TOK_SPECIAL) != (q->flags & CK_TOK_SPECIAL)) {
					tok_sb_printf(&s, "  id %" PRIu32 ": tokenizer.json ", p->id);
					put_tok(&s, p->content, p->len);
					tok_sb_puts(&s, p->flags & CK_TOK_SPECIAL ? " (special)" : "");
					tok_sb_puts(&s, ", tokenizer_config.json ");
					put_tok(&s, q->content, q->len);
					tok_sb_puts(&s, q->flags & CK_TOK_SPECIAL ? " (special)\n" : "\n");
					n++;
				}
				i++, j++;
			} else if (p && (!q || p->id < q->id)) {
				i++;	/* transformers does not need every added token in the config */
			} else {
				tok_sb_printf(&s, "  id %" PRIu32 " ", q->id);
				put_tok(&s, q->content, q->len);
				tok_sb_puts(&s, ": in tokenizer_config.json added_tokens_decoder, not in "
					    "tokenizer.json added_tokens\n");
				n++;
				j++;
			}
		}
	}
	for (int r = 0; r < CK_TOK_NROLES; r++) {
		const struct ck_tok_role_tok *x = &t->role[r];
		if (!x->token || x->id >= 0 || (!t->have_json && !t->have_added))
			continue;
		tok_sb_printf(&s, "  %s token ", ck_tok_role_name((enum ck_tok_role)r));
		put_tok(&s, x->token, strlen(x->token));
		tok_sb_printf(&s, " (%s) is not a token of this tokenizer\n", x->source);
		n++;
	}
	static const struct { enum ck_tok_idkey k; enum ck_tok_role r; } pairs[] = {
		{ CK_TOK_BOS_ID, CK_TOK_BOS }, { CK_TOK_EOS_ID, CK_TOK_EOS }, { CK_TOK_PAD_ID, CK_TOK_PAD },
	};
	for (size_t i = 0; i < CK_ARRAY_SIZE(pairs); i++) {
		const char *role = ck_tok_role_name(pairs[i].r);
		ids_vs_role(&s, &n, "config.json", idkeys[pairs[i].k], &t->cfg_ids[pairs[i].k],
			    &t->role[pairs[i].r], role);
		ids_vs_role(&s, &n, "generation_config.json", idkeys[pairs[i].k], &t->gen_ids[pairs[i].k],
			    &t->role[pairs[i].r], role);
	}
	if (s.oom) {
		tok_sb_release(&s);
		return CK_ENOMEM;
	}
	*text = n ? tok_sb_detach(&s) : NULL;
	tok_sb_release(&s);
	return n;
}

/* ==== printing ==== */

void ck_tok_report_print(FILE *f, const struct ck_tok_report *r, bool verbose, bool diff)
{
	for (size_t i = 0; i < r->nitems; i++) {
		const struct ck_tok_item *it = &r->items[i];
		fprintf(f, "%-9s %s", it->name, it->summary);
		if (it->sev != CK_TOK_SAME)
			fprintf(f, " [%s]", ck_tok_sev_name(it->sev));
		fputc('\n', f);
		if (it->details && (verbose || it->sev >= CK_TOK_WARNING))
			fputs(it->details, f);
	}
	if (diff && r->template_diff)
		fputs(r->template_diff, f);
}

void ck_tok_hashes_json(FILE *f, const struct ck_tok *t)
{
	fputc('{', f);
	for (int c = 0; c < CK_TOKC_COUNT; c++) {
		const char *h = ck_tok_hash(t, (enum ck_tok_comp)c);
		fprintf(f, "%s\"%s\":", c ? "," : "", ck_tok_comp_name((enum ck_tok_comp)c));
		if (h)
			ck_json_str(f, h);
		else
			fputs("null", f);
	}
	fprintf(f, ",\"all\":\"%s\"}", ck_tok_hash_all(t));
}

void ck_tok_report_json(FILE *f, const struct ck_tok_report *r, unsigned flags)
{
	int v = ck_tok_report_verdict(r, flags);

	fputs("{\"version\":1,\"a\":", f);
	ck_json_str(f, ck_tok_dir(r->a));
	fputs(",\"b\":", f);
	ck_json_str(f, ck_tok_dir(r->b));
	fprintf(f, ",\"severity\":\"%s\",\"exit\":%d,\"strict\":%s,\"components\":[",
		ck_tok_sev_name(r->worst), ck_exit_code(v), flags & CK_TOK_STRICT ? "true" : "false");
	for (size_t i = 0; i < r->nitems; i++) {
		const struct ck_tok_item *it = &r->items[i];
		fprintf(f, "%s{\"name\":\"%s\",\"severity\":\"%s\",\"summary\":", i ? "," : "", it->name,
			ck_tok_sev_name(it->sev));
		ck_json_str(f, it->summary);
		fputs(",\"details\":[", f);
		for (const char *p = it->details; p && *p;) {
			const char *nl = strchr(p, '\n');
			size_t n = nl ? (size_t)(nl - p) : strlen(p);
			char *line = ck_strndup(p, n);
			if (line) {
				fputs(p == it->details ? "" : ",", f);
				ck_json_str(f, line + (line[0] == ' ' && line[1] == ' ' ? 2 : 0));
				free(line);
			}
			p += n + (nl != NULL);
		}
		fputs("]}", f);
	}
	fputs("],\"hashes\":{\"a\":", f);
	ck_tok_hashes_json(f, r->a);
	fputs(",\"b\":", f);
	ck_tok_hashes_json(f, r->b);
	fputs("},\"template_diff\":", f);
	if (r->template_diff)
		ck_json_str(f, r->template_diff);
	else
		fputs("null", f);
	fputc('}', f);
}

void ck_tok_report_free(struct ck_tok_report *r)
{
	if (!r)
		return;
	for (size_t i = 0; i < r->nitems; i++) {
		free(r->items[i].summary);
		free(r->items[i].details);
	}
	free(r->items);
	free(r->template_diff);
	ck_tok_free(r->a);
	ck_tok_free(r->b);
	free(r);
}
