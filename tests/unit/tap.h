/*
 * tap.h - the smallest test harness that reads well: one binary per library
 * module, TAP output, names that read as specs.
 *
 *	static void nf4_dequant_matches_bnb_table(void) { CHECK(x == y); ... }
 *	int main(void) { RUN(nf4_dequant_matches_bnb_table); return tap_done(); }
 *
 * CHECK records a failure with file:line and the expression and goes on;
 * tap_done prints the plan and returns non-zero when anything failed.
 */
#ifndef CK_TAP_H
#define CK_TAP_H

#include <stdio.h>
#include <string.h>

static int tap_n, tap_failed, tap_cur_failed;

#define CHECK(cond) do { if (!(cond)) { tap_cur_failed++; \
	fprintf(stdout, "# %s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond); } } while (0)
#define CHECK_EQ_U64(a, b) do { unsigned long long a_ = (a), b_ = (b); if (a_ != b_) { tap_cur_failed++; \
	fprintf(stdout, "# %s:%d: %s == %s failed: %llu != %llu\n", __FILE__, __LINE__, #a, #b, a_, b_); } } while (0)
#define CHECK_STR(a, b) do { const char *a_ = (a), *b_ = (b); if (!a_ || !b_ || strcmp(a_, b_)) { tap_cur_failed++; \
	fprintf(stdout, "# %s:%d: %s == %s failed: '%s' != '%s'\n", __FILE__, __LINE__, #a, #b, \
		a_ ? a_ : "(null)", b_ ? b_ : "(null)"); } } while (0)

#define RUN(fn) do { tap_cur_failed = 0; fn(); tap_n++; \
	if (tap_cur_failed) tap_failed++; \
	fprintf(stdout, "%s %d - %s\n", tap_cur_failed ? "not ok" : "ok", tap_n, #fn); } while (0)

static inline int tap_done(void)
{
	fprintf(stdout, "1..%d\n", tap_n);
	return tap_failed ? 1 : 0;
}

#endif
