/*
 * tokenizer.h - load the tokenizer of a model or adapter folder, hash what it
 * means (not how it is formatted), and compare two of them.
 *
 * A LoRA adapter trained with a tokenizer other than its base model's gives
 * a silently broken merged model.  This module is the check: tokcheck prints
 * it, merge-lora calls ck_tok_compare before it writes anything, and to-gguf
 * reads the parsed tokenizer (tokens by id, merges, added tokens, special
 * roles, chat template) through the accessors below.
 *
 * Files read from the folder (each optional; ck_tok_load fails only when
 * none is there, unless CK_TOK_ALLOW_EMPTY):
 *	tokenizer.json            vocab, merges, added_tokens, pipeline
 *	tokenizer_config.json     role tokens, added_tokens_decoder, chat_template
 *	special_tokens_map.json   role tokens (when tokenizer_config has none)
 *	chat_template.jinja       the template, unless tokenizer_config embeds one
 *	generation_config.json    bos/eos/pad ids used by generate()
 *	config.json               bos/eos/pad ids, vocab_size, model_type
 * Every file is hostile input: it must be UTF-8 JSON without "\u0000" in a
 * string, without duplicate keys in any object, under a size cap
 * (CK_TOK_MAX_JSON for tokenizer.json, CK_TOK_MAX_SMALL for the others), and
 * every id must be an exact integer (cJSON reads numbers as doubles: an id
 * is accepted only when it is integral and in range; model_max_length 1e30
 * is fine because nothing reads it as an integer).
 *
 * Component hashes.  SHA-256 over a canonical serialization, so that
 * re-indenting a file, reordering its keys, escaping differently or writing
 * merges as "a b" instead of ["a","b"] does not change them.  u32le(x) is x
 * as 4 little-endian bytes; strings are the decoded UTF-8 bytes, never the
 * JSON lexemes.
 *   vocab     model.vocab by ascending id: u32le(id) u32le(len) bytes.
 *             Unigram vocabularies (a list of [piece, score]) take the list
 *             index as id and append the score as 8 bytes (IEEE-754 double,
 *             little-endian) after each piece.
 *   merges    model.merges in rank order: u32le(len a) a u32le(len b) b;
 *             a legacy "a b" string is split at its first space.  Models
 *             without merges hash the empty sequence.
 *   added     added_tokens by ascending id: u32le(id) u32le(len) content
 *             flags, flags one byte: bit0 special, bit1 normalized, bit2
 *             lstrip, bit3 rstrip, bit4 single_word (a missing flag is 0).
 *             From tokenizer.json, else tokenizer_config's added_tokens_decoder.
 *   pipeline  canonical JSON of {"decoder", "model_opts", "normalizer",
 *             "post_processor", "pre_tokenizer"} where model_opts is the
 *             model object without vocab and merges and a missing part is
 *             null.  Canonical JSON: keys sorted by bytes, no whitespace,
 *             strings escaped as \" \\ \b \f \n \r \t and \u00XX for other
 *             control characters, everything else raw UTF-8; integral
 *             numbers below 2^53 in magnitude as integers (so 1.0 == 1), other
 *             finite numbers in the shortest %g form that reads back the same
 *             double, infinities as 1e999 / -1e999.  For gpt-oss this equals
 *             Python's json.dumps(sort_keys=True, separators=(",",":"),
 *             ensure_ascii=False).
 *   roles     text lines, in this order, each ending in "\n":
 *               "bos\t<token>\t<id>", then eos, pad, unk: the role token from
 *               tokenizer_config.json, else special_tokens_map.json ("-" and
 *               -1 when neither names one; id -1 when the tokenizer does not
 *               know the string);
 *               "config.bos_token_id\t<v>", config.eos_token_id,
 *               config.pad_token_id, generation.bos_token_id,
 *               generation.eos_token_id, generation.pad_token_id: <v> is the
 *               ids joined by ",", "null", or "-" when the key or file is absent.
 *   template  the bytes of the chat template in effect: tokenizer_config's
 *             "chat_template" (a string, or of a list of {name, template} the
 *             one named "default", else the first), else chat_template.jinja.
 *   all       SHA-256 of the lines "<component>:<hex or ->\n" for the six
 *             components above in order.
 * File digests (MD5 and SHA-256 of the exact bytes) are kept apart: they are
 * what users compare by hand today, and change with any reformatting.
 *
 * Ownership: ck_tok_load returns a handle freed with ck_tok_free (NULL is
 * fine); every pointer it hands out is borrowed from it and lives until
 * ck_tok_free.  Strings are NUL-terminated and carry no NUL inside.  Errors
 * follow ck.h: negative status, one line in the ck_diag.
 */
#ifndef CK_TOKENIZER_H
#define CK_TOKENIZER_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include "../libtensor/ck.h"

struct ck_model;
struct ck_tok;

#define CK_TOK_MAX_JSON (256u << 20)	/* tokenizer.json (cJSON takes ~7x its size) */
#define CK_TOK_MAX_SMALL (64u << 20)	/* every other file */
#define CK_TOK_MAX_IDS 64		/* ids in one eos_token_id list */

enum ck_tok_file {
	CK_TOKF_TOKENIZER,		/* tokenizer.json */
	CK_TOKF_TOKENIZER_CONFIG,	/* tokenizer_config.json */
	CK_TOKF_SPECIAL_MAP,		/* special_tokens_map.json */
	CK_TOKF_CHAT_TEMPLATE,		/* chat_template.jinja */
	CK_TOKF_GENERATION,		/* generation_config.json */
	CK_TOKF_CONFIG,			/* config.json (read for roles; not a tokenizer file) */
	CK_TOKF_COUNT
};

enum ck_tok_comp {
	CK_TOKC_VOCAB,
	CK_TOKC_MERGES,
	CK_TOKC_ADDED,
	CK_TOKC_PIPELINE,
	CK_TOKC_ROLES,
	CK_TOKC_TEMPLATE,
	CK_TOKC_COUNT
};

enum ck_tok_role { CK_TOK_BOS, CK_TOK_EOS, CK_TOK_PAD, CK_TOK_UNK, CK_TOK_NROLES };

/* Flags of an added token (the "added" hash byte). */
#define CK_TOK_SPECIAL		0x01u
#define CK_TOK_NORMALIZED	0x02u
#define CK_TOK_LSTRIP		0x04u
#define CK_TOK_RSTRIP		0x08u
#define CK_TOK_SINGLE_WORD	0x10u

/* Loader flags. */
#define CK_TOK_ALLOW_EMPTY	0x01u	/* a folder without any tokenizer file is fine */
#define CK_TOK_NEED_JSON	0x02u	/* tokenizer.json must be there (to-gguf) */

struct ck_tok_digest {
	bool present;
	uint64_t size;
	char md5[33];
	char sha256[65];
};

struct ck_tok_token {
	uint32_t id;
	uint32_t len;
	const char *s;		/* the token as stored (GPT-2 byte-level form for BPE) */
	double score;		/* Unigram only, else 0 */
};

struct ck_tok_merge {
	const char *a, *b;
	uint32_t alen, blen;
};

struct ck_tok_added {
	uint32_t id;
	uint32_t len;
	const char *content;
	unsigned flags;		/* CK_TOK_SPECIAL... */
};

/* A role token: what string names it, the id it resolves to, and from where. */
struct ck_tok_role_tok {
	const char *token;	/* NULL when no file names one */
	int64_t id;		/* -1 when unnamed or the tokenizer lacks the string */
	const char *source;	/* "tokenizer_config.json", "special_tokens_map.json" or NULL */
};

enum ck_tok_ids_state { CK_TOK_IDS_ABSENT, CK_TOK_IDS_NULL, CK_TOK_IDS_SET };

/* bos/eos/pad_token_id of config.json or generation_config.json. */
struct ck_tok_ids {
	enum ck_tok_ids_state state;
	size_t n;
	int64_t v[CK_TOK_MAX_IDS];
};

enum ck_tok_idkey { CK_TOK_BOS_ID, CK_TOK_EOS_ID, CK_TOK_PAD_ID, CK_TOK_NIDKEYS };

/* A key the comparison only reports as cosmetic, with its canonical JSON. */
struct ck_tok_kv {
	const char *file;	/* "tokenizer.json" or "tokenizer_config.json" */
	const char *key;
	const char *json;
};

/*
 * Load the tokenizer files of dir.  Returns 0 with *out set, or a negative
 * status: CK_EINVAL for a missing folder, malformed JSON (file and byte
 * offset in the message), a bad id, a duplicate key; CK_EUNSUPPORTED for a
 * tokenizer.json model type other than BPE, WordPiece, WordLevel, Unigram;
 * CK_EIO / CK_ENOMEM for resources.
 */
int ck_tok_load(struct ck_tok **out, const char *dir, unsigned flags, struct ck_diag *d);
void ck_tok_free(struct ck_tok *t);

const char *ck_tok_dir(const struct ck_tok *t);
/* True when the folder had none of the tokenizer files (loaded with CK_TOK_ALLOW_EMPTY). */
bool ck_tok_empty(const struct ck_tok *t);
const struct ck_tok_digest *ck_tok_file_digest(const struct ck_tok *t, enum ck_tok_file f);
const char *ck_tok_file_name(enum ck_tok_file f);
const char *ck_tok_comp_name(enum ck_tok_comp c);
const char *ck_tok_role_name(enum ck_tok_role r);

/* Hex SHA-256 of a component, or NULL when the files it comes from are absent. */
const char *ck_tok_hash(const struct ck_tok *t, enum ck_tok_comp c);
const char *ck_tok_hash_all(const struct ck_tok *t);

/* tokenizer.json model.type ("BPE", "WordPiece", "WordLevel", "Unigram"), or NULL. */
const char *ck_tok_model_type(const struct ck_tok *t);
/* config.json model_type ("gpt_oss") and vocab_size (0 when absent). */
const char *ck_tok_config_model_type(const struct ck_tok *t);
uint64_t ck_tok_config_vocab_size(const struct ck_tok *t);

/* model.vocab, sorted by id (ids may have gaps). */
size_t ck_tok_vocab_count(const struct ck_tok *t);
const struct ck_tok_token *ck_tok_vocab(const struct ck_tok *t, size_t i);
/* Merges in rank order; *legacy tells whether the file wrote "a b" strings. */
size_t ck_tok_merge_count(const struct ck_tok *t, bool *legacy);
const struct ck_tok_merge *ck_tok_merge(const struct ck_tok *t, size_t i);
/*
 * Merge i as the "a b" string llama.cpp's GGUF writer stores: a space inside
 * a part becomes U+0120 (as gguf-py does for the pair format).  Writes at
 * most cap bytes with the NUL; returns the length it needed (like snprintf).
 */
size_t ck_tok_merge_str(const struct ck_tok *t, size_t i, char *buf, size_t cap);
/* Added tokens, sorted by id. */
size_t ck_tok_added_count(const struct ck_tok *t);
const struct ck_tok_added *ck_tok_added(const struct ck_tok *t, size_t i);

/*
 * The token with this id: an added token first (as the tokenizers library
 * decodes), else the vocab entry.  Returns NULL when no token has the id.
 * *added (may be NULL) tells which.
 */
const char *ck_tok_token_str(const struct ck_tok *t, uint32_t id, uint32_t *len, bool *added);
/* The id of a token string (added tokens first, then vocab), or -1. */
int64_t ck_tok_token_id(const struct ck_tok *t, const char *s);
/* One past the highest token id (vocab and added): 200019 for gpt-oss; 0 if none. */
uint64_t ck_tok_size(const struct ck_tok *t);

const struct ck_tok_role_tok *ck_tok_role(const struct ck_tok *t, enum ck_tok_role r);
const struct ck_tok_ids *ck_tok_config_ids(const struct ck_tok *t, enum ck_tok_idkey k);
const struct ck_tok_ids *ck_tok_generation_ids(const struct ck_tok *t, enum ck_tok_idkey k);

/*
 * The chat template in effect (NULL when none) and where it came from:
 * "tokenizer_config.json" or "chat_template.jinja".  *shadowed is set when
 * chat_template.jinja exists but the embedded template wins over it.
 */
const char *ck_tok_chat_template(const struct ck_tok *t, size_t *len, const char **origin,
				 bool *shadowed);

/* Cosmetic keys (tokenizer.json padding/truncation/version, other tokenizer_config keys). */
size_t ck_tok_cosmetic_count(const struct ck_tok *t);
const struct ck_tok_kv *ck_tok_cosmetic(const struct ck_tok *t, size_t i);

/* ==== weights ==== */

/*
 * The embedding row count of a checkpoint: rows of model.embed_tokens.weight
 * (any tensor named *embed_tokens.weight or *embed_tokens.modules_to_save.*
 * .weight; else *lm_head.weight).  Returns 0 and *rows = 0 when the
 * checkpoint has none; *name (may be NULL) is the tensor used.
 */
int ck_tok_embed_rows(const struct ck_model *m, uint64_t *rows, const char **name);

/*
 * Every token id must be below the embedding row count (gpt-oss: 200,019
 * tokens, 201,088 rows, which is normal).  Returns 0, or CK_EDIFF with the
 * first offending id in d.
 */
int ck_tok_check_rows(const struct ck_tok *t, uint64_t rows, struct ck_diag *d);

/*
 * The adapter rule: an adapter that carries embed_tokens/lm_head rows
 * (PEFT save_embedding_layers or modules_to_save) must have the base's row
 * count, or its own tokenizer must fit its own rows (a new vocabulary).
 * adapter_tok may be NULL (then only the base row count is accepted).
 * Returns 0, or CK_EDIFF with the reason in d.
 */
int ck_tok_check_adapter_rows(uint64_t base_rows, uint64_t adapter_rows,
			      const struct ck_tok *adapter_tok, struct ck_diag *d);

/*
 * Check that the files of one folder agree with each other: tokenizer_config's
 * added_tokens_decoder with tokenizer.json's added_tokens (same content and
 * special flag per id, nothing extra); each role token is a token of the
 * tokenizer; config.json and generation_config.json bos/eos/pad_token_id name
 * the role tokens' ids (the eos id among a list).  Unsloth's pad fix leaves
 * pad_token_id 199999 in config.json beside pad <|reserved_200017|>: that is
 * one disagreement.  Returns the number found, with *text (the caller frees
 * it; NULL when none) holding one indented line each; CK_ENOMEM on failure.
 */
int ck_tok_consistency(const struct ck_tok *t, char **text);

/* ==== comparison ==== */

enum ck_tok_sev {
	CK_TOK_SAME,		/* equal in meaning */
	CK_TOK_COSMETIC,	/* formatting, merges format, padding state... */
	CK_TOK_WARNING,		/* roles, template, generation eos list, absent files */
	CK_TOK_BREAKING,	/* vocab, merges, added ids/contents, pipeline, embedding rows */
};

/* Comparison flags. */
#define CK_TOK_STRICT	0x100u	/* warnings count as a mismatch */

/* One line of the report: a component (or "files", "cosmetic", "embedding"). */
struct ck_tok_item {
	const char *name;
	enum ck_tok_sev sev;
	char *summary;		/* "same", "differs: ...", one line */
	char *details;		/* more lines (each ending in \n), or NULL */
};

struct ck_tok_report {
	struct ck_tok *a, *b;	/* owned by the report */
	struct ck_tok_item *items;
	size_t nitems;
	enum ck_tok_sev worst;
	char *template_diff;	/* unified diff of the templates, or NULL */
};

/*
 * Compare the tokenizers of two folders.  On success *r is a report the
 * caller frees with ck_tok_report_free, and the return is the verdict:
 * 0 when they are the same in meaning (cosmetic and warning differences
 * included), CK_EDIFF when something breaks a merge (or, with
 * CK_TOK_STRICT, when a warning-level difference exists).  On failure to
 * load either folder the return is < 0, d says why and *r is NULL.  With
 * CK_TOK_ALLOW_EMPTY a folder without tokenizer files (an adapter saved
 * without one) compares as absent: its components are "not compared"
 * warnings (both empty: nothing differs, everything is "not compared").
 * flags are CK_TOK_STRICT plus the loader flags.
 */
int ck_tok_compare(const char *dir_a, const char *dir_b, unsigned flags,
		   struct ck_tok_report **r, struct ck_diag *d);
/* The same over two loaded tokenizers; the report takes ownership of a and b. */
int ck_tok_compare_loaded(struct ck_tok *a, struct ck_tok *b, unsigned flags,
			  struct ck_tok_report **r, struct ck_diag *d);
/*
 * Add the weights check to a report: rows_a / rows_b are embedding row
 * counts (0 when that folder has no weights); every token id of a side must
 * be below its rows, and when adapter says which side is a PEFT adapter
 * (CK_TOK_ADAPTER_A or _B), the adapter rule applies between the two.
 * Returns the new verdict like ck_tok_compare (CK_ENOMEM when out of memory).
 */
#define CK_TOK_ADAPTER_A 1u
#define CK_TOK_ADAPTER_B 2u
int ck_tok_report_add_rows(struct ck_tok_report *r, uint64_t rows_a, uint64_t rows_b,
			   unsigned adapter, unsigned flags);
/* The verdict of a report: 0 or CK_EDIFF (see ck_tok_compare). */
int ck_tok_report_verdict(const struct ck_tok_report *r, unsigned flags);
const char *ck_tok_sev_name(enum ck_tok_sev s);

/* Print one line per item ("vocab: same"), details when verbose, the diff when diff. */
void ck_tok_report_print(FILE *f, const struct ck_tok_report *r, bool verbose, bool diff);
/* The component hashes of t as a JSON object {"vocab":"...",...,"all":"..."}. */
void ck_tok_hashes_json(FILE *f, const struct ck_tok *t);
/* Print the report as one JSON object (no trailing newline). */
void ck_tok_report_json(FILE *f, const struct ck_tok_report *r, unsigned flags);
void ck_tok_report_free(struct ck_tok_report *r);

#endif
