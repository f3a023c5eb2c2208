/*
 * dequant_nf4.c - bitsandbytes 4-bit groups back to plain tensors.  The work
 * is in quant/bnb_dequant_model.c, the block math in quant/bnb.c.
 */
#include <string.h>
#include "ckpt.h"
#include "../libtensor/layout.h"
#include "../libtensor/stwriter.h"
#include "../quant/bnb.h"

int cmd_dequant_nf4(int argc, char **argv)
{
	struct ck_bnb_dq_job job = { .shard_size = CK_SHARD_SIZE_DEFAULT };
	const char *dtype = NULL, *layout = NULL;
	int64_t jobs = ck_ncpus();
	const struct ck_option opts[] = {
		CK_OPT_CHOICE(0, "dtype", &dtype, "bf16|f16|f32",
			      "type of the dequantized tensors [the dtype in each quant_state]"),
		CK_OPT_CHOICE(0, "layout", &layout, "hf|keep",
			      "per-expert tensors: hf = fused as transformers loads them, keep = as they are\n"
			      "                                 [hf when IN has per-expert tensors]"),
		CK_OPT_SHARD_SIZE(&job.shard_size),
		CK_OPT_JOBS(&jobs, "threads [number of CPUs]"),
		CK_OPT_FORCE(&job.force),
		CK_OPT_END,
	};
	const struct ck_usage u = {
		.tool = "dequant-nf4",
		.synopsis = "ckpt dequant-nf4 [options] IN OUT",
		.about = "Dequantize every bitsandbytes 4-bit tensor (NF4 or FP4, with or without double\n"
			 "quantization, any blocksize) of IN (a .safetensors file or a model folder) into\n"
			 "a plain tensor of its logical shape, bit for bit what bitsandbytes'\n"
			 "dequantize_4bit returns; copy every other tensor; write config.json without\n"
			 "quantization_config and copy the other files.  OUT ending in .safetensors is\n"
			 "one file, otherwise a folder.\n\n"
			 "Unsloth's gpt-oss bnb-4bit (mlp.experts.gate_up_projs.E.weight [2I,H],\n"
			 "down_projs.E.weight [H,I], .bias) becomes, with --layout hf, transformers'\n"
			 "mlp.experts.gate_up_proj [E,H,2I] (gate/up rows stay interleaved),\n"
			 "gate_up_proj_bias [E,2I], down_proj [E,I,H], down_proj_bias [E,H], and\n"
			 "mlp.router.linear.* is renamed mlp.router.*; written one expert at a time.",
		.min_args = 2,
		.max_args = 2,
	};
	struct ck_diag d = CK_DIAG_INIT;

	ck_parse_options(argc, argv, opts, &u);
	if (ck_jobs_check(u.tool, jobs, 1024))
		return CK_EXIT_USAGE;
	job.in = argv[0];
	job.out = argv[1];
	job.threads = (int)jobs;
	job.dtype = !dtype ? CK_DT_UNKNOWN : !strcmp(dtype, "bf16") ? CK_DT_BF16 :
		    !strcmp(dtype, "f16") ? CK_DT_F16 : CK_DT_F32;
	job.hf = layout ? !strcmp(layout, "hf") : -1;
	if (ck_bnb_dequant_model(&job, &d))
		return ck_report(u.tool, &d);
	ck_note_if_none(u.tool, job.in, CK_LAYOUT_BNB_WEIGHT, "bitsandbytes 4-bit");
	return 0;
}
