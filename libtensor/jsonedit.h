/*
 * jsonedit.h - editing the top level of a JSON object as text, so that every
 * other byte stays as it was.  config.json needs this: cJSON reprints 7.0 as
 * 7, and transformers 5's strict config classes then refuse the file.
 *
 * The result is a new NUL-terminated buffer the caller frees.  Errors:
 * CK_EINVAL for text that is not a JSON object (or a value that is not
 * JSON), CK_ENOMEM; d says which, without a file name (the caller prefixes
 * one).
 */
#ifndef CK_JSONEDIT_H
#define CK_JSONEDIT_H

#include <stddef.h>
#include "ck.h"

/* Where a set member goes. */
enum ck_json_at {
	CK_JSON_AT_SORTED,	/* before the first member whose key sorts after it (sort_keys files) */
	CK_JSON_AT_END,		/* after the last member */
};

/*
 * src[0..len) with its top-level member key removed (value NULL: the member
 * and one comma, the one after it or else the one before it), or set to the
 * JSON text value: the old member removed, the new one put at `at`, laid
 * out as the file lays out its members (the whitespace between its first
 * two members; nested levels indented as Python's json.dumps(indent=N) does
 * when the members sit on lines of their own, else on one line with ", " and
 * ": ").  A missing key with value NULL copies src.
 */
int ck_json_set_key(const char *src, size_t len, const char *key, const char *value,
		    enum ck_json_at at, char **out, size_t *outlen, struct ck_diag *d);

#endif
