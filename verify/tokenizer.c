/*
 * tokenizer.c - load a tokenizer folder and compute its hashes (see
 * tokenizer.h for the canonical serializations).
 *
 * tokenizer.json is parsed with cJSON (0.2 s for gpt-oss's 27.9 MB), then
 * the strings we keep are copied into one arena and the tree is freed, so a
 * loaded tokenizer costs about 20 MB, not the 180 MB of the cJSON tree.
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <cjson/cJSON.h>
#include <openssl/evp.h>
#include "tokenizer.h"
#include "tokutil.h"
#include "../libtensor/files.h"
#include "../libtensor/model.h"

static const char *const file_names[CK_TOKF_COUNT] = {
	"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
	"chat_template.jinja", "generation_config.json", "config.json",
};
static const char *const comp_names[CK_TOKC_COUNT] = {
	"vocab", "merges", "added", "pipeline", "roles", "template",
};
static const char *const role_names[CK_TOK_NROLES] = { "bos", "eos", "pad", "unk" };
static const char *const idkey_names[CK_TOK_NIDKEYS] = { "bos_token_id", "eos_token_id", "pad_token_id" };

/* ==== small helpers ==== */

static void hexify(const unsigned char *md, unsigned n, char *out)
{
	static const char hx[] = "0123456789abcdef";
	for (unsigned i = 0; i < n; i++) {
		out[2 * i] = hx[md[i] >> 4];
		out[2 * i + 1] = hx[md[i] & 15];
	}
	out[2 * n] = 0;
}

/*
 * A SHA-256 stream that batches small updates: the vocab and merges are
 * ~2 M pieces of a few bytes, and EVP's per-call overhead would dominate.
 */
struct hasher {
	EVP_MD_CTX *ctx;
	size_t n;
	int err;
	unsigned char buf[1 << 16];
};

static int h_init(struct hasher *h)
{
	h->n = 0;
	h->err = 0;
	h->ctx = EVP_MD_CTX_new();
	if (!h->ctx || !EVP_DigestInit_ex(h->ctx, EVP_sha256(), NULL)) {
		EVP_MD_CTX_free(h->ctx);
		h->ctx = NULL;
		return -1;
	}
	return 0;
}

static void h_flush(struct hasher *h)
{
	if (h->n && !EVP_DigestUpdate(h->ctx, h->buf, h->n))
		h->err = 1;
	h->n = 0;
}

static void h_put(struct hasher *h, const void *p, size_t len)
{
	if (len > sizeof(h->buf) - h->n) {
		h_flush(h);
		if (len > sizeof(h->buf)) {
			if (!EVP_DigestUpdate(h->ctx, p, len))
				h->err = 1;
			return;
		}
	}
	memcpy(h->buf + h->n, p, len);
	h->n += len;
}

static void h_u32(struct hasher *h, uint32_t v)
{
	unsigned char b[4] = { (unsigned char)v, (unsigned char)(v >> 8), (unsigned char)(v >> 16),
			       (unsigned char)(v >> 24) };
	h_put(h, b, 4);
}

static int h_final(struct hasher *h, char *hex)
{
	unsigned char md[32];
	unsigned mdlen = 0;
	int rc = 0;

	h_flush(h);
	if (h->err || !EVP_DigestFinal_ex(h->ctx, md, &mdlen) || mdlen != 32)
		rc = -1;
	else
		hexify(md, 32, hex);
	EVP_MD_CTX_free(h->ctx);
	h->ctx = NULL;
	return rc;
}

static int digest_bytes(const EVP_MD *md, const void *p, size_t n, char *hex)
{
	unsigned char out[EVP_MAX_MD_SIZE];
	unsigned len = 0;
	if (!EVP_Digest(p, n, out, &len, md, NULL))
		return -1;
	hexify(out, len, hex);
	return 0;
}

static int hash_text(const char *s, size_t n, char *hex)
{
	return digest_bytes(EVP_sha256(), s, n, hex);
}

/* Copy n bytes into the arena; returns an offset (pointers are fixed up later). */
static int arena_add(struct ck_tok *t, const char *s, size_t n, size_t *off)
{
	if (n + 1 > t->arena_cap - t->arena_len) {
		size_t cap = t->arena_cap ? t->arena_cap : 1 << 16;
		while (n + 1 > cap - t->arena_len) {
			if (cap > SIZE_MAX / 2)
				return CK_ENOMEM;
			cap *= 2;
		}
		char *p = realloc(t->arena, cap);
		if (!p)
			return CK_ENOMEM;
		t->arena = p;
		t->arena_cap = cap;
	}
	memcpy(t->arena + t->arena_len, s, n);
	t->arena[t->arena_len + n] = 0;
	*off = t->arena_len;
	t->arena_len += n + 1;
	return 0;
}

/* ==== JSON intake: the checks cJSON does not do ==== */

/*
 * Read a JSON file and parse it.  Before cJSON sees the bytes: the size cap,
 * valid UTF-8 (cJSON takes raw bytes as they come), and no "\u0000" escape
 * (cJSON would cut the string there, so "a\u0000b" would equal "a").  After:
 * nothing but whitespace may follow, and no object may repeat a key (cJSON
 * keeps both and finds the first; Python and serde keep the last).
 */
static int parse_json(const char *path, const char *buf, size_t len, cJSON **root, struct ck_diag *d)
{
	const char *endp = NULL;
	int rc;

	*root = NULL;
	CK_TRY(tok_json_precheck(path, buf, len, d));
	/* cJSON 1.7.15 wants the terminating NUL counted when it must end the input. */
	*root = cJSON_ParseWithLengthOpts(buf, len + 1, &endp, 1);
	if (!*root) {
		size_t at = endp && endp >= buf && endp <= buf + len ? (size_t)(endp - buf) : len;
		return ck_fail(d, CK_EINVAL, "'%s': malformed JSON near byte %zu", path, at);
	}
	rc = tok_json_check_dups(path, *root, d);
	if (rc) {
		cJSON_Delete(*root);
		*root = NULL;
	}
	return rc;
}

/*
 * Read a file once: digest its bytes (MD5, SHA-256) and, for JSON, parse it.
 * Before cJSON sees the bytes: the size cap, valid UTF-8 (cJSON takes raw
 * bytes as they come), and no "\u0000" escape (cJSON would cut the string
 * there, so "a\u0000b" would equal "a").  After: nothing but whitespace may
 * follow, and no object may repeat a key (cJSON keeps both and finds the
 * first; Python and serde keep the last).
 */
static int read_file(struct ck_tok *t, enum ck_tok_file f, const char *path, cJSON **root,
		     char **text, size_t *text_len, struct ck_diag *d)
{
	struct ck_tok_digest *g = &t->dig[f];
	char *buf = NULL;
	size_t len = 0;
	int rc;

	CK_TRY(ck_read_file(path, f == CK_TOKF_TOKENIZER ? CK_TOK_MAX_JSON : CK_TOK_MAX_SMALL,
			    &buf, &len, d));
	g->size = len;
	if (digest_bytes(EVP_md5(), buf, len, g->md5) || digest_bytes(EVP_sha256(), buf, len, g->sha256)) {
		free(buf);
		return ck_fail(d, CK_EIO, "'%s': hashing failed", path);
	}
	if (root) {
		rc = parse_json(path, buf, len, root, d);
		if (!rc && !cJSON_IsObject(*root)) {
			cJSON_Delete(*root);
			*root = NULL;
			rc = ck_fail(d, CK_EINVAL, "'%s': not a JSON object", path);
		}
		free(buf);
		return rc;
	}
	*text = buf;
	*text_len = len;
	return 0;
}

static const cJSON *get(const cJSON *o, const char *key)
{
	return cJSON_GetObjectItemCaseSensitive(o, key);
}

/* An exact integer id in [lo, hi]: integral, so 5.5 and 1e30 are refused. */
static bool json_int(const cJSON *n, double lo, double hi, int64_t *out)
{
	if (!cJSON_IsNumber(n))
		return false;
	double v = n->valuedouble;
	if (!(v >= lo && v <= hi) || v != floor(v))
		return false;
	*out = (int64_t)v;
	return true;
}

static bool json_id(const cJSON *n, uint32_t *out)
{
	int64_t v;
	if (!json_int(n, 0, (double)UINT32_MAX - 1, &v))
		return false;
	*out = (uint32_t)v;
	return true;
}

/* ==== tokenizer.json ==== */

static int cmp_token_id(const void *a, const void *b)
{
	const struct ck_tok_token *x = a, *y = b;
	return x->id < y->id ? -1 : x->id > y->id;
}

static int cmp_added_id(const void *a, const void *b)
{
	const struct ck_tok_added *x = a, *y = b;
	return x->id < y->id ? -1 : x->id > y->id;
}

/* Strings were stored as arena offsets while the arena grew; make them pointers. */
static void fix_pointers(struct ck_tok *t)
{
	for (size_t i = 0; i < t->nvocab; i++)
		t->vocab[i].s = t->arena + (uintptr_t)t->vocab[i].s;
	for (size_t i = 0; i < t->nmerges; i++) {
		t->merges[i].a = t->arena + (uintptr_t)t->merges[i].a;
		t->merges[i].b = t->arena + (uintptr_t)t->merges[i].b;
	}
	for (size_t i = 0; i < t->nadded; i++)
		t->added[i].content = t->arena + (uintptr_t)t->added[i].content;
	for (size_t i = 0; i < t->ncfg_added; i++)
		t->cfg_added[i].content = t->arena + (uintptr_t)t->cfg_added[i].content;
}

static int add_str(struct ck_tok *t, const char *s, const char **slot, uint32_t *lenp)
{
	size_t n = strlen(s), off;
	if (n > UINT32_MAX)
		return CK_EINVAL;
	CK_TRY(arena_add(t, s, n, &off));
	*slot = (const char *)(uintptr_t)off;
	*lenp = (uint32_t)n;
	return 0;
}

static int load_vocab(struct ck_tok *t, const char *path, const cJSON *model, bool unigram,
		      struct ck_diag *d)
{
	const cJSON *v = get(model, "vocab"), *e;
	size_t n = 0, i = 0;

	if (unigram ? !cJSON_IsArray(v) : !cJSON_IsObject(v))
		return ck_fail(d, CK_EINVAL, "'%s': model.vocab: missing or not %s", path,
			       unigram ? "a list of [piece, score]" : "an object");
	cJSON_ArrayForEach(e, v)
		n++;
	t->vocab = ck_calloc(n, sizeof(*t->vocab));
	if (!t->vocab)
		return ck_fail(d, CK_ENOMEM, "out of memory");
	cJSON_ArrayForEach(e, v) {
		struct ck_tok_token *k = &t->vocab[i];
		const char *s;
		if (unigram) {
			const cJSON *p = cJSON_GetArrayItem(e, 0), *sc = cJSON_GetArrayItem(e, 1);
			if (!cJSON_IsArray(e) || cJSON_GetArraySize(e) != 2 || !cJSON_IsString(p) ||
			    !cJSON_IsNumber(sc))
				return ck_fail(d, CK_EINVAL, "'%s': model.vocab[%zu]: not a [piece, score] pair",
					       path, i);
			s = p->valuestring;
			k->id = (uint32_t)i;
			k->score = sc->valuedouble;
			if (i > UINT32_MAX - 1)
				return ck_fail(d, CK_EINVAL, "'%s': model.vocab: too many entries", path);
		} else {
			s = e->string;
			if (!json_id(e, &k->id)) {
				char esc[96];
				return ck_fail(d, CK_EINVAL, "'%s': model.vocab: '%s': id is not an integer in [0, 2^32-1)",
					       path, ck_escape(s, strlen(s), esc, sizeof(esc)));
			}
		}
		if (add_str(t, s, &k->s, &k->len))
			return ck_fail(d, CK_ENOMEM, "out of memory");
		i++;
	}
	t->nvocab = n;
	qsort(t->vocab, n, sizeof(*t->vocab), cmp_token_id);
	for (i = 1; i < n; i++)
		if (t->vocab[i].id == t->vocab[i - 1].id)
			return ck_fail(d, CK_EINVAL, "'%s': model.vocab: id %" PRIu32 " is given to two tokens",
				       path, t->vocab[i].id);
	return 0;
}

static int load_merges(struct ck_tok *t, const char *path, const cJSON *model, struct ck_diag *d)
{
	const cJSON *v = get(model, "merges"), *e;
	size_t n = 0, i = 0;
	int kinds = 0;

	if (!v || cJSON_IsNull(v))
		return 0;
	if (!cJSON_IsArray(v))
		return ck_fail(d, CK_EINVAL, "'%s': model.merges: not a list", path);
	cJSON_ArrayForEach(e, v)
		n++;
	t->merges = ck_calloc(n, sizeof(*t->merges));
	if (!t->merges)
		return ck_fail(d, CK_ENOMEM, "out of memory");
	cJSON_ArrayForEach(e, v) {
		struct ck_tok_merge *m = &t->merges[i];
		const char *a, *b;
		size_t alen;
		if (cJSON_IsString(e)) {
			/* Legacy "a b": split at the first space, as tokenizers does. */
			const char *sp = strchr(e->valuestring, ' ');
			if (!sp)
				return ck_fail(d, CK_EINVAL, "'%s': model.merges[%zu]: no space in a legacy merge",
					       path, i);
			a = e->valuestring;
			alen = (size_t)(sp - a);
			b = sp + 1;
			kinds |= 1;
		} else if (cJSON_IsArray(e) && cJSON_GetArraySize(e) == 2 &&
			   cJSON_IsString(cJSON_GetArrayItem(e, 0)) && cJSON_IsString(cJSON_GetArrayItem(e, 1))) {
			a = cJSON_GetArrayItem(e, 0)->valuestring;
			alen = strlen(a);
			b = cJSON_GetArrayItem(e, 1)->valuestring;
			kinds |= 2;
		} else {
			return ck_fail(d, CK_EINVAL, "'%s': model.merges[%zu]: neither \"a b\" nor [\"a\", \"b\"]",
				       path, i);
		}
		size_t off;
		if (alen > UINT32_MAX || arena_add(t, a, alen, &off))
			return ck_fail(d, CK_ENOMEM, "out of memory");
		m->a = (const char *)(uintptr_t)off;
		m->alen = (uint32_t)alen;
		if (add_str(t, b, &m->b, &m->blen))
			return ck_fail(d, CK_ENOMEM, "out of memory");
		i++;
	}
	t->nmerges = n;
	t->legacy_merges = kinds == 1;
	return 0;
}

static int added_entry(struct ck_tok *t, const char *path, const char *where, const cJSON *e,
		       uint32_t id, struct ck_tok_added *a, struct ck_diag *d)
{
	static const struct { const char *key; unsigned bit; } fl[] = {
		{ "special", CK_TOK_SPECIAL }, { "normalized", CK_TOK_NORMALIZED },
		{ "lstrip", CK_TOK_LSTRIP }, { "rstrip", CK_TOK_RSTRIP },
		{ "single_word", CK_TOK_SINGLE_WORD },
	};
	const cJSON *c = get(e, "content");

	if (!cJSON_IsObject(e) || !cJSON_IsString(c))
		return ck_fail(d, CK_EINVAL, "'%s': %s: an entry without a content string", path, where);
	a->id = id;
	a->flags = 0;
	for (size_t k = 0; k < CK_ARRAY_SIZE(fl); k++) {
		const cJSON *f = get(e, fl[k].key);
		if (f && !cJSON_IsBool(f))
			return ck_fail(d, CK_EINVAL, "'%s': %s: id %" PRIu32 ": %s is not true/false", path,
				       where, id, fl[k].key);
		if (cJSON_IsTrue(f))
			a->flags |= fl[k].bit;
	}
	if (add_str(t, c->valuestring, &a->content, &a->len))
		return ck_fail(d, CK_ENOMEM, "out of memory");
	return 0;
}

static int finish_added(struct ck_tok_added *a, size_t n, const char *path, const char *where,
			struct ck_diag *d)
{
	qsort(a, n, sizeof(*a), cmp_added_id);
	for (size_t i = 1; i < n; i++)
		if (a[i].id == a[i - 1].id)
			return ck_fail(d, CK_EINVAL, "'%s': %s: id %" PRIu32 " appears twice", path, where, a[i].id);
	return 0;
}

static int load_added_json(struct ck_tok *t, const char *path, const cJSON *root, struct ck_diag *d)
{
	const cJSON *v = get(root, "added_tokens"), *e;
	size_t n = 0, i = 0;

	if (!v || cJSON_IsNull(v)) {
		t->have_added = true;
		return 0;
	}
	if (!cJSON_IsArray(v))
		return ck_fail(d, CK_EINVAL, "'%s': added_tokens: not a list", path);
	cJSON_ArrayForEach(e, v)
		n++;
	t->added = ck_calloc(n, sizeof(*t->added));
	if (!t->added)
		return ck_fail(d, CK_ENOMEM, "out of memory");
	cJSON_ArrayForEach(e, v) {
		uint32_t id;
		if (!json_id(get(e, "id"), &id))
			return ck_fail(d, CK_EINVAL, "'%s': added_tokens[%zu]: id is not an integer in [0, 2^32-1)",
				       path, i);
		CK_TRY(added_entry(t, path, "added_tokens", e, id, &t->added[i], d));
		i++;
	}
	t->nadded = n;
	t->have_added = true;
	return finish_added(t->added, n, path, "added_tokens", d);
}

/* Canonical JSON (tokenizer.h) of a value, appended to b. */
static void canon(struct tok_sb *b, const cJSON *v);

static int cmp_child_key(const void *a, const void *b)
{
	const cJSON *x = *(const cJSON *const *)a, *y = *(const cJSON *const *)b;
	return strcmp(x->string, y->string);
}

static void canon_str(struct tok_sb *b, const char *s)
{
	tok_sb_putc(b, '"');
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		const char *esc = NULL;
		switch (*p) {
		case '"': esc = "\\\""; break;
		case '\\': esc = "\\\\"; break;
		case '\b': esc = "\\b"; break;
		case '\f': esc = "\\f"; break;
		case '\n': esc = "\\n"; break;
		case '\r': esc = "\\r"; break;
		case '\t': esc = "\\t"; break;
		default: break;
		}
		if (esc)
			tok_sb_puts(b, esc);
		else if (*p < 0x20)
			tok_sb_printf(b, "\\u%04x", *p);
		else
			tok_sb_putc(b, (char)*p);
	}
	tok_sb_putc(b, '"');
}

static void canon_num(struct tok_sb *b, double x)
{
	char tmp[40];
	if (isinf(x)) {
		tok_sb_puts(b, x > 0 ? "1e999" : "-1e999");
	} else if (x == floor(x) && fabs(x) < 9007199254740992.0) {
		tok_sb_printf(b, "%lld", (long long)x);
	} else {
		for (int prec = 1; prec <= 17; prec++) {
			snprintf(tmp, sizeof(tmp), "%.*g", prec, x);
			if (strtod(tmp, NULL) == x)
				break;
		}
		tok_sb_puts(b, tmp);
	}
}

static void canon(struct tok_sb *b, const cJSON *v)
{
	if (!v || cJSON_IsNull(v)) {
		tok_sb_puts(b, "null");
	} else if (cJSON_IsTrue(v)) {
		tok_sb_puts(b, "true");
	} else if (cJSON_IsFalse(v)) {
		tok_sb_puts(b, "false");
	} else if (cJSON_IsNumber(v)) {
		canon_num(b, v->valuedouble);
	} else if (cJSON_IsString(v)) {
		canon_str(b, v->valuestring);
	} else if (cJSON_IsArray(v)) {
		const cJSON *e;
		bool first = true;
		tok_sb_putc(b, '[');
		cJSON_ArrayForEach(e, v) {
			if (!first)
				tok_sb_putc(b, ',');
			first = false;
			canon(b, e);
		}
		tok_sb_putc(b, ']');
	} else if (cJSON_IsObject(v)) {
		size_t n = 0, i = 0;
		const cJSON *e;
		cJSON_ArrayForEach(e, v)
			n++;
		const cJSON **kids = ck_mallocarray(n, sizeof(*kids));
		if (!kids) {
			b->oom = 1;
			return;
		}
		cJSON_ArrayForEach(e, v)
			kids[i++] = e;
		qsort(kids, n, sizeof(*kids), cmp_child_key);
		tok_sb_putc(b, '{');
		for (i = 0; i < n; i++) {
			if (i)
				tok_sb_putc(b, ',');
			canon_str(b, kids[i]->string);
			tok_sb_putc(b, ':');
			canon(b, kids[i]);
		}
		tok_sb_putc(b, '}');
		free(kids);
	} else {
		tok_sb_puts(b, "null");	/* cJSON raw/invalid: cannot come from the parser */
	}
}

static char *canon_dup(const cJSON *v)
{
	struct tok_sb b = TOK_SB_INIT;
	canon(&b, v);
	return tok_sb_detach(&b);
}

/* The pipeline's canonical JSON: the model object without vocab and merges. */
const char *const tok_part_names[TOK_NPARTS] = {
	"decoder", "model_opts", "normalizer", "post_processor", "pre_tokenizer",
};

/* The pipeline's canonical JSON; model_opts is the model object without vocab and merges. */
static int load_pipeline(struct ck_tok *t, const cJSON *root, const cJSON *model)
{
	cJSON *opts = cJSON_CreateObject();
	const cJSON *e;
	struct tok_sb b = TOK_SB_INIT;
	int rc = 0;

	if (!opts)
		return CK_ENOMEM;
	/*
	 * model_opts holds references into the parsed tree: nothing is copied,
	 * and cJSON_Delete(opts) leaves the tree alone.
	 */
	cJSON_ArrayForEach(e, model)
		if (strcmp(e->string, "vocab") && strcmp(e->string, "merges") &&
		    !cJSON_AddItemReferenceToObject(opts, e->string, (cJSON *)e))
			rc = CK_ENOMEM;
	for (int i = 0; i < TOK_NPARTS && !rc; i++) {
		const cJSON *v = i == 1 ? opts : get(root, tok_part_names[i]);
		if (!(t->pipe_part[i] = canon_dup(v)))
			rc = CK_ENOMEM;
		tok_sb_printf(&b, "%c\"%s\":%s", i ? ',' : '{', tok_part_names[i],
			      t->pipe_part[i] ? t->pipe_part[i] : "");
	}
	tok_sb_putc(&b, '}');
	cJSON_Delete(opts);
	t->pipeline = tok_sb_detach(&b);
	return rc ? rc : t->pipeline ? 0 : CK_ENOMEM;
}

static int add_cosmetic(struct ck_tok *t, const char *file, const char *key, const cJSON *v)
{
	struct ck_tok_kv *kv = ck_reallocarray(t->cosm, t->ncosm + 1, sizeof(*kv));
	if (!kv)
		return CK_ENOMEM;
	t->cosm = kv;
	kv = &t->cosm[t->ncosm];
	kv->file = file;
	kv->key = ck_strdup(key);
	kv->json = canon_dup(v);
	if (!kv->key || !kv->json) {
		free((char *)kv->key);
		free((char *)kv->json);
		return CK_ENOMEM;
	}
	t->ncosm++;
	return 0;
}

static const char *const known_models[] = { "BPE", "WordPiece", "WordLevel", "Unigram" };

static int load_tokenizer_json(struct ck_tok *t, const char *path, cJSON *root, struct ck_diag *d)
{
	const cJSON *model, *ty;
	const char *type = NULL;
	int rc;

	model = get(root, "model");
	if (!cJSON_IsObject(model)) {
		rc = ck_fail(d, CK_EINVAL, "'%s': model: missing or not an object", path);
		goto out;
	}
	ty = get(model, "type");
	if (cJSON_IsString(ty)) {
		type = ty->valuestring;
	} else if (ty) {
		rc = ck_fail(d, CK_EINVAL, "'%s': model.type: not a string", path);
		goto out;
	} else {
		/* Files from before "type" was written: the shape tells. */
		type = get(model, "merges") ? "BPE" : cJSON_IsArray(get(model, "vocab")) ? "Unigram" : NULL;
		if (!type) {
			rc = ck_fail(d, CK_EUNSUPPORTED, "'%s': model.type: missing, and the model is not BPE or Unigram",
				     path);
			goto out;
		}
	}
	for (size_t i = 0; i < CK_ARRAY_SIZE(known_models); i++)
		if (!strcmp(type, known_models[i]))
			t->model_type = ck_strdup(type);
	if (!t->model_type) {
		char esc[64];
		rc = ck_fail(d, CK_EUNSUPPORTED, "'%s': model.type: unsupported model type '%s' "
			     "(BPE, WordPiece, WordLevel and Unigram are)", path,
			     ck_escape(type, strlen(type), esc, sizeof(esc)));
		goto out;
	}
	rc = load_vocab(t, path, model, !strcmp(type, "Unigram"), d);
	if (!rc && !strcmp(type, "BPE"))
		rc = load_merges(t, path, model, d);
	if (!rc)
		rc = load_added_json(t, path, root, d);
	if (!rc && load_pipeline(t, root, model))
		rc = ck_fail(d, CK_ENOMEM, "out of memory");
	if (rc)
		goto out;
	static const char *const cosm[] = { "version", "truncation", "padding" };
	for (size_t i = 0; i < CK_ARRAY_SIZE(cosm); i++)
		if (add_cosmetic(t, "tokenizer.json", cosm[i], get(root, cosm[i]))) {
			rc = ck_fail(d, CK_ENOMEM, "out of memory");
			goto out;
		}
	t->have_json = true;
out:
	return rc;
}

/* ==== the small files ==== */

/* A role token value: "str", {"content": "str", ...}, or null. */
static int role_value(const char *path, const char *key, const cJSON *v, const char **out,
		      struct ck_diag *d)
{
	*out = NULL;
	if (!v || cJSON_IsNull(v))
		return 0;
	if (cJSON_IsString(v)) {
		*out = v->valuestring;
		return 0;
	}
	if (cJSON_IsObject(v) && cJSON_IsString(get(v, "content"))) {
		*out = get(v, "content")->valuestring;
		return 0;
	}
	return ck_fail(d, CK_EINVAL, "'%s': %s: neither a string, {\"content\": ...} nor null", path, key);
}

static int set_role(struct ck_tok *t, enum ck_tok_role r, const char *s, const char *src)
{
	t->role[r].token = ck_strdup(s);
	t->role[r].source = src;
	return t->role[r].token ? 0 : CK_ENOMEM;
}

static int load_roles_from(struct ck_tok *t, const char *path, const cJSON *root, const char *src,
			   struct ck_diag *d)
{
	for (int r = 0; r < CK_TOK_NROLES; r++) {
		char key[32];
		const char *s;
		snprintf(key, sizeof(key), "%s_token", role_names[r]);
		CK_TRY(role_value(path, key, get(root, key), &s, d));
		if (s && !t->role[r].token && set_role(t, (enum ck_tok_role)r, s, src))
			return ck_fail(d, CK_ENOMEM, "out of memory");
	}
	return 0;
}

/*
 * added_tokens_decoder {"199998": {...}}: the added tokens when tokenizer.json
 * is absent, else kept apart to check that the two files agree.
 */
static int load_added_decoder(struct ck_tok *t, const char *path, const cJSON *v,
			      struct ck_tok_added **out, size_t *nout, struct ck_diag *d)
{
	const cJSON *e;
	size_t n = 0, i = 0;

	if (!cJSON_IsObject(v))
		return ck_fail(d, CK_EINVAL, "'%s': added_tokens_decoder: not an object", path);
	cJSON_ArrayForEach(e, v)
		n++;
	*out = ck_calloc(n, sizeof(**out));
	if (!*out)
		return ck_fail(d, CK_ENOMEM, "out of memory");
	cJSON_ArrayForEach(e, v) {
		char *end;
		const char *k = e->string;
		errno = 0;
		unsigned long long id = strtoull(k, &end, 10);
		if (!*k || *k < '0' || *k > '9' || *end || errno || id >= UINT32_MAX) {
			char esc[64];
			return ck_fail(d, CK_EINVAL, "'%s': added_tokens_decoder: key '%s' is not an id", path,
				       ck_escape(k, strlen(k), esc, sizeof(esc)));
		}
		CK_TRY(added_entry(t, path, "added_tokens_decoder", e, (uint32_t)id, &(*out)[i], d));
		i++;
		*nout = i;
	}
	return finish_added(*out, n, path, "added_tokens_decoder", d);
}

static int load_tokenizer_config(struct ck_tok *t, const char *path, cJSON *root, struct ck_diag *d)
{
	static const char *const skip[] = { "added_tokens_decoder", "bos_token", "eos_token",
					    "pad_token", "unk_token", "chat_template" };
	const cJSON *e, *ct;
	int rc;

	rc = load_roles_from(t, path, root, "tokenizer_config.json", d);
	if (!rc && get(root, "added_tokens_decoder")) {
		if (t->have_json) {
			rc = load_added_decoder(t, path, get(root, "added_tokens_decoder"), &t->cfg_added,
						&t->ncfg_added, d);
			t->have_cfg_added = true;
		} else {
			rc = load_added_decoder(t, path, get(root, "added_tokens_decoder"), &t->added,
						&t->nadded, d);
			t->have_added = true;
		}
	}
	if (rc)
		goto out;
	ct = get(root, "chat_template");
	if (cJSON_IsArray(ct)) {
		/* A list of named templates: "default" is the one in effect. */
		const cJSON *pick = NULL;
		cJSON_ArrayForEach(e, ct) {
			const cJSON *nm = get(e, "name"), *tx = get(e, "template");
			if (!cJSON_IsObject(e) || !cJSON_IsString(nm) || !cJSON_IsString(tx)) {
				rc = ck_fail(d, CK_EINVAL, "'%s': chat_template: a list entry without name and template",
					     path);
				goto out;
			}
			if (!pick || !strcmp(nm->valuestring, "default"))
				pick = strcmp(nm->valuestring, "default") && pick ? pick : e;
		}
		ct = pick ? get(pick, "template") : NULL;
	}
	if (cJSON_IsString(ct)) {
		t->tmpl = ck_strdup(ct->valuestring);
		if (!t->tmpl) {
			rc = ck_fail(d, CK_ENOMEM, "out of memory");
			goto out;
		}
		t->tmpl_len = strlen(t->tmpl);
		t->tmpl_origin = "tokenizer_config.json";
	} else if (ct && !cJSON_IsNull(ct)) {
		rc = ck_fail(d, CK_EINVAL, "'%s': chat_template: neither a string nor a list", path);
		goto out;
	}
	cJSON_ArrayForEach(e, root) {
		bool skipped = false;
		for (size_t i = 0; i < CK_ARRAY_SIZE(skip); i++)
			skipped |= !strcmp(e->string, skip[i]);
		if (!skipped && add_cosmetic(t, "tokenizer_config.json", e->string, e)) {
			rc = ck_fail(d, CK_ENOMEM, "out of memory");
			goto out;
		}
	}
out:
	return rc;
}

static int load_special_map(struct ck_tok *t, const char *path, cJSON *root, struct ck_diag *d)
{
	return load_roles_from(t, path, root, "special_tokens_map.json", d);
}

/* bos/eos/pad_token_id: an id, a list of ids, or null. */
static int load_ids(const char *path, const cJSON *root, struct ck_tok_ids *ids, struct ck_diag *d)
{
	for (int k = 0; k < CK_TOK_NIDKEYS; k++) {
		const cJSON *v = get(root, idkey_names[k]), *e;
		struct ck_tok_ids *x = &ids[k];
		x->n = 0;
		if (!v) {
			x->state = CK_TOK_IDS_ABSENT;
			continue;
		}
		if (cJSON_IsNull(v)) {
			x->state = CK_TOK_IDS_NULL;
			continue;
		}
		x->state = CK_TOK_IDS_SET;
		if (cJSON_IsNumber(v)) {
			if (!json_int(v, -1, (double)UINT32_MAX, &x->v[0]))
				goto bad;
			x->n = 1;
			continue;
		}
		if (!cJSON_IsArray(v))
			goto bad;
		cJSON_ArrayForEach(e, v) {
			if (x->n == CK_TOK_MAX_IDS)
				return ck_fail(d, CK_EINVAL, "'%s': %s: more than %d ids", path, idkey_names[k],
					       CK_TOK_MAX_IDS);
			if (!json_int(e, -1, (double)UINT32_MAX, &x->v[x->n]))
				goto bad;
			x->n++;
		}
		continue;
bad:
		return ck_fail(d, CK_EINVAL, "'%s': %s: not an integer id (or a list of them) in [-1, 2^32)",
			       path, idkey_names[k]);
	}
	return 0;
}

static int load_config(struct ck_tok *t, const char *path, cJSON *root, bool generation,
		       struct ck_diag *d)
{
	int rc = load_ids(path, root, generation ? t->gen_ids : t->cfg_ids, d);
	if (rc || generation)
		goto out;
	const cJSON *mt = get(root, "model_type"), *vs = get(root, "vocab_size");
	int64_t v;
	if (cJSON_IsString(mt) && !(t->cfg_model_type = ck_strdup(mt->valuestring)))
		rc = ck_fail(d, CK_ENOMEM, "out of memory");
	if (vs && !cJSON_IsNull(vs)) {
		if (!json_int(vs, 1, 9007199254740992.0, &v))
			rc = ck_fail(d, CK_EINVAL, "'%s': vocab_size: not a positive integer", path);
		else
			t->cfg_vocab_size = (uint64_t)v;
	}
out:
	return rc;
}

static int load_template_file(struct ck_tok *t, const char *path, char *buf, size_t len,
			      struct ck_diag *d)
{
	if (!ck_utf8_valid(buf, len) || memchr(buf, 0, len)) {
		free(buf);
		return ck_fail(d, CK_EINVAL, "'%s': not UTF-8 text", path);
	}
	if (t->tmpl) {
		t->tmpl_shadowed = true;	/* the embedded template wins */
		free(buf);
		return 0;
	}
	t->tmpl = buf;
	t->tmpl_len = len;
	t->tmpl_origin = "chat_template.jinja";
	return 0;
}

/* ==== digests and hashes ==== */

static void resolve_roles(struct ck_tok *t)
{
	for (int r = 0; r < CK_TOK_NROLES; r++)
		t->role[r].id = t->role[r].token ? ck_tok_token_id(t, t->role[r].token) : -1;
}

static void ids_text(struct tok_sb *b, const struct ck_tok_ids *x)
{
	if (x->state == CK_TOK_IDS_ABSENT) {
		tok_sb_putc(b, '-');
		return;
	}
	if (x->state == CK_TOK_IDS_NULL) {
		tok_sb_puts(b, "null");
		return;
	}
	for (size_t i = 0; i < x->n; i++)
		tok_sb_printf(b, "%s%" PRId64, i ? "," : "", x->v[i]);
}

static int compute_hashes(struct ck_tok *t)
{
	struct hasher *h = ck_malloc(sizeof(*h));
	int rc = CK_ENOMEM;

	if (!h)
		return CK_ENOMEM;
	h->ctx = NULL;
	if (t->have_json) {
		if (h_init(h))
			goto out;
		for (size_t i = 0; i < t->nvocab; i++) {
			const struct ck_tok_token *k = &t->vocab[i];
			h_u32(h, k->id);
			h_u32(h, k->len);
			h_put(h, k->s, k->len);
			if (!strcmp(t->model_type, "Unigram")) {
				uint64_t bits;
				unsigned char le[8];
				memcpy(&bits, &k->score, 8);
				for (int j = 0; j < 8; j++)
					le[j] = (unsigned char)(bits >> (8 * j));
				h_put(h, le, 8);
			}
		}
		if (h_final(h, t->hash[CK_TOKC_VOCAB]) || h_init(h))
			goto out;
		for (size_t i = 0; i < t->nmerges; i++) {
			h_u32(h, t->merges[i].alen);
			h_put(h, t->merges[i].a, t->merges[i].alen);
			h_u32(h, t->merges[i].blen);
			h_put(h, t->merges[i].b, t->merges[i].blen);
		}
		if (h_final(h, t->hash[CK_TOKC_MERGES]) ||
		    hash_text(t->pipeline, strlen(t->pipeline), t->hash[CK_TOKC_PIPELINE]))
			goto out;
		t->have_hash[CK_TOKC_VOCAB] = t->have_hash[CK_TOKC_MERGES] = true;
		t->have_hash[CK_TOKC_PIPELINE] = true;
	}
	if (t->have_added) {
		if (h_init(h))
			goto out;
		for (size_t i = 0; i < t->nadded; i++) {
			unsigned char fl = (unsigned char)t->added[i].flags;
			h_u32(h, t->added[i].id);
			h_u32(h, t->added[i].len);
			h_put(h, t->added[i].content, t->added[i].len);
			h_put(h, &fl, 1);
		}
		if (h_final(h, t->hash[CK_TOKC_ADDED]))
			goto out;
		t->have_hash[CK_TOKC_ADDED] = true;
	}
	if (t->dig[CK_TOKF_TOKENIZER_CONFIG].present || t->dig[CK_TOKF_SPECIAL_MAP].present ||
	    t->dig[CK_TOKF_CONFIG].present || t->dig[CK_TOKF_GENERATION].present) {
		struct tok_sb b = TOK_SB_INIT;
		for (int r = 0; r < CK_TOK_NROLES; r++)
			tok_sb_printf(&b, "%s\t%s\t%" PRId64 "\n", role_names[r],
				      t->role[r].token ? t->role[r].token : "-", t->role[r].id);
		for (int k = 0; k < CK_TOK_NIDKEYS; k++) {
			tok_sb_printf(&b, "config.%s\t", idkey_names[k]);
			ids_text(&b, &t->cfg_ids[k]);
			tok_sb_putc(&b, '\n');
		}
		for (int k = 0; k < CK_TOK_NIDKEYS; k++) {
			tok_sb_printf(&b, "generation.%s\t", idkey_names[k]);
			ids_text(&b, &t->gen_ids[k]);
			tok_sb_putc(&b, '\n');
		}
		if (b.oom || hash_text(b.p, b.n, t->hash[CK_TOKC_ROLES])) {
			tok_sb_release(&b);
			goto out;
		}
		tok_sb_release(&b);
		t->have_hash[CK_TOKC_ROLES] = true;
	}
	if (t->tmpl) {
		if (hash_text(t->tmpl, t->tmpl_len, t->hash[CK_TOKC_TEMPLATE]))
			goto out;
		t->have_hash[CK_TOKC_TEMPLATE] = true;
	}
	{
		struct tok_sb b = TOK_SB_INIT;
		for (int c = 0; c < CK_TOKC_COUNT; c++)
			tok_sb_printf(&b, "%s:%s\n", comp_names[c], t->have_hash[c] ? t->hash[c] : "-");
		if (b.oom || hash_text(b.p, b.n, t->hash_all)) {
			tok_sb_release(&b);
			goto out;
		}
		tok_sb_release(&b);
	}
	rc = 0;
out:
	if (h->ctx)
		EVP_MD_CTX_free(h->ctx);
	free(h);
	return rc;
}

/* ==== loading ==== */

static int load_one(struct ck_tok *t, enum ck_tok_file f, const char *path, struct ck_diag *d)
{
	cJSON *root = NULL;
	char *text = NULL;
	size_t len = 0;
	int rc;

	if (f == CK_TOKF_CHAT_TEMPLATE) {
		CK_TRY(read_file(t, f, path, NULL, &text, &len, d));
		return load_template_file(t, path, text, len, d);
	}
	CK_TRY(read_file(t, f, path, &root, NULL, NULL, d));
	switch (f) {
	case CK_TOKF_TOKENIZER:
		rc = load_tokenizer_json(t, path, root, d);
		break;
	case CK_TOKF_TOKENIZER_CONFIG:
		rc = load_tokenizer_config(t, path, root, d);
		break;
	case CK_TOKF_SPECIAL_MAP:
		rc = load_special_map(t, path, root, d);
		break;
	default:
		rc = load_config(t, path, root, f == CK_TOKF_GENERATION, d);
		break;
	}
	cJSON_Delete(root);
	return rc;
}

static int load_all(struct ck_tok *t, unsigned flags, struct ck_diag *d)
{
	char path[4096];
	int nfound = 0;
	struct stat st;

	if (stat(t->dir, &st) < 0)
		return ck_fail(d, CK_EINVAL, "'%s': cannot open: %s", t->dir, strerror(errno));
	if (!S_ISDIR(st.st_mode))
		return ck_fail(d, CK_EINVAL, "'%s': not a folder", t->dir);
	for (int k = 0; k < CK_TOK_NIDKEYS; k++)
		t->cfg_ids[k].state = t->gen_ids[k].state = CK_TOK_IDS_ABSENT;
	for (int f = 0; f < CK_TOKF_COUNT; f++) {
		if ((size_t)snprintf(path, sizeof(path), "%s/%s", t->dir, file_names[f]) >= sizeof(path))
			return ck_fail(d, CK_EINVAL, "'%s': path too long", t->dir);
		if (stat(path, &st) < 0) {
			if (errno == ENOENT)
				continue;
			return ck_fail(d, CK_EIO, "'%s': %s", path, strerror(errno));
		}
		t->dig[f].present = true;
		if (f != CK_TOKF_CONFIG && f != CK_TOKF_GENERATION)
			nfound++;
	}
	if (!nfound && !(flags & CK_TOK_ALLOW_EMPTY))
		return ck_fail(d, CK_EINVAL, "'%s': no tokenizer files (tokenizer.json, tokenizer_config.json, "
			       "special_tokens_map.json, chat_template.jinja)", t->dir);
	if (!t->dig[CK_TOKF_TOKENIZER].present && (flags & CK_TOK_NEED_JSON))
		return ck_fail(d, CK_EINVAL, "'%s': no tokenizer.json", t->dir);
	/* In enum order: tokenizer.json before tokenizer_config.json (added tokens), the
	 * embedded template before chat_template.jinja. */
	for (int f = 0; f < CK_TOKF_COUNT; f++) {
		if (!t->dig[f].present)
			continue;
		snprintf(path, sizeof(path), "%s/%s", t->dir, file_names[f]);
		CK_TRY(load_one(t, (enum ck_tok_file)f, path, d));
	}
	fix_pointers(t);
	resolve_roles(t);
	if (compute_hashes(t))
		return ck_fail(d, CK_ENOMEM, "out of memory while hashing");
	return 0;
}

int ck_tok_load(struct ck_tok **out, const char *dir, unsigned flags, struct ck_diag *d)
{
	struct ck_tok *t = ck_calloc(1, sizeof(*t));
	int rc;

	*out = NULL;
	if (!t || !(t->dir = ck_strdup(dir))) {
		free(t);
		return ck_fail(d, CK_ENOMEM, "out of memory");
	}
	rc = load_all(t, flags, d);
	if (rc) {
		/* Offsets not yet fixed up must not be freed as pointers: nothing is. */
		ck_tok_free(t);
		return rc;
	}
	*out = t;
	return 0;
}

void ck_tok_free(struct ck_tok *t)
{
	if (!t)
		return;
	free(t->dir);
	free(t->model_type);
	free(t->cfg_model_type);
	free(t->arena);
	free(t->vocab);
	free(t->merges);
	free(t->added);
	free(t->cfg_added);
	free(t->pipeline);
	for (int i = 0; i < TOK_NPARTS; i++)
		free(t->pipe_part[i]);
	for (int r = 0; r < CK_TOK_NROLES; r++)
		free((char *)t->role[r].token);
	free(t->tmpl);
	for (size_t i = 0; i < t->ncosm; i++) {
		free((char *)t->cosm[i].key);
		free((char *)t->cosm[i].json);
	}
	free(t->cosm);
	free(t);
}

/* ==== accessors ==== */

const char *ck_tok_dir(const struct ck_tok *t) { return t->dir; }

const struct ck_tok_digest *ck_tok_file_digest(const struct ck_tok *t, enum ck_tok_file f)
{
	return &t->dig[f];
}

const char *ck_tok_file_name(enum ck_tok_file f) { return file_names[f]; }
const char *ck_tok_comp_name(enum ck_tok_comp c) { return comp_names[c]; }
const char *ck_tok_role_name(enum ck_tok_role r) { return role_names[r]; }

const char *ck_tok_hash(const struct ck_tok *t, enum ck_tok_comp c)
{
	return t->have_hash[c] ? t->hash[c] : NULL;
}

const char *ck_tok_hash_all(const struct ck_tok *t) { return t->hash_all; }
const char *ck_tok_model_type(const struct ck_tok *t) { return t->model_type; }
const char *ck_tok_config_model_type(const struct ck_tok *t) { return t->cfg_model_type; }
uint64_t ck_tok_config_vocab_size(const struct ck_tok *t) { return t->cfg_vocab_size; }
size_t ck_tok_vocab_count(const struct ck_tok *t) { return t->nvocab; }

const struct ck_tok_token *ck_tok_vocab(const struct ck_tok *t, size_t i)
{
	return i < t->nvocab ? &t->vocab[i] : NULL;
}

size_t ck_tok_merge_count(const struct ck_tok *t, bool *legacy)
{
	if (legacy)
		*legacy = t->legacy_merges;
	return t->nmerges;
}

const struct ck_tok_merge *ck_tok_merge(const struct ck_tok *t, size_t i)
{
	return i < t->nmerges ? &t->merges[i] : NULL;
}

static size_t put_part(const char *s, size_t n, char *buf, size_t cap, size_t o)
{
	for (size_t i = 0; i < n; i++) {
		if (s[i] == ' ') {
			/* U+0120 is C4 A0 in UTF-8. */
			if (o + 2 < cap) {
				buf[o] = (char)0xc4;
				buf[o + 1] = (char)0xa0;
			}
			o += 2;
		} else {
			if (o + 1 < cap)
				buf[o] = s[i];
			o++;
		}
	}
	return o;
}

size_t ck_tok_merge_str(const struct ck_tok *t, size_t i, char *buf, size_t cap)
{
	const struct ck_tok_merge *m = ck_tok_merge(t, i);
	size_t o;

	if (!m) {
		if (cap)
			buf[0] = 0;
		return 0;
	}
	o = put_part(m->a, m->alen, buf, cap, 0);
	if (o + 1 < cap)
		buf[o] = ' ';
	o++;
	o = put_part(m->b, m->blen, buf, cap, o);
	if (cap)
		buf[o < cap ? o : cap - 1] = 0;
	return o;
}

size_t ck_tok_added_count(const struct ck_tok *t) { return t->nadded; }

const struct ck_tok_added *ck_tok_added(const struct ck_tok *t, size_t i)
{
	return i < t->nadded ? &t->added[i] : NULL;
}

const char *ck_tok_token_str(const struct ck_tok *t, uint32_t id, uint32_t *len, bool *added)
{
	size_t lo = 0, hi = t->nadded;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (t->added[mid].id < id)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo < t->nadded && t->added[lo].id == id) {
		if (len)
			*len = t->added[lo].len;
		if (added)
			*added = true;
		return t->added[lo].content;
	}
	lo = 0;
	hi = t->nvocab;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (t->vocab[mid].id < id)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo < t->nvocab && t->vocab[lo].id == id) {
		if (len)
			*len = t->vocab[lo].len;
		if (added)
			*added = false;
		return t->vocab[lo].s;
	}
	return NULL;
}

int64_t ck_tok_token_id(const struct ck_tok *t, const char *s)
{
	size_t n = strlen(s);
	for (size_t i = 0; i < t->nadded; i++)
		if (t->added[i].len == n && !memcmp(t->added[i].content, s, n))
			return t->added[i].id;
	for (size_t i = 0; i < t->nvocab; i++)
		if (t->vocab[i].len == n && !memcmp(t->vocab[i].s, s, n))
			return t->vocab[i].id;
	return -1;
}

uint64_t ck_tok_size(const struct ck_tok *t)
{
	uint64_t n = 0;
	if (t->nvocab)
		n = (uint64_t)t->vocab[t->nvocab - 1].id + 1;
	if (t->nadded && (uint64_t)t->added[t->nadded - 1].id + 1 > n)
		n = (uint64_t)t->added[t->nadded - 1].id + 1;
	return n;
}

const struct ck_tok_role_tok *ck_tok_role(const struct ck_tok *t, enum ck_tok_role r)
{
	return &t->role[r];
}

const struct ck_tok_ids *ck_tok_config_ids(const struct ck_tok *t, enum ck_tok_idkey k)
{
	return &t->cfg_ids[k];
}

const struct ck_tok_ids *ck_tok_generation_ids(const struct ck_tok *t, enum ck_tok_idkey k)
{
	return &t->gen_ids[k];
}

const char *ck_tok_chat_template(const struct ck_tok *t, size_t *len, const char **origin,
				 bool *shadowed)
{
	if (len)
		*len = t->tmpl_len;
	if (origin)
		*origin = t->tmpl_origin;
	if (shadowed)
		*shadowed = t->tmpl_shadowed;
	return t->tmpl;
}

size_t ck_tok_cosmetic_count(const struct ck_tok *t) { return t->ncosm; }

const struct ck_tok_kv *ck_tok_cosmetic(const struct ck_tok *t, size_t i)
{
	return i < t->ncosm ? &t->cosm[i] : NULL;
}

/* ==== weights ==== */

int ck_tok_embed_rows(const struct ck_model *m, uint64_t *rows, const char **name)
{
	const struct ck_tensor *emb = NULL, *head = NULL;

	*rows = 0;
	if (name)
		*name = NULL;
	for (size_t i = 0; i < ck_model_count(m); i++) {
		const struct ck_tensor *t = ck_model_tensor(m, i);
		if (t->ndim != 2 || strstr(t->name, "lora_"))
			continue;
		if (!emb && strstr(t->name, "embed_tokens") && ck_ends_with(t->name, ".weight"))
			emb = t;
		else if (!head && strstr(t->name, "lm_head") && ck_ends_with(t->name, ".weight"))
			head = t;
	}
	if (!emb)
		emb = head;
	if (emb) {
		*rows = emb->shape[0];
		if (name)
			*name = emb->name;
	}
	return 0;
}

int ck_tok_check_rows(const struct ck_tok *t, uint64_t rows, struct ck_diag *d)
{
	uint64_t n = ck_tok_size(t), id = UINT64_MAX;
	const char *s = NULL;
	uint32_t len = 0;
	size_t lo, hi;

	if (n <= rows)
		return 0;
	/*
	 * Name the first token without a row: the smallest id >= rows in either
	 * sorted list (binary search: a hostile id near 2^32 must not mean a
	 * loop over every id below it).
	 */
	for (lo = 0, hi = t->nvocab; lo < hi;) {
		size_t mid = lo + (hi - lo) / 2;
		if (t->vocab[mid].id < rows)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo < t->nvocab) {
		id = t->vocab[lo].id;
		s = t->vocab[lo].s;
		len = t->vocab[lo].len;
	}
	for (lo = 0, hi = t->nadded; lo < hi;) {
		size_t mid = lo + (hi - lo) / 2;
		if (t->added[mid].id < rows)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo < t->nadded && t->added[lo].id <= id) {
		id = t->added[lo].id;
		s = t->added[lo].content;
		len = t->added[lo].len;
	}
	char esc[96];
	return ck_fail(d, CK_EDIFF, "token id %" PRIu64 " ('%s') has no embedding row: %" PRIu64
		       " rows for %" PRIu64 " token ids", id, ck_escape(s, len, esc, sizeof(esc)), rows, n);
}

int ck_tok_check_adapter_rows(uint64_t base_rows, uint64_t adapter_rows,
			      const struct ck_tok *adapter_tok, struct ck_diag *d)
{
	if (!adapter_rows || adapter_rows == base_rows)
		return 0;
	if (adapter_tok && ck_tok_size(adapter_tok) > base_rows &&
	    ck_tok_size(adapter_tok) <= adapter_rows)
		return 0;	/* a resized vocabulary that the adapter's own tokenizer fills */
	return ck_fail(d, CK_EDIFF, "the adapter's embeddings have %" PRIu64 " rows, the base's %" PRIu64
		       ", and the adapter's tokenizer (%" PRIu64 " ids) does not explain the change",
		       adapter_rows, base_rows, adapter_tok ? ck_tok_size(adapter_tok) : 0);
}
