/*
 * quant_mxfp4.c - BF16 gpt-oss experts back to OpenAI's MXFP4 on-disk
 * layout.  The work is in quant/mxfp4_model.c, the block math in
 * quant/mxfp4.h.
 */
#include <string.h>
#include "ckpt.h"
#include "../libtensor/stwriter.h"
#include "../quant/mxfp4.h"

int cmd_quant_mxfp4(int argc, char **argv)
{
	struct ck_mx_job job = { .shard_size = CK_SHARD_SIZE_DEFAULT };
	const char *scale = "up", *round = "rne";
	int64_t jobs = ck_ncpus();
	int quiet = 0;
	const struct ck_option opts[] = {
		CK_OPT_CHOICE(0, "scale", &scale, "up|ocp",
			      "up: 2^ceil(log2(amax/6)), nothing clips (transformers, triton); "
			      "ocp: 2^(floor(log2 amax)-2) (OCP MX, ggml) [up]"),
		CK_OPT_CHOICE(0, "round", &round, "rne|half-up|ggml",
			      "rne: nearest-even, -0 kept (transformers now); half-up: ties away from 0 "
			      "(triton before 2025-09); ggml: ties toward 0, +0 only [rne]"),
		CK_OPT_STRING(0, "keep-from", &job.keep_from, "DIR",
			      "copy the bytes of experts unchanged from this MXFP4 checkpoint"),
		CK_OPT_JOBS(&jobs, "threads per expert slice [all cores]"),
		CK_OPT_SHARD_SIZE(&job.shard_size),
		CK_OPT_FLAG('q', "quiet", &quiet, "do not print the copied/quantized expert counts"),
		CK_OPT_FORCE(&job.force),
		CK_OPT_END,
	};
	const struct ck_usage u = {
		.tool = "quant-mxfp4",
		.synopsis = "ckpt quant-mxfp4 [options] IN OUT",
		.about = "Quantize the BF16 experts of a gpt-oss checkpoint (HF gate_up_proj [E, H, 2I],\n"
			 "down_proj [E, I, H], or per-expert experts.gate_up_projs.N / down_projs.N)\n"
			 "to OpenAI's MXFP4 layout: U8 *_blocks [E, OUT, IN/32, 16] and *_scales\n"
			 "[E, OUT, IN/32], biases kept, config.json given the mxfp4 quantization_config.\n"
			 "The default rule is transformers' (triton downcast_to_mxfp_torch): scale rounded\n"
			 "up, elements to nearest-even.  --keep-from copies experts whose values are\n"
			 "unchanged from the original checkpoint byte for byte, and says how many.\n"
			 "NaN or Inf is an error naming tensor, expert, row and block.",
		.min_args = 2,
		.max_args = 2,
	};
	struct ck_diag d = CK_DIAG_INIT;

	ck_parse_options(argc, argv, opts, &u);
	if (ck_jobs_check(u.tool, jobs, 256))
		return CK_EXIT_USAGE;
	if (ck_mx_parse_rule(scale, round, &job.rule))
		return ck_usage_error(u.tool, "bad --scale or --round");
	job.in = argv[0];
	job.out = argv[1];
	job.threads = (int)jobs;
	if (ck_mx_quant_model(&job, &d))
		return ck_report(u.tool, &d);
	if (job.keep_from && !quiet)
		ck_note(u.tool, "%" PRIu64 " experts copied from '%s', %" PRIu64 " quantized",
			job.experts_copied, job.keep_from, job.experts_quantized);
	return 0;
}
