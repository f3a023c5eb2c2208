/*
 * output.h - outputs that appear whole or not at all, and the sinks writers
 * write through.
 *
 * Every output (a file, or a model folder) is first written under a
 * temporary name in the same directory as its final name:
 *	<dir>/.<base>.ckpt-tmp.XXXXXX
 * ck_out_commit fsyncs it, renames it into place (replacing an existing
 * output only when force was given), and fsyncs the directory.  Until then
 * the temporary paths are registered for removal at exit and on SIGINT,
 * SIGTERM, SIGHUP and SIGPIPE (remove, then re-raise the signal), so a
 * failed or interrupted run leaves no partial output.  A SIGKILL can leave a
 * .ckpt-tmp file behind, never a partial file under the final name.
 *
 * Inputs are never opened for writing: ck_out_begin refuses a final path
 * that is (or, for a folder, contains or is contained in) one of the inputs.
 *
 * Fault injection (tests only): when CKPT_FAULT_WRITE_AT=N is set in the
 * environment, the Nth write through any fd sink fails with ENOSPC, so a
 * test can prove that a failure mid-write leaves nothing behind.
 */
#ifndef CK_OUTPUT_H
#define CK_OUTPUT_H

#include <stddef.h>
#include <stdint.h>
#include "ck.h"

/* A byte sink.  write returns 0 or a negative status with d filled. */
struct ck_sink {
	int (*write)(void *ctx, const void *buf, size_t len, struct ck_diag *d);
	void *ctx;
};

static inline int ck_sink_write(const struct ck_sink *s, const void *buf, size_t len,
				struct ck_diag *d)
{
	return s->write(s->ctx, buf, len, d);
}

/* A sink over an fd; name is used in messages.  Fill *fs, then use ck_fd_sink(). */
struct ck_fd_sink {
	int fd;
	const char *name;
	uint64_t written;
};
struct ck_sink ck_fd_sink(struct ck_fd_sink *fs);

/* A sink that only counts bytes (for --dry-run and for planning). */
struct ck_count_sink {
	uint64_t n;
};
struct ck_sink ck_count_sink(struct ck_count_sink *cs);

enum ck_out_kind { CK_OUT_FILE, CK_OUT_DIR };

struct ck_out;

/*
 * Start an output at final_path.  inputs (n_inputs paths, may be 0) are the
 * paths this run reads: an output that is one of them, or that would
 * replace a folder holding one of them, is refused.  Without force an
 * existing final_path is refused too.  Returns a new handle the caller ends
 * with ck_out_commit or ck_out_abort (both free it).
 */
int ck_out_begin(struct ck_out **out, enum ck_out_kind kind, const char *final_path, int force,
		 const char *const *inputs, size_t n_inputs, struct ck_diag *d);

/*
 * CK_OUT_FILE: open the temporary file (once) and return its fd.
 * CK_OUT_DIR: create relname inside the temporary folder and return its fd;
 * relname is a plain file name (no '/').  The fd is owned by the handle.
 */
int ck_out_open(struct ck_out *o, const char *relname, int *fd, struct ck_diag *d);

/* The temporary path of the file or folder being written (for messages, tests). */
const char *ck_out_tmp_path(const struct ck_out *o);
const char *ck_out_final_path(const struct ck_out *o);
enum ck_out_kind ck_out_kind(const struct ck_out *o);

/* Copy a whole file into the output folder under relname (sendfile/copy_file_range). */
int ck_out_copy_file(struct ck_out *o, const char *src_path, const char *relname,
		     struct ck_diag *d);

/* Write a whole buffer to a new file relname in the output folder. */
int ck_out_write_file(struct ck_out *o, const char *relname, const void *buf, size_t len,
		      struct ck_diag *d);

/* fsync, close, rename into place, fsync the directory; frees o. */
int ck_out_commit(struct ck_out *o, struct ck_diag *d);
/* Remove everything written; frees o.  NULL is fine. */
void ck_out_abort(struct ck_out *o);

/* write(2) all of buf to fd, retrying on EINTR; honours CKPT_FAULT_WRITE_AT. */
int ck_write_all(int fd, const void *buf, size_t len, const char *name, struct ck_diag *d);

/*
 * Copy len bytes of in_fd at offset off to the current position of out_fd:
 * copy_file_range when the kernel can (no user-space copy; the filesystem
 * may share extents), else pread + ck_write_all.  CKPT_FAULT_WRITE_AT forces
 * the fallback so fault tests hit the write path.  out_name names out_fd in
 * messages.
 */
int ck_copy_range(int in_fd, uint64_t off, int out_fd, const char *out_name, uint64_t len,
		  struct ck_diag *d);

/*
 * Install the signal handlers that remove registered temporaries.  Called
 * once by main(); harmless to call again.
 */
void ck_out_install_signals(void);

#endif
