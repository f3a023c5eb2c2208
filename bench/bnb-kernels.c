/*
 * bnb-kernels.c - the quant/bnb.h kernels alone, in memory (no files): NF4
 * quantize and dequantize of 1 GiB of BF16, on 1 and N threads, for the
 * comparison with bitsandbytes' in-memory CPU numbers (bench/bnb-ref.py).
 * Built and run by bench/bnb.sh:  cc ... bench/bnb-kernels.c build/libckpt.a
 * Prints TSV rows: name, wall seconds, CPU seconds, GB/s (wall), GB/s (CPU).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "../quant/bnb.h"
#include "../libtensor/dtype.h"

static double clk(clockid_t c)
{
	struct timespec t;
	clock_gettime(c, &t);
	return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static void row(const char *name, int th, double w, double c, double bytes)
{
	printf("kernel %s, %d thread(s)\t%.2f\t%.2f cpu-s\t%.2f GB/s wall\t%.2f GB/s cpu\n", name, th, w,
	       c, bytes / w / 1e9, bytes / c / 1e9);
}

int main(int argc, char **argv)
{
	uint64_t n = (uint64_t)1 << 29;		/* 1 GiB of BF16 */
	int nth = argc > 1 ? atoi(argv[1]) : 2;
	uint16_t *src = malloc(n * 2), *dst = malloc(n * 2);
	uint8_t *packed = malloc(n / 2);
	float *absmax = malloc(n / 64 * 4);
	struct ck_tensor tw = { 0 }, ta = { 0 };
	struct ck_bnb_group g = { 0 };
	uint32_t s = 12345;

	if (!src || !dst || !packed || !absmax)
		return 4;
	for (uint64_t i = 0; i < n; i++) {	/* a cheap LCG: values ~ N(0, 0.02)-ish */
		s = s * 1664525u + 1013904223u;
		src[i] = ck_f32_to_bf16(((float)(s >> 8) / 16777216.0f - 0.5f) * 0.05f);
	}
	/* touch every page before timing: first-touch faults are not the kernels' cost */
	memset(dst, 0, n * 2);
	memset(packed, 0, n / 2);
	memset(absmax, 0, n / 64 * 4);
	tw.data = packed;
	ta.data = (const uint8_t *)absmax;
	g.type = CK_BNB_NF4;
	g.blocksize = 64;
	g.n = n;
	g.nblocks = n / 64;
	g.weight = &tw;
	g.absmax = &ta;
	for (int th = 1; th <= nth; th += nth > 1 ? nth - 1 : 1) {
		double w0 = clk(CLOCK_MONOTONIC), c0 = clk(CLOCK_PROCESS_CPUTIME_ID), w1, c1;
		if (ck_bnb_quantize(CK_BNB_NF4, 64, CK_DT_BF16, src, n, packed, absmax, th, NULL))
			return 1;
		w1 = clk(CLOCK_MONOTONIC);
		c1 = clk(CLOCK_PROCESS_CPUTIME_ID);
		row("quantize nf4 bs64 (BF16 in)", th, w1 - w0, c1 - c0, (double)n * 2);
		if (ck_bnb_group_dequant(&g, 0, n, CK_DT_BF16, dst, th, NULL))
			return 1;
		row("dequantize nf4 bs64 -> BF16", th, clk(CLOCK_MONOTONIC) - w1,
		    clk(CLOCK_PROCESS_CPUTIME_ID) - c1, (double)n * 2);
		if (th == nth)
			break;
	}
	free(src);
	free(dst);
	free(packed);
	free(absmax);
	return 0;
}
