/*
 * ck.h - the conventions every ckpt library module shares.
 *
 * Errors.  Library functions return int: 0 on success, a negative enum
 * ck_status on failure.  They never print and never exit.  On failure they
 * fill a caller-owned struct ck_diag with one line of text that names the
 * file, the tensor and the problem, so a front-end can print it as is:
 *
 *	return ck_fail(d, CK_EINVAL, "'%s': tensor '%s': data_offsets end %" PRIu64
 *	               " beyond file size %" PRIu64, path, name, end, size);
 *
 * Exit codes.  One table for every tool (ckpt --help, README, ckpt(1)):
 *	0  success, or "same"
 *	1  a check ran and found a difference or mismatch
 *	2  usage error
 *	3  invalid or unsupported input
 *	4  I/O or resource failure (disk full, out of memory, device error)
 *	128+N killed by signal N (after the temporary outputs are removed)
 *
 * Arithmetic on sizes read from files goes through the checked helpers
 * below; a file is hostile input until every length in it is proven to fit.
 */
#ifndef CK_H
#define CK_H

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <inttypes.h>

enum ck_status {
	CK_OK = 0,
	CK_EDIFF = -1,		/* a comparison found a difference (exit 1) */
	CK_EUSAGE = -2,		/* bad arguments (exit 2) */
	CK_EINVAL = -3,		/* invalid input file or data (exit 3) */
	CK_EUNSUPPORTED = -4,	/* valid but not supported (exit 3) */
	CK_EIO = -5,		/* read/write failure (exit 4) */
	CK_ENOMEM = -6,		/* out of memory (exit 4) */
	CK_EDEVICE = -7,	/* accelerator failure (exit 4) */
};

enum ck_exit {
	CK_EXIT_OK = 0,
	CK_EXIT_DIFF = 1,
	CK_EXIT_USAGE = 2,
	CK_EXIT_INVALID = 3,
	CK_EXIT_IO = 4,
};

#define CK_DIAG_MAX 1024

/* One line of error text plus the status that produced it. */
struct ck_diag {
	int status;
	char msg[CK_DIAG_MAX];
};
#define CK_DIAG_INIT { 0, { 0 } }

/*
 * Record a failure in d (which may be NULL) and return status, so that a
 * failure site is one line.  The text is printf-formatted; it must not end
 * with a newline or a full stop.  A diag that already holds a message is
 * overwritten.
 */
int ck_fail(struct ck_diag *d, int status, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
int ck_vfail(struct ck_diag *d, int status, const char *fmt, va_list ap)
	__attribute__((format(printf, 3, 0)));

/*
 * Put "prefix: " in front of the message already in d (for callers that add
 * context, e.g. the file name), keeping the status.  Returns d->status.
 */
int ck_diag_prefix(struct ck_diag *d, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/* Map a status (0 or negative) to the process exit code of the table above. */
int ck_exit_code(int status);

/* Forward a failure: evaluates expr once and returns it when negative. */
#define CK_TRY(expr) do { int ck_try_rc_ = (expr); if (ck_try_rc_ < 0) return ck_try_rc_; } while (0)

/* Checked 64-bit arithmetic: return true on overflow, like the builtins. */
static inline bool ck_mul_u64(uint64_t a, uint64_t b, uint64_t *out)
{
	return __builtin_mul_overflow(a, b, out);
}
static inline bool ck_add_u64(uint64_t a, uint64_t b, uint64_t *out)
{
	return __builtin_add_overflow(a, b, out);
}

/*
 * Allocation that never aborts: returns NULL on failure (and for n == 0
 * returns a valid unique pointer).  ck_mallocarray checks n*size.
 */
void *ck_malloc(size_t n);
void *ck_calloc(size_t n, size_t size);
void *ck_mallocarray(size_t n, size_t size);
void *ck_reallocarray(void *p, size_t n, size_t size);
char *ck_strdup(const char *s);
char *ck_strndup(const char *s, size_t n);

/*
 * Escape a name for display: control characters, backslash and bytes that
 * are not valid UTF-8 become \xNN, so a hostile tensor name cannot drive the
 * terminal.  Writes at most cap bytes including the NUL; returns out.
 */
char *ck_escape(const char *s, size_t len, char *out, size_t cap);

/*
 * Write s to f as a JSON string: quotes, '"' and '\\' escaped, control
 * bytes and DEL as \u00XX; other bytes as they are (s is UTF-8 already).
 */
void ck_json_str(FILE *f, const char *s);

/* True when s[0..len) is valid UTF-8 (no overlongs, no surrogates). */
bool ck_utf8_valid(const char *s, size_t len);

/* Does s end with suffix? */
bool ck_ends_with(const char *s, const char *suffix);

/* Glob match in the fnmatch(3) dialect without flags: * ? [...] and \. */
bool ck_glob(const char *pattern, const char *s);

/*
 * Parse a size such as "5GB", "512MiB", "1G", "4096" into bytes (K/M/G/T are
 * powers of 1000 with B and of 1024 with iB or alone, as zstd reads them: "1G"
 * and "1GiB" are 2^30, "1GB" is 10^9).  Returns 0, or CK_EUSAGE on junk or
 * overflow.
 */
int ck_parse_size(const char *s, uint64_t *out);

#define CK_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/*
 * The status for a failed open/stat of an input: a path that names nothing
 * usable (missing, a loop of links, not a folder, too long) is bad input
 * (exit 3); anything else (EIO, EMFILE, ENOMEM...) is an I/O failure.
 */
static inline enum ck_status ck_open_status(int err)
{
	return err == ENOENT || err == ELOOP || err == ENOTDIR || err == ENAMETOOLONG ||
	       err == EISDIR || err == ENXIO ? CK_EINVAL : CK_EIO;
}

#endif
