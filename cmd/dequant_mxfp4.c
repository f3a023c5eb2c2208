/*
 * dequant_mxfp4.c - MXFP4 experts (OpenAI's blocks/scales) to the BF16
 * layout transformers writes for gpt-oss with Mxfp4Config(dequantize=True).
 * The work is in quant/mxfp4_model.c.
 */
#include <string.h>
#include "ckpt.h"
#include "../libtensor/layout.h"
#include "../libtensor/stwriter.h"
#include "../quant/mxfp4.h"

int cmd_dequant_mxfp4(int argc, char **argv)
{
	struct ck_mx_job job = { .shard_size = CK_SHARD_SIZE_DEFAULT };
	const char *layout = "hf";
	int64_t jobs = ck_ncpus();
	const struct ck_option opts[] = {
		CK_OPT_CHOICE(0, "layout", &layout, "hf",
			      "output names and layout: HF (model.layers.N..., experts [E, IN, OUT]) [hf]"),
		CK_OPT_JOBS(&jobs, "threads per expert slice [all cores]"),
		CK_OPT_SHARD_SIZE(&job.shard_size),
		CK_OPT_FORCE(&job.force),
		CK_OPT_END,
	};
	const struct ck_usage u = {
		.tool = "dequant-mxfp4",
		.synopsis = "ckpt dequant-mxfp4 [options] IN OUT",
		.about = "Dequantize the MXFP4 experts of a gpt-oss checkpoint to BF16, bit for bit as\n"
			 "transformers does (convert_moe_packed_tensors): *_blocks/*_scales become\n"
			 "mlp.experts.gate_up_proj [E, H, 2I] and down_proj [E, I, H] (input dimension\n"
			 "first), biases and other tensors are copied, quantization_config leaves\n"
			 "config.json.  IN is a HF folder or file, or the original flavor (original/:\n"
			 "block.N.mlp.mlp1_weight.blocks, fused attn.qkv), which is renamed to HF names\n"
			 "with qkv split.  OUT ending in .safetensors is one file, else a folder.\n"
			 "A scale byte 255 (NaN) is an error naming tensor, expert, row and block.",
		.min_args = 2,
		.max_args = 2,
	};
	struct ck_diag d = CK_DIAG_INIT;

	ck_parse_options(argc, argv, opts, &u);
	if (ck_jobs_check(u.tool, jobs, 256))
		return CK_EXIT_USAGE;
	job.in = argv[0];
	job.out = argv[1];
	job.threads = (int)jobs;
	if (ck_mx_dequant_model(&job, &d))
		return ck_report(u.tool, &d);
	ck_note_if_none(u.tool, job.in, CK_LAYOUT_MXFP4_BLOCKS, "MXFP4");
	return 0;
}
