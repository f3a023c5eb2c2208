/*
 * fuzz_gguf.c - libFuzzer target for the GGUF reader: parse any bytes, and
 * when they parse, touch every value and every tensor byte the reader hands
 * out, so a view that reaches past the buffer shows up under ASan.
 *	make fuzz && build-fuzz/fuzz_gguf -max_total_time=60 tests/bad
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "../../libtensor/gguf.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static volatile uint64_t sink;

static void walk(const struct ck_gguf_value *v)
{
	if (v->type == CK_GGUF_STRING) {
		for (uint64_t i = 0; i < v->str.len; i++)
			sink += (uint8_t)v->str.p[i];
	} else if (v->type == CK_GGUF_ARRAY) {
		for (uint64_t i = 0; i < v->arr.n; i++) {
			struct ck_gguf_value it;
			ck_gguf_arr_item(v, i, &it);
			walk(&it);
		}
	} else {
		sink += v->u;
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct ck_diag d = CK_DIAG_INIT;
	struct ck_gguf *g = NULL;
	/* An exact-size copy: reads past the end hit the redzone. */
	uint8_t *buf = malloc(size ? size : 1);

	if (!buf)
		return 0;
	memcpy(buf, data, size);
	if (ck_gguf_parse(&g, buf, size, "fuzz", &d) == 0) {
		for (size_t i = 0; i < ck_gguf_nkv(g); i++) {
			const struct ck_gguf_kv *kv = ck_gguf_kv(g, i);
			if (ck_gguf_find(g, kv->key) != kv)
				abort();
			walk(&kv->v);
		}
		for (size_t i = 0; i < ck_gguf_ntensors(g); i++) {
			const struct ck_tensor *t = ck_gguf_tensor(g, i);
			if (t->nbytes) {
				sink += t->data[0];
				sink += t->data[t->nbytes - 1];
			}
		}
		ck_gguf_close(g);
	} else if (!d.msg[0] || strchr(d.msg, '\n')) {
		abort();	/* a failure must say why, on one line */
	}
	free(buf);
	return 0;
}
