/*
 * gguf_gptoss.h - convert a gpt-oss checkpoint into the GGUF llama.cpp runs
 * (general.architecture "gpt-oss"), streaming.
 *
 * Inputs, all giving the same GGUF for the same weights:
 *  - HF MXFP4 (OpenAI's release): experts as U8 _blocks and _scales pairs;
 *  - HF BF16 (dequantized, or a merged fine-tune): experts [E, IN, OUT];
 *  - the original/ flavor (block.N.*, fused qkv, .blocks/.scales);
 *  - per-expert modules (experts.<proj>s.N, experts.<proj>.weights.N), in
 *    float or bitsandbytes NF4 (dequantized on the fly).
 * Every source tensor must map to a GGUF tensor: one that maps to nothing is
 * an error naming it, never dropped.
 *
 * Output: the 3 + 19·L tensors llama.cpp's gpt-oss loader asks for, in the
 * order llama-quantize writes them; gate/up split by even/odd rows; MXFP4
 * experts as ggml type 39 (copied from MXFP4 inputs, quantized with the
 * OpenAI rule from float inputs); norms, sinks, router and biases F32; the
 * other 2-D weights in outtype.  Every gpt-oss.* key from config.json (v4
 * rope_scaling, v5 rope_parameters, or original), the tokenizer as
 * "gpt2"/"gpt-4o" with a token for every embedding row.
 *
 * Memory: the header is planned whole, then one tensor (for experts, one
 * expert) at a time is produced and written; bounded by the largest expert
 * slice, not by the model.
 *
 * Errors: the usual ck_diag line (file, tensor, problem), CK_EINVAL or
 * CK_EUNSUPPORTED for the input, nothing left on disk.
 */
#ifndef CK_GGUF_GPTOSS_H
#define CK_GGUF_GPTOSS_H

#include <stdint.h>
#include <stdio.h>
#include "ck.h"

enum ck_mxfp4_rule {
	CK_MXFP4_OPENAI = 0,	/* scale rounded up, elements RNE (triton downcast_to_mxfp) */
	CK_MXFP4_GGML,		/* ggml's quantize_row_mxfp4_ref: floor(log2 amax)-2, nearest, ties low */
};

struct ck_togguf_opts {
	uint32_t outtype;	/* ggml type of token_embd/output/attn weights: F32, F16, BF16, Q8_0 */
	uint32_t experts;	/* ggml type of the expert weights: MXFP4, BF16, F16, F32, Q8_0 */
	enum ck_mxfp4_rule mxfp4_rule;	/* for float inputs quantized to MXFP4 */
	const char *tokenizer;	/* folder of tokenizer.json etc.; NULL: the model's (original/: its parent) */
	int force;		/* replace an existing output */
	FILE *dry_run;		/* non-NULL: print the mapping table here, write nothing */
};

/*
 * Convert the model at src (a folder, or its original/ subfolder) to the
 * GGUF file dst.  Returns 0 or a negative status with d filled.
 */
int ck_togguf(const char *src, const char *dst, const struct ck_togguf_opts *o, struct ck_diag *d);

#endif
