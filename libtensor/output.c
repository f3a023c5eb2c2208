/*
 * output.c - temporary outputs, renamed into place when complete.
 *
 * Every temporary path we create is registered in a small table; a signal
 * handler and an atexit hook remove whatever is still registered (files
 * first, then the folder: the table is walked newest first), so an
 * interrupted run leaves nothing.  The table is only modified with the
 * handled signals blocked, so the handler never sees it half-updated.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <libgen.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "output.h"

#define MAX_TEMPS 4096

static char *temps[MAX_TEMPS];
static volatile sig_atomic_t ntemps;
static const int handled[] = { SIGINT, SIGTERM, SIGHUP, SIGQUIT };

static void block_signals(sigset_t *old)
{
	sigset_t set;
	sigemptyset(&set);
	for (size_t i = 0; i < CK_ARRAY_SIZE(handled); i++)
		sigaddset(&set, handled[i]);
	sigprocmask(SIG_BLOCK, &set, old);
}

static int temp_register(const char *path)
{
	sigset_t old;
	char *p = ck_strdup(path);
	int ok = 0;

	if (!p)
		return -1;
	block_signals(&old);
	if (ntemps < MAX_TEMPS) {
		temps[ntemps] = p;
		ntemps = ntemps + 1;
		ok = 1;
	}
	sigprocmask(SIG_SETMASK, &old, NULL);
	if (!ok)
		free(p);
	return ok ? 0 : -1;
}

/* Forget path (it was renamed or removed). */
static void temp_forget(const char *path)
{
	sigset_t old;
	char *victim = NULL;

	block_signals(&old);
	for (int i = ntemps - 1; i >= 0; i--) {
		if (!strcmp(temps[i], path)) {
			victim = temps[i];
			memmove(&temps[i], &temps[i + 1], (size_t)(ntemps - i - 1) * sizeof(temps[0]));
			ntemps = ntemps - 1;
			break;
		}
	}
	sigprocmask(SIG_SETMASK, &old, NULL);
	free(victim);
}

/* Async-signal-safe: unlink/rmdir only. */
static void remove_all_temps(void)
{
	for (int i = ntemps - 1; i >= 0; i--)
		if (unlink(temps[i]) < 0)
			rmdir(temps[i]);
	ntemps = 0;
}

static void on_signal(int sig)
{
	remove_all_temps();
	signal(sig, SIG_DFL);
	raise(sig);
}

/*
 * SIGBUS: a mapped input shrank under us (another process truncated or
 * rewrote it while we read it).  Nothing to retry: remove the outputs,
 * say so in one line, exit as an I/O failure instead of dumping core.
 */
static void on_bus(int sig)
{
	static const char msg[] =
		"ckpt: an input file was truncated or changed while being read (SIGBUS)\n";
	(void)sig;
	remove_all_temps();
	if (write(STDERR_FILENO, msg, sizeof(msg) - 1) < 0)
		_exit(CK_EXIT_IO);
	_exit(CK_EXIT_IO);
}

static void at_exit(void)
{
	remove_all_temps();
}

void ck_out_install_signals(void)
{
	static int done;
	if (done)
		return;
	done = 1;
	for (size_t i = 0; i < CK_ARRAY_SIZE(handled); i++) {
		struct sigaction sa;
		memset(&sa, 0, sizeof(sa));
		sa.sa_handler = on_signal;
		sigemptyset(&sa.sa_mask);
		for (size_t j = 0; j < CK_ARRAY_SIZE(handled); j++)
			sigaddset(&sa.sa_mask, handled[j]);
		sigaction(handled[i], &sa, NULL);
	}
	{
		struct sigaction sa;
		memset(&sa, 0, sizeof(sa));
		sa.sa_handler = on_bus;
		sigemptyset(&sa.sa_mask);
		for (size_t j = 0; j < CK_ARRAY_SIZE(handled); j++)
			sigaddset(&sa.sa_mask, handled[j]);
		sigaction(SIGBUS, &sa, NULL);
	}
	atexit(at_exit);
}

/* ---- writes, with fault injection for the tests ---- */

static long fault_at = -1;	/* -1: not read yet; 0: off */
static long nwrites;

static int fault_now(void)
{
	if (fault_at < 0) {
		const char *e = getenv("CKPT_FAULT_WRITE_AT");
		fault_at = e ? atol(e) : 0;
	}
	return fault_at > 0 && ++nwrites == fault_at;
}

int ck_write_all(int fd, const void *buf, size_t len, const char *name, struct ck_diag *d)
{
	const char *p = buf;

	if (fault_now())
		return ck_fail(d, CK_EIO, "'%s': write failed: %s (injected)", name, strerror(ENOSPC));
	while (len) {
		size_t chunk = len > (1u << 30) ? (1u << 30) : len;
		ssize_t n = write(fd, p, chunk);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return ck_fail(d, CK_EIO, "'%s': write failed: %s", name, strerror(errno));
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

int ck_copy_range(int in_fd, uint64_t off, int out_fd, const char *out_name, uint64_t len,
		  struct ck_diag *d)
{
	static _Thread_local char buf[1 << 16];
	int fallback = getenv("CKPT_FAULT_WRITE_AT") != NULL;

	while (len) {
		size_t chunk = len < (1u << 30) ? (size_t)len : (1u << 30);
		ssize_t n = -1;
		if (!fallback) {
			loff_t in_off = (loff_t)off;
			n = copy_file_range(in_fd, &in_off, out_fd, NULL, chunk, 0);
			if (n < 0 && errno == EINTR)
				continue;
			if (n <= 0)	/* EXDEV, ENOSYS, EINVAL...: not here */
				fallback = 1;
		}
		if (fallback) {
			n = pread(in_fd, buf, chunk < sizeof(buf) ? chunk : sizeof(buf), (off_t)off);
			if (n < 0 && errno == EINTR)
				continue;
			if (n <= 0)
				return ck_fail(d, CK_EIO, "read failed at offset %" PRIu64 ": %s", off,
					       n < 0 ? strerror(errno) : "unexpected end of file");
			CK_TRY(ck_write_all(out_fd, buf, (size_t)n, out_name, d));
		}
		off += (uint64_t)n;
		len -= (uint64_t)n;
	}
	return 0;
}

static int fd_sink_write(void *ctx, const void *buf, size_t len, struct ck_diag *d)
{
	struct ck_fd_sink *fs = ctx;
	CK_TRY(ck_write_all(fs->fd, buf, len, fs->name, d));
	fs->written += len;
	return 0;
}

struct ck_sink ck_fd_sink(struct ck_fd_sink *fs)
{
	return (struct ck_sink){ fd_sink_write, fs };
}

static int count_sink_write(void *ctx, const void *buf, size_t len, struct ck_diag *d)
{
	(void)buf;
	(void)d;
	((struct ck_count_sink *)ctx)->n += len;
	return 0;
}

struct ck_sink ck_count_sink(struct ck_count_sink *cs)
{
	return (struct ck_sink){ count_sink_write, cs };
}

/* ---- outputs ---- */

struct out_file {
	char *path;	/* inside the temporary folder (or the temporary file) */
	int fd;
};

struct ck_out {
	enum ck_out_kind kind;
	char *final;
	char *tmp;
	char *dir;	/* directory that holds final */
	int force;
	struct out_file *files;
	size_t nfiles, cap;
};

static char *dir_of(const char *path)
{
	char *copy = ck_strdup(path), *r;
	if (!copy)
		return NULL;
	r = ck_strdup(dirname(copy));
	free(copy);
	return r;
}

static char *base_of(const char *path)
{
	char *copy = ck_strdup(path), *r;
	if (!copy)
		return NULL;
	r = ck_strdup(basename(copy));
	free(copy);
	return r;
}

/* Is a (a path that exists) the same as, or inside, folder b? */
static int is_within(const char *a, const char *b)
{
	char ra[PATH_MAX], rb[PATH_MAX];
	size_t n;
	if (!realpath(a, ra) || !realpath(b, rb))
		return 0;
	n = strlen(rb);
	return !strncmp(ra, rb, n) && (ra[n] == 0 || ra[n] == '/' || (n == 1 && rb[0] == '/'));
}

/*
 * A folder output inside an input folder is refused too: the next run would
 * read it as part of its input.  A new file there (model/model.gguf) is fine;
 * replacing an existing one is not (check_inputs).
 */
static int check_inside(const char *final, const char *const *inputs, size_t n,
			struct ck_diag *d)
{
	struct stat si;
	char *dir = dir_of(final);
	int rc = 0;

	if (!dir)
		return ck_fail(d, CK_ENOMEM, "out of memory");
	for (size_t i = 0; i < n && !rc; i++)
		if (stat(inputs[i], &si) == 0 && S_ISDIR(si.st_mode) && is_within(dir, inputs[i]))
			rc = ck_fail(d, CK_EUSAGE, "'%s': output folder is inside the input '%s'",
				     final, inputs[i]);
	free(dir);
	return rc;
}

static int check_inputs(const char *final, enum ck_out_kind kind, const char *const *inputs,
			size_t n, struct ck_diag *d)
{
	struct stat so, si;
	if (kind == CK_OUT_DIR)
		CK_TRY(check_inside(final, inputs, n, d));
	if (stat(final, &so) < 0)
		return 0;
	for (size_t i = 0; i < n; i++) {
		if (stat(inputs[i], &si) < 0)
			continue;
		if (si.st_dev == so.st_dev && si.st_ino == so.st_ino)
			return ck_fail(d, CK_EUSAGE, "'%s': output is the input '%s'", final, inputs[i]);
		if (S_ISDIR(so.st_mode) && is_within(inputs[i], final))
			return ck_fail(d, CK_EUSAGE, "'%s': output folder holds the input '%s'", final,
				       inputs[i]);
		/* Not even with --force: it may be a shard or the config we read. */
		if (S_ISDIR(si.st_mode) && is_within(final, inputs[i]))
			return ck_fail(d, CK_EUSAGE, "'%s': output would replace a file of the input '%s'",
				       final, inputs[i]);
	}
	return 0;
}

int ck_out_begin(struct ck_out **out, enum ck_out_kind kind, const char *final_path, int force,
		 const char *const *inputs, size_t n_inputs, struct ck_diag *d)
{
	struct ck_out *o;
	struct stat st;
	sigset_t old;
	char *base = NULL;
	int rc, blocked = 0;

	*out = NULL;
	if (!final_path || !*final_path)
		return ck_fail(d, CK_EUSAGE, "empty output path");
	/* Caught here, not by rename(2) once the whole output is written. */
	if (kind == CK_OUT_FILE && final_path[strlen(final_path) - 1] == '/')
		return ck_fail(d, CK_EUSAGE, "'%s': a file output cannot end in '/'", final_path);
	CK_TRY(check_inputs(final_path, kind, inputs, n_inputs, d));
	if (lstat(final_path, &st) == 0) {
		if (!force)
			return ck_fail(d, CK_EUSAGE, "'%s': output exists (use --force to replace it)",
				       final_path);
		if (kind == CK_OUT_FILE && S_ISDIR(st.st_mode))
			return ck_fail(d, CK_EUSAGE, "'%s': output is a folder, expected a file",
				       final_path);
		if (kind == CK_OUT_DIR && !S_ISDIR(st.st_mode))
			return ck_fail(d, CK_EUSAGE, "'%s': output exists and is not a folder",
				       final_path);
	}
	o = ck_calloc(1, sizeof(*o));
	if (!o)
		return ck_fail(d, CK_ENOMEM, "out of memory");
	o->kind = kind;
	o->force = force;
	o->final = ck_strdup(final_path);
	o->dir = dir_of(final_path);
	base = base_of(final_path);
	if (!o->final || !o->dir || !base) {
		rc = ck_fail(d, CK_ENOMEM, "out of memory");
		goto fail;
	}
	size_t len = strlen(o->dir) + strlen(base) + 32;
	o->tmp = ck_malloc(len);
	if (!o->tmp) {
		rc = ck_fail(d, CK_ENOMEM, "out of memory");
		goto fail;
	}
	snprintf(o->tmp, len, "%s/.%s.ckpt-tmp.XXXXXX", o->dir, base);
	/*
	 * No signal between creating the temporary and registering it, or the
	 * handler would not know to remove it.  Only the main thread runs here.
	 */
	block_signals(&old);
	blocked = 1;
	if (kind == CK_OUT_DIR) {
		if (!mkdtemp(o->tmp)) {
			rc = ck_fail(d, CK_EIO, "'%s': cannot create a folder in '%s': %s", final_path,
				     o->dir, strerror(errno));
			goto fail;
		}
	} else {
		int fd = mkstemp(o->tmp);
		if (fd < 0) {
			rc = ck_fail(d, CK_EIO, "'%s': cannot create a file in '%s': %s", final_path,
				     o->dir, strerror(errno));
			goto fail;
		}
		o->files = ck_calloc(1, sizeof(*o->files));
		if (!o->files) {
			close(fd);
			unlink(o->tmp);
			rc = ck_fail(d, CK_ENOMEM, "out of memory");
			goto fail;
		}
		o->files[0].fd = fd;
		o->files[0].path = NULL;
		o->nfiles = o->cap = 1;
	}
	if (temp_register(o->tmp) < 0) {
		if (kind == CK_OUT_DIR)
			rmdir(o->tmp);
		else
			unlink(o->tmp);
		rc = ck_fail(d, CK_ENOMEM, "too many temporary files");
		goto fail;
	}
	sigprocmask(SIG_SETMASK, &old, NULL);
	free(base);
	*out = o;
	return 0;
fail:
	if (blocked)
		sigprocmask(SIG_SETMASK, &old, NULL);
	free(base);
	if (o) {
		if (o->files && o->files[0].fd > 0)
			close(o->files[0].fd);
		free(o->files);
		free(o->final);
		free(o->dir);
		free(o->tmp);
		free(o);
	}
	return rc;
}

const char *ck_out_tmp_path(const struct ck_out *o)
{
	return o->tmp;
}

const char *ck_out_final_path(const struct ck_out *o)
{
	return o->final;
}

enum ck_out_kind ck_out_kind(const struct ck_out *o)
{
	return o->kind;
}

int ck_out_open(struct ck_out *o, const char *relname, int *fd, struct ck_diag *d)
{
	sigset_t old;
	char *path;
	size_t len;

	if (o->kind == CK_OUT_FILE) {
		*fd = o->files[0].fd;
		return 0;
	}
	if (!*relname || strchr(relname, '/') || !strcmp(relname, ".") || !strcmp(relname, ".."))
		return ck_fail(d, CK_EINVAL, "'%s': bad output file name '%s'", o->final, relname);
	if (o->nfiles == o->cap) {
		size_t cap = o->cap ? 2 * o->cap : 8;
		struct out_file *f = ck_reallocarray(o->files, cap, sizeof(*f));
		if (!f)
			return ck_fail(d, CK_ENOMEM, "out of memory");
		o->files = f;
		o->cap = cap;
	}
	len = strlen(o->tmp) + strlen(relname) + 2;
	path = ck_malloc(len);
	if (!path)
		return ck_fail(d, CK_ENOMEM, "out of memory");
	snprintf(path, len, "%s/%s", o->tmp, relname);
	block_signals(&old);	/* as in ck_out_begin: create and register as one */
	*fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
	if (*fd < 0) {
		int e = errno;
		sigprocmask(SIG_SETMASK, &old, NULL);
		free(path);
		return ck_fail(d, CK_EIO, "'%s/%s': cannot create: %s", o->final, relname,
			       strerror(e));
	}
	if (temp_register(path) < 0) {
		close(*fd);
		unlink(path);
		sigprocmask(SIG_SETMASK, &old, NULL);
		free(path);
		return ck_fail(d, CK_ENOMEM, "too many temporary files");
	}
	sigprocmask(SIG_SETMASK, &old, NULL);
	o->files[o->nfiles].path = path;
	o->files[o->nfiles].fd = *fd;
	o->nfiles++;
	return 0;
}

int ck_out_write_file(struct ck_out *o, const char *relname, const void *buf, size_t len,
		      struct ck_diag *d)
{
	int fd;
	CK_TRY(ck_out_open(o, relname, &fd, d));
	return ck_write_all(fd, buf, len, relname, d);
}

int ck_out_copy_file(struct ck_out *o, const char *src_path, const char *relname,
		     struct ck_diag *d)
{
	char buf[1 << 16];
	struct stat st;
	int in, out, rc = 0;

	/* O_NONBLOCK: a FIFO planted in a model folder must not hang us at open. */
	in = open(src_path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
	if (in < 0)
		return ck_fail(d, CK_EIO, "'%s': cannot open: %s", src_path, strerror(errno));
	if (fstat(in, &st) < 0 || !S_ISREG(st.st_mode)) {
		close(in);
		return ck_fail(d, CK_EINVAL, "'%s': not a regular file", src_path);
	}
	rc = ck_out_open(o, relname, &out, d);
	while (rc == 0) {
		ssize_t n = read(in, buf, sizeof(buf));
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			rc = ck_fail(d, CK_EIO, "'%s': read failed: %s", src_path, strerror(errno));
			break;
		}
		if (n == 0)
			break;
		rc = ck_write_all(out, buf, (size_t)n, relname, d);
	}
	close(in);
	return rc;
}

static void close_files(struct ck_out *o)
{
	for (size_t i = 0; i < o->nfiles; i++)
		if (o->files[i].fd >= 0) {
			close(o->files[i].fd);
			o->files[i].fd = -1;
		}
}

static void out_free(struct ck_out *o)
{
	for (size_t i = 0; i < o->nfiles; i++)
		free(o->files[i].path);
	free(o->files);
	free(o->final);
	free(o->tmp);
	free(o->dir);
	free(o);
}

void ck_out_abort(struct ck_out *o)
{
	if (!o)
		return;
	close_files(o);
	for (size_t i = o->nfiles; i-- > 0;)
		if (o->files[i].path) {
			unlink(o->files[i].path);
			temp_forget(o->files[i].path);
		}
	if (o->kind == CK_OUT_DIR)
		rmdir(o->tmp);
	else
		unlink(o->tmp);
	temp_forget(o->tmp);
	out_free(o);
}

/* rm -r of a folder we are replacing (one level: model folders are flat, plus original/). */
static void remove_tree(const char *path)
{
	DIR *dir = opendir(path);
	struct dirent *e;
	if (!dir) {
		unlink(path);
		return;
	}
	while ((e = readdir(dir))) {
		char sub[PATH_MAX];
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		snprintf(sub, sizeof(sub), "%s/%s", path, e->d_name);
		if (unlink(sub) < 0)
			remove_tree(sub);	/* a folder (or gone) */
	}
	closedir(dir);
	rmdir(path);
}

static int sync_dir(const char *dir)
{
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	fsync(fd);
	close(fd);
	return 0;
}

/*
 * Move the finished temporary into place (an existing folder first moved
 * aside, then removed).  Called with the handled signals blocked: a signal
 * between the two renames would leave neither output under the final name.
 */
static int swap_in(struct ck_out *o, struct ck_diag *d)
{
	struct stat st;
	int rc;

	if (o->kind == CK_OUT_DIR && lstat(o->final, &st) == 0) {
		/* Replace an existing folder: move it aside, move ours in, then remove the old one. */
		size_t len = strlen(o->final) + 32;
		char *old = ck_malloc(len);
		if (!old)
			return ck_fail(d, CK_ENOMEM, "out of memory");
		snprintf(old, len, "%s.ckpt-old.%ld", o->final, (long)getpid());
		if (rename(o->final, old) < 0) {
			rc = ck_fail(d, CK_EIO, "'%s': cannot move the old output aside: %s", o->final,
				     strerror(errno));
			free(old);
			return rc;
		}
		if (rename(o->tmp, o->final) < 0) {
			rc = ck_fail(d, CK_EIO, "'%s': rename failed: %s", o->final, strerror(errno));
			rename(old, o->final);
			free(old);
			return rc;
		}
		remove_tree(old);
		free(old);
	} else if (rename(o->tmp, o->final) < 0) {
		return ck_fail(d, CK_EIO, "'%s': rename failed: %s", o->final, strerror(errno));
	}
	return 0;
}

int ck_out_commit(struct ck_out *o, struct ck_diag *d)
{
	mode_t mask = umask(0);
	sigset_t old;
	int rc = 0;

	umask(mask);
	for (size_t i = 0; i < o->nfiles; i++) {
		if (o->files[i].fd < 0)
			continue;
		if (o->kind == CK_OUT_FILE)
			fchmod(o->files[i].fd, 0666 & ~mask);
		if (fsync(o->files[i].fd) < 0 && errno != EINVAL && errno != EROFS) {
			rc = ck_fail(d, CK_EIO, "'%s': fsync failed: %s", o->final, strerror(errno));
			break;
		}
		if (close(o->files[i].fd) < 0) {
			o->files[i].fd = -1;
			rc = ck_fail(d, CK_EIO, "'%s': close failed: %s", o->final, strerror(errno));
			break;
		}
		o->files[i].fd = -1;
	}
	if (rc) {
		ck_out_abort(o);
		return rc;
	}
	if (o->kind == CK_OUT_DIR) {
		chmod(o->tmp, 0777 & ~mask);
		sync_dir(o->tmp);
	}
	block_signals(&old);
	rc = swap_in(o, d);
	if (rc) {
		ck_out_abort(o);
		sigprocmask(SIG_SETMASK, &old, NULL);
		return rc;
	}
	for (size_t i = 0; i < o->nfiles; i++)
		if (o->files[i].path)
			temp_forget(o->files[i].path);
	temp_forget(o->tmp);
	sigprocmask(SIG_SETMASK, &old, NULL);
	sync_dir(o->dir);
	out_free(o);
	return 0;
}
