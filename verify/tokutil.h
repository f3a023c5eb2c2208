/*
 * tokutil.h - helpers private to verify/tokenizer*.c: a growable string
 * (allocation failure is sticky: check .oom once at the end), and the JSON
 * checks cJSON leaves to its callers, and struct ck_tok itself.
 */
#ifndef CK_TOKUTIL_H
#define CK_TOKUTIL_H

#include <stddef.h>
#include <cjson/cJSON.h>
#include "../libtensor/ck.h"
#include "tokenizer.h"

struct tok_sb {
	char *p;
	size_t n, cap;
	int oom;
};
#define TOK_SB_INIT { NULL, 0, 0, 0 }

void tok_sb_put(struct tok_sb *b, const char *s, size_t n);
void tok_sb_puts(struct tok_sb *b, const char *s);
void tok_sb_putc(struct tok_sb *b, char c);
void tok_sb_printf(struct tok_sb *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The NUL-terminated text (the caller frees it), or NULL after a failed allocation. */
char *tok_sb_detach(struct tok_sb *b);
void tok_sb_release(struct tok_sb *b);

/*
 * Raw-byte checks before parsing: valid UTF-8, and no "\u0000" escape (cJSON
 * would end the string there).  Returns 0 or CK_EINVAL naming path and offset.
 */
int tok_json_precheck(const char *path, const char *buf, size_t len, struct ck_diag *d);

/* No object anywhere under root may repeat a key.  Returns 0 or CK_EINVAL. */
int tok_json_check_dups(const char *path, const cJSON *root, struct ck_diag *d);

/* The pipeline parts, in canonical (sorted) order. */
#define TOK_NPARTS 5
extern const char *const tok_part_names[TOK_NPARTS];

/* The loaded tokenizer; private to verify/tokenizer.c and verify/tokcompare.c. */
struct ck_tok {
	char *dir;
	struct ck_tok_digest dig[CK_TOKF_COUNT];
	char *model_type;		/* tokenizer.json model.type */
	char *cfg_model_type;		/* config.json model_type */
	uint64_t cfg_vocab_size;

	char *arena;			/* every string below points in here */
	size_t arena_len, arena_cap;

	struct ck_tok_token *vocab;
	size_t nvocab;
	struct ck_tok_merge *merges;
	size_t nmerges;
	bool legacy_merges;
	struct ck_tok_added *added;
	size_t nadded;
	bool have_json, have_added;
	struct ck_tok_added *cfg_added;	/* tokenizer_config's added_tokens_decoder, when */
	size_t ncfg_added;		/* tokenizer.json is there too (for ck_tok_consistency) */
	bool have_cfg_added;
	char *pipeline;			/* canonical JSON */
	char *pipe_part[TOK_NPARTS];	/* canonical JSON of each part */

	struct ck_tok_role_tok role[CK_TOK_NROLES];
	struct ck_tok_ids cfg_ids[CK_TOK_NIDKEYS], gen_ids[CK_TOK_NIDKEYS];

	char *tmpl;			/* template in effect */
	size_t tmpl_len;
	const char *tmpl_origin;
	bool tmpl_shadowed;

	struct ck_tok_kv *cosm;
	size_t ncosm;

	bool have_hash[CK_TOKC_COUNT];
	char hash[CK_TOKC_COUNT][65];
	char hash_all[65];
};

#endif
