/*
 * stwriter.c - the streaming safetensors writer (see stwriter.h).
 *
 * The header of each shard is built as text here rather than through cJSON:
 * offsets are u64 and must print exactly, and the layout (compact JSON,
 * __metadata__ first, entries in offset order, space padding to 8) is ours
 * to fix, not a library's.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "stwriter.h"

struct shard {
	size_t first, count;	/* range in write order */
	uint64_t data_size;
	char name[64];
	int fd;
};

struct ck_stw {
	struct ck_out *out;
	struct ck_stw_tensor *t;	/* write order */
	size_t n;
	struct shard *shards;
	size_t nshards;
	char **meta_k, **meta_v;
	size_t n_meta;
	uint64_t total;
	size_t cur;			/* tensor being written */
	uint64_t cur_done;		/* bytes of it written */
	size_t cur_shard;		/* shard whose header is written, or SIZE_MAX */
	int finished;
};

/* ---- a growable text buffer ---- */
struct buf {
	char *p;
	size_t len, cap;
	int oom;
};

static void buf_add(struct buf *b, const char *s, size_t n)
{
	if (b->oom)
		return;
	if (b->len + n + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 4096;
		while (cap < b->len + n + 1)
			cap *= 2;
		char *p = realloc(b->p, cap);
		if (!p) {
			b->oom = 1;
			return;
		}
		b->p = p;
		b->cap = cap;
	}
	memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = 0;
}

static void buf_str(struct buf *b, const char *s)
{
	buf_add(b, s, strlen(s));
}

static void buf_u64(struct buf *b, uint64_t v)
{
	char tmp[24];
	buf_add(b, tmp, (size_t)snprintf(tmp, sizeof(tmp), "%" PRIu64, v));
}

/* A JSON string literal: escape ", \ and control characters. */
static void buf_json_str(struct buf *b, const char *s)
{
	buf_add(b, "\"", 1);
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		char tmp[8];
		if (*p == '"' || *p == '\\') {
			tmp[0] = '\\';
			tmp[1] = (char)*p;
			buf_add(b, tmp, 2);
		} else if (*p < 0x20) {
			buf_add(b, tmp, (size_t)snprintf(tmp, sizeof(tmp), "\\u%04x", *p));
		} else {
			buf_add(b, (const char *)p, 1);
		}
	}
	buf_add(b, "\"", 1);
}

/* ---- planning ---- */

static int cmp_write_order(const void *a, const void *b)
{
	const struct ck_stw_tensor *x = a, *y = b;
	if (x->shard != y->shard)
		return x->shard < y->shard ? -1 : 1;
	/* The reference writer: dtype alignment descending, then name. */
	if (x->dtype != y->dtype)
		return x->dtype > y->dtype ? -1 : 1;
	return strcmp(x->name, y->name);
}

static int cmp_name(const void *a, const void *b)
{
	const struct ck_stw_tensor *x = *(const struct ck_stw_tensor *const *)a;
	const struct ck_stw_tensor *y = *(const struct ck_stw_tensor *const *)b;
	return strcmp(x->name, y->name);
}

static int tensor_bytes(struct ck_stw_tensor *t, struct ck_diag *d)
{
	uint64_t n = 1, bits;
	for (int i = 0; i < t->ndim; i++)
		if (ck_mul_u64(n, t->shape[i], &n))
			return ck_fail(d, CK_EINVAL, "tensor '%s': shape overflows", t->name);
	if (!ck_dtype_bits(t->dtype))
		return ck_fail(d, CK_EINVAL, "tensor '%s': no dtype", t->name);
	if (ck_mul_u64(n, ck_dtype_bits(t->dtype), &bits) || bits % 8)
		return ck_fail(d, CK_EINVAL, "tensor '%s': %" PRIu64 " elements of %s do not end on a byte",
			       t->name, n, ck_dtype_name(t->dtype));
	t->nbytes = bits / 8;
	return 0;
}

static int check_duplicates(struct ck_stw *w, struct ck_diag *d)
{
	const struct ck_stw_tensor **v = ck_mallocarray(w->n, sizeof(*v));
	int rc = 0;
	if (!v)
		return ck_fail(d, CK_ENOMEM, "out of memory");
	for (size_t i = 0; i < w->n; i++)
		v[i] = &w->t[i];
	qsort(v, w->n, sizeof(*v), cmp_name);
	for (size_t i = 1; i < w->n; i++)
		if (!strcmp(v[i - 1]->name, v[i]->name)) {
			rc = ck_fail(d, CK_EINVAL, "two output tensors are named '%s'", v[i]->name);
			break;
		}
	free(v);
	return rc;
}

static int assign_shards(struct ck_stw *w, uint64_t shard_size, struct ck_diag *d)
{
	uint64_t cur = 0;
	uint32_t s = 0;

	for (size_t i = 0; i < w->n; i++) {
		if (shard_size && cur && cur + w->t[i].nbytes > shard_size) {
			s++;
			cur = 0;
		}
		w->t[i].shard = s;
		cur += w->t[i].nbytes;
		if (ck_add_u64(w->total, w->t[i].nbytes, &w->total))
			return ck_fail(d, CK_EINVAL, "output size overflows");
	}
	w->nshards = w->n ? s + 1 : 1;
	w->shards = ck_calloc(w->nshards, sizeof(*w->shards));
	if (!w->shards)
		return ck_fail(d, CK_ENOMEM, "out of memory");
	qsort(w->t, w->n, sizeof(*w->t), cmp_write_order);
	for (size_t i = 0; i < w->n; i++) {
		struct shard *sh = &w->shards[w->t[i].shard];
		if (!sh->count)
			sh->first = i;
		sh->count++;
		w->t[i].offset = sh->data_size;
		sh->data_size += w->t[i].nbytes;
	}
	for (size_t k = 0; k < w->nshards; k++) {
		w->shards[k].fd = -1;
		if (w->nshards == 1)
			snprintf(w->shards[k].name, sizeof(w->shards[k].name), "model.safetensors");
		else
			snprintf(w->shards[k].name, sizeof(w->shards[k].name),
				 "model-%05zu-of-%05zu.safetensors", k + 1, w->nshards);
	}
	return 0;
}

int ck_stw_plan(struct ck_stw **out, struct ck_out *o, const struct ck_stw_tensor *tensors,
		size_t n, uint64_t shard_size, const char *const *meta_keys,
		const char *const *meta_vals, size_t n_meta, struct ck_diag *d)
{
	struct ck_stw *w = ck_calloc(1, sizeof(*w));
	int rc;

	*out = NULL;
	if (!w)
		return ck_fail(d, CK_ENOMEM, "out of memory");
	w->out = o;
	w->cur_shard = SIZE_MAX;
	w->t = ck_calloc(n, sizeof(*w->t));
	w->meta_k = ck_calloc(n_meta, sizeof(char *));
	w->meta_v = ck_calloc(n_meta, sizeof(char *));
	if (!w->t || !w->meta_k || !w->meta_v) {
		rc = ck_fail(d, CK_ENOMEM, "out of memory");
		goto fail;
	}
	for (size_t i = 0; i < n; i++) {
		w->t[i] = tensors[i];
		w->t[i].name = NULL;
		w->n = i + 1;
		if (!tensors[i].name || !*tensors[i].name) {
			rc = ck_fail(d, CK_EINVAL, "an output tensor has an empty name");
			goto fail;
		}
		if (!(w->t[i].name = ck_strdup(tensors[i].name))) {
			rc = ck_fail(d, CK_ENOMEM, "out of memory");
			goto fail;
		}
		if (tensors[i].ndim < 0 || tensors[i].ndim > CK_MAX_DIMS) {
			rc = ck_fail(d, CK_EINVAL, "tensor '%s': bad rank %d", tensors[i].name,
				     tensors[i].ndim);
			goto fail;
		}
		if ((rc = tensor_bytes(&w->t[i], d)))
			goto fail;
	}
	for (size_t i = 0; i < n_meta; i++) {
		w->meta_k[i] = ck_strdup(meta_keys[i]);
		w->meta_v[i] = ck_strdup(meta_vals[i]);
		w->n_meta = i + 1;
		if (!w->meta_k[i] || !w->meta_v[i]) {
			rc = ck_fail(d, CK_ENOMEM, "out of memory");
			goto fail;
		}
	}
	if ((rc = check_duplicates(w, d)) || (rc = assign_shards(w, shard_size, d)))
		goto fail;
	if (ck_stw_nshards(w) > 1 && ck_out_kind(o) != CK_OUT_DIR) {
		rc = ck_fail(d, CK_EUSAGE, "'%s': %zu shards need a folder as output",
			     ck_out_final_path(o), ck_stw_nshards(w));
		goto fail;
	}
	*out = w;
	return 0;
fail:
	ck_stw_free(w);
	return rc;
}

size_t ck_stw_count(const struct ck_stw *w)
{
	return w->n;
}

const struct ck_stw_tensor *ck_stw_tensor(const struct ck_stw *w, size_t k)
{
	return k < w->n ? &w->t[k] : NULL;
}

size_t ck_stw_nshards(const struct ck_stw *w)
{
	return w->nshards;
}

uint64_t ck_stw_total_size(const struct ck_stw *w)
{
	return w->total;
}

/* ---- streaming ---- */

static int write_header(struct ck_stw *w, size_t k, struct ck_diag *d)
{
	struct shard *sh = &w->shards[k];
	struct buf b = { 0 };
	uint8_t len8[8];
	uint64_t n;
	int rc;

	buf_str(&b, "{\"__metadata__\":{\"format\":\"pt\"");
	for (size_t i = 0; i < w->n_meta; i++) {
		if (!strcmp(w->meta_k[i], "format"))
			continue;
		buf_str(&b, ",");
		buf_json_str(&b, w->meta_k[i]);
		buf_str(&b, ":");
		buf_json_str(&b, w->meta_v[i]);
	}
	buf_str(&b, "}");
	for (size_t i = sh->first; i < sh->first + sh->count; i++) {
		const struct ck_stw_tensor *t = &w->t[i];
		buf_str(&b, ",");
		buf_json_str(&b, t->name);
		buf_str(&b, ":{\"dtype\":\"");
		buf_str(&b, ck_dtype_name(t->dtype));
		buf_str(&b, "\",\"shape\":[");
		for (int j = 0; j < t->ndim; j++) {
			if (j)
				buf_str(&b, ",");
			buf_u64(&b, t->shape[j]);
		}
		buf_str(&b, "],\"data_offsets\":[");
		buf_u64(&b, t->offset);
		buf_str(&b, ",");
		buf_u64(&b, t->offset + t->nbytes);
		buf_str(&b, "]}");
	}
	buf_str(&b, "}");
	while (!b.oom && b.len % 8)
		buf_str(&b, " ");
	if (b.oom) {
		free(b.p);
		return ck_fail(d, CK_ENOMEM, "out of memory");
	}
	n = b.len;
	for (int i = 0; i < 8; i++)
		len8[i] = (uint8_t)(n >> (8 * i));
	rc = ck_out_open(w->out, sh->name, &sh->fd, d);
	if (!rc)
		rc = ck_write_all(sh->fd, len8, 8, sh->name, d);
	if (!rc)
		rc = ck_write_all(sh->fd, b.p, b.len, sh->name, d);
	free(b.p);
	if (!rc)
		w->cur_shard = k;
	return rc;
}

/* Move past finished (and zero-byte) tensors, writing headers of shards as they start. */
static int advance(struct ck_stw *w, struct ck_diag *d)
{
	while (w->cur < w->n && w->cur_done == w->t[w->cur].nbytes) {
		w->cur++;
		w->cur_done = 0;
	}
	if (w->cur < w->n && w->cur_shard != w->t[w->cur].shard)
		CK_TRY(write_header(w, w->t[w->cur].shard, d));
	return 0;
}

static int open_current(struct ck_stw *w, struct ck_diag *d)
{
	if (w->cur_shard == SIZE_MAX && w->cur < w->n)
		CK_TRY(write_header(w, w->t[w->cur].shard, d));
	return 0;
}

int ck_stw_write(struct ck_stw *w, const void *buf, size_t len, struct ck_diag *d)
{
	const char *p = buf;

	CK_TRY(open_current(w, d));
	CK_TRY(advance(w, d));
	while (len) {
		struct ck_stw_tensor *t;
		uint64_t left;
		size_t chunk;
		if (w->cur >= w->n)
			return ck_fail(d, CK_EINVAL, "more data than the planned tensors hold");
		t = &w->t[w->cur];
		left = t->nbytes - w->cur_done;
		chunk = left < len ? (size_t)left : len;
		CK_TRY(ck_write_all(w->shards[t->shard].fd, p, chunk, w->shards[t->shard].name, d));
		w->cur_done += chunk;
		p += chunk;
		len -= chunk;
		CK_TRY(advance(w, d));
	}
	return 0;
}

int ck_stw_copy_fd(struct ck_stw *w, int fd, uint64_t off, uint64_t len, struct ck_diag *d)
{
	CK_TRY(open_current(w, d));
	CK_TRY(advance(w, d));
	while (len) {
		struct ck_stw_tensor *t;
		uint64_t left, chunk;
		if (w->cur >= w->n)
			return ck_fail(d, CK_EINVAL, "more data than the planned tensors hold");
		t = &w->t[w->cur];
		left = t->nbytes - w->cur_done;
		chunk = left < len ? left : len;
		CK_TRY(ck_copy_range(fd, off, w->shards[t->shard].fd, w->shards[t->shard].name,
				     chunk, d));
		w->cur_done += chunk;
		off += chunk;
		len -= chunk;
		CK_TRY(advance(w, d));
	}
	return 0;
}

static int write_index(struct ck_stw *w, struct ck_diag *d)
{
	const struct ck_stw_tensor **v = ck_mallocarray(w->n, sizeof(*v));
	struct buf b = { 0 };
	int rc;

	if (!v)
		return ck_fail(d, CK_ENOMEM, "out of memory");
	for (size_t i = 0; i < w->n; i++)
		v[i] = &w->t[i];
	qsort(v, w->n, sizeof(*v), cmp_name);
	/* As transformers writes it: json.dumps(index, indent=2, sort_keys=True) + "\n". */
	buf_str(&b, "{\n  \"metadata\": {\n    \"total_size\": ");
	buf_u64(&b, w->total);
	buf_str(&b, "\n  },\n  \"weight_map\": {");
	for (size_t i = 0; i < w->n; i++) {
		buf_str(&b, i ? ",\n    " : "\n    ");
		buf_json_str(&b, v[i]->name);
		buf_str(&b, ": \"");
		buf_str(&b, w->shards[v[i]->shard].name);
		buf_str(&b, "\"");
	}
	buf_str(&b, w->n ? "\n  }\n}\n" : "}\n}\n");
	free(v);
	if (b.oom) {
		free(b.p);
		return ck_fail(d, CK_ENOMEM, "out of memory");
	}
	rc = ck_out_write_file(w->out, "model.safetensors.index.json", b.p, b.len, d);
	free(b.p);
	return rc;
}

int ck_stw_finish(struct ck_stw *w, struct ck_diag *d)
{
	CK_TRY(open_current(w, d));
	CK_TRY(advance(w, d));
	if (w->cur < w->n)
		return ck_fail(d, CK_EINVAL, "tensor '%s': %" PRIu64 " of %" PRIu64 " bytes written",
			       w->t[w->cur].name, w->cur_done, w->t[w->cur].nbytes);
	if (w->n == 0 || w->cur_shard == SIZE_MAX)
		CK_TRY(write_header(w, 0, d));
	/* Shards holding only empty tensors were never reached by advance(). */
	for (size_t k = 0; k < w->nshards; k++)
		if (w->shards[k].fd < 0)
			CK_TRY(write_header(w, k, d));
	if (w->nshards > 1)
		CK_TRY(write_index(w, d));
	w->finished = 1;
	return 0;
}

void ck_stw_free(struct ck_stw *w)
{
	if (!w)
		return;
	for (size_t i = 0; i < w->n; i++)
		free((char *)w->t[i].name);
	for (size_t i = 0; i < w->n_meta; i++) {
		free(w->meta_k[i]);
		free(w->meta_v[i]);
	}
	free(w->meta_k);
	free(w->meta_v);
	free(w->t);
	free(w->shards);
	free(w);
}
