/*
 * gguf.c - the GGUF reader (v2, v3) and the streaming v3 writer (see gguf.h).
 *
 * Layout (all little-endian; v2 and v3 are the same on disk, v1 had 32-bit
 * counts and is refused):
 *	"GGUF" u32 version  u64 n_tensors  u64 n_kv
 *	n_kv x  (string key, u32 type, value)
 *	n_tensors x (string name, u32 n_dims, u64 ne[n_dims], u32 ggml_type, u64 offset)
 *	zero padding to the alignment, then the data; offsets are relative to it
 * where a string is u64 length + bytes and an array is u32 element type +
 * u64 count + the elements packed.
 *
 * The reader never trusts a count: before anything is allocated for n
 * records it checks that the bytes left could hold n of the smallest such
 * record, and record arrays grow as records are parsed, so a header that
 * claims 2^63 entries fails at the first missing byte, not in malloc.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include "gguf.h"

/* ========== value types ========== */

static const char *const type_names[CK_GGUF_TYPE_COUNT] = {
	"u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array", "u64", "i64",
	"f64",
};
static const uint8_t type_sizes[CK_GGUF_TYPE_COUNT] = { 1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8 };

const char *ck_gguf_type_name(uint32_t type)
{
	return type < CK_GGUF_TYPE_COUNT ? type_names[type] : "unknown";
}

size_t ck_gguf_type_size(uint32_t type)
{
	return type < CK_GGUF_TYPE_COUNT ? type_sizes[type] : 0;
}

static uint64_t le(const uint8_t *p, size_t n)
{
	uint64_t v = 0;
	for (size_t i = n; i-- > 0;)
		v = v << 8 | p[i];
	return v;
}

/* Decode one scalar of type at p (ck_gguf_type_size(type) bytes). */
static void decode_scalar(uint32_t type, const uint8_t *p, struct ck_gguf_value *v)
{
	uint64_t x = le(p, type_sizes[type]);
	v->type = type;
	switch (type) {
	case CK_GGUF_I8:
		v->i = (int8_t)x;
		break;
	case CK_GGUF_I16:
		v->i = (int16_t)x;
		break;
	case CK_GGUF_I32:
		v->i = (int32_t)x;
		break;
	case CK_GGUF_I64:
		v->i = (int64_t)x;
		break;
	case CK_GGUF_F32: {
		uint32_t b = (uint32_t)x;
		float f;
		memcpy(&f, &b, 4);
		v->f = f;
		break;
	}
	case CK_GGUF_F64:
		memcpy(&v->f, &x, 8);
		break;
	case CK_GGUF_BOOL:
		v->u = x != 0;	/* as ggml: any non-zero byte is true */
		break;
	default:
		v->u = x;
	}
}

void ck_gguf_arr_item(const struct ck_gguf_value *arr, uint64_t i, struct ck_gguf_value *out)
{
	if (arr->arr.items)
		*out = arr->arr.items[i];
	else
		decode_scalar(arr->arr.type, arr->arr.raw + i * type_sizes[arr->arr.type], out);
}

/* ========== reader ========== */

struct ck_gguf {
	char *path;
	const uint8_t *map;
	uint64_t size;
	int mapped;
	uint32_t version;
	uint64_t alignment, data_offset;
	struct ck_gguf_kv *kv;
	size_t nkv;
	const struct ck_gguf_kv **kv_sorted;	/* by key, for ck_gguf_find */
	struct ck_tensor *t;
	size_t nt;
	void **allocs;				/* item arrays of array values */
	size_t nallocs, capallocs;
};

/* A cursor over the file; every read checks the bytes left first. */
struct rd {
	const uint8_t *p;
	uint64_t size, pos;
};

static uint64_t left(const struct rd *r)
{
	return r->size - r->pos;
}

static int rd_u32(struct rd *r, uint32_t *v)
{
	if (left(r) < 4)
		return -1;
	*v = (uint32_t)le(r->p + r->pos, 4);
	r->pos += 4;
	return 0;
}

static int rd_u64(struct rd *r, uint64_t *v)
{
	if (left(r) < 8)
		return -1;
	*v = le(r->p + r->pos, 8);
	r->pos += 8;
	return 0;
}

static const char *esc(const char *s, size_t len, char *buf, size_t cap)
{
	return ck_escape(s, len, buf, cap);
}

static int track(struct ck_gguf *g, void *p, struct ck_diag *d)
{
	if (g->nallocs == g->capallocs) {
		size_t cap = g->capallocs ? 2 * g->capallocs : 16;
		void **v = ck_reallocarray(g->allocs, cap, sizeof(*v));
		if (!v) {
			free(p);
			return ck_fail(d, CK_ENOMEM, "out of memory");
		}
		g->allocs = v;
		g->capallocs = cap;
	}
	g->allocs[g->nallocs++] = p;
	return 0;
}

/*
 * Parse a value of type at r into v.  what names the key for messages.
 * depth counts enclosing arrays.
 */
static int parse_value(struct ck_gguf *g, struct rd *r, uint32_t type, struct ck_gguf_value *v,
		       int depth, const char *what, struct ck_diag *d)
{
	uint64_t n, need;
	uint32_t et;

	v->type = type;
	if (type >= CK_GGUF_TYPE_COUNT)
		return ck_fail(d, CK_EINVAL, "'%s': key '%s': bad value type %u", g->path, what, type);
	if (type_sizes[type]) {
		if (left(r) < type_sizes[type])
			return ck_fail(d, CK_EINVAL, "'%s': key '%s': %s value past end of file",
				       g->path, what, type_names[type]);
		decode_scalar(type, r->p + r->pos, v);
		r->pos += type_sizes[type];
		return 0;
	}
	if (type == CK_GGUF_STRING) {
		if (rd_u64(r, &n) < 0)
			return ck_fail(d, CK_EINVAL, "'%s': key '%s': string length past end of file",
				       g->path, what);
		if (n > CK_GGUF_MAX_STRING || n > left(r))
			return ck_fail(d, CK_EINVAL, "'%s': key '%s': string length %" PRIu64
				       " past end of file (%" PRIu64 " bytes left)", g->path, what, n,
				       left(r));
		v->str.p = (const char *)r->p + r->pos;
		v->str.len = n;
		r->pos += n;
		return 0;
	}
	/* ARRAY */
	if (rd_u32(r, &et) < 0 || rd_u64(r, &n) < 0)
		return ck_fail(d, CK_EINVAL, "'%s': key '%s': array header past end of file", g->path,
			       what);
	if (et >= CK_GGUF_TYPE_COUNT)
		return ck_fail(d, CK_EINVAL, "'%s': key '%s': bad array element type %u", g->path,
			       what, et);
	if (et == CK_GGUF_ARRAY && depth + 1 >= CK_GGUF_MAX_DEPTH)
		return ck_fail(d, CK_EINVAL, "'%s': key '%s': arrays nested deeper than %d",
			       g->path, what, CK_GGUF_MAX_DEPTH);
	/* The smallest element: a scalar's size, a string's length, an array's header. */
	need = et == CK_GGUF_STRING ? 8 : et == CK_GGUF_ARRAY ? 12 : type_sizes[et];
	if (n > CK_GGUF_MAX_ARRAY || ck_mul_u64(n, need, &need) || need > left(r))
		return ck_fail(d, CK_EINVAL, "'%s': key '%s': array of %" PRIu64 " %s past end of"
			       " file (%" PRIu64 " bytes left)", g->path, what, n, type_names[et],
			       left(r));
	v->arr.type = et;
	v->arr.n = n;
	v->arr.items = NULL;
	v->arr.raw = r->p + r->pos;
	if (type_sizes[et]) {
		r->pos += need;
		return 0;
	}
	{
		struct ck_gguf_value *items = ck_calloc(n ? n : 1, sizeof(*items));
		if (!items)
			return ck_fail(d, CK_ENOMEM, "out of memory");
		CK_TRY(track(g, items, d));
		v->arr.items = items;
		for (uint64_t i = 0; i < n; i++)
			CK_TRY(parse_value(g, r, et, &items[i], depth + 1, what, d));
	}
	return 0;
}

/* Grow a record array to hold one more, doubling but never past max. */
static int grow(void **p, size_t *cap, size_t have, uint64_t max, size_t size, struct ck_diag *d)
{
	size_t c;
	void *np;
	if (have < *cap)
		return 0;
	c = *cap ? 2 * *cap : 16;
	if (c > max)
		c = (size_t)max;
	np = ck_reallocarray(*p, c, size);
	if (!np)
		return ck_fail(d, CK_ENOMEM, "out of memory");
	*p = np;
	*cap = c;
	return 0;
}

static int parse_kvs(struct ck_gguf *g, struct rd *r, uint64_t n_kv, struct ck_diag *d)
{
	size_t cap = 0;

	for (uint64_t k = 0; k < n_kv; k++) {
		struct ck_gguf_kv *kv;
		uint64_t len;
		uint32_t type;
		char e[256];
		const char *key;

		CK_TRY(grow((void **)&g->kv, &cap, g->nkv, n_kv, sizeof(*g->kv), d));
		kv = &g->kv[g->nkv];
		memset(kv, 0, sizeof(*kv));
		if (rd_u64(r, &len) < 0)
			return ck_fail(d, CK_EINVAL, "'%s': key #%" PRIu64 " past end of file",
				       g->path, k);
		if (len > CK_GGUF_MAX_STRING || len > left(r))
			return ck_fail(d, CK_EINVAL, "'%s': key #%" PRIu64 ": length %" PRIu64
				       " past end of file (%" PRIu64 " bytes left)", g->path, k, len,
				       left(r));
		key = (const char *)r->p + r->pos;
		r->pos += len;
		if (!len)
			return ck_fail(d, CK_EINVAL, "'%s': key #%" PRIu64 " is empty", g->path, k);
		if (memchr(key, 0, len) || !ck_utf8_valid(key, len))
			return ck_fail(d, CK_EINVAL, "'%s': key '%s': NUL or invalid UTF-8 in key",
				       g->path, esc(key, len, e, sizeof(e)));
		kv->key = ck_strndup(key, len);
		if (!kv->key)
			return ck_fail(d, CK_ENOMEM, "out of memory");
		g->nkv++;
		esc(key, len, e, sizeof(e));
		if (rd_u32(r, &type) < 0)
			return ck_fail(d, CK_EINVAL, "'%s': key '%s': value type past end of file",
				       g->path, e);
		CK_TRY(parse_value(g, r, type, &kv->v, 0, e, d));
	}
	return 0;
}

static int cmp_kv(const void *a, const void *b)
{
	return strcmp((*(const struct ck_gguf_kv *const *)a)->key,
		      (*(const struct ck_gguf_kv *const *)b)->key);
}

static int cmp_tname(const void *a, const void *b)
{
	return strcmp((*(const struct ck_tensor *const *)a)->name,
		      (*(const struct ck_tensor *const *)b)->name);
}

static int cmp_toff(const void *a, const void *b)
{
	const struct ck_tensor *x = *(const struct ck_tensor *const *)a;
	const struct ck_tensor *y = *(const struct ck_tensor *const *)b;
	if (x->offset != y->offset)
		return x->offset < y->offset ? -1 : 1;
	return 0;
}

static int index_kvs(struct ck_gguf *g, struct ck_diag *d)
{
	const struct ck_gguf_kv *al;

	g->kv_sorted = ck_mallocarray(g->nkv, sizeof(*g->kv_sorted));
	if (!g->kv_sorted)
		return ck_fail(d, CK_ENOMEM, "out of memory");
	for (size_t i = 0; i < g->nkv; i++)
		g->kv_sorted[i] = &g->kv[i];
	qsort(g->kv_sorted, g->nkv, sizeof(*g->kv_sorted), cmp_kv);
	for (size_t i = 1; i < g->nkv; i++)
		if (!strcmp(g->kv_sorted[i - 1]->key, g->kv_sorted[i]->key)) {
			char e[256];
			const char *k = g->kv_sorted[i]->key;
			return ck_fail(d, CK_EINVAL, "'%s': key '%s': duplicate key", g->path,
				       esc(k, strlen(k), e, sizeof(e)));
		}
	g->alignment = CK_GGUF_DEFAULT_ALIGNMENT;
	al = ck_gguf_find(g, "general.alignment");
	if (al) {
		if (al->v.type != CK_GGUF_U32)
			return ck_fail(d, CK_EINVAL, "'%s': key 'general.alignment': type %s, not u32",
				       g->path, ck_gguf_type_name(al->v.type));
		if (!al->v.u || (al->v.u & (al->v.u - 1)))
			return ck_fail(d, CK_EINVAL, "'%s': key 'general.alignment': %" PRIu64
				       " is not a power of two", g->path, al->v.u);
		g->alignment = al->v.u;
	}
	return 0;
}

static enum ck_dtype plain_dtype(uint32_t ggml_type)
{
	switch (ggml_type) {
	case CK_GGML_F32: return CK_DT_F32;
	case CK_GGML_F16: return CK_DT_F16;
	case CK_GGML_BF16: return CK_DT_BF16;
	case CK_GGML_I8: return CK_DT_I8;
	case CK_GGML_I16: return CK_DT_I16;
	case CK_GGML_I32: return CK_DT_I32;
	case CK_GGML_I64: return CK_DT_I64;
	case CK_GGML_F64: return CK_DT_F64;
	default: return CK_DT_UNKNOWN;
	}
}

static int parse_info(struct ck_gguf *g, struct rd *r, uint64_t k, struct ck_tensor *t,
		      struct ck_diag *d)
{
	const struct ck_ggml_type *tt;
	uint64_t len, ne[CK_GGUF_MAX_DIMS], n = 1, rows = 1;
	uint32_t ndim, type;
	const char *name;
	char e[256], tb[32];

	if (rd_u64(r, &len) < 0)
		return ck_fail(d, CK_EINVAL, "'%s': tensor info #%" PRIu64 " past end of file",
			       g->path, k);
	if (len > left(r))
		return ck_fail(d, CK_EINVAL, "'%s': tensor info #%" PRIu64 ": name length %" PRIu64
			       " past end of file (%" PRIu64 " bytes left)", g->path, k, len, left(r));
	name = (const char *)r->p + r->pos;
	r->pos += len;
	esc(name, len, e, sizeof(e));
	if (len >= CK_GGUF_MAX_NAME)
		return ck_fail(d, CK_EINVAL, "'%s': tensor '%s': name is %" PRIu64 " bytes, longer"
			       " than %d", g->path, e, len, CK_GGUF_MAX_NAME - 1);
	if (memchr(name, 0, len) || !ck_utf8_valid(name, len))
		return ck_fail(d, CK_EINVAL, "'%s': tensor '%s': NUL or invalid UTF-8 in name",
			       g->path, e);
	t->name = ck_strndup(name, len);
	if (!t->name)
		return ck_fail(d, CK_ENOMEM, "out of memory");
	if (rd_u32(r, &ndim) < 0)
		return ck_fail(d, CK_EINVAL, "'%s': tensor '%s': n_dims past end of file", g->path, e);
	if (ndim < 1 || ndim > CK_GGUF_MAX_DIMS)
		return ck_fail(d, CK_EINVAL, "'%s': tensor '%s': %u dims, not 1..%d", g->path, e,
			       ndim, CK_GGUF_MAX_DIMS);
	for (uint32_t i = 0; i < ndim; i++) {
		if (rd_u64(r, &ne[i]) < 0)
			return ck_fail(d, CK_EINVAL, "'%s': tensor '%s': ne past end of file",
				       g->path, e);
		if (ne[i] == 0 || ne[i] > INT64_MAX)
			return ck_fail(d, CK_EINVAL, "'%s': tensor '%s': ne[%u] = %" PRIu64
				       " is not a positive size", g->path, e, i, ne[i]);
		if (ck_mul_u64(n, ne[i], &n) || n > INT64_MAX)
			return ck_fail(d, CK_EINVAL, "'%s': tensor '%s': element count overflows",
				       g->path, e);
		if (i && ck_mul_u64(rows, ne[i], &rows))
			return ck_fail(d, CK_EINVAL, "'%s': tensor '%s': element count overflows",
				       g->path, e);
	}
	if (rd_u32(r, &type) < 0 || rd_u64(r, &t->offset) < 0)
		return ck_fail(d, CK_EINVAL, "'%s': tensor '%s': type or offset past end of file",
			       g->path, e);
	tt = ck_ggml_type(type);
	if (!tt)
		return ck_fail(d, CK_EINVAL, "'%s': tensor '%s': type %s is not a known ggml type",
			       g->path, e, ck_ggml_type_name(type, tb, sizeof(tb)));
	if (ne[0] % tt->blck)
		return ck_fail(d, CK_EINVAL, "'%s': tensor '%s': ne[0] = %" PRIu64 " is not a"
			       " multiple of the %s block size %u", g->path, e, ne[0], tt->name,
			       tt->blck);
	if (ck_mul_u64(ne[0] / tt->blck, tt->type_size, &t->nbytes) ||
	    ck_mul_u64(t->nbytes, rows, &t->nbytes) || t->nbytes > INT64_MAX)
		return ck_fail(d, CK_EINVAL, "'%s': tensor '%s': byte size overflows", g->path, e);
	t->ggml_type = (int32_t)type;
	t->dtype = plain_dtype(type);
	t->ndim = (int)ndim;
	for (uint32_t i = 0; i < ndim; i++)
		t->shape[i] = ne[ndim - 1 - i];
	t->nelem = n;
	return 0;
}

static int parse_infos(struct ck_gguf *g, struct rd *r, uint64_t n_tensors, struct ck_diag *d)
{
	size_t cap = 0;
	for (uint64_t k = 0; k < n_tensors; k++) {
		CK_TRY(grow((void **)&g->t, &cap, g->nt, n_tensors, sizeof(*g->t), d));
		memset(&g->t[g->nt], 0, sizeof(g->t[0]));
		g->nt++;
		CK_TRY(parse_info(g, r, k, &g->t[g->nt - 1], d));
	}
	return 0;
}

/* Names unique; offsets aligned, inside the file, not overlapping. */
static int check_tensors(struct ck_gguf *g, struct ck_diag *d)
{
	const struct ck_tensor **v = ck_mallocarray(g->nt, sizeof(*v));
	char e[256];
	int rc = 0;

	if (!v)
		return ck_fail(d, CK_ENOMEM, "out of memory");
	for (size_t i = 0; i < g->nt; i++)
		v[i] = &g->t[i];
	qsort(v, g->nt, sizeof(*v), cmp_tname);
	for (size_t i = 1; i < g->nt && !rc; i++)
		if (!strcmp(v[i - 1]->name, v[i]->name))
			rc = ck_fail(d, CK_EINVAL, "'%s': tensor '%s': duplicate tensor name", g->path,
				     esc(v[i]->name, strlen(v[i]->name), e, sizeof(e)));
	for (size_t i = 0; i < g->nt && !rc; i++) {
		struct ck_tensor *t = &g->t[i];
		uint64_t end;
		esc(t->name, strlen(t->name), e, sizeof(e));
		if (t->offset % g->alignment)
			rc = ck_fail(d, CK_EINVAL, "'%s': tensor '%s': offset %" PRIu64 " is not a"
				     " multiple of the alignment %" PRIu64, g->path, e, t->offset,
				     g->alignment);
		else if (ck_add_u64(g->data_offset, t->offset, &end) ||
			 ck_add_u64(end, t->nbytes, &end) || end > g->size)
			rc = ck_fail(d, CK_EINVAL, "'%s': tensor '%s': data (offset %" PRIu64 ", %"
				     PRIu64 " bytes) past end of file", g->path, e, t->offset,
				     t->nbytes);
		else {
			t->offset += g->data_offset;
			t->data = g->map + t->offset;
		}
	}
	qsort(v, g->nt, sizeof(*v), cmp_toff);
	for (size_t i = 1; i < g->nt && !rc; i++)
		if (v[i - 1]->offset + v[i - 1]->nbytes > v[i]->offset) {
			char e2[256];
			rc = ck_fail(d, CK_EINVAL, "'%s': tensor '%s': data overlaps tensor '%s'",
				     g->path, esc(v[i]->name, strlen(v[i]->name), e, sizeof(e)),
				     esc(v[i - 1]->name, strlen(v[i - 1]->name), e2, sizeof(e2)));
		}
	free(v);
	return rc;
}

static int parse(struct ck_gguf *g, struct ck_diag *d)
{
	struct rd r = { g->map, g->size, 0 };
	uint64_t n_tensors, n_kv;

	if (g->size < 4 || memcmp(g->map, "GGUF", 4))
		return ck_fail(d, CK_EINVAL, "'%s': not a GGUF file (bad magic)", g->path);
	r.pos = 4;
	if (rd_u32(&r, &g->version) < 0)
		return ck_fail(d, CK_EINVAL, "'%s': header past end of file", g->path);
	if (!(g->version & 0xFFFF))
		return ck_fail(d, CK_EUNSUPPORTED, "'%s': GGUF version 0x%08x: a big-endian file?"
			       " (not supported)", g->path, g->version);
	if (g->version != 2 && g->version != 3)
		return ck_fail(d, CK_EUNSUPPORTED, "'%s': GGUF version %u not supported (2 or 3)",
			       g->path, g->version);
	if (rd_u64(&r, &n_tensors) < 0 || rd_u64(&r, &n_kv) < 0)
		return ck_fail(d, CK_EINVAL, "'%s': header past end of file", g->path);
	/* The smallest KV is 14 bytes, the smallest tensor info 32. */
	if (n_kv > left(&r) / 14)
		return ck_fail(d, CK_EINVAL, "'%s': n_kv %" PRIu64 " too large for the %" PRIu64
			       " bytes of the file", g->path, n_kv, g->size);
	if (n_tensors > left(&r) / 32)
		return ck_fail(d, CK_EINVAL, "'%s': n_tensors %" PRIu64 " too large for the %"
			       PRIu64 " bytes of the file", g->path, n_tensors, g->size);
	CK_TRY(parse_kvs(g, &r, n_kv, d));
	CK_TRY(index_kvs(g, d));
	CK_TRY(parse_infos(g, &r, n_tensors, d));
	g->data_offset = (r.pos + g->alignment - 1) / g->alignment * g->alignment;
	if (g->data_offset < r.pos)	/* cannot wrap: both are below 2^63 */
		return ck_fail(d, CK_EINVAL, "'%s': data offset overflows", g->path);
	return check_tensors(g, d);
}

static int gguf_new(struct ck_gguf **out, const char *label, struct ck_diag *d)
{
	struct ck_gguf *g = ck_calloc(1, sizeof(*g));
	*out = NULL;
	if (!g || !(g->path = ck_strdup(label))) {
		free(g);
		return ck_fail(d, CK_ENOMEM, "out of memory");
	}
	*out = g;
	return 0;
}

int ck_gguf_parse(struct ck_gguf **out, const void *buf, size_t len, const char *label,
		  struct ck_diag *d)
{
	struct ck_gguf *g;
	int rc;

	CK_TRY(gguf_new(&g, label, d));
	g->map = buf;
	g->size = len;
	rc = parse(g, d);
	if (rc) {
		ck_gguf_close(g);
		return rc;
	}
	*out = g;
	return 0;
}

int ck_gguf_open(struct ck_gguf **out, const char *path, struct ck_diag *d)
{
	struct ck_gguf *g;
	struct stat st;
	int fd, rc;

	CK_TRY(gguf_new(&g, path, d));
	fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0) {
		rc = ck_fail(d, ck_open_status(errno), "'%s': cannot open: %s", path,
			     strerror(errno));
		goto fail;
	}
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		close(fd);
		rc = ck_fail(d, CK_EINVAL, "'%s': not a regular file", path);
		goto fail;
	}
	g->size = (uint64_t)st.st_size;
	if (g->size) {
		void *m = mmap(NULL, g->size, PROT_READ, MAP_PRIVATE, fd, 0);
		if (m == MAP_FAILED) {
			close(fd);
			rc = ck_fail(d, CK_EIO, "'%s': cannot map: %s", path, strerror(errno));
			goto fail;
		}
		g->map = m;
		g->mapped = 1;
	}
	close(fd);	/* the mapping keeps the file */
	rc = parse(g, d);
	if (rc)
		goto fail;
	*out = g;
	return 0;
fail:
	ck_gguf_close(g);
	return rc;
}

void ck_gguf_close(struct ck_gguf *g)
{
	if (!g)
		return;
	if (g->mapped)
		munmap((void *)g->map, g->size);
	for (size_t i = 0; i < g->nkv; i++)
		free((char *)g->kv[i].key);
	for (size_t i = 0; i < g->nt; i++)
		free((char *)g->t[i].name);
	for (size_t i = 0; i < g->nallocs; i++)
		free(g->allocs[i]);
	free(g->allocs);
	free(g->kv);
	free(g->kv_sorted);
	free(g->t);
	free(g->path);
	free(g);
}

uint32_t ck_gguf_version(const struct ck_gguf *g)
{
	return g->version;
}

uint64_t ck_gguf_alignment(const struct ck_gguf *g)
{
	return g->alignment;
}

uint64_t ck_gguf_data_offset(const struct ck_gguf *g)
{
	return g->data_offset;
}

size_t ck_gguf_nkv(const struct ck_gguf *g)
{
	return g->nkv;
}

const struct ck_gguf_kv *ck_gguf_kv(const struct ck_gguf *g, size_t i)
{
	return i < g->nkv ? &g->kv[i] : NULL;
}

const struct ck_gguf_kv *ck_gguf_find(const struct ck_gguf *g, const char *key)
{
	size_t lo = 0, hi = g->nkv;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		int c = strcmp(key, g->kv_sorted[mid]->key);
		if (!c)
			return g->kv_sorted[mid];
		if (c < 0)
			hi = mid;
		else
			lo = mid + 1;
	}
	return NULL;
}

size_t ck_gguf_ntensors(const struct ck_gguf *g)
{
	return g->nt;
}

const struct ck_tensor *ck_gguf_tensor(const struct ck_gguf *g, size_t i)
{
	return i < g->nt ? &g->t[i] : NULL;
}

/* ========== writer ========== */

struct buf {
	uint8_t *p;
	size_t len, cap;
	int oom;
};

static void buf_add(struct buf *b, const void *s, size_t n)
{
	if (b->oom || !n)
		return;
	if (n > SIZE_MAX / 2 - b->len) {
		b->oom = 1;
		return;
	}
	if (b->len + n > b->cap) {
		size_t cap = b->cap ? b->cap : 4096;
		uint8_t *p;
		while (cap < b->len + n)
			cap *= 2;
		p = realloc(b->p, cap);
		if (!p) {
			b->oom = 1;
			return;
		}
		b->p = p;
		b->cap = cap;
	}
	memcpy(b->p + b->len, s, n);
	b->len += n;
}

static void buf_le(struct buf *b, uint64_t v, size_t n)
{
	uint8_t x[8];
	for (size_t i = 0; i < n; i++)
		x[i] = (uint8_t)(v >> (8 * i));
	buf_add(b, x, n);
}

static void buf_str(struct buf *b, const char *s, uint64_t len)
{
	buf_le(b, len, 8);
	buf_add(b, s, (size_t)len);
}

struct ck_ggw {
	struct ck_out *o;
	int fd;
	const char *fname;
	uint32_t alignment;		/* as given to ck_ggw_new (0: not fixed) */
	uint32_t kv_alignment;		/* general.alignment when added, else 0 */
	int bad_alignment_kv;
	struct buf kv;			/* serialized KVs, in order */
	char **keys;
	size_t nkv, capkv;
	struct ck_ggw_tensor *t;
	size_t n, cap;
	int begun;
	size_t cur;			/* tensor being written */
	uint64_t cur_done;		/* bytes of it written */
};

int ck_ggw_new(struct ck_ggw **out, struct ck_out *o, uint32_t alignment, struct ck_diag *d)
{
	struct ck_ggw *w;

	*out = NULL;
	if (alignment & (alignment - 1))
		return ck_fail(d, CK_EUSAGE, "GGUF alignment %u is not a power of two", alignment);
	w = ck_calloc(1, sizeof(*w));
	if (!w)
		return ck_fail(d, CK_ENOMEM, "out of memory");
	w->o = o;
	w->fd = -1;
	w->fname = ck_out_final_path(o);
	w->alignment = alignment;
	*out = w;
	return 0;
}

/* Check the key, remember it, and serialize it into the KV buffer. */
static int add_key(struct ck_ggw *w, const char *key, uint32_t type, struct ck_diag *d)
{
	size_t len = strlen(key);
	char e[256];
	char *k;

	if (w->begun)
		return ck_fail(d, CK_EUSAGE, "key '%s' added after the header was written",
			       esc(key, len, e, sizeof(e)));
	if (!len || !ck_utf8_valid(key, len) || len > CK_GGUF_MAX_STRING)
		return ck_fail(d, CK_EINVAL, "bad GGUF key '%s'", esc(key, len, e, sizeof(e)));
	if (w->nkv == w->capkv) {
		size_t cap = w->capkv ? 2 * w->capkv : 32;
		char **v = ck_reallocarray(w->keys, cap, sizeof(*v));
		if (!v)
			return ck_fail(d, CK_ENOMEM, "out of memory");
		w->keys = v;
		w->capkv = cap;
	}
	if (!(k = ck_strdup(key)))
		return ck_fail(d, CK_ENOMEM, "out of memory");
	w->keys[w->nkv++] = k;
	buf_str(&w->kv, key, len);
	buf_le(&w->kv, type, 4);
	return 0;
}

static int kv_done(struct ck_ggw *w, struct ck_diag *d)
{
	return w->kv.oom ? ck_fail(d, CK_ENOMEM, "out of memory") : 0;
}

int ck_ggw_kv_u32(struct ck_ggw *w, const char *key, uint32_t v, struct ck_diag *d)
{
	CK_TRY(add_key(w, key, CK_GGUF_U32, d));
	buf_le(&w->kv, v, 4);
	if (!strcmp(key, "general.alignment")) {
		if (!v || (v & (v - 1)))
			return ck_fail(d, CK_EINVAL, "general.alignment %u is not a power of two", v);
		w->kv_alignment = v;
	}
	return kv_done(w, d);
}

int ck_ggw_kv_i32(struct ck_ggw *w, const char *key, int32_t v, struct ck_diag *d)
{
	CK_TRY(add_key(w, key, CK_GGUF_I32, d));
	buf_le(&w->kv, (uint32_t)v, 4);
	return kv_done(w, d);
}

int ck_ggw_kv_u64(struct ck_ggw *w, const char *key, uint64_t v, struct ck_diag *d)
{
	CK_TRY(add_key(w, key, CK_GGUF_U64, d));
	buf_le(&w->kv, v, 8);
	return kv_done(w, d);
}

int ck_ggw_kv_f32(struct ck_ggw *w, const char *key, float v, struct ck_diag *d)
{
	uint32_t b;
	memcpy(&b, &v, 4);
	CK_TRY(add_key(w, key, CK_GGUF_F32, d));
	buf_le(&w->kv, b, 4);
	return kv_done(w, d);
}

int ck_ggw_kv_bool(struct ck_ggw *w, const char *key, int v, struct ck_diag *d)
{
	CK_TRY(add_key(w, key, CK_GGUF_BOOL, d));
	buf_le(&w->kv, v != 0, 1);
	return kv_done(w, d);
}

int ck_ggw_kv_str(struct ck_ggw *w, const char *key, const char *s, size_t len,
		  struct ck_diag *d)
{
	if (len > CK_GGUF_MAX_STRING)
		return ck_fail(d, CK_EINVAL, "key '%s': string longer than 1 GiB", key);
	CK_TRY(add_key(w, key, CK_GGUF_STRING, d));
	buf_str(&w->kv, s, len);
	return kv_done(w, d);
}

int ck_ggw_kv_arr(struct ck_ggw *w, const char *key, uint32_t elem_type, const void *data,
		  uint64_t n, struct ck_diag *d)
{
	uint64_t bytes;
	if (!ck_gguf_type_size(elem_type))
		return ck_fail(d, CK_EINVAL, "key '%s': array element type %s is not a scalar", key,
			       ck_gguf_type_name(elem_type));
	if (n > CK_GGUF_MAX_ARRAY || ck_mul_u64(n, ck_gguf_type_size(elem_type), &bytes))
		return ck_fail(d, CK_EINVAL, "key '%s': array of %" PRIu64 " items is too long",
			       key, n);
	CK_TRY(add_key(w, key, CK_GGUF_ARRAY, d));
	buf_le(&w->kv, elem_type, 4);
	buf_le(&w->kv, n, 8);
	buf_add(&w->kv, data, (size_t)bytes);
	return kv_done(w, d);
}

int ck_ggw_kv_strs(struct ck_ggw *w, const char *key, const char *const *strs,
		   const size_t *lens, uint64_t n, struct ck_diag *d)
{
	if (n > CK_GGUF_MAX_ARRAY)
		return ck_fail(d, CK_EINVAL, "key '%s': array of %" PRIu64 " items is too long",
			       key, n);
	CK_TRY(add_key(w, key, CK_GGUF_ARRAY, d));
	buf_le(&w->kv, CK_GGUF_STRING, 4);
	buf_le(&w->kv, n, 8);
	for (uint64_t i = 0; i < n; i++) {
		if (lens[i] > CK_GGUF_MAX_STRING)
			return ck_fail(d, CK_EINVAL, "key '%s': string longer than 1 GiB", key);
		buf_str(&w->kv, strs[i], lens[i]);
	}
	return kv_done(w, d);
}

/* Serialize a value read by the reader (or built like one), without its type. */
static void put_value(struct buf *b, const struct ck_gguf_value *v)
{
	switch (v->type) {
	case CK_GGUF_F32: {
		float f = (float)v->f;
		uint32_t x;
		memcpy(&x, &f, 4);
		buf_le(b, x, 4);
		break;
	}
	case CK_GGUF_F64: {
		uint64_t x;
		memcpy(&x, &v->f, 8);
		buf_le(b, x, 8);
		break;
	}
	case CK_GGUF_STRING:
		buf_str(b, v->str.p, v->str.len);
		break;
	case CK_GGUF_ARRAY:
		buf_le(b, v->arr.type, 4);
		buf_le(b, v->arr.n, 8);
		if (!v->arr.items) {
			buf_add(b, v->arr.raw, (size_t)(v->arr.n * ck_gguf_type_size(v->arr.type)));
			break;
		}
		for (uint64_t i = 0; i < v->arr.n; i++)
			put_value(b, &v->arr.items[i]);
		break;
	case CK_GGUF_BOOL:
		buf_le(b, v->u != 0, 1);
		break;
	default:	/* integers: the low bytes of the two's complement */
		buf_le(b, v->u, ck_gguf_type_size(v->type));
	}
}

/* A value we can write: known types, arrays within the limits and the depth. */
static int check_value(const struct ck_gguf_value *v, int depth)
{
	if (v->type >= CK_GGUF_TYPE_COUNT || depth >= CK_GGUF_MAX_DEPTH)
		return -1;
	if (v->type == CK_GGUF_STRING)
		return v->str.len > CK_GGUF_MAX_STRING ? -1 : 0;
	if (v->type != CK_GGUF_ARRAY)
		return 0;
	if (v->arr.type >= CK_GGUF_TYPE_COUNT || v->arr.n > CK_GGUF_MAX_ARRAY)
		return -1;
	if (ck_gguf_type_size(v->arr.type))
		return v->arr.items || v->arr.raw || !v->arr.n ? 0 : -1;
	if (!v->arr.items && v->arr.n)
		return -1;
	for (uint64_t i = 0; i < v->arr.n; i++)
		if (v->arr.items[i].type != v->arr.type || check_value(&v->arr.items[i], depth + 1))
			return -1;
	return 0;
}

int ck_ggw_kv_copy(struct ck_ggw *w, const struct ck_gguf_kv *kv, struct ck_diag *d)
{
	const struct ck_gguf_value *v = &kv->v;
	char e[256];

	if (check_value(v, 0))
		return ck_fail(d, CK_EINVAL, "key '%s': value cannot be written",
			       esc(kv->key, strlen(kv->key), e, sizeof(e)));
	if (v->type == CK_GGUF_U32)
		return ck_ggw_kv_u32(w, kv->key, (uint32_t)v->u, d);
	if (!strcmp(kv->key, "general.alignment"))
		w->bad_alignment_kv = 1;
	CK_TRY(add_key(w, kv->key, v->type, d));
	put_value(&w->kv, v);
	return kv_done(w, d);
}

int ck_ggw_tensor(struct ck_ggw *w, const struct ck_ggw_tensor *t, struct ck_diag *d)
{
	const struct ck_ggml_type *tt = ck_ggml_type(t->ggml_type);
	size_t len = t->name ? strlen(t->name) : 0;
	struct ck_ggw_tensor *nt;
	uint64_t rows = 1;
	char e[256], tb[32];

	if (w->begun)
		return ck_fail(d, CK_EUSAGE, "tensor added after the header was written");
	esc(t->name ? t->name : "", len, e, sizeof(e));
	if (!t->name || len >= CK_GGUF_MAX_NAME || !ck_utf8_valid(t->name, len))
		return ck_fail(d, CK_EINVAL, "tensor '%s': name must be UTF-8 and shorter than %d"
			       " bytes for GGUF", e, CK_GGUF_MAX_NAME);
	if (!tt)
		return ck_fail(d, CK_EINVAL, "tensor '%s': unknown ggml type %s", e,
			       ck_ggml_type_name(t->ggml_type, tb, sizeof(tb)));
	if (t->ndim < 1 || t->ndim > CK_GGUF_MAX_DIMS)
		return ck_fail(d, CK_EINVAL, "tensor '%s': %d dims, GGUF holds 1..%d", e, t->ndim,
			       CK_GGUF_MAX_DIMS);
	for (int i = 0; i < t->ndim; i++)
		if (!t->shape[i] || t->shape[i] > INT64_MAX)
			return ck_fail(d, CK_EINVAL, "tensor '%s': dimension %d is %" PRIu64
				       ", GGUF needs a positive size", e, i, t->shape[i]);
	if (t->shape[t->ndim - 1] % tt->blck)
		return ck_fail(d, CK_EINVAL, "tensor '%s': last dimension %" PRIu64 " is not a"
			       " multiple of the %s block size %u", e, t->shape[t->ndim - 1],
			       tt->name, tt->blck);
	CK_TRY(grow((void **)&w->t, &w->cap, w->n, SIZE_MAX / sizeof(*w->t), sizeof(*w->t), d));
	nt = &w->t[w->n];
	*nt = *t;
	for (int i = 0; i < t->ndim - 1; i++)
		if (ck_mul_u64(rows, t->shape[i], &rows))
			return ck_fail(d, CK_EINVAL, "tensor '%s': size overflows", e);
	if (ck_mul_u64(t->shape[t->ndim - 1] / tt->blck, tt->type_size, &nt->nbytes) ||
	    ck_mul_u64(nt->nbytes, rows, &nt->nbytes) || nt->nbytes > INT64_MAX / 2)
		return ck_fail(d, CK_EINVAL, "tensor '%s': size overflows", e);
	if (!(nt->name = ck_strdup(t->name)))
		return ck_fail(d, CK_ENOMEM, "out of memory");
	nt->offset = 0;
	w->n++;
	return 0;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Reject duplicate strings among v[0..n); sorts a copy. */
static int find_dup(const char *const *v, size_t n, const char **dup, struct ck_diag *d)
{
	const char **s = ck_mallocarray(n, sizeof(*s));
	*dup = NULL;
	if (!s)
		return ck_fail(d, CK_ENOMEM, "out of memory");
	memcpy(s, v, n * sizeof(*s));
	qsort(s, n, sizeof(*s), cmp_str);
	for (size_t i = 1; i < n && !*dup; i++)
		if (!strcmp(s[i - 1], s[i]))
			*dup = s[i];
	free(s);
	return 0;
}

static int write_pad(struct ck_ggw *w, uint64_t n, struct ck_diag *d)
{
	static const uint8_t zero[4096];
	while (n) {
		size_t c = n < sizeof(zero) ? (size_t)n : sizeof(zero);
		CK_TRY(ck_write_all(w->fd, zero, c, w->fname, d));
		n -= c;
	}
	return 0;
}

static uint64_t pad_to(uint64_t x, uint64_t a)
{
	return (a - x % a) % a;
}

int ck_ggw_begin(struct ck_ggw *w, struct ck_diag *d)
{
	struct buf b = { 0 };
	const char **names;
	const char *dup;
	uint64_t off = 0, align;
	char e[256];
	int rc;

	if (w->begun)
		return 0;
	if (w->bad_alignment_kv)
		return ck_fail(d, CK_EINVAL, "general.alignment must be a u32");
	align = w->alignment ? w->alignment : w->kv_alignment ? w->kv_alignment :
		CK_GGUF_DEFAULT_ALIGNMENT;
	if (w->kv_alignment && w->kv_alignment != align)
		return ck_fail(d, CK_EINVAL, "general.alignment %u differs from the alignment %"
			       PRIu64 " the data is written with", w->kv_alignment, align);
	if (!w->kv_alignment && align != CK_GGUF_DEFAULT_ALIGNMENT)
		return ck_fail(d, CK_EINVAL, "alignment %" PRIu64 " needs a general.alignment key",
			       align);
	w->alignment = (uint32_t)align;
	CK_TRY(find_dup((const char *const *)w->keys, w->nkv, &dup, d));
	if (dup)
		return ck_fail(d, CK_EINVAL, "key '%s': duplicate key", esc(dup, strlen(dup), e,
									     sizeof(e)));
	names = ck_mallocarray(w->n, sizeof(*names));
	if (!names)
		return ck_fail(d, CK_ENOMEM, "out of memory");
	for (size_t i = 0; i < w->n; i++)
		names[i] = w->t[i].name;
	rc = find_dup(names, w->n, &dup, d);
	if (!rc && dup)
		rc = ck_fail(d, CK_EINVAL, "tensor '%s': duplicate tensor name",
			     esc(dup, strlen(dup), e, sizeof(e)));
	free(names);
	CK_TRY(rc);
	for (size_t i = 0; i < w->n; i++) {
		w->t[i].offset = off;
		if (ck_add_u64(off, w->t[i].nbytes, &off) ||
		    ck_add_u64(off, pad_to(off, align), &off) || off > INT64_MAX)
			return ck_fail(d, CK_EINVAL, "total tensor size overflows");
	}
	buf_add(&b, "GGUF", 4);
	buf_le(&b, 3, 4);
	buf_le(&b, w->n, 8);
	buf_le(&b, w->nkv, 8);
	buf_add(&b, w->kv.p, w->kv.len);
	for (size_t i = 0; i < w->n; i++) {
		const struct ck_ggw_tensor *t = &w->t[i];
		buf_str(&b, t->name, strlen(t->name));
		buf_le(&b, (uint64_t)t->ndim, 4);
		for (int k = t->ndim; k-- > 0;)
			buf_le(&b, t->shape[k], 8);	/* ggml ne[]: fastest first */
		buf_le(&b, t->ggml_type, 4);
		buf_le(&b, t->offset, 8);
	}
	if (b.oom || pad_to(b.len, align) > SIZE_MAX - b.len) {
		free(b.p);
		return ck_fail(d, CK_ENOMEM, "out of memory");
	}
	rc = ck_out_open(w->o, "model.gguf", &w->fd, d);
	if (!rc)
		rc = ck_write_all(w->fd, b.p, b.len, w->fname, d);
	/* As ggml: no padding without tensors (a 2^31 alignment must not cost 2 GiB). */
	if (!rc && w->n)
		rc = write_pad(w, pad_to(b.len, align), d);
	free(b.p);
	CK_TRY(rc);
	w->begun = 1;
	return 0;
}

size_t ck_ggw_count(const struct ck_ggw *w)
{
	return w->n;
}

const struct ck_ggw_tensor *ck_ggw_get(const struct ck_ggw *w, size_t k)
{
	return k < w->n ? &w->t[k] : NULL;
}

/* Past the end of the current tensor: pad, move on. */
static int advance(struct ck_ggw *w, struct ck_diag *d)
{
	while (w->cur < w->n && w->cur_done == w->t[w->cur].nbytes) {
		CK_TRY(write_pad(w, pad_to(w->t[w->cur].nbytes, w->alignment), d));
		w->cur++;
		w->cur_done = 0;
	}
	return 0;
}

int ck_ggw_write(struct ck_ggw *w, const void *buf, size_t len, struct ck_diag *d)
{
	const uint8_t *p = buf;

	CK_TRY(ck_ggw_begin(w, d));
	while (len) {
		uint64_t rest;
		size_t chunk;
		if (w->cur >= w->n)
			return ck_fail(d, CK_EINVAL, "more data than the GGUF tensors hold");
		rest = w->t[w->cur].nbytes - w->cur_done;
		chunk = rest < len ? (size_t)rest : len;
		CK_TRY(ck_write_all(w->fd, p, chunk, w->fname, d));
		w->cur_done += chunk;
		p += chunk;
		len -= chunk;
		CK_TRY(advance(w, d));
	}
	return 0;
}

int ck_ggw_copy_fd(struct ck_ggw *w, int fd, uint64_t off, uint64_t len, struct ck_diag *d)
{
	CK_TRY(ck_ggw_begin(w, d));
	while (len) {
		uint64_t rest, chunk;
		if (w->cur >= w->n)
			return ck_fail(d, CK_EINVAL, "more data than the GGUF tensors hold");
		rest = w->t[w->cur].nbytes - w->cur_done;
		chunk = rest < len ? rest : len;
		CK_TRY(ck_copy_range(fd, off, w->fd, w->fname, chunk, d));
		w->cur_done += chunk;
		off += chunk;
		len -= chunk;
		CK_TRY(advance(w, d));
	}
	return 0;
}

int ck_ggw_finish(struct ck_ggw *w, struct ck_diag *d)
{
	CK_TRY(ck_ggw_begin(w, d));
	CK_TRY(advance(w, d));
	if (w->cur < w->n)
		return ck_fail(d, CK_EINVAL, "tensor '%s': %" PRIu64 " of %" PRIu64
			       " bytes written", w->t[w->cur].name, w->cur_done,
			       w->t[w->cur].nbytes);
	return 0;
}

void ck_ggw_free(struct ck_ggw *w)
{
	if (!w)
		return;
	for (size_t i = 0; i < w->nkv; i++)
		free(w->keys[i]);
	for (size_t i = 0; i < w->n; i++)
		free((char *)w->t[i].name);
	free(w->keys);
	free(w->t);
	free(w->kv.p);
	free(w);
}
