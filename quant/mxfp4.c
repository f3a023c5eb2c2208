/*
 * mxfp4.c - MXFP4 slice loops: one expert's [OUT, IN] matrix at a time,
 * split by rows across threads, with the HF transposes done through small
 * tiles so both the strided side and the packed side stay in cache.
 *
 * The per-block math is in mxfp4.h.  Every thread works on a disjoint range
 * of output rows and remembers the first bad value it met; the caller gets
 * the lowest one, so the error line does not depend on the thread count.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include "mxfp4.h"

/* Rows per tile: 64 BF16 = one 128-byte run of the transposed side. */
#define TILE 64
#define MAX_THREADS 256

struct slice_job {
	/* the slice */
	const uint8_t *blocks;
	const uint8_t *scales;
	const void *src;
	uint16_t *dst;
	uint8_t *qblocks, *qscales;
	enum ck_dtype dt;
	uint64_t out, g;
	int transposed;
	struct ck_mx_rule rule;
	/* the row range of one thread, and what it found */
	uint64_t r0, r1;
	int bad;
	struct ck_mx_where w;
};

static void note_bad(struct slice_job *j, uint64_t row, uint64_t block, uint32_t elem)
{
	if (!j->bad || row < j->w.row || (row == j->w.row && block < j->w.block)) {
		j->bad = 1;
		j->w.row = row;
		j->w.block = block;
		j->w.elem = elem;
	}
}

/* ck_mx_decode for every scale byte and code: 8 KiB, built once. */
static uint16_t decode_lut[256][16];
static pthread_once_t decode_once = PTHREAD_ONCE_INIT;

static void build_lut(void)
{
	for (unsigned s = 0; s < 255; s++)
		for (unsigned c = 0; c < 16; c++)
			decode_lut[s][c] = ck_mx_decode(c, s);
}

static void decode_block_lut(const uint8_t *blk, unsigned s, uint16_t *out)
{
	const uint16_t *t = decode_lut[s];
	for (int j = 0; j < CK_MX_BLOCK_BYTES; j++) {
		out[2 * j] = t[blk[j] & 15];
		out[2 * j + 1] = t[blk[j] >> 4];
	}
}

/* Dequantize rows [o0, o0+n) of block column b. */
static void dequant_tile(struct slice_job *j, uint64_t o0, uint64_t n, uint64_t b)
{
	uint16_t tile[TILE][CK_MX_BLOCK];

	for (uint64_t r = 0; r < n; r++) {
		uint64_t i = (o0 + r) * j->g + b;
		unsigned s = j->scales[i];
		uint16_t *row = j->transposed ? tile[r] : j->dst + i * CK_MX_BLOCK;
		if (s == CK_MX_SCALE_NAN) {
			note_bad(j, o0 + r, b, 0);
			memset(row, 0, CK_MX_BLOCK * sizeof(*row));
			continue;
		}
		decode_block_lut(j->blocks + i * CK_MX_BLOCK_BYTES, s, row);
	}
	if (!j->transposed)
		return;
	/* element k of block b is input row 32b+k of the HF [in, out] matrix */
	for (int k = 0; k < CK_MX_BLOCK; k++) {
		uint16_t *d = j->dst + (b * CK_MX_BLOCK + (uint64_t)k) * j->out + o0;
		for (uint64_t r = 0; r < n; r++)
			d[r] = tile[r][k];
	}
}

/*
 * The loop order follows the strided side: for the HF form, one block
 * column at a time across all rows, so the 32 output rows it fills are
 * written front to back; for the plain form, row after row.
 */
static void each_tile(struct slice_job *j, void (*fn)(struct slice_job *, uint64_t, uint64_t, uint64_t))
{
	if (j->transposed) {
		for (uint64_t b = 0; b < j->g; b++)
			for (uint64_t o0 = j->r0; o0 < j->r1; o0 += TILE)
				fn(j, o0, j->r1 - o0 < TILE ? j->r1 - o0 : TILE, b);
	} else {
		for (uint64_t o0 = j->r0; o0 < j->r1; o0 += TILE)
			for (uint64_t b = 0; b < j->g; b++)
				fn(j, o0, j->r1 - o0 < TILE ? j->r1 - o0 : TILE, b);
	}
}

static void *dequant_rows(void *arg)
{
	each_tile(arg, dequant_tile);
	return NULL;
}

static float load(enum ck_dtype dt, const void *p, uint64_t i)
{
	if (dt == CK_DT_BF16) {
		uint16_t h;
		memcpy(&h, (const uint8_t *)p + 2 * i, 2);
		return ck_mx_bits_f32((uint32_t)h << 16);
	}
	if (dt == CK_DT_F16) {
		uint16_t h;
		memcpy(&h, (const uint8_t *)p + 2 * i, 2);
		return ck_f16_to_f32(h);
	}
	float f;
	memcpy(&f, (const uint8_t *)p + 4 * i, 4);
	return f;
}

/* n consecutive elements from index i into dst with stride (the BF16 case is the hot one). */
static void gather(enum ck_dtype dt, const void *p, uint64_t i, uint64_t n, float *dst, size_t stride)
{
	if (dt == CK_DT_BF16) {
		const uint8_t *b = (const uint8_t *)p + 2 * i;
		for (uint64_t r = 0; r < n; r++) {
			uint16_t h;
			memcpy(&h, b + 2 * r, 2);
			dst[r * stride] = ck_mx_bits_f32((uint32_t)h << 16);
		}
		return;
	}
	for (uint64_t r = 0; r < n; r++)
		dst[r * stride] = load(dt, p, i + r);
}

/* Quantize rows [o0, o0+n) of block column b. */
static void quant_tile(struct slice_job *j, uint64_t o0, uint64_t n, uint64_t b)
{
	float tile[TILE][CK_MX_BLOCK];

	if (j->transposed) {
		for (int k = 0; k < CK_MX_BLOCK; k++)
			gather(j->dt, j->src, (b * CK_MX_BLOCK + (uint64_t)k) * j->out + o0, n, &tile[0][k],
			       CK_MX_BLOCK);
	} else {
		for (uint64_t r = 0; r < n; r++)
			gather(j->dt, j->src, (o0 + r) * j->g * CK_MX_BLOCK + b * CK_MX_BLOCK, CK_MX_BLOCK,
			       tile[r], 1);
	}
	for (uint64_t r = 0; r < n; r++) {
		uint64_t i = (o0 + r) * j->g + b;
		int bad = ck_mx_encode_block(tile[r], j->rule, j->qblocks + i * CK_MX_BLOCK_BYTES,
					     j->qscales + i);
		if (bad)
			note_bad(j, o0 + r, b, (uint32_t)bad - 1);
	}
}

static void *quant_rows(void *arg)
{
	each_tile(arg, quant_tile);
	return NULL;
}

/* Run fn over rows [0, out) on up to threads threads; returns the lowest bad spot. */
static int run_rows(void *(*fn)(void *), const struct slice_job *proto, int threads,
		    struct ck_mx_where *w)
{
	struct slice_job jobs[MAX_THREADS];
	pthread_t th[MAX_THREADS];
	int started[MAX_THREADS] = { 0 };
	uint64_t per, rows = proto->out;
	int n, bad = 0;

	if (threads < 1)
		threads = 1;
	if (threads > MAX_THREADS)
		threads = MAX_THREADS;
	/* at least one tile of rows per thread */
	if ((uint64_t)threads > (rows + TILE - 1) / TILE)
		threads = (int)((rows + TILE - 1) / TILE);
	if (threads < 1)
		threads = 1;
	n = threads;
	per = (rows + (uint64_t)n - 1) / (uint64_t)n;
	per = (per + TILE - 1) / TILE * TILE;
	for (int t = 0; t < n; t++) {
		jobs[t] = *proto;
		jobs[t].r0 = (uint64_t)t * per < rows ? (uint64_t)t * per : rows;
		jobs[t].r1 = jobs[t].r0 + per < rows ? jobs[t].r0 + per : rows;
		jobs[t].bad = 0;
		/* the calling thread takes the first range; a failed start runs inline */
		if (t > 0 && pthread_create(&th[t], NULL, fn, &jobs[t]) == 0)
			started[t] = 1;
	}
	fn(&jobs[0]);
	for (int t = 1; t < n; t++) {
		if (started[t])
			pthread_join(th[t], NULL);
		else
			fn(&jobs[t]);
	}
	for (int t = 0; t < n; t++)
		if (jobs[t].bad && !bad) {
			/* ranges are in row order: the first thread that failed has the lowest row */
			bad = 1;
			*w = jobs[t].w;
		}
	return bad;
}

int ck_mx_dequant_slice(const uint8_t *blocks, const uint8_t *scales, uint64_t out, uint64_t g,
			int transposed, uint16_t *dst, int threads, struct ck_mx_where *w)
{
	struct slice_job j = { .blocks = blocks, .scales = scales, .dst = dst, .out = out, .g = g,
			       .transposed = transposed };
	struct ck_mx_where tmp;

	pthread_once(&decode_once, build_lut);
	return run_rows(dequant_rows, &j, threads, w ? w : &tmp) ? CK_EINVAL : 0;
}

int ck_mx_quant_slice(const void *src, enum ck_dtype dt, uint64_t out, uint64_t in, int transposed,
		      struct ck_mx_rule rule, uint8_t *blocks, uint8_t *scales, int threads,
		      struct ck_mx_where *w)
{
	struct slice_job j = { .src = src, .dt = dt, .qblocks = blocks, .qscales = scales, .out = out,
			       .g = in / CK_MX_BLOCK, .transposed = transposed, .rule = rule };
	struct ck_mx_where tmp;

	if (dt != CK_DT_BF16 && dt != CK_DT_F16 && dt != CK_DT_F32)
		return CK_EUNSUPPORTED;
	if (in % CK_MX_BLOCK)
		return CK_EUNSUPPORTED;
	return run_rows(quant_rows, &j, threads, w ? w : &tmp) ? CK_EINVAL : 0;
}

int ck_mx_parse_rule(const char *scale, const char *round, struct ck_mx_rule *r)
{
	struct ck_mx_rule d = CK_MX_RULE_DEFAULT;

	if (!scale || !strcmp(scale, "up"))
		d.scale = CK_MX_SCALE_UP;
	else if (!strcmp(scale, "ocp"))
		d.scale = CK_MX_SCALE_OCP;
	else
		return CK_EUSAGE;
	if (!round || !strcmp(round, "rne"))
		d.round = CK_MX_ROUND_RNE;
	else if (!strcmp(round, "half-up"))
		d.round = CK_MX_ROUND_HALF_UP;
	else if (!strcmp(round, "ggml"))
		d.round = CK_MX_ROUND_GGML;
	else
		return CK_EUSAGE;
	*r = d;
	return 0;
}
