/*
 * files.c - copying the non-tensor files of a model folder (see files.h).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "files.h"

static int is_weight_file(const char *name)
{
	static const char *const ext[] = { ".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5",
					   ".msgpack", ".ckpt" };
	size_t n = strlen(name);
	if (!strcmp(name, "model.safetensors.index.json") || strstr(name, ".safetensors.index.json") ||
	    strstr(name, ".bin.index.json"))
		return 1;
	for (size_t i = 0; i < CK_ARRAY_SIZE(ext); i++) {
		size_t e = strlen(ext[i]);
		if (n >= e && !strcmp(name + n - e, ext[i]))
			return 1;
	}
	return 0;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(const char *const *)a, *(const char *const *)b);
}

int ck_copy_aux_files(struct ck_out *o, const char *src_dir, const char *const *skip, size_t nskip,
		      struct ck_diag *d)
{
	DIR *dir = opendir(src_dir);
	struct dirent *e;
	char **names = NULL;
	size_t n = 0, cap = 0;
	int rc = 0, copied = 0;

	if (!dir)
		return ck_fail(d, CK_EIO, "'%s': cannot read folder: %s", src_dir, strerror(errno));
	while ((e = readdir(dir))) {
		char path[4096];
		struct stat st;
		int skipped = e->d_name[0] == '.' || is_weight_file(e->d_name);
		for (size_t i = 0; i < nskip && !skipped; i++)
			skipped = !strcmp(skip[i], e->d_name);
		snprintf(path, sizeof(path), "%s/%s", src_dir, e->d_name);
		if (skipped || stat(path, &st) < 0 || !S_ISREG(st.st_mode))
			continue;
		if (n == cap) {
			cap = cap ? 2 * cap : 16;
			char **v = ck_reallocarray(names, cap, sizeof(*v));
			if (!v) {
				rc = ck_fail(d, CK_ENOMEM, "out of memory");
				goto out;
			}
			names = v;
		}
		if (!(names[n] = ck_strdup(e->d_name))) {
			rc = ck_fail(d, CK_ENOMEM, "out of memory");
			goto out;
		}
		n++;
	}
	if (n)		/* qsort(NULL, 0) is undefined */
		qsort(names, n, sizeof(*names), cmp_str);	/* a stable order for messages */
	for (size_t i = 0; i < n && !rc; i++) {
		char path[4096];
		snprintf(path, sizeof(path), "%s/%s", src_dir, names[i]);
		rc = ck_out_copy_file(o, path, names[i], d);
		copied++;
	}
out:
	closedir(dir);
	for (size_t i = 0; i < n; i++)
		free(names[i]);
	free(names);
	return rc ? rc : copied;
}

int ck_read_file(const char *path, size_t max, char **buf, size_t *len, struct ck_diag *d)
{
	int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
	struct stat st;
	size_t got = 0;

	*buf = NULL;
	*len = 0;
	if (fd < 0) {
		int e = errno;
		ck_fail(d, e == ENOENT ? CK_EINVAL : CK_EIO, "'%s': cannot open: %s", path, strerror(e));
		errno = e;
		return d ? d->status : CK_EIO;
	}
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		close(fd);
		return ck_fail(d, CK_EINVAL, "'%s': not a regular file", path);
	}
	if ((uint64_t)st.st_size > max) {
		close(fd);
		return ck_fail(d, CK_EINVAL, "'%s': %lld bytes, over the %zu-byte limit", path,
			       (long long)st.st_size, max);
	}
	*buf = ck_malloc((size_t)st.st_size + 1);
	if (!*buf) {
		close(fd);
		return ck_fail(d, CK_ENOMEM, "out of memory");
	}
	while (got < (size_t)st.st_size) {
		ssize_t n = read(fd, *buf + got, (size_t)st.st_size - got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			int e = errno;
			close(fd);
			free(*buf);
			*buf = NULL;
			return ck_fail(d, CK_EIO, "'%s': read failed: %s", path, strerror(e));
		}
		if (n == 0)
			break;
		got += (size_t)n;
	}
	close(fd);
	(*buf)[got] = 0;
	*len = got;
	return 0;
}
