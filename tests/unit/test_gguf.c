/*
 * test_gguf.c - the GGUF reader and writer on buffers and small files:
 * writer output read back, every truncation refused, every byte flip
 * survived, counts that claim more than the file holds refused early.
 * (Interop with gguf-py is in tests/test_gguf.py.)
 */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "tap.h"
#include "../../libtensor/gguf.h"
#include "../../quant/q8_0.h"

static char dir[64];

static char *slurp(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	char *p;
	long n;
	if (!f)
		return NULL;
	fseek(f, 0, SEEK_END);
	n = ftell(f);
	fseek(f, 0, SEEK_SET);
	p = malloc((size_t)n + 1);
	if (p && fread(p, 1, (size_t)n, f) != (size_t)n) {
		free(p);
		p = NULL;
	}
	fclose(f);
	*len = (size_t)n;
	return p;
}

/* Write a small GGUF with every KV type, two tensors and alignment align. */
static int write_sample(const char *path, uint32_t align, struct ck_diag *d)
{
	struct ck_out *o = NULL;
	struct ck_ggw *w = NULL;
	const char *strs[] = { "a", "", "tab\there" };
	size_t lens[] = { 1, 0, 8 };
	int16_t i16s[] = { -1, 2, -3 };
	struct ck_gguf_value inner[2], outer, i8;
	struct ck_gguf_kv kv;
	struct ck_ggw_tensor t1 = { "w.f32", CK_GGML_F32, 2, { 3, 5 }, 0, 0 };
	struct ck_ggw_tensor t2 = { "w.q8", CK_GGML_Q8_0, 1, { 64 }, 0, 0 };
	float f[15];
	uint8_t q[68];
	int rc;

	rc = ck_out_begin(&o, CK_OUT_FILE, path, 1, NULL, 0, d);
	if (!rc)
		rc = ck_ggw_new(&w, o, align, d);
	if (!rc && align != 32)
		rc = ck_ggw_kv_u32(w, "general.alignment", align, d);
	if (!rc)
		rc = ck_ggw_kv_str(w, "general.architecture", "test", 4, d);
	if (!rc)
		rc = ck_ggw_kv_i32(w, "k.i32", -5, d);
	if (!rc)
		rc = ck_ggw_kv_u64(w, "k.u64", UINT64_MAX, d);
	if (!rc)
		rc = ck_ggw_kv_f32(w, "k.f32", 0.1f, d);
	if (!rc)
		rc = ck_ggw_kv_bool(w, "k.bool", 1, d);
	if (!rc)
		rc = ck_ggw_kv_arr(w, "k.i16s", CK_GGUF_I16, i16s, 3, d);
	if (!rc)
		rc = ck_ggw_kv_strs(w, "k.strs", strs, lens, 3, d);
	/* [[i8 -7], []] through kv_copy */
	i8.type = CK_GGUF_I8;
	i8.i = -7;
	inner[0].type = inner[1].type = CK_GGUF_ARRAY;
	inner[0].arr.type = inner[1].arr.type = CK_GGUF_I8;
	inner[0].arr.n = 1;
	inner[0].arr.items = &i8;
	inner[0].arr.raw = NULL;
	inner[1].arr.n = 0;
	inner[1].arr.items = NULL;
	inner[1].arr.raw = NULL;
	outer.type = CK_GGUF_ARRAY;
	outer.arr.type = CK_GGUF_ARRAY;
	outer.arr.n = 2;
	outer.arr.items = inner;
	outer.arr.raw = NULL;
	kv.key = "k.nested";
	kv.v = outer;
	if (!rc)
		rc = ck_ggw_kv_copy(w, &kv, d);
	if (!rc)
		rc = ck_ggw_tensor(w, &t1, d);
	if (!rc)
		rc = ck_ggw_tensor(w, &t2, d);
	if (!rc)
		rc = ck_ggw_begin(w, d);
	for (int i = 0; i < 15; i++)
		f[i] = (float)i;
	for (int i = 0; i < 68; i++)
		q[i] = (uint8_t)i;
	if (!rc)
		rc = ck_ggw_write(w, f, sizeof(f) - 4, d);
	if (!rc)	/* spans the end of w.f32 and the start of w.q8 */
		rc = ck_ggw_write(w, (const char *)f + sizeof(f) - 4, 4, d);
	if (!rc)
		rc = ck_ggw_write(w, q, sizeof(q), d);
	if (!rc)
		rc = ck_ggw_finish(w, d);
	if (!rc) {
		rc = ck_out_commit(o, d);
		o = NULL;
	}
	ck_out_abort(o);
	ck_ggw_free(w);
	return rc;
}

static void writer_output_reads_back(void)
{
	struct ck_diag d = CK_DIAG_INIT;
	struct ck_gguf *g = NULL;
	const struct ck_gguf_kv *kv;
	const struct ck_tensor *t;
	struct ck_gguf_value v;
	char path[128];
	uint32_t aligns[] = { 32, 64, 8 };

	for (size_t a = 0; a < 3; a++) {
		snprintf(path, sizeof(path), "%s/s%zu.gguf", dir, a);
		CHECK(write_sample(path, aligns[a], &d) == 0);
		CHECK(ck_gguf_open(&g, path, &d) == 0);
		if (!g) {
			printf("# %s\n", d.msg);
			return;
		}
		CHECK_EQ_U64(ck_gguf_version(g), 3);
		CHECK_EQ_U64(ck_gguf_alignment(g), aligns[a]);
		CHECK_EQ_U64(ck_gguf_nkv(g), aligns[a] != 32 ? 9 : 8);
		CHECK((kv = ck_gguf_find(g, "k.i32")) && kv->v.type == CK_GGUF_I32 && kv->v.i == -5);
		CHECK((kv = ck_gguf_find(g, "k.u64")) && kv->v.u == UINT64_MAX);
		CHECK((kv = ck_gguf_find(g, "k.f32")) && kv->v.f == (double)0.1f);
		CHECK((kv = ck_gguf_find(g, "k.bool")) && kv->v.u == 1);
		CHECK((kv = ck_gguf_find(g, "general.architecture")) && kv->v.str.len == 4 &&
		      !memcmp(kv->v.str.p, "test", 4));
		kv = ck_gguf_find(g, "k.i16s");
		CHECK(kv && kv->v.arr.type == CK_GGUF_I16 && kv->v.arr.n == 3 && !kv->v.arr.items);
		if (kv) {
			ck_gguf_arr_item(&kv->v, 2, &v);
			CHECK(v.type == CK_GGUF_I16 && v.i == -3);
		}
		kv = ck_gguf_find(g, "k.strs");
		CHECK(kv && kv->v.arr.n == 3 && kv->v.arr.items && kv->v.arr.items[2].str.len == 8);
		kv = ck_gguf_find(g, "k.nested");
		CHECK(kv && kv->v.arr.type == CK_GGUF_ARRAY && kv->v.arr.n == 2);
		if (kv && kv->v.arr.items) {
			ck_gguf_arr_item(&kv->v.arr.items[0], 0, &v);
			CHECK(v.type == CK_GGUF_I8 && v.i == -7);
			CHECK(kv->v.arr.items[1].arr.n == 0);
		}
		CHECK(ck_gguf_find(g, "nope") == NULL);
		CHECK_EQ_U64(ck_gguf_ntensors(g), 2);
		t = ck_gguf_tensor(g, 0);
		CHECK(t && !strcmp(t->name, "w.f32") && t->ndim == 2 && t->shape[0] == 3 &&
		      t->shape[1] == 5 && t->dtype == CK_DT_F32 && t->nbytes == 60);
		CHECK(t && t->offset == ck_gguf_data_offset(g) && t->offset % aligns[a] == 0);
		CHECK(t && ck_load_float(CK_DT_F32, t->data, 14) == 14.0f);
		t = ck_gguf_tensor(g, 1);
		CHECK(t && t->ggml_type == CK_GGML_Q8_0 && t->dtype == CK_DT_UNKNOWN &&
		      t->nbytes == 68 && t->data[67] == 67);
		CHECK(t && t->offset % aligns[a] == 0);
		ck_gguf_close(g);
		g = NULL;
	}
}

/* Every prefix that cuts into the tensor data or before is refused, and no byte flip crashes. */
static void truncations_and_flips(void)
{
	struct ck_diag d = CK_DIAG_INIT;
	struct ck_gguf *g = NULL;
	char path[128];
	size_t len, end, fails = 0;
	char *buf;

	snprintf(path, sizeof(path), "%s/s0.gguf", dir);
	buf = slurp(path, &len);
	CHECK(buf != NULL);
	if (!buf)
		return;
	CHECK(ck_gguf_parse(&g, buf, len, "x", &d) == 0);
	end = g ? (size_t)(ck_gguf_tensor(g, 1)->offset + 68) : len;
	ck_gguf_close(g);
	for (size_t n = 0; n < len; n++) {
		char *cut = malloc(n ? n : 1);	/* exact size, so ASan sees overreads */
		memcpy(cut, buf, n);
		g = NULL;
		if (ck_gguf_parse(&g, cut, n, "x", &d) != 0)
			fails++;
		else
			CHECK(n >= end);
		CHECK(n >= end || (g == NULL && d.status == CK_EINVAL));
		ck_gguf_close(g);
		free(cut);
	}
	CHECK_EQ_U64(fails, end);
	for (size_t i = 0; i < len; i++)
		for (int bit = 0; bit < 8; bit += 3) {
			buf[i] ^= (char)(1 << bit);
			g = NULL;
			if (ck_gguf_parse(&g, buf, len, "x", &d) == 0)
				ck_gguf_close(g);
			buf[i] ^= (char)(1 << bit);
		}
	free(buf);
}

static void huge_counts_fail_fast(void)
{
	uint8_t b[64] = "GGUF";
	struct ck_diag d = CK_DIAG_INIT;
	struct ck_gguf *g = NULL;

	b[4] = 3;
	memset(b + 16, 0xff, 7);	/* n_kv = 2^56 - 1 */
	CHECK(ck_gguf_parse(&g, b, sizeof(b), "x", &d) == CK_EINVAL);
	CHECK(strstr(d.msg, "n_kv") != NULL);
	memset(b + 8, 0, 16);
	b[15] = 0x80;			/* n_tensors = 2^63 */
	CHECK(ck_gguf_parse(&g, b, sizeof(b), "x", &d) == CK_EINVAL);
	CHECK(strstr(d.msg, "n_tensors") != NULL);
	b[15] = 0;
	b[4] = 1;
	CHECK(ck_gguf_parse(&g, b, sizeof(b), "x", &d) == CK_EUNSUPPORTED);
	b[4] = 0;
	b[6] = 3;			/* version 3 stored big-endian */
	CHECK(ck_gguf_parse(&g, b, sizeof(b), "x", &d) == CK_EUNSUPPORTED);
	CHECK(strstr(d.msg, "big-endian") != NULL);
}

static void writer_refuses_bad_plans(void)
{
	struct ck_diag d = CK_DIAG_INIT;
	struct ck_out *o = NULL;
	struct ck_ggw *w = NULL;
	char path[128];
	struct ck_ggw_tensor t = { "x", CK_GGML_Q8_0, 2, { 2, 33 }, 0, 0 };

	snprintf(path, sizeof(path), "%s/bad.gguf", dir);
	CHECK(ck_out_begin(&o, CK_OUT_FILE, path, 1, NULL, 0, &d) == 0);
	CHECK(ck_ggw_new(&w, o, 64, &d) == 0);
	CHECK(ck_ggw_tensor(w, &t, &d) == CK_EINVAL);		/* 33 % 32 */
	t.shape[1] = 32;
	t.ggml_type = 77;
	CHECK(ck_ggw_tensor(w, &t, &d) == CK_EINVAL);		/* unknown type */
	t.ggml_type = CK_GGML_F32;
	t.ndim = 5;
	CHECK(ck_ggw_tensor(w, &t, &d) == CK_EINVAL);
	t.ndim = 2;
	t.name = "0123456789012345678901234567890123456789012345678901234567890123";
	CHECK(ck_ggw_tensor(w, &t, &d) == CK_EINVAL);		/* 64 bytes */
	t.name = "x";
	CHECK(ck_ggw_tensor(w, &t, &d) == 0);
	CHECK(ck_ggw_tensor(w, &t, &d) == 0);
	CHECK(ck_ggw_kv_u32(w, "a", 1, &d) == 0);
	CHECK(ck_ggw_begin(w, &d) == CK_EINVAL);		/* 64 without general.alignment */
	CHECK(strstr(d.msg, "general.alignment") != NULL);
	CHECK(ck_ggw_kv_u32(w, "general.alignment", 64, &d) == 0);
	CHECK(ck_ggw_begin(w, &d) == CK_EINVAL);		/* duplicate tensor x */
	CHECK(strstr(d.msg, "duplicate") != NULL);
	ck_ggw_free(w);
	ck_out_abort(o);
	CHECK(access(path, F_OK) != 0);
}

/* The f16 scale conversion in q8_0.h agrees with dtype.c (checked against numpy there). */
static void q8_0_f16_matches_dtype(void)
{
	uint32_t x = 0x12345678, bad = 0;
	const uint32_t edge[] = { 0, 0x80000000, 0x33000000, 0x33000001, 0x337fffff, 0x38800000,
				  0x387fffff, 0x477fefff, 0x477ff000, 0x7f800000, 0xff800000,
				  0x3f800000, 0x33c00000, 0x34200000 };
	for (size_t i = 0; i < CK_ARRAY_SIZE(edge) + 2000000; i++) {
		float f;
		uint32_t b = i < CK_ARRAY_SIZE(edge) ? edge[i] : (x = x * 1664525u + 1013904223u);
		memcpy(&f, &b, 4);
		if (f != f)
			continue;
		if (ck_q8_0_f16(f) != ck_f32_to_f16(f) && bad++ < 5)
			printf("# f16(0x%08x): %04x != %04x\n", b, ck_q8_0_f16(f), ck_f32_to_f16(f));
		if (ck_q8_0_f32((uint16_t)b) != ck_f16_to_f32((uint16_t)b) &&
		    ((b & 0x7c00) != 0x7c00 || !(b & 0x3ff)) && bad++ < 5)
			printf("# f32(0x%04x)\n", b & 0xffff);
	}
	CHECK_EQ_U64(bad, 0);
	CHECK(ck_q8_0_f16(NAN) == 0x7e00);
}

/* Bytes equal to gguf-py's quantize(x, Q8_0), stored by gguf-py in the fixture. */
static void q8_0_matches_gguf_py(void)
{
	struct ck_diag d = CK_DIAG_INIT;
	struct ck_gguf *g = NULL;
	const struct ck_tensor *x, *q;
	uint8_t *out;
	float *y;
	size_t bad = 0;

	CHECK(ck_gguf_open(&g, "tests/fixtures/gguf/q8_0.gguf", &d) == 0);
	if (!g) {
		printf("# %s\n", d.msg);
		return;
	}
	x = ck_gguf_tensor(g, 0);
	q = ck_gguf_tensor(g, 1);
	CHECK(x && q && x->dtype == CK_DT_F32 && q->ggml_type == CK_GGML_Q8_0 &&
	      x->nelem == q->nelem && ck_q8_0_nbytes(x->nelem) == q->nbytes);
	if (!x || !q || x->nelem != q->nelem || q->nbytes != ck_q8_0_nbytes(x->nelem)) {
		ck_gguf_close(g);
		return;
	}
	out = malloc(q->nbytes);
	y = malloc(x->nelem * sizeof(float));
	/* The mapping need not be aligned for float: copy. */
	memcpy(y, x->data, x->nbytes);
	CHECK(ck_q8_0_quantize(y, out, x->nelem) == 0);
	for (size_t b = 0; b < q->nbytes / CK_Q8_0_BYTES; b++)
		if (memcmp(out + b * CK_Q8_0_BYTES, q->data + b * CK_Q8_0_BYTES, CK_Q8_0_BYTES) &&
		    bad++ < 5)
			printf("# block %zu differs\n", b);
	CHECK_EQ_U64(bad, 0);
	CHECK_EQ_U64(q->nbytes / CK_Q8_0_BYTES, 36);
	/* dequant: d * q with d from f16 */
	CHECK(ck_q8_0_dequantize(q->data, y, x->nelem) == 0);
	for (size_t i = 0; i < x->nelem; i++) {
		const uint8_t *blk = q->data + i / 32 * 34;
		float dd = ck_f16_to_f32((uint16_t)(blk[0] | blk[1] << 8));
		float want = (float)(int8_t)blk[2 + i % 32] * dd;
		if (memcmp(&want, &y[i], 4) && !(want != want && y[i] != y[i]))
			bad++;
	}
	CHECK_EQ_U64(bad, 0);
	CHECK(ck_q8_0_quantize(y, out, 31) == -1);
	CHECK(ck_q8_0_nbytes(33) == 0);
	free(out);
	free(y);
	ck_gguf_close(g);
}

int main(void)
{
	snprintf(dir, sizeof(dir), "/tmp/ckpt-test-gguf.XXXXXX");
	if (!mkdtemp(dir))
		return 1;
	RUN(writer_output_reads_back);
	RUN(truncations_and_flips);
	RUN(huge_counts_fail_fast);
	RUN(writer_refuses_bad_plans);
	RUN(q8_0_f16_matches_dtype);
	RUN(q8_0_matches_gguf_py);
	for (int i = 0; i < 3; i++) {
		char p[128];
		snprintf(p, sizeof(p), "%s/s%d.gguf", dir, i);
		unlink(p);
	}
	rmdir(dir);
	return tap_done();
}
