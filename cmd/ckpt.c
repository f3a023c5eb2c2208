/*
 * ckpt.c - main: the commands[] table, global options and dispatch.
 *
 * "ckpt TOOL ARGS", "ckpt help TOOL" (= ckpt TOOL --help), and an argv[0] of
 * "ckpt-TOOL" means exactly "ckpt TOOL".  After the tool returns, stdout is
 * flushed and checked: a write failure is exit 4, a closed pipe ends quietly.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include "ckpt.h"
#include "../libtensor/output.h"

#ifndef CKPT_VERSION
#define CKPT_VERSION "0.1.0"
#endif

struct command {
	const char *name;
	int (*fn)(int argc, char **argv);
	const char *about;
};

static const struct command commands[] = {
	{ "ls", cmd_ls, "list the tensors of a safetensors file, model folder or GGUF" },
	{ "cp", cmd_cp, "copy a checkpoint, filtering, renaming, converting, resharding" },
	{ "tokcheck", cmd_tokcheck, "hash a tokenizer, or compare two and say what differs" },
	{ "dequant-nf4", cmd_dequant_nf4, "bitsandbytes 4-bit (NF4/FP4) checkpoint to BF16/F16/F32" },
	{ "quant-bnb", cmd_quant_bnb, "quantize Linear weights the way bitsandbytes saves them" },
	{ "dequant-mxfp4", cmd_dequant_mxfp4, "MXFP4 experts to the HF BF16 layout" },
	{ "quant-mxfp4", cmd_quant_mxfp4, "HF BF16 experts to OpenAI's MXFP4 layout" },
	{ "merge-lora", cmd_merge_lora, "merge a PEFT LoRA adapter, MoE experts included" },
	{ "to-gguf", cmd_to_gguf, "write a GGUF that llama.cpp loads (gpt-oss)" },
};

static void usage(FILE *f)
{
	fprintf(f, "usage: ckpt [--version] [--help] TOOL [ARGS]\n"
		   "       ckpt help TOOL\n\n"
		   "Streaming surgery on LLM checkpoints (safetensors, GGUF).\n\ntools:\n");
	for (size_t i = 0; i < CK_ARRAY_SIZE(commands); i++)
		if (commands[i].fn)
			fprintf(f, "  %-15s %s\n", commands[i].name, commands[i].about);
	fprintf(f, "\nexit codes (every tool):\n"
		   "  0  success, or no difference\n"
		   "  1  a check found a difference or mismatch\n"
		   "  2  usage error\n"
		   "  3  invalid or unsupported input\n"
		   "  4  I/O or resource failure (disk full, out of memory, device error)\n"
		   "  128+N  killed by signal N, temporary outputs removed\n");
}

static const struct command *find(const char *name)
{
	for (size_t i = 0; i < CK_ARRAY_SIZE(commands); i++)
		if (!strcmp(commands[i].name, name))
			return &commands[i];
	return NULL;
}

/* Flush stdout; EPIPE ends quietly (as if by SIGPIPE), other errors are exit 4. */
static int finish_stdout(const char *tool, int rc)
{
	if (fflush(stdout) == 0 && !ferror(stdout))
		return rc;
	if (errno == EPIPE)
		return rc ? rc : 141;
	fprintf(stderr, "ckpt%s%s: write failure on standard output: %s\n", tool ? " " : "",
		tool ? tool : "", strerror(errno));
	return CK_EXIT_IO;
}

int main(int argc, char **argv)
{
	const char *base = strrchr(argv[0], '/');
	const struct command *c;
	char *help_argv[3];

	base = base ? base + 1 : argv[0];
	/* A closed pipe must not kill us mid-write of an output file; we see EPIPE instead. */
	signal(SIGPIPE, SIG_IGN);
	ck_out_install_signals();

	if (!strncmp(base, "ckpt-", 5)) {
		argv[0] = (char *)base + 5;
	} else {
		if (argc < 2) {
			usage(stderr);
			return CK_EXIT_USAGE;
		}
		if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
			usage(stdout);
			return finish_stdout(NULL, 0);
		}
		if (!strcmp(argv[1], "--version")) {
			printf("ckpt %s\n", CKPT_VERSION);
			return finish_stdout(NULL, 0);
		}
		if (!strcmp(argv[1], "help")) {
			if (argc < 3) {
				usage(stdout);
				return finish_stdout(NULL, 0);
			}
			help_argv[0] = argv[2];
			help_argv[1] = (char *)"--help";
			help_argv[2] = NULL;
			argv = help_argv;
			argc = 2;
		} else {
			argv++;
			argc--;
		}
	}
	c = find(argv[0]);
	if (c && !c->fn) {
		fprintf(stderr, "ckpt: '%s' is not built into this ckpt\n", argv[0]);
		return CK_EXIT_USAGE;
	}
	if (!c) {
		fprintf(stderr, "ckpt: '%s' is not a ckpt tool (see 'ckpt --help')\n", argv[0]);
		return CK_EXIT_USAGE;
	}
	return finish_stdout(c->name, c->fn(argc, argv));
}
