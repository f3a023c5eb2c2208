/*
 * to_gguf.c - convert a gpt-oss checkpoint (HF MXFP4, HF BF16, original/,
 * per-expert fine-tune merges) into a GGUF that llama.cpp loads.  The work
 * is in libtensor/gguf_gptoss.c; this parses options and reports.
 */
#include <string.h>
#include "ckpt.h"
#include "../libtensor/dtype.h"
#include "../libtensor/gguf_gptoss.h"

static uint32_t ggml_type_of(const char *s)
{
	if (!strcmp(s, "f32"))
		return CK_GGML_F32;
	if (!strcmp(s, "f16"))
		return CK_GGML_F16;
	if (!strcmp(s, "q8_0"))
		return CK_GGML_Q8_0;
	if (!strcmp(s, "mxfp4"))
		return CK_GGML_MXFP4;
	return CK_GGML_BF16;
}

int cmd_to_gguf(int argc, char **argv)
{
	const char *outtype = "bf16", *experts = "mxfp4", *round = "openai", *tok = NULL;
	int force = 0, dry = 0;
	const struct ck_option opts[] = {
		CK_OPT_CHOICE(0, "outtype", &outtype, "bf16|f16|f32|q8_0",
			      "type of token_embd, output and the attention weights [bf16]"),
		CK_OPT_CHOICE(0, "experts", &experts, "mxfp4|bf16|f16|f32|q8_0",
			      "type of the expert weights [mxfp4]; MXFP4 inputs are copied, not requantized"),
		CK_OPT_CHOICE(0, "mxfp4-round", &round, "openai|ggml",
			      "rule for float experts quantized to MXFP4: OpenAI's (scale rounded up, "
			      "elements to nearest even) or ggml's quantize_row_mxfp4_ref [openai]"),
		CK_OPT_STRING(0, "tokenizer", &tok, "DIR",
			      "read tokenizer.json, tokenizer_config.json, chat_template.jinja and "
			      "generation_config.json from DIR [MODEL_DIR; for original/, its parent]"),
		CK_OPT_FLAG('n', "dry-run", &dry, "print the mapping (source -> GGUF name, type, shape); write nothing"),
		CK_OPT_FORCE(&force),
		CK_OPT_END,
	};
	const struct ck_usage u = {
		.tool = "to-gguf",
		.synopsis = "ckpt to-gguf [options] MODEL_DIR OUT.gguf",
		.about = "Convert a gpt-oss checkpoint into a GGUF for llama.cpp (architecture gpt-oss).\n"
			 "MODEL_DIR holds config.json, the tokenizer and the weights: HF MXFP4 (OpenAI's\n"
			 "release), HF BF16, the original/ flavor, or per-expert modules (experts.<proj>s.N).\n"
			 "Gate/up are split by even/odd rows; norms, sinks, router and biases are F32.\n"
			 "Every tensor must map to a GGUF tensor; one that does not is an error.\n"
			 "With --dry-run, OUT.gguf may be omitted.",
		.min_args = 1,
		.max_args = 2,
	};
	struct ck_togguf_opts o = { 0 };
	struct ck_diag d = CK_DIAG_INIT;
	int n = ck_parse_options(argc, argv, opts, &u);

	if (n < 2 && !dry)
		return ck_usage_error("to-gguf", "needs MODEL_DIR and OUT.gguf");
	o.outtype = ggml_type_of(outtype);
	o.experts = ggml_type_of(experts);
	o.mxfp4_rule = !strcmp(round, "ggml") ? CK_MXFP4_GGML : CK_MXFP4_OPENAI;
	o.force = force;
	o.tokenizer = tok;
	o.dry_run = dry ? stdout : NULL;
	if (ck_togguf(argv[0], n > 1 ? argv[1] : NULL, &o, &d))
		return ck_report("to-gguf", &d);
	return 0;
}
