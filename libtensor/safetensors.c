/*
 * safetensors.c - the safetensors reader (see safetensors.h for the rules).
 */
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include "safetensors.h"

#define MAX_EXACT (1ULL << 53)

/* A JSON number that is a non-negative integer we can carry exactly. */
static int json_u64(const cJSON *v, uint64_t *out)
{
	double x;
	if (!cJSON_IsNumber(v))
		return -1;
	x = v->valuedouble;
	if (!(x >= 0) || x >= (double)MAX_EXACT || x != (double)(uint64_t)x)
		return -1;
	*out = (uint64_t)x;
	return 0;
}

/*
 * cJSON decodes "\u0000" into a NUL byte, after which every C string
 * comparison sees a shorter name.  Find any in the raw header instead.
 */
static int has_escaped_nul(const char *s, size_t len)
{
	for (size_t i = 0; i + 6 <= len; i++) {
		if (s[i] != '\\')
			continue;
		if (s[i + 1] == 'u' && s[i + 2] == '0' && s[i + 3] == '0' && s[i + 4] == '0' &&
		    s[i + 5] == '0')
			return 1;
		i++;	/* skip the escaped character */
	}
	return 0;
}

/*
 * serde reads shape and offsets as usize: 1e3, 2.0 and -0 are errors
 * there, while cJSON hands them to us as the doubles 1000, 2 and 0.  Every
 * number of a safetensors header is a shape entry or an offset (metadata
 * values are strings), so any number token outside a string written with a
 * sign, a fraction or an exponent is refused.  Returns its byte offset + 1.
 */
static size_t non_integer_number(const char *s, size_t len)
{
	int in_str = 0;
	for (size_t i = 0; i < len; i++) {
		char c = s[i];
		if (in_str) {
			if (c == '\\')
				i++;
			else if (c == '"')
				in_str = 0;
		} else if (c == '"') {
			in_str = 1;
		} else if (c == '-' || (c >= '0' && c <= '9')) {
			size_t j = i;
			for (; j < len && strchr("0123456789.eE+-", s[j]); j++)
				if (s[j] == '.' || s[j] == 'e' || s[j] == 'E' || s[j] == '-')
					return i + 1;
			i = j - 1;
		}
	}
	return 0;
}

static int cmp_offset(const void *a, const void *b)
{
	const struct ck_tensor *x = a, *y = b;
	if (x->offset != y->offset)
		return x->offset < y->offset ? -1 : 1;
	if (x->nbytes != y->nbytes)	/* holds end - begin until validated */
		return x->nbytes < y->nbytes ? -1 : 1;
	return 0;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static int parse_meta(struct ck_st_file *f, const cJSON *meta, struct ck_diag *d)
{
	size_t n = 0, i = 0;
	const cJSON *kv;

	if (!cJSON_IsObject(meta))
		return ck_fail(d, CK_EINVAL, "'%s': __metadata__ is not a JSON object", f->path);
	cJSON_ArrayForEach(kv, meta) n++;
	f->meta_keys = ck_calloc(n, sizeof(char *));
	f->meta_vals = ck_calloc(n, sizeof(char *));
	if (!f->meta_keys || !f->meta_vals)
		return ck_fail(d, CK_ENOMEM, "out of memory");
	cJSON_ArrayForEach(kv, meta) {
		char esc[256];
		if (!cJSON_IsString(kv))
			return ck_fail(d, CK_EINVAL, "'%s': __metadata__ value of '%s' is not a string",
				       f->path, ck_escape(kv->string, strlen(kv->string), esc, sizeof(esc)));
		for (size_t j = 0; j < i; j++)
			if (!strcmp(f->meta_keys[j], kv->string))
				return ck_fail(d, CK_EINVAL, "'%s': duplicate __metadata__ key '%s'",
					       f->path, ck_escape(kv->string, strlen(kv->string), esc,
								  sizeof(esc)));
		f->meta_keys[i] = ck_strdup(kv->string);
		f->meta_vals[i] = ck_strdup(kv->valuestring);
		f->n_meta = ++i;
		if (!f->meta_keys[i - 1] || !f->meta_vals[i - 1])
			return ck_fail(d, CK_ENOMEM, "out of memory");
	}
	return 0;
}

/* Fill t from one header entry; t->offset and t->nbytes hold begin and end-begin. */
static int parse_entry(struct ck_st_file *f, const cJSON *e, struct ck_tensor *t, uint64_t *begin,
		       uint64_t *end, struct ck_diag *d)
{
	const cJSON *dt, *shape, *offs, *dim;
	char esc[256];
	const char *name = ck_escape(e->string, strlen(e->string), esc, sizeof(esc));
	int nd = 0;

	if (!cJSON_IsObject(e))
		return ck_fail(d, CK_EINVAL, "'%s': tensor '%s': entry is not a JSON object", f->path,
			       name);
	dt = cJSON_GetObjectItemCaseSensitive(e, "dtype");
	shape = cJSON_GetObjectItemCaseSensitive(e, "shape");
	offs = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
	if (!cJSON_IsString(dt))
		return ck_fail(d, CK_EINVAL, "'%s': tensor '%s': missing or non-string dtype", f->path,
			       name);
	if (!cJSON_IsArray(shape))
		return ck_fail(d, CK_EINVAL, "'%s': tensor '%s': missing or non-array shape", f->path,
			       name);
	if (!cJSON_IsArray(offs) || cJSON_GetArraySize(offs) != 2)
		return ck_fail(d, CK_EINVAL, "'%s': tensor '%s': data_offsets is not [begin, end]",
			       f->path, name);
	t->dtype = ck_dtype_from_name(dt->valuestring, strlen(dt->valuestring));
	if (t->dtype == CK_DT_UNKNOWN) {
		char e2[64];
		return ck_fail(d, CK_EINVAL, "'%s': tensor '%s': unknown dtype '%s'", f->path, name,
			       ck_escape(dt->valuestring, strlen(dt->valuestring), e2, sizeof(e2)));
	}
	t->nelem = 1;
	cJSON_ArrayForEach(dim, shape) {
		uint64_t v;
		if (nd == CK_MAX_DIMS)
			return ck_fail(d, CK_EUNSUPPORTED, "'%s': tensor '%s': more than %d dimensions",
				       f->path, name, CK_MAX_DIMS);
		if (json_u64(dim, &v) < 0)
			return ck_fail(d, CK_EINVAL,
				       "'%s': tensor '%s': shape entry is not a non-negative integer below 2^53",
				       f->path, name);
		t->shape[nd++] = v;
		if (ck_mul_u64(t->nelem, v, &t->nelem))
			return ck_fail(d, CK_EINVAL, "'%s': tensor '%s': shape product overflows 64 bits",
				       f->path, name);
	}
	t->ndim = nd;
	if (json_u64(cJSON_GetArrayItem(offs, 0), begin) < 0 ||
	    json_u64(cJSON_GetArrayItem(offs, 1), end) < 0)
		return ck_fail(d, CK_EINVAL,
			       "'%s': tensor '%s': data_offsets entry is not a non-negative integer below 2^53",
			       f->path, name);
	t->ggml_type = -1;
	return 0;
}

static int validate(struct ck_st_file *f, uint64_t *begins, struct ck_diag *d)
{
	uint64_t start = 0;
	char esc[256];

	for (size_t i = 0; i < f->n; i++) {
		struct ck_tensor *t = &f->tensors[i];
		uint64_t b = t->offset, e = b + t->nbytes, bits;
		const char *name = ck_escape(t->name, strlen(t->name), esc, sizeof(esc));

		if (b != start)
			return ck_fail(d, CK_EINVAL,
				       "'%s': tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64 "] %s "
				       "(expected begin %" PRIu64 ")",
				       f->path, name, b, e,
				       b < start ? "overlap the previous tensor" :
				       i == 0 ? "do not start at 0, leaving a hole" :
				       "leave a hole after the previous tensor", start);
		start = e;
		if (ck_mul_u64(t->nelem, ck_dtype_bits(t->dtype), &bits))
			return ck_fail(d, CK_EINVAL, "'%s': tensor '%s': byte size overflows 64 bits",
				       f->path, name);
		if (bits % 8)
			return ck_fail(d, CK_EINVAL,
				       "'%s': tensor '%s': %" PRIu64 " elements of %s do not end on a byte",
				       f->path, name, t->nelem, ck_dtype_name(t->dtype));
		if (bits / 8 != t->nbytes)
			return ck_fail(d, CK_EINVAL,
				       "'%s': tensor '%s': shape and dtype give %" PRIu64
				       " bytes but data_offsets span %" PRIu64,
				       f->path, name, bits / 8, t->nbytes);
		begins[i] = b;
	}
	if (f->data_start + start != f->size) {
		if (f->data_start + start > f->size)
			return ck_fail(d, CK_EINVAL,
				       "'%s': data ends at byte %" PRIu64 ", past EOF at %" PRIu64
				       " (truncated file?)",
				       f->path, f->data_start + start, f->size);
		return ck_fail(d, CK_EINVAL,
			       "'%s': %" PRIu64 " trailing bytes after the last tensor (file not fully covered)",
			       f->path, f->size - f->data_start - start);
	}
	for (size_t i = 0; i < f->n; i++) {
		f->tensors[i].offset = f->data_start + begins[i];
		f->tensors[i].data = f->map + f->tensors[i].offset;
	}
	return 0;
}

static int check_names(struct ck_st_file *f, struct ck_diag *d)
{
	const char **names = ck_mallocarray(f->n, sizeof(*names));
	int rc = 0;

	if (!names)
		return ck_fail(d, CK_ENOMEM, "out of memory");
	for (size_t i = 0; i < f->n; i++)
		names[i] = f->tensors[i].name;
	qsort(names, f->n, sizeof(*names), cmp_str);
	for (size_t i = 1; i < f->n; i++) {
		if (!strcmp(names[i - 1], names[i])) {
			char esc[256];
			rc = ck_fail(d, CK_EINVAL, "'%s': duplicate tensor name '%s'", f->path,
				     ck_escape(names[i], strlen(names[i]), esc, sizeof(esc)));
			break;
		}
	}
	free(names);
	return rc;
}

static int parse_header(struct ck_st_file *f, struct ck_diag *d)
{
	const char *js;
	const char *endp = NULL;
	cJSON *root = NULL, *e;
	uint64_t n, *begins = NULL;
	size_t count = 0, i = 0, bad;
	int rc = 0;

	if (f->size < 8)
		return ck_fail(d, CK_EINVAL, "'%s': header too small: file has %" PRIu64 " bytes",
			       f->path, f->size);
	n = 0;
	for (int k = 7; k >= 0; k--)
		n = n << 8 | f->map[k];
	if (n > CK_ST_MAX_HEADER)
		return ck_fail(d, CK_EINVAL, "'%s': header length %" PRIu64 " over the %llu-byte cap",
			       f->path, n, (unsigned long long)CK_ST_MAX_HEADER);
	if (8 + n > f->size)
		return ck_fail(d, CK_EINVAL, "'%s': header length %" PRIu64 " runs past EOF at %" PRIu64,
			       f->path, n, f->size);
	f->header_len = n;
	f->data_start = 8 + n;
	js = (const char *)f->map + 8;
	if (!ck_utf8_valid(js, n))
		return ck_fail(d, CK_EINVAL, "'%s': header is not valid UTF-8", f->path);
	if (has_escaped_nul(js, n))
		return ck_fail(d, CK_EINVAL, "'%s': header has a NUL character (\\u0000) in a string",
			       f->path);
	if ((bad = non_integer_number(js, n)))
		return ck_fail(d, CK_EINVAL,
			       "'%s': header has a number that is not a non-negative integer (byte %zu)",
			       f->path, bad - 1);
	root = cJSON_ParseWithLengthOpts(js, n, &endp, 0);
	if (!root) {
		uint64_t at = endp ? (uint64_t)(endp - js) : 0;
		return ck_fail(d, CK_EINVAL, "'%s': header is not valid JSON (near byte %" PRIu64 ")",
			       f->path, 8 + at);
	}
	for (const char *p = endp; p < js + n; p++)
		if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
			rc = ck_fail(d, CK_EINVAL, "'%s': header has junk after the JSON object (byte %" PRIu64 ")",
				     f->path, (uint64_t)(p - js) + 8);
			goto out;
		}
	if (!cJSON_IsObject(root)) {
		rc = ck_fail(d, CK_EINVAL, "'%s': header is not a JSON object", f->path);
		goto out;
	}
	cJSON_ArrayForEach(e, root) {
		if (!strcmp(e->string, "__metadata__")) {
			if (f->meta_keys) {
				rc = ck_fail(d, CK_EINVAL, "'%s': duplicate __metadata__", f->path);
				goto out;
			}
			rc = parse_meta(f, e, d);
			if (rc)
				goto out;
		} else {
			count++;
		}
	}
	f->tensors = ck_calloc(count, sizeof(*f->tensors));
	begins = ck_calloc(count, sizeof(*begins));
	if (!f->tensors || !begins) {
		rc = ck_fail(d, CK_ENOMEM, "out of memory");
		goto out;
	}
	cJSON_ArrayForEach(e, root) {
		struct ck_tensor *t;
		uint64_t b = 0, en = 0;
		if (!strcmp(e->string, "__metadata__"))
			continue;
		t = &f->tensors[i];
		if (!*e->string) {
			rc = ck_fail(d, CK_EINVAL, "'%s': empty tensor name", f->path);
			goto out;
		}
		t->name = ck_strdup(e->string);
		f->n = ++i;
		if (!t->name) {
			rc = ck_fail(d, CK_ENOMEM, "out of memory");
			goto out;
		}
		rc = parse_entry(f, e, t, &b, &en, d);
		if (rc)
			goto out;
		if (en < b) {
			char esc[256];
			rc = ck_fail(d, CK_EINVAL,
				     "'%s': tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64 "] end before they begin",
				     f->path, ck_escape(t->name, strlen(t->name), esc, sizeof(esc)), b, en);
			goto out;
		}
		t->offset = b;
		t->nbytes = en - b;
	}
	rc = check_names(f, d);
	if (rc)
		goto out;
	qsort(f->tensors, f->n, sizeof(*f->tensors), cmp_offset);
	rc = validate(f, begins, d);
out:
	free(begins);
	cJSON_Delete(root);
	return rc;
}

static int st_new(struct ck_st_file **out, const char *name, struct ck_diag *d)
{
	struct ck_st_file *f = ck_calloc(1, sizeof(*f));
	*out = NULL;
	if (!f || !(f->path = ck_strdup(name))) {
		free(f);
		return ck_fail(d, CK_ENOMEM, "out of memory");
	}
	f->fd = -1;
	*out = f;
	return 0;
}

int ck_st_parse(struct ck_st_file **out, const uint8_t *buf, uint64_t len, const char *name,
		struct ck_diag *d)
{
	struct ck_st_file *f;
	int rc;

	CK_TRY(st_new(&f, name, d));
	f->map = buf;
	f->size = len;
	rc = parse_header(f, d);
	if (rc) {
		f->map = NULL;
		ck_st_close(f);
		return rc;
	}
	*out = f;
	return 0;
}

int ck_st_open(struct ck_st_file **out, const char *path, struct ck_diag *d)
{
	struct ck_st_file *f;
	struct stat st;
	int rc;

	CK_TRY(st_new(&f, path, d));
	/* O_NONBLOCK: open of a FIFO would wait for a writer; fstat refuses it next. */
	f->fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
	if (f->fd < 0) {
		rc = ck_fail(d, ck_open_status(errno), "'%s': cannot open: %s", path,
			     strerror(errno));
		goto fail;
	}
	if (fstat(f->fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		rc = ck_fail(d, CK_EINVAL, "'%s': not a regular file", path);
		goto fail;
	}
	f->size = (uint64_t)st.st_size;
	if (f->size) {
		void *m = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, f->fd, 0);
		if (m == MAP_FAILED) {
			rc = ck_fail(d, CK_EIO, "'%s': cannot map: %s", path, strerror(errno));
			goto fail;
		}
		f->map = m;
	}
	rc = parse_header(f, d);
	if (rc)
		goto fail;
	*out = f;
	return 0;
fail:
	ck_st_close(f);
	return rc;
}

void ck_st_close(struct ck_st_file *f)
{
	if (!f)
		return;
	if (f->fd >= 0) {
		if (f->map)
			munmap((void *)f->map, f->size);
		close(f->fd);
	}
	for (size_t i = 0; i < f->n; i++)
		free((char *)f->tensors[i].name);
	for (size_t i = 0; i < f->n_meta; i++) {
		free(f->meta_keys[i]);
		free(f->meta_vals[i]);
	}
	free(f->meta_keys);
	free(f->meta_vals);
	free(f->tensors);
	free(f->path);
	free(f);
}
