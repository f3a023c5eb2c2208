/*
 * quant_bnb.c - Linear weights to bitsandbytes 4-bit as transformers +
 * bitsandbytes save a load_in_4bit model.  The work is in
 * quant/bnb_quant_model.c, the block math in quant/bnb.c.
 */
#include <string.h>
#include "ckpt.h"
#include "../libtensor/stwriter.h"
#include "../quant/bnb.h"

int cmd_quant_bnb(int argc, char **argv)
{
	struct ck_bnb_q_job job = { .shard_size = CK_SHARD_SIZE_DEFAULT };
	const char *type = NULL, *experts = NULL;
	int64_t blocksize = 64, jobs = ck_ncpus();
	struct ck_strlist skips = { 0 };
	const struct ck_option opts[] = {
		CK_OPT_CHOICE(0, "type", &type, "nf4|fp4", "4-bit code [nf4]"),
		CK_OPT_INT(0, "blocksize", &blocksize, "N", "elements per absmax block: 32, 64 ... 4096 [64]"),
		CK_OPT_FLAG(0, "double-quant", &job.double_quant,
			    "quantize absmax too (bnb_4bit_use_double_quant; offset = mean, see above)"),
		CK_OPT_STRINGS(0, "skip", &skips, "GLOB",
			       "leave modules (or tensors) matching GLOB unquantized (repeatable)"),
		CK_OPT_CHOICE(0, "experts", &experts, "keep|per-expert",
			      "gpt-oss experts: keep them as they are, or write Unsloth's per-expert\n"
			      "                                 NF4 layout (loadable by Unsloth only) [keep]"),
		CK_OPT_STRING(0, "nested-offset", &job.nested_offset, "X",
			      "(testing) use X as every tensor's double-quant offset"),
		CK_OPT_SHARD_SIZE(&job.shard_size),
		CK_OPT_JOBS(&jobs, "threads [number of CPUs]"),
		CK_OPT_FORCE(&job.force),
		CK_OPT_END,
	};
	const struct ck_usage u = {
		.tool = "quant-bnb",
		.synopsis = "ckpt quant-bnb [options] IN OUT",
		.about = "Quantize the Linear weights of IN (a .safetensors file or a model folder) to\n"
			 "bitsandbytes 4-bit exactly as transformers + bitsandbytes save a load_in_4bit\n"
			 "model: same tensor names, dtypes and shapes, the packed quant_state JSON byte for\n"
			 "byte, and config.json's quantization_config (llm_int8_skip_modules lists every\n"
			 "module left unquantized: embeddings, lm_head, norms, routers, --skip).\n"
			 "Codes and absmax equal bitsandbytes' CUDA kernel for BF16 input.  The\n"
			 "double-quant offset is the mean of the float32 absmax summed in double in\n"
			 "block order and rounded once to float32 (bnb's own float32 reduction differs\n"
			 "by device; dequantization reads the stored one either way).  gpt-oss experts\n"
			 "are 3-D parameters, not Linear layers: stock transformers + bitsandbytes leave\n"
			 "them unquantized, and so do we unless --experts per-expert.",
		.min_args = 2,
		.max_args = 2,
	};
	struct ck_diag d = CK_DIAG_INIT;
	int rc = 0;

	ck_parse_options(argc, argv, opts, &u);
	if (blocksize < 0 || !ck_bnb_blocksize_ok((uint64_t)blocksize)) {
		rc = ck_usage_error(u.tool, "--blocksize must be one of 32, 64, 128 ... 4096");
		goto out;
	}
	if ((rc = ck_jobs_check(u.tool, jobs, 1024)))
		goto out;
	job.in = argv[0];
	job.out = argv[1];
	job.type = type && !strcmp(type, "fp4") ? CK_BNB_FP4 : CK_BNB_NF4;
	job.blocksize = (uint64_t)blocksize;
	job.per_expert = experts && !strcmp(experts, "per-expert");
	job.skips = skips.v;
	job.nskips = skips.n;
	job.threads = (int)jobs;
	if (ck_bnb_quant_model(&job, &d))
		rc = d.status == CK_EUSAGE ? ck_usage_error(u.tool, "%s", d.msg) : ck_report(u.tool, &d);
out:
	ck_strlist_release(&skips);
	return rc;
}
