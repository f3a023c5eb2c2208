/*
 * model.c - open a .safetensors file, a model folder or a .gguf file behind
 * one lookup API (see model.h).
 */
#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include "files.h"
#include "gguf.h"
#include "model.h"
#include "safetensors.h"

#define INDEX_NAME "model.safetensors.index.json"
#define INDEX_MAX (256u << 20)

struct ck_model {
	enum ck_model_kind kind;
	char *path;
	char *dir;
	size_t nfiles;
	char **files;			/* full paths */
	struct ck_st_file **st;		/* one per file (safetensors kinds) */
	struct ck_gguf *gguf;
	int gguf_fd;
	size_t n;
	const struct ck_tensor **order;	/* file order */
	const struct ck_tensor **byname;
	struct ck_tensor *owned;	/* copies with .file set (folders) */
};

static int cmp_tensor_name(const void *a, const void *b)
{
	const struct ck_tensor *x = *(const struct ck_tensor *const *)a;
	const struct ck_tensor *y = *(const struct ck_tensor *const *)b;
	return strcmp(x->name, y->name);
}

static int cmp_cstr(const void *a, const void *b)
{
	return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static char *join(const char *a, const char *b)
{
	size_t n = strlen(a) + strlen(b) + 2;
	char *p = ck_malloc(n);
	if (p)
		snprintf(p, n, "%s/%s", a, b);
	return p;
}

static int exists(const char *dir, const char *name)
{
	char *p = join(dir, name);
	struct stat st;
	int r = p && stat(p, &st) == 0 && S_ISREG(st.st_mode);
	free(p);
	return r;
}

/* Build the name index; fail on a name present twice (across shards). */
static int build_index(struct ck_model *m, struct ck_diag *d)
{
	m->byname = ck_mallocarray(m->n, sizeof(*m->byname));
	if (!m->byname)
		return ck_fail(d, CK_ENOMEM, "out of memory");
	memcpy(m->byname, m->order, m->n * sizeof(*m->byname));
	qsort(m->byname, m->n, sizeof(*m->byname), cmp_tensor_name);
	for (size_t i = 1; i < m->n; i++)
		if (!strcmp(m->byname[i - 1]->name, m->byname[i]->name)) {
			char esc[256];
			const char *nm = m->byname[i]->name;
			return ck_fail(d, CK_EINVAL, "'%s': tensor '%s' is in both '%s' and '%s'", m->path,
				       ck_escape(nm, strlen(nm), esc, sizeof(esc)),
				       m->files[m->byname[i - 1]->file], m->files[m->byname[i]->file]);
		}
	return 0;
}

/* Open the listed safetensors files and concatenate their tensors in file order. */
static int open_st_files(struct ck_model *m, struct ck_diag *d)
{
	size_t total = 0, k = 0;

	m->st = ck_calloc(m->nfiles, sizeof(*m->st));
	if (!m->st)
		return ck_fail(d, CK_ENOMEM, "out of memory");
	for (size_t i = 0; i < m->nfiles; i++) {
		CK_TRY(ck_st_open(&m->st[i], m->files[i], d));
		total += m->st[i]->n;
	}
	m->owned = ck_calloc(total, sizeof(*m->owned));
	m->order = ck_calloc(total, sizeof(*m->order));
	if (!m->owned || !m->order)
		return ck_fail(d, CK_ENOMEM, "out of memory");
	for (size_t i = 0; i < m->nfiles; i++)
		for (size_t j = 0; j < m->st[i]->n; j++) {
			m->owned[k] = m->st[i]->tensors[j];
			m->owned[k].file = (uint32_t)i;
			m->order[k] = &m->owned[k];
			k++;
		}
	m->n = total;
	return build_index(m, d);
}

static int bad_shard_name(const char *s)
{
	return !*s || strchr(s, '/') || !strcmp(s, ".") || !strcmp(s, "..") ||
	       !ck_utf8_valid(s, strlen(s));
}

/*
 * A sharded folder: the shard list is the set of files the weight_map names.
 * Every name must be in the shard it names, and every shard tensor must be named.
 */
static int open_index(struct ck_model *m, struct ck_diag *d)
{
	char *ipath = join(m->dir, INDEX_NAME), *buf = NULL;
	const char *endp = NULL;
	size_t len, nnames = 0, nuniq = 0;
	cJSON *root = NULL, *wm, *e;
	const char **shards = NULL;
	int rc = 0;

	if (!ipath)
		return ck_fail(d, CK_ENOMEM, "out of memory");
	rc = ck_read_file(ipath, INDEX_MAX, &buf, &len, d);
	if (rc)
		goto out;
	root = cJSON_ParseWithLengthOpts(buf, len, &endp, 0);
	if (!root || !cJSON_IsObject(root)) {
		rc = ck_fail(d, CK_EINVAL, "'%s': not a JSON object (near byte %zu)", ipath,
			     endp ? (size_t)(endp - buf) : (size_t)0);
		goto out;
	}
	wm = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
	if (!cJSON_IsObject(wm)) {
		rc = ck_fail(d, CK_EINVAL, "'%s': weight_map is missing or not an object", ipath);
		goto out;
	}
	cJSON_ArrayForEach(e, wm) nnames++;
	shards = ck_calloc(nnames, sizeof(*shards));
	if (!shards) {
		rc = ck_fail(d, CK_ENOMEM, "out of memory");
		goto out;
	}
	nnames = 0;
	cJSON_ArrayForEach(e, wm) {
		char esc[256];
		if (!cJSON_IsString(e) || bad_shard_name(e->valuestring)) {
			rc = ck_fail(d, CK_EINVAL, "'%s': tensor '%s': shard is not a plain file name",
				     ipath, ck_escape(e->string, strlen(e->string), esc, sizeof(esc)));
			goto out;
		}
		shards[nnames++] = e->valuestring;
	}
	if (!nnames) {
		rc = ck_fail(d, CK_EINVAL, "'%s': weight_map is empty", ipath);
		goto out;
	}
	qsort(shards, nnames, sizeof(*shards), cmp_cstr);
	for (size_t i = 0; i < nnames; i++)
		if (!i || strcmp(shards[i], shards[nuniq - 1]))
			shards[nuniq++] = shards[i];
	m->files = ck_calloc(nuniq, sizeof(*m->files));
	if (!m->files) {
		rc = ck_fail(d, CK_ENOMEM, "out of memory");
		goto out;
	}
	for (size_t i = 0; i < nuniq; i++) {
		if (!(m->files[i] = join(m->dir, shards[i]))) {
			rc = ck_fail(d, CK_ENOMEM, "out of memory");
			goto out;
		}
		m->nfiles = i + 1;
		if (!exists(m->dir, shards[i])) {
			rc = ck_fail(d, CK_EINVAL, "'%s': shard '%s' named by the index is missing",
				     m->path, shards[i]);
			goto out;
		}
	}
	rc = open_st_files(m, d);
	if (rc)
		goto out;
	/* The index and the shards must agree, both ways. */
	cJSON_ArrayForEach(e, wm) {
		const struct ck_tensor *t = ck_model_find(m, e->string);
		char esc[256];
		if (!t || strcmp(m->files[t->file] + strlen(m->dir) + 1, e->valuestring)) {
			rc = ck_fail(d, CK_EINVAL, "'%s': tensor '%s' named by the index is not in shard '%s'",
				     m->path, ck_escape(e->string, strlen(e->string), esc, sizeof(esc)),
				     e->valuestring);
			goto out;
		}
	}
	for (size_t i = 0; i < m->n; i++)
		if (!cJSON_GetObjectItemCaseSensitive(wm, m->order[i]->name)) {
			char esc[256];
			const char *nm = m->order[i]->name;
			rc = ck_fail(d, CK_EINVAL, "'%s': tensor '%s' in shard '%s' is not in the index",
				     m->path, ck_escape(nm, strlen(nm), esc, sizeof(esc)),
				     m->files[m->order[i]->file]);
			goto out;
		}
	/* cJSON lookups are first-wins: a duplicate key in weight_map would hide a tensor. */
	if (nnames != m->n) {
		rc = ck_fail(d, CK_EINVAL, "'%s': weight_map names %zu tensors but the shards hold %zu "
			     "(duplicate keys?)", ipath, nnames, m->n);
		goto out;
	}
out:
	free(shards);
	cJSON_Delete(root);
	free(buf);
	free(ipath);
	return rc;
}

/* A folder without an index: model.safetensors, original/, or its one .safetensors file. */
static int open_single_in_folder(struct ck_model *m, struct ck_diag *d)
{
	const char *name = NULL;
	char *found = NULL;
	DIR *dir;
	struct dirent *e;
	int count = 0;

	if (exists(m->dir, "model.safetensors")) {
		name = "model.safetensors";
	} else if (exists(m->dir, "original/model.safetensors")) {
		char *sub = join(m->dir, "original");
		if (!sub)
			return ck_fail(d, CK_ENOMEM, "out of memory");
		free(m->dir);
		m->dir = sub;
		name = "model.safetensors";
	} else {
		dir = opendir(m->dir);
		if (!dir)
			return ck_fail(d, CK_EIO, "'%s': cannot read folder: %s", m->path, strerror(errno));
		while ((e = readdir(dir))) {
			size_t n = strlen(e->d_name);
			if (n > 12 && !strcmp(e->d_name + n - 12, ".safetensors") && e->d_name[0] != '.') {
				count++;
				free(found);
				found = ck_strdup(e->d_name);
			}
		}
		closedir(dir);
		if (count != 1) {
			free(found);
			return ck_fail(d, CK_EINVAL,
				       count ? "'%s': %d .safetensors files but no " INDEX_NAME
				       : "'%s': no model.safetensors or " INDEX_NAME " (%d safetensors files)",
				       m->path, count);
		}
		name = found;
	}
	m->files = ck_calloc(1, sizeof(*m->files));
	if (!m->files || !(m->files[0] = join(m->dir, name))) {
		free(found);
		return ck_fail(d, CK_ENOMEM, "out of memory");
	}
	free(found);
	m->nfiles = 1;
	return open_st_files(m, d);
}

/* GGUF by magic, or by name (so a broken .gguf gets the GGUF reader's error). */
static int is_gguf(const char *path)
{
	unsigned char magic[4];
	size_t len = strlen(path);
	int fd;
	ssize_t n;
	if (len > 5 && !strcmp(path + len - 5, ".gguf"))
		return 1;
	fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0)
		return 0;
	n = read(fd, magic, 4);
	close(fd);
	return n == 4 && !memcmp(magic, "GGUF", 4);
}

static int open_gguf(struct ck_model *m, struct ck_diag *d)
{
	CK_TRY(ck_gguf_open(&m->gguf, m->path, d));
	m->gguf_fd = open(m->path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
	if (m->gguf_fd < 0)
		return ck_fail(d, CK_EIO, "'%s': cannot open: %s", m->path, strerror(errno));
	m->n = ck_gguf_ntensors(m->gguf);
	m->order = ck_calloc(m->n, sizeof(*m->order));
	if (!m->order)
		return ck_fail(d, CK_ENOMEM, "out of memory");
	for (size_t i = 0; i < m->n; i++)
		m->order[i] = ck_gguf_tensor(m->gguf, i);
	return build_index(m, d);
}

int ck_model_open(struct ck_model **out, const char *path, struct ck_diag *d)
{
	struct ck_model *m;
	struct stat st;
	int rc;

	*out = NULL;
	if (stat(path, &st) < 0)
		return ck_fail(d, ck_open_status(errno), "'%s': %s", path,
			       strerror(errno));
	m = ck_calloc(1, sizeof(*m));
	if (!m || !(m->path = ck_strdup(path))) {
		free(m);
		return ck_fail(d, CK_ENOMEM, "out of memory");
	}
	m->gguf_fd = -1;
	if (S_ISDIR(st.st_mode)) {
		m->kind = CK_MODEL_FOLDER;
		m->dir = ck_strdup(path);
		if (!m->dir)
			rc = ck_fail(d, CK_ENOMEM, "out of memory");
		else if (exists(path, INDEX_NAME))
			rc = open_index(m, d);
		else
			rc = open_single_in_folder(m, d);
	} else {
		char *copy = ck_strdup(path), *slash;
		if (copy && (slash = strrchr(copy, '/'))) {
			*slash = 0;
			m->dir = ck_strdup(slash == copy ? "/" : copy);
		} else {
			m->dir = ck_strdup(".");
		}
		free(copy);
		if (!m->dir) {
			rc = ck_fail(d, CK_ENOMEM, "out of memory");
		} else if (is_gguf(path)) {
			m->kind = CK_MODEL_GGUF;
			m->files = ck_calloc(1, sizeof(*m->files));
			if (!m->files || !(m->files[0] = ck_strdup(path)))
				rc = ck_fail(d, CK_ENOMEM, "out of memory");
			else
				m->nfiles = 1, rc = open_gguf(m, d);
		} else {
			m->kind = CK_MODEL_SAFETENSORS;
			m->files = ck_calloc(1, sizeof(*m->files));
			if (!m->files || !(m->files[0] = ck_strdup(path)))
				rc = ck_fail(d, CK_ENOMEM, "out of memory");
			else
				m->nfiles = 1, rc = open_st_files(m, d);
		}
	}
	if (rc) {
		ck_model_free(m);
		return rc;
	}
	*out = m;
	return 0;
}

void ck_model_free(struct ck_model *m)
{
	if (!m)
		return;
	for (size_t i = 0; i < m->nfiles; i++) {
		if (m->st)
			ck_st_close(m->st[i]);
		free(m->files[i]);
	}
	ck_gguf_close(m->gguf);
	if (m->gguf_fd >= 0)
		close(m->gguf_fd);
	free(m->st);
	free(m->files);
	free(m->owned);
	free(m->order);
	free(m->byname);
	free(m->dir);
	free(m->path);
	free(m);
}

enum ck_model_kind ck_model_kind(const struct ck_model *m)
{
	return m->kind;
}

const char *ck_model_path(const struct ck_model *m)
{
	return m->path;
}

const char *ck_model_dir(const struct ck_model *m)
{
	return m->dir;
}

size_t ck_model_count(const struct ck_model *m)
{
	return m->n;
}

const struct ck_tensor *ck_model_tensor(const struct ck_model *m, size_t i)
{
	return i < m->n ? m->order[i] : NULL;
}

const struct ck_tensor *ck_model_find(const struct ck_model *m, const char *name)
{
	struct ck_tensor key = { .name = name };
	const struct ck_tensor *kp = &key, *const *hit;
	if (!m->byname)
		return NULL;
	hit = bsearch(&kp, m->byname, m->n, sizeof(*m->byname), cmp_tensor_name);
	return hit ? *hit : NULL;
}

size_t ck_model_nfiles(const struct ck_model *m)
{
	return m->nfiles;
}

const char *ck_model_file(const struct ck_model *m, size_t i)
{
	return i < m->nfiles ? m->files[i] : NULL;
}

int ck_model_file_fd(const struct ck_model *m, size_t i)
{
	if (i >= m->nfiles)
		return -1;
	if (m->st)
		return m->st[i]->fd;
	return m->gguf_fd;
}

size_t ck_model_meta(const struct ck_model *m, size_t file, const char *const **keys,
		     const char *const **vals)
{
	if (!m->st || file >= m->nfiles) {
		*keys = *vals = NULL;
		return 0;
	}
	*keys = (const char *const *)m->st[file]->meta_keys;
	*vals = (const char *const *)m->st[file]->meta_vals;
	return m->st[file]->n_meta;
}

const struct ck_gguf *ck_model_gguf(const struct ck_model *m)
{
	return m->gguf;
}

static void advise(const struct ck_tensor *t, int advice)
{
	long page = sysconf(_SC_PAGESIZE);
	uintptr_t a = (uintptr_t)t->data, e = a + t->nbytes;
	if (!t->nbytes || page <= 0)
		return;
	a &= ~(uintptr_t)(page - 1);
	madvise((void *)a, e - a, advice);
}

void ck_model_willneed(const struct ck_tensor *t)
{
	advise(t, MADV_WILLNEED);
}

void ck_model_done(const struct ck_tensor *t)
{
	advise(t, MADV_DONTNEED);
}

void ck_model_done_range(const void *p, size_t len)
{
	long page = sysconf(_SC_PAGESIZE);
	/* Only whole pages inside the range: never drop a neighbour's page we still need. */
	uintptr_t a = ((uintptr_t)p + (uintptr_t)page - 1) & ~(uintptr_t)(page - 1);
	uintptr_t e = ((uintptr_t)p + len) & ~(uintptr_t)(page - 1);
	if (e <= a)
		return;
	madvise((void *)a, e - a, MADV_DONTNEED);
}
