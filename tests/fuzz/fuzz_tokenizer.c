/*
 * fuzz_tokenizer.c - libFuzzer target for the tokenizer loader and the
 * comparison: the first byte picks which file of a tokenizer folder the rest
 * becomes (tokenizer.json, tokenizer_config.json, ...), the folder is loaded,
 * every accessor is walked, and the folder is compared with the real-looking
 * tiny one written at start-up (so the diff code runs on hostile data too).
 *	make fuzz && build-fuzz/fuzz_tokenizer -max_total_time=60 tests/bad/tok-*
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "../../verify/tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char base[64], fz[80], ref[80];
static volatile uint64_t sink;

static const char *const names[] = {
	"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
	"chat_template.jinja", "generation_config.json", "config.json",
};

static void write_file(const char *dir, const char *name, const void *p, size_t n)
{
	char path[160];
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	FILE *f = fopen(path, "wb");
	if (f) {
		if (n)
			fwrite(p, 1, n, f);
		fclose(f);
	}
}

static void setup(void)
{
	static const char tj[] =
		"{\"added_tokens\":[{\"id\":4,\"content\":\"<|end|>\",\"special\":true}],"
		"\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1,\"ab\":2,\"c\":3},\"merges\":[[\"a\",\"b\"]]}}";
	static const char tc[] = "{\"eos_token\":\"<|end|>\",\"chat_template\":\"{{ x }}\\n{{ y }}\\n\"}";
	snprintf(base, sizeof(base), "/tmp/ckpt-fuzz-tok-XXXXXX");
	if (!mkdtemp(base))
		abort();
	snprintf(fz, sizeof(fz), "%s/fz", base);
	snprintf(ref, sizeof(ref), "%s/ref", base);
	mkdir(fz, 0700);
	mkdir(ref, 0700);
	write_file(ref, "tokenizer.json", tj, sizeof(tj) - 1);
	write_file(ref, "tokenizer_config.json", tc, sizeof(tc) - 1);
}

static void walk(const struct ck_tok *t)
{
	char buf[64];
	uint64_t n = ck_tok_size(t);
	for (size_t i = 0; i < ck_tok_vocab_count(t); i++)
		sink += ck_tok_vocab(t, i)->len + (uint8_t)ck_tok_vocab(t, i)->s[0];
	for (size_t i = 0; i < ck_tok_merge_count(t, NULL); i++)
		sink += ck_tok_merge_str(t, i, buf, sizeof(buf));
	for (size_t i = 0; i < ck_tok_added_count(t); i++)
		sink += ck_tok_added(t, i)->len;
	for (uint64_t id = 0; id < n && id < 4096; id++)
		sink += ck_tok_token_str(t, (uint32_t)id, NULL, NULL) != NULL;
	for (int c = 0; c < CK_TOKC_COUNT; c++)
		sink += ck_tok_hash(t, (enum ck_tok_comp)c) != NULL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct ck_diag d = CK_DIAG_INIT;
	struct ck_tok *t = NULL;
	struct ck_tok_report *r = NULL;

	if (!base[0])
		setup();
	if (!size)
		return 0;
	for (size_t i = 0; i < CK_ARRAY_SIZE(names); i++) {
		char path[160];
		snprintf(path, sizeof(path), "%s/%s", fz, names[i]);
		unlink(path);
	}
	write_file(fz, names[data[0] % CK_ARRAY_SIZE(names)], data + 1, size - 1);
	if (ck_tok_load(&t, fz, CK_TOK_ALLOW_EMPTY, &d) == 0) {
		char *cons = NULL;
		walk(t);
		ck_tok_check_rows(t, 3, &d);
		if (ck_tok_consistency(t, &cons) > 0)
			sink += strlen(cons);
		free(cons);
		ck_tok_free(t);
	}
	if (ck_tok_compare(ref, fz, CK_TOK_ALLOW_EMPTY, &r, &d) >= CK_EDIFF && r) {
		ck_tok_report_add_rows(r, 5, 7, CK_TOK_ADAPTER_B, 0);
		FILE *null = fopen("/dev/null", "w");
		if (null) {
			ck_tok_report_print(null, r, true, true);
			ck_tok_report_json(null, r, 0);
			fclose(null);
		}
	}
	ck_tok_report_free(r);
	return 0;
}
