/*
 * test_tokenizer.c - verify/tokenizer.h on small folders written here: the
 * accessors to-gguf and merge-lora use, the intake checks cJSON leaves to
 * us, and the embedding-row rules.  (Hashes against Python's json module and
 * the real gpt-oss files are in tests/test_tokcheck.py.)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "../../verify/tokenizer.h"
#include "tap.h"

static char dir[64];

static void put(const char *sub, const char *name, const char *text)
{
	char path[256];
	snprintf(path, sizeof(path), "%s/%s", dir, sub);
	mkdir(path, 0700);
	snprintf(path, sizeof(path), "%s/%s/%s", dir, sub, name);
	FILE *f = fopen(path, "wb");
	if (f) {
		fputs(text, f);
		fclose(f);
	}
}

static struct ck_tok *load(const char *sub, struct ck_diag *d)
{
	char path[256];
	struct ck_tok *t = NULL;
	snprintf(path, sizeof(path), "%s/%s", dir, sub);
	if (ck_tok_load(&t, path, 0, d))
		return NULL;
	return t;
}

/* A BPE with a legacy merge whose second part has a space, and a literal "\u0000" text. */
static const char *const BPE =
	"{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b c\":1,\"a\\\\u0000\":2,\"\\u00e9\":3,\"ab\":5},"
	"\"merges\":[\"a b c\",\"a \\u00e9\"]},"
	"\"added_tokens\":[{\"id\":7,\"content\":\"<|end|>\",\"special\":true,\"lstrip\":true},"
	"{\"id\":6,\"content\":\"ab\",\"normalized\":true}]}";

static void tokens_by_id_added_first(void)
{
	struct ck_diag d = CK_DIAG_INIT;
	put("bpe", "tokenizer.json", BPE);
	struct ck_tok *t = load("bpe", &d);
	CHECK(t != NULL);
	if (!t) {
		printf("# %s\n", d.msg);
		return;
	}
	uint32_t len = 0;
	bool added = true;
	CHECK_STR(ck_tok_model_type(t), "BPE");
	CHECK_EQ_U64(ck_tok_vocab_count(t), 5);
	CHECK_EQ_U64(ck_tok_size(t), 8);
	CHECK_STR(ck_tok_token_str(t, 2, &len, &added), "a\\u0000");	/* the text, not a NUL */
	CHECK_EQ_U64(len, 7);
	CHECK(!added);
	CHECK_STR(ck_tok_token_str(t, 3, &len, NULL), "\xc3\xa9");
	CHECK(ck_tok_token_str(t, 4, NULL, NULL) == NULL);		/* a gap */
	CHECK_STR(ck_tok_token_str(t, 7, NULL, &added), "<|end|>");
	CHECK(added);
	CHECK_EQ_U64((uint64_t)ck_tok_token_id(t, "ab"), 6);		/* added tokens win */
	CHECK(ck_tok_token_id(t, "zz") == -1);
	CHECK_EQ_U64(ck_tok_added_count(t), 2);
	CHECK_EQ_U64(ck_tok_added(t, 0)->id, 6);
	CHECK_EQ_U64(ck_tok_added(t, 0)->flags, CK_TOK_NORMALIZED);
	CHECK_EQ_U64(ck_tok_added(t, 1)->flags, CK_TOK_SPECIAL | CK_TOK_LSTRIP);
	ck_tok_free(t);
}

static void merges_split_at_first_space_and_print_like_gguf_py(void)
{
	struct ck_diag d = CK_DIAG_INIT;
	put("bpe", "tokenizer.json", BPE);
	struct ck_tok *t = load("bpe", &d);
	bool legacy = false;
	char buf[32];
	CHECK(t != NULL);
	if (!t)
		return;
	CHECK_EQ_U64(ck_tok_merge_count(t, &legacy), 2);
	CHECK(legacy);
	const struct ck_tok_merge *m = ck_tok_merge(t, 0);
	CHECK(m->alen == 1 && !memcmp(m->a, "a", 1));
	CHECK(m->blen == 3 && !memcmp(m->b, "b c", 3));
	/* gguf-py writes a space inside a part as U+0120. */
	CHECK_EQ_U64(ck_tok_merge_str(t, 0, buf, sizeof(buf)), 6);
	CHECK_STR(buf, "a b\xc4\xa0" "c");
	CHECK_EQ_U64(ck_tok_merge_str(t, 0, buf, 4), 6);		/* truncated, NUL-terminated */
	CHECK_STR(buf, "a b");
	CHECK_EQ_U64(ck_tok_merge_str(t, 1, buf, sizeof(buf)), 4);
	CHECK_STR(buf, "a \xc3\xa9");
	ck_tok_free(t);
}

static void pair_and_legacy_merges_hash_the_same(void)
{
	struct ck_diag d = CK_DIAG_INIT;
	put("m1", "tokenizer.json", "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[\"a b\",\"c d\"]}}");
	put("m2", "tokenizer.json", "{\n  \"model\": {\"merges\": [[\"a\", \"b\"], [\"c\", \"d\"]], \"vocab\": {\"a\": 0},\n"
				     "  \"type\": \"BPE\"}\n}\n");
	put("m3", "tokenizer.json", "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[[\"c\",\"d\"],[\"a\",\"b\"]]}}");
	struct ck_tok *a = load("m1", &d), *b = load("m2", &d), *c = load("m3", &d);
	CHECK(a && b && c);
	if (a && b && c) {
		CHECK_STR(ck_tok_hash(a, CK_TOKC_MERGES), ck_tok_hash(b, CK_TOKC_MERGES));
		CHECK_STR(ck_tok_hash(a, CK_TOKC_PIPELINE), ck_tok_hash(b, CK_TOKC_PIPELINE));
		CHECK(strcmp(ck_tok_hash(a, CK_TOKC_MERGES), ck_tok_hash(c, CK_TOKC_MERGES)));	/* rank order */
		CHECK_STR(ck_tok_hash_all(a), ck_tok_hash_all(b));
		CHECK(ck_tok_hash(a, CK_TOKC_TEMPLATE) == NULL);
	}
	ck_tok_free(a);
	ck_tok_free(b);
	ck_tok_free(c);
}

static void numbers_compare_by_value_in_the_pipeline(void)
{
	struct ck_diag d = CK_DIAG_INIT;
	put("n1", "tokenizer.json", "{\"decoder\":{\"x\":1.0,\"y\":0.1,\"z\":1e400},\"model\":{\"type\":\"WordLevel\",\"vocab\":{}}}");
	put("n2", "tokenizer.json", "{\"decoder\":{\"z\":2e999,\"y\":1e-1,\"x\":1},\"model\":{\"type\":\"WordLevel\",\"vocab\":{}}}");
	put("n3", "tokenizer.json", "{\"decoder\":{\"x\":1,\"y\":0.10000000000000002,\"z\":1e400},\"model\":{\"type\":\"WordLevel\",\"vocab\":{}}}");
	struct ck_tok *a = load("n1", &d), *b = load("n2", &d), *c = load("n3", &d);
	CHECK(a && b && c);
	if (a && b && c) {
		CHECK_STR(ck_tok_hash(a, CK_TOKC_PIPELINE), ck_tok_hash(b, CK_TOKC_PIPELINE));
		CHECK(strcmp(ck_tok_hash(a, CK_TOKC_PIPELINE), ck_tok_hash(c, CK_TOKC_PIPELINE)));
	}
	ck_tok_free(a);
	ck_tok_free(b);
	ck_tok_free(c);
}

static void intake_refuses_what_cjson_lets_through(void)
{
	static const struct { const char *json, *needle; } bad[] = {
		{ "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"a\":1}}}", "duplicate key 'a'" },
		{ "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\\u0000b\":0}}}", "NUL character" },
		{ "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":4294967295}}}", "not an integer" },
		{ "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":1e15}}}", "not an integer" },
		{ "{\"model\":{\"type\":\"BPE\",\"vocab\":{}}} {}", "malformed JSON near byte 36" },
		{ "{\"model\":{\"type\":\"Model\",\"vocab\":{}}}", "unsupported model type 'Model'" },
		{ "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"\xed\xa0\x80\":0}}}", "not valid UTF-8 at byte 33" },
	};
	for (size_t i = 0; i < CK_ARRAY_SIZE(bad); i++) {
		struct ck_diag d = CK_DIAG_INIT;
		put("bad", "tokenizer.json", bad[i].json);
		struct ck_tok *t = load("bad", &d);
		CHECK(t == NULL);
		CHECK(strstr(d.msg, bad[i].needle) != NULL);
		if (!strstr(d.msg, bad[i].needle))
			printf("# case %zu: %s\n", i, d.msg);
		ck_tok_free(t);
	}
}

static void roles_resolve_through_added_tokens(void)
{
	struct ck_diag d = CK_DIAG_INIT;
	put("roles", "tokenizer.json", BPE);
	put("roles", "tokenizer_config.json", "{\"eos_token\":{\"content\":\"<|end|>\",\"__type\":\"AddedToken\"},"
					       "\"pad_token\":null,\"model_max_length\":1e30}");
	put("roles", "special_tokens_map.json", "{\"eos_token\":\"a\",\"pad_token\":\"zz\",\"bos_token\":\"a\"}");
	put("roles", "generation_config.json", "{\"eos_token_id\":[7,6],\"pad_token_id\":null}");
	struct ck_tok *t = load("roles", &d);
	CHECK(t != NULL);
	if (!t) {
		printf("# %s\n", d.msg);
		return;
	}
	const struct ck_tok_role_tok *eos = ck_tok_role(t, CK_TOK_EOS), *pad = ck_tok_role(t, CK_TOK_PAD);
	CHECK_STR(eos->token, "<|end|>");
	CHECK_EQ_U64(eos->id, 7);
	CHECK_STR(eos->source, "tokenizer_config.json");
	/* null in tokenizer_config does not stop special_tokens_map from naming one. */
	CHECK_STR(pad->token, "zz");
	CHECK(pad->id == -1);
	CHECK_EQ_U64(ck_tok_role(t, CK_TOK_BOS)->id, 0);
	const struct ck_tok_ids *g = ck_tok_generation_ids(t, CK_TOK_EOS_ID);
	CHECK(g->state == CK_TOK_IDS_SET && g->n == 2 && g->v[0] == 7 && g->v[1] == 6);
	CHECK(ck_tok_generation_ids(t, CK_TOK_PAD_ID)->state == CK_TOK_IDS_NULL);
	CHECK(ck_tok_config_ids(t, CK_TOK_PAD_ID)->state == CK_TOK_IDS_ABSENT);
	ck_tok_free(t);
}

static void embedding_rows_rules(void)
{
	struct ck_diag d = CK_DIAG_INIT;
	put("bpe", "tokenizer.json", BPE);
	struct ck_tok *t = load("bpe", &d);
	CHECK(t != NULL);
	if (!t)
		return;
	CHECK(ck_tok_check_rows(t, 8, &d) == 0);
	CHECK(ck_tok_check_rows(t, 100, &d) == 0);
	CHECK(ck_tok_check_rows(t, 4, &d) == CK_EDIFF);
	/* Id 4 is a gap: the first token without a row is 5. */
	CHECK(strstr(d.msg, "token id 5 ('ab') has no embedding row: 4 rows for 8 token ids") != NULL);
	CHECK(ck_tok_check_adapter_rows(16, 0, t, &d) == 0);	/* no embeddings in the adapter */
	CHECK(ck_tok_check_adapter_rows(16, 16, NULL, &d) == 0);
	CHECK(ck_tok_check_adapter_rows(16, 20, NULL, &d) == CK_EDIFF);
	CHECK(ck_tok_check_adapter_rows(4, 8, t, &d) == 0);	/* resized for its own 8 ids */
	CHECK(ck_tok_check_adapter_rows(4, 6, t, &d) == CK_EDIFF);
	ck_tok_free(t);
}

static const struct ck_tok_item *item(const struct ck_tok_report *r, const char *name)
{
	for (size_t i = 0; i < r->nitems; i++)
		if (!strcmp(r->items[i].name, name))
			return &r->items[i];
	return NULL;
}

static void compare_gives_severity_per_component(void)
{
	char a[128], b[128], e1[128], e2[128];
	struct ck_diag d = CK_DIAG_INIT;
	struct ck_tok_report *r = NULL;

	put("ca", "tokenizer.json", BPE);
	put("cb", "tokenizer.json", BPE);
	put("cb", "chat_template.jinja", "{{ x }}\n");
	snprintf(a, sizeof(a), "%s/ca", dir);
	snprintf(b, sizeof(b), "%s/cb", dir);
	CHECK(ck_tok_compare(a, b, 0, &r, &d) == 0);		/* a template only in B: a warning */
	CHECK(r && r->worst == CK_TOK_WARNING && item(r, "template")->sev == CK_TOK_WARNING);
	CHECK(r && item(r, "vocab")->sev == CK_TOK_SAME);
	ck_tok_report_free(r);
	CHECK(ck_tok_compare(a, b, CK_TOK_STRICT, &r, &d) == CK_EDIFF);
	ck_tok_report_free(r);
	put("cb", "tokenizer.json", "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]}}");
	CHECK(ck_tok_compare(a, b, 0, &r, &d) == CK_EDIFF);
	CHECK(r && item(r, "vocab")->sev == CK_TOK_BREAKING && item(r, "added")->sev == CK_TOK_BREAKING);
	CHECK(r && ck_tok_report_add_rows(r, 8, 3, CK_TOK_ADAPTER_B, 0) == CK_EDIFF);
	CHECK(r && strstr(item(r, "embedding")->summary, "the adapter's embeddings have 3 rows, the base's 8"));
	ck_tok_report_free(r);
	/* Two folders without tokenizer files: an error unless the caller allows them. */
	snprintf(e1, sizeof(e1), "%s/e1", dir);
	snprintf(e2, sizeof(e2), "%s/e2", dir);
	mkdir(e1, 0700);
	mkdir(e2, 0700);
	CHECK(ck_tok_compare(e1, e2, 0, &r, &d) == CK_EINVAL && r == NULL);
	CHECK(strstr(d.msg, "no tokenizer files") != NULL);
	CHECK(ck_tok_compare(e1, e2, CK_TOK_ALLOW_EMPTY, &r, &d) == 0);
	CHECK(r && ck_tok_empty(r->a) && r->worst == CK_TOK_SAME);
	ck_tok_report_free(r);
	CHECK(ck_tok_compare(a, e2, CK_TOK_ALLOW_EMPTY | CK_TOK_STRICT, &r, &d) == CK_EDIFF);
	CHECK(r && item(r, "vocab")->sev == CK_TOK_WARNING);
	ck_tok_report_free(r);
}

int main(void)
{
	snprintf(dir, sizeof(dir), "/tmp/ckpt-tok-XXXXXX");
	if (!mkdtemp(dir))
		return 1;
	RUN(tokens_by_id_added_first);
	RUN(merges_split_at_first_space_and_print_like_gguf_py);
	RUN(pair_and_legacy_merges_hash_the_same);
	RUN(numbers_compare_by_value_in_the_pipeline);
	RUN(intake_refuses_what_cjson_lets_through);
	RUN(roles_resolve_through_added_tokens);
	RUN(embedding_rows_rules);
	RUN(compare_gives_severity_per_component);
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	if (system(cmd))
		printf("# could not remove %s\n", dir);
	return tap_done();
}
