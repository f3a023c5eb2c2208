/*
 * ls.c - list the tensors of a safetensors file, a model folder (sharded or
 * not) or a GGUF file.
 *
 * One line per tensor: name, type, shape, bytes (and with -l the offset and
 * the file), plus a note for the layouts we recognize: MXFP4 blocks/scales
 * pairs (with the logical BF16 shape), bitsandbytes 4-bit groups (quant type,
 * blocksize and logical shape from the packed quant_state JSON), per-expert
 * names.  Aligned text on a terminal, tab-separated when piped, --json for
 * one JSON document, --jsonl for one object per tensor.
 */
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "ckpt.h"
#include "../libtensor/gguf.h"
#include "../libtensor/layout.h"
#include "../libtensor/model.h"
#include "../verify/tensorhash.h"

struct ls_opts {
	int longfmt, json, jsonl, summary, sha256, diffable, meta, full;
	const char *sort;
	struct ck_strlist filters;
	int64_t jobs;
};

struct row {
	const struct ck_tensor *t;
	char sha[65];
	struct ck_layout lay;
};

/* Hash every row's tensor (verify/tensorhash.h). */
static int hash_rows(struct row *rows, size_t n, int jobs, struct ck_diag *d)
{
	const struct ck_tensor **t = ck_mallocarray(n ? n : 1, sizeof(*t));
	char (*hex)[65] = ck_mallocarray(n ? n : 1, sizeof(*hex));
	int rc = 0;

	if (!t || !hex)
		rc = ck_fail(d, CK_ENOMEM, "out of memory");
	for (size_t i = 0; !rc && i < n; i++)
		t[i] = rows[i].t;
	if (!rc)
		rc = ck_sha256_tensors(t, n, jobs, hex, d);
	for (size_t i = 0; !rc && i < n; i++)
		memcpy(rows[i].sha, hex[i], sizeof(hex[i]));
	free(t);
	free(hex);
	return rc;
}

/* ---- output helpers ---- */

static void json_shape(FILE *f, const uint64_t *shape, int ndim)
{
	fputc('[', f);
	for (int i = 0; i < ndim; i++)
		fprintf(f, "%s%" PRIu64, i ? "," : "", shape[i]);
	fputc(']', f);
}

static const char *file_base(const char *p)
{
	const char *s = strrchr(p, '/');
	return s ? s + 1 : p;
}

static int cmp_name(const void *a, const void *b)
{
	return strcmp(((const struct row *)a)->t->name, ((const struct row *)b)->t->name);
}

static int cmp_size(const void *a, const void *b)
{
	const struct row *x = a, *y = b;
	if (x->t->nbytes != y->t->nbytes)
		return x->t->nbytes > y->t->nbytes ? -1 : 1;
	return strcmp(x->t->name, y->t->name);
}

static int selected(const struct ls_opts *o, const char *name)
{
	if (!o->filters.n)
		return 1;
	for (size_t i = 0; i < o->filters.n; i++)
		if (ck_glob(o->filters.v[i], name))
			return 1;
	return 0;
}

/* ---- the three output forms ---- */

static void print_json_row(FILE *f, const struct ls_opts *o, const struct ck_model *m,
			   const struct row *r, const char *path_field)
{
	char tb[32];
	const struct ck_tensor *t = r->t;

	fputc('{', f);
	if (path_field) {
		fputs("\"path\":", f);
		ck_json_str(f, path_field);
		fputc(',', f);
	}
	fputs("\"name\":", f);
	ck_json_str(f, t->name);
	fputs(",\"dtype\":", f);
	ck_json_str(f, ck_tensor_type_name(t, tb, sizeof(tb)));
	fputs(",\"shape\":", f);
	json_shape(f, t->shape, t->ndim);
	fprintf(f, ",\"bytes\":%" PRIu64, t->nbytes);
	if (!o->diffable) {
		fprintf(f, ",\"offset\":%" PRIu64 ",\"file\":", t->offset);
		ck_json_str(f, file_base(ck_model_file(m, t->file)));
	}
	if (o->sha256) {
		fputs(",\"sha256\":", f);
		ck_json_str(f, r->sha);
	}
	if (r->lay.kind != CK_LAYOUT_PLAIN) {
		fputs(",\"layout\":{\"kind\":", f);
		ck_json_str(f, ck_layout_kind_name(r->lay.kind));
		if (r->lay.role[0]) {
			fputs(",\"role\":", f);
			ck_json_str(f, r->lay.role);
		}
		if (r->lay.ndim) {
			fputs(",\"logical_shape\":", f);
			json_shape(f, r->lay.shape, r->lay.ndim);
		}
		if (r->lay.dtype[0]) {
			fputs(",\"logical_dtype\":", f);
			ck_json_str(f, r->lay.dtype);
		}
		if (r->lay.quant[0]) {
			fputs(",\"quant_type\":", f);
			ck_json_str(f, r->lay.quant);
		}
		if (r->lay.blocksize)
			fprintf(f, ",\"blocksize\":%" PRIu64, r->lay.blocksize);
		if (r->lay.expert >= 0)
			fprintf(f, ",\"expert\":%" PRId64, r->lay.expert);
		fputc('}', f);
	}
	fputc('}', f);
}

struct cols {
	int w[8];
};

static void text_fields(const struct ls_opts *o, const struct ck_model *m, const struct row *r,
			char f[8][256], int *nf)
{
	const struct ck_tensor *t = r->t;
	char tb[32];
	int k = 0;

	ck_escape(t->name, strlen(t->name), f[k++], 256);
	snprintf(f[k++], 256, "%s", ck_tensor_type_name(t, tb, sizeof(tb)));
	ck_shape_str(t->shape, t->ndim, f[k++], 256);
	snprintf(f[k++], 256, "%" PRIu64, t->nbytes);
	if (o->longfmt && !o->diffable) {
		snprintf(f[k++], 256, "%" PRIu64, t->offset);
		snprintf(f[k++], 256, "%s", file_base(ck_model_file(m, t->file)));
	}
	if (o->sha256)
		snprintf(f[k++], 256, "%s", r->sha);
	ck_layout_note(&r->lay, f[k++], 256);
	*nf = k;
}

static void print_text(FILE *f, const struct ls_opts *o, const struct ck_model *m,
		       const struct row *rows, size_t n, int tty)
{
	static char fields[8][256];
	int w[8] = { 0 }, nf = 0;

	if (tty)
		for (size_t i = 0; i < n; i++) {
			text_fields(o, m, &rows[i], fields, &nf);
			for (int k = 0; k < nf; k++) {
				int len = (int)strlen(fields[k]);
				if (len > w[k])
					w[k] = len;
			}
		}
	for (size_t i = 0; i < n; i++) {
		text_fields(o, m, &rows[i], fields, &nf);
		while (nf > 0 && !fields[nf - 1][0] && tty)
			nf--;	/* no trailing blanks on a terminal */
		for (int k = 0; k < nf; k++) {
			if (tty) {
				/* numbers right-aligned: bytes and offset */
				int right = k == 3 || (o->longfmt && !o->diffable && k == 4);
				fprintf(f, right ? "%*s" : "%-*s", k == nf - 1 && !right ? 0 : w[k],
					fields[k]);
				if (k < nf - 1)
					fputs("  ", f);
			} else {
				fputs(fields[k], f);
				if (k < nf - 1)
					fputc('\t', f);
			}
		}
		fputc('\n', f);
	}
}

struct dtype_sum {
	char name[32];
	uint64_t params, bytes;
	size_t count;
};

static void print_summary(FILE *f, const struct ls_opts *o, const struct row *rows, size_t n)
{
	struct dtype_sum s[64];
	size_t ns = 0;
	uint64_t bytes = 0, logical = 0;

	for (size_t i = 0; i < n; i++) {
		char tb[32];
		const char *tn = ck_tensor_type_name(rows[i].t, tb, sizeof(tb));
		size_t k;
		for (k = 0; k < ns && strcmp(s[k].name, tn); k++)
			;
		if (k == ns && ns < CK_ARRAY_SIZE(s)) {
			memset(&s[ns], 0, sizeof(s[ns]));
			snprintf(s[ns].name, sizeof(s[ns].name), "%s", tn);
			ns++;
		}
		if (k < ns) {
			s[k].params += rows[i].t->nelem;
			s[k].bytes += rows[i].t->nbytes;
			s[k].count++;
		}
		bytes += rows[i].t->nbytes;
		logical += ck_layout_params(&rows[i].lay, rows[i].t);
	}
	if (o->json) {
		fprintf(f, "{\"tensors\":%zu,\"bytes\":%" PRIu64 ",\"parameters\":%" PRIu64 ",\"by_dtype\":{",
			n, bytes, logical);
		for (size_t k = 0; k < ns; k++) {
			if (k)
				fputc(',', f);
			ck_json_str(f, s[k].name);
			fprintf(f, ":{\"tensors\":%zu,\"elements\":%" PRIu64 ",\"bytes\":%" PRIu64 "}",
				s[k].count, s[k].params, s[k].bytes);
		}
		fputs("}}", f);
		return;
	}
	fprintf(f, "tensors\t%zu\nbytes\t%" PRIu64 "\nparameters\t%" PRIu64 "\n", n, bytes, logical);
	for (size_t k = 0; k < ns; k++)
		fprintf(f, "%s\t%zu tensors\t%" PRIu64 " elements\t%" PRIu64 " bytes\n", s[k].name,
			s[k].count, s[k].params, s[k].bytes);
}

/* GGUF key/values; arrays shortened to a few elements unless full. */
enum { META_ITEMS = 8, META_STR = 120 };

/* A GGUF string as JSON: escapes, and U+FFFD for bytes that are not UTF-8. */
static void json_bytes(FILE *f, const char *s, uint64_t len)
{
	const unsigned char *p = (const unsigned char *)s;
	fputc('"', f);
	for (uint64_t i = 0; i < len;) {
		unsigned c = p[i], n = c < 0x80 ? 1 : c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : 2;
		if (c == '"' || c == '\\')
			fprintf(f, "\\%c", c);
		else if (c < 0x20 || c == 0x7f)
			fprintf(f, "\\u%04x", c);
		else if (c < 0x80)
			fputc(c, f);
		else if (n <= len - i && ck_utf8_valid(s + i, n)) {
			fwrite(p + i, 1, n, f);
			i += n;
			continue;
		} else
			fputs("\\ufffd", f);
		i++;
	}
	fputc('"', f);
}

/* A GGUF string as text: escaped, shortened to META_STR bytes unless full. */
static void text_bytes(FILE *f, const char *s, uint64_t len, int full, int quote)
{
	uint64_t n = !full && len > META_STR ? META_STR : len;
	char *buf = ck_malloc((size_t)n * 4 + 1);
	if (!buf) {
		fputs("?", f);
		return;
	}
	fprintf(f, quote ? "\"%s\"" : "%s", ck_escape(s, (size_t)n, buf, (size_t)n * 4 + 1));
	if (n < len)
		fprintf(f, "... (%" PRIu64 " bytes)", len);
	free(buf);
}

static void meta_value(FILE *f, const struct ck_gguf_value *v, int full, int json, int depth)
{
	switch (v->type) {
	case CK_GGUF_I8: case CK_GGUF_I16: case CK_GGUF_I32: case CK_GGUF_I64:
		fprintf(f, "%" PRId64, v->i);
		break;
	case CK_GGUF_BOOL:
		fputs(v->u ? "true" : "false", f);
		break;
	case CK_GGUF_F32: case CK_GGUF_F64:
		if (json && (v->f != v->f || v->f - v->f != 0))
			fputs("null", f);	/* JSON has no NaN or Inf */
		else
			/* JSON readers parse doubles: give f32 values exactly */
			fprintf(f, v->type == CK_GGUF_F32 && !json ? "%.9g" : "%.17g", v->f);
		break;
	case CK_GGUF_STRING:
		if (json)
			json_bytes(f, v->str.p, v->str.len);
		else
			text_bytes(f, v->str.p, v->str.len, full, depth > 0);
		break;
	case CK_GGUF_ARRAY: {
		uint64_t n = !full && v->arr.n > META_ITEMS ? META_ITEMS : v->arr.n;
		fputc('[', f);
		for (uint64_t i = 0; i < n; i++) {
			struct ck_gguf_value it;
			ck_gguf_arr_item(v, i, &it);
			fputs(i ? (json ? "," : ", ") : "", f);
			meta_value(f, &it, full, json, depth + 1);
		}
		if (n < v->arr.n && !json)
			fprintf(f, ", ... (%" PRIu64 " items)", v->arr.n);
		fputc(']', f);
		break;
	}
	default:
		fprintf(f, "%" PRIu64, v->u);
	}
}

static void print_gguf_meta(FILE *f, const struct ck_gguf *g, int full, int json)
{
	if (json)
		fprintf(f, "{\"GGUF.version\":{\"type\":\"u32\",\"value\":%u},"
			"\"GGUF.alignment\":{\"type\":\"u64\",\"value\":%" PRIu64 "}",
			ck_gguf_version(g), ck_gguf_alignment(g));
	else
		fprintf(f, "GGUF.version\tu32\t%u\nGGUF.alignment\tu64\t%" PRIu64 "\n",
			ck_gguf_version(g), ck_gguf_alignment(g));
	for (size_t i = 0; i < ck_gguf_nkv(g); i++) {
		const struct ck_gguf_kv *kv = ck_gguf_kv(g, i);
		const struct ck_gguf_value *v = &kv->v;
		if (json) {
			fputc(',', f);
			ck_json_str(f, kv->key);
			fputs(":{\"type\":", f);
			ck_json_str(f, ck_gguf_type_name(v->type));
			if (v->type == CK_GGUF_ARRAY) {
				fputs(",\"element_type\":", f);
				ck_json_str(f, ck_gguf_type_name(v->arr.type));
				fprintf(f, ",\"count\":%" PRIu64, v->arr.n);
				if (!full && v->arr.n > META_ITEMS)
					fputs(",\"shortened\":true", f);
			}
			fputs(",\"value\":", f);
			meta_value(f, v, full, 1, 0);
			fputc('}', f);
		} else {
			text_bytes(f, kv->key, strlen(kv->key), 1, 0);
			if (v->type == CK_GGUF_ARRAY)
				fprintf(f, "\tarray[%s]\t", ck_gguf_type_name(v->arr.type));
			else
				fprintf(f, "\t%s\t", ck_gguf_type_name(v->type));
			meta_value(f, v, full, 0, 0);
			fputc('\n', f);
		}
	}
	if (json)
		fputc('}', f);
}

static void print_meta(FILE *f, const struct ls_opts *o, const struct ck_model *m)
{
	if (ck_model_gguf(m)) {
		print_gguf_meta(f, ck_model_gguf(m), o->full, o->json);
		return;
	}
	if (o->json)
		fputc('{', f);
	for (size_t i = 0, first = 1; i < ck_model_nfiles(m); i++) {
		const char *const *k, *const *v;
		size_t n = ck_model_meta(m, i, &k, &v);
		for (size_t j = 0; j < n; j++) {
			if (o->json) {
				if (!first)
					fputc(',', f);
				first = 0;
				ck_json_str(f, k[j]);
				fputc(':', f);
				ck_json_str(f, v[j]);
			} else {
				char ek[256], ev[4096];
				fprintf(f, "%s\t%s\t%s\n", file_base(ck_model_file(m, i)),
					ck_escape(k[j], strlen(k[j]), ek, sizeof(ek)),
					ck_escape(v[j], strlen(v[j]), ev, sizeof(ev)));
			}
		}
	}
	if (o->json)
		fputc('}', f);
}

static int list_one(const struct ls_opts *o, const char *path, int multi, int first)
{
	struct ck_diag d = CK_DIAG_INIT;
	struct ck_model *m = NULL;
	struct row *rows = NULL;
	size_t n = 0;
	int rc = 0, tty = isatty(STDOUT_FILENO);

	if (ck_model_open(&m, path, &d) < 0)
		return ck_report("ls", &d);
	rows = ck_calloc(ck_model_count(m), sizeof(*rows));
	if (!rows) {
		ck_model_free(m);
		ck_fail(&d, CK_ENOMEM, "out of memory");
		return ck_report("ls", &d);
	}
	for (size_t i = 0; i < ck_model_count(m); i++) {
		const struct ck_tensor *t = ck_model_tensor(m, i);
		if (!selected(o, t->name))
			continue;
		rows[n].t = t;
		ck_layout_detect(m, t, &rows[n].lay);
		n++;
	}
	if (o->diffable || (o->sort && !strcmp(o->sort, "name")))
		qsort(rows, n, sizeof(*rows), cmp_name);
	else if (o->sort && !strcmp(o->sort, "size"))
		qsort(rows, n, sizeof(*rows), cmp_size);
	if (o->sha256 && hash_rows(rows, n, (int)o->jobs, &d) < 0) {
		rc = ck_report("ls", &d);
		goto out;
	}
	if (o->jsonl) {
		for (size_t i = 0; i < n; i++) {
			print_json_row(stdout, o, m, &rows[i], path);
			fputc('\n', stdout);
		}
	} else if (o->json) {
		fputs(first ? "" : ",", stdout);
		fputs("{\"path\":", stdout);
		ck_json_str(stdout, path);
		fprintf(stdout, ",\"kind\":\"%s\",\"files\":[",
			ck_model_kind(m) == CK_MODEL_GGUF ? "gguf" :
			ck_model_kind(m) == CK_MODEL_FOLDER ? "folder" : "safetensors");
		for (size_t i = 0; i < ck_model_nfiles(m); i++) {
			fputs(i ? "," : "", stdout);
			ck_json_str(stdout, file_base(ck_model_file(m, i)));
		}
		fputs("]", stdout);
		if (o->meta) {
			fputs(",\"metadata\":", stdout);
			print_meta(stdout, o, m);
		}
		fputs(",\"summary\":", stdout);
		print_summary(stdout, o, rows, n);
		if (!o->summary) {
			fputs(",\"tensors\":[", stdout);
			for (size_t i = 0; i < n; i++) {
				fputs(i ? "," : "", stdout);
				print_json_row(stdout, o, m, &rows[i], NULL);
			}
			fputs("]", stdout);
		}
		fputs("}", stdout);
	} else {
		if (multi)
			printf("%s%s:\n", first ? "" : "\n", path);
		if (o->meta)
			print_meta(stdout, o, m);
		if (o->summary)
			print_summary(stdout, o, rows, n);
		else if (!o->meta)
			print_text(stdout, o, m, rows, n, tty);
	}
out:
	free(rows);
	ck_model_free(m);
	return rc;
}

int cmd_ls(int argc, char **argv)
{
	struct ls_opts o = { .jobs = ck_ncpus() };
	const struct ck_option opts[] = {
		CK_OPT_FLAG('l', "long", &o.longfmt, "also show the offset and the file of each tensor"),
		CK_OPT_FLAG(0, "json", &o.json, "print one JSON document"),
		CK_OPT_FLAG(0, "jsonl", &o.jsonl, "print one JSON object per tensor per line"),
		CK_OPT_STRINGS(0, "filter", &o.filters, "GLOB", "only tensors whose name matches (repeatable)"),
		CK_OPT_CHOICE(0, "sort", &o.sort, "name|offset|size", "order of the listing [offset]"),
		CK_OPT_FLAG(0, "summary", &o.summary, "tensor count, parameters per dtype, total bytes"),
		CK_OPT_FLAG(0, "sha256", &o.sha256, "SHA-256 of each tensor's bytes"),
		CK_OPT_FLAG(0, "diffable", &o.diffable, "no offsets or files, sorted by name"),
		CK_OPT_FLAG(0, "meta", &o.meta, "safetensors __metadata__ or GGUF key/values"),
		CK_OPT_FLAG(0, "full", &o.full, "with --meta, do not shorten long arrays"),
		CK_OPT_INT('j', "jobs", &o.jobs, "N", "threads for --sha256 [all cores]"),
		CK_OPT_END,
	};
	const struct ck_usage u = {
		.tool = "ls",
		.synopsis = "ckpt ls [options] PATH...",
		.about = "List the tensors of a .safetensors file, a model folder (sharded or not) or a .gguf file:\n"
			 "name, type, shape, bytes, and notes on MXFP4, bitsandbytes 4-bit and per-expert layouts.\n"
			 "Aligned text on a terminal, tab-separated when piped.",
		.min_args = 1,
		.max_args = -1,
	};
	int n = ck_parse_options(argc, argv, opts, &u), rc = 0;

	if (o.json && o.jsonl) {
		ck_strlist_release(&o.filters);
		return ck_usage_error("ls", "--json and --jsonl are exclusive");
	}
	if (o.jobs < 1)
		o.jobs = 1;
	/* One JSON document or none: check every input opens before printing. */
	for (int i = 0; o.json && n > 1 && i < n; i++) {
		struct ck_diag d = { 0 };
		struct ck_model *m;
		if (ck_model_open(&m, argv[i], &d) < 0) {
			ck_strlist_release(&o.filters);
			return ck_report("ls", &d);
		}
		ck_model_free(m);
	}
	if (o.json)
		fputs("{\"version\":1,\"models\":[", stdout);
	for (int i = 0; i < n; i++) {
		int r = list_one(&o, argv[i], n > 1, i == 0);
		if (r && !rc)
			rc = r;
		if (r)
			break;
	}
	if (o.json && !rc)
		fputs("]}\n", stdout);
	ck_strlist_release(&o.filters);
	return rc;
}
