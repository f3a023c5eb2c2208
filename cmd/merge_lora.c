/*
 * merge_lora.c - ckpt merge-lora BASE ADAPTER OUT: merge a PEFT LoRA adapter
 * into its base checkpoint, streaming, and write a model folder plus
 * merge-report.json.  The plan (adapter config, tokenizer gate, every adapter
 * tensor mapped) runs before anything is written; the work is in merge/.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cjson/cJSON.h>
#include "ckpt.h"
#include "../libtensor/files.h"
#include "../libtensor/job.h"
#include "../libtensor/model.h"
#include "../libtensor/output.h"
#include "../libtensor/stwriter.h"
#include "../merge/lora.h"
#include "../verify/tokenizer.h"

#define TOOL "merge-lora"
#define CONFIG_MAX (16u << 20)

struct ml_opts {
	double scale;
	const char *dtype, *moe_layout;
	int allow_tok, force, quiet, requant;
	uint64_t shard_size;
	int64_t jobs;
};

/* ADAPTER is a folder (adapter_config.json + adapter_model.safetensors). */
static int open_adapter(const char *dir, struct ck_model **m, struct ck_lora_config *cfg, char **st_path,
			struct ck_diag *d)
{
	size_t n = strlen(dir) + 40, len;
	char *cpath = ck_malloc(n), *buf = NULL;
	int rc;

	*st_path = ck_malloc(n);
	if (!cpath || !*st_path) {
		free(cpath);
		return ck_fail(d, CK_ENOMEM, "out of memory");
	}
	snprintf(cpath, n, "%s/adapter_config.json", dir);
	rc = ck_read_file(cpath, CONFIG_MAX, &buf, &len, d);
	if (rc)
		goto out;
	rc = ck_lora_config_parse(cfg, buf, len, cpath, d);
	if (rc)
		goto out;
	snprintf(*st_path, n, "%s/adapter_model.safetensors", dir);
	if (access(*st_path, F_OK)) {
		snprintf(cpath, n, "%s/adapter_model.bin", dir);
		if (!access(cpath, F_OK))
			rc = ck_fail(d, CK_EUNSUPPORTED, "'%s': a pickled adapter; ckpt reads only "
				     "adapter_model.safetensors", cpath);
		else
			rc = ck_fail(d, CK_EINVAL, "'%s': no adapter_model.safetensors", dir);
		ck_lora_config_release(cfg);
		goto out;
	}
	rc = ck_model_open(m, *st_path, d);
	if (rc)
		ck_lora_config_release(cfg);
out:
	free(cpath);
	free(buf);
	return rc;
}

static int has_tokenizer_files(const char *dir)
{
	static const char *const names[] = { "tokenizer.json", "tokenizer_config.json",
					     "special_tokens_map.json", "chat_template.jinja" };
	char p[4096];
	for (size_t i = 0; i < CK_ARRAY_SIZE(names); i++) {
		snprintf(p, sizeof(p), "%s/%s", dir, names[i]);
		if (!access(p, F_OK))
			return 1;
	}
	return 0;
}

/*
 * The tokenizer gate: the adapter's tokenizer (when it ships one) against
 * the base's, plus the embedding rows.  A breaking difference prints the
 * tokcheck report to stdout and fails with CK_EDIFF (exit 1) unless allowed.
 * *json gets the report for merge-report.json.
 */
static int tokenizer_gate(const struct ml_opts *o, const struct ck_model *base, const struct ck_model *ad,
			  const char *adir, cJSON **json, struct ck_diag *d)
{
	struct ck_tok_report *r = NULL;
	uint64_t brows = 0, arows = 0;
	char *buf = NULL;
	size_t blen = 0;
	FILE *mf;
	int rc, verdict;

	*json = NULL;
	if (!has_tokenizer_files(adir)) {
		*json = cJSON_CreateObject();
		cJSON_AddBoolToObject(*json, "checked", 0);
		cJSON_AddStringToObject(*json, "reason", "the adapter folder has no tokenizer files");
		return 0;
	}
	rc = ck_tok_compare(ck_model_dir(base), adir, CK_TOK_ALLOW_EMPTY, &r, d);
	if (rc < 0 && rc != CK_EDIFF)
		return rc;
	ck_tok_embed_rows(base, &brows, NULL);
	ck_tok_embed_rows(ad, &arows, NULL);
	verdict = ck_tok_report_add_rows(r, brows, arows, CK_TOK_ADAPTER_B, 0);
	if (verdict < 0 && verdict != CK_EDIFF) {
		ck_tok_report_free(r);
		return ck_fail(d, verdict, "out of memory");
	}
	mf = open_memstream(&buf, &blen);
	if (mf) {
		ck_tok_report_json(mf, r, 0);
		fclose(mf);
		*json = buf ? cJSON_Parse(buf) : NULL;
	}
	free(buf);
	if (verdict == CK_EDIFF || (r->worst >= CK_TOK_WARNING && !o->quiet)) {
		printf("tokenizer check: %s vs %s\n", ck_model_dir(base), adir);
		ck_tok_report_print(stdout, r, verdict == CK_EDIFF, verdict == CK_EDIFF);
		fflush(stdout);
	}
	ck_tok_report_free(r);
	if (verdict == CK_EDIFF && !o->allow_tok)
		return ck_fail(d, CK_EDIFF, "'%s': the adapter's tokenizer differs from the base's in a way "
			       "that breaks the merge (report on stdout); --allow-tokenizer-mismatch merges anyway",
			       adir);
	return 0;
}

static char *report_json(const struct ck_lora_plan *p, const char *base, const char *adapter,
			 const struct ml_opts *o, cJSON *tok)
{
	cJSON *root = cJSON_CreateObject(), *arr;
	char *s;

	cJSON_AddStringToObject(root, "tool", "ckpt merge-lora");
	cJSON_AddStringToObject(root, "base", base);
	cJSON_AddStringToObject(root, "adapter", adapter);
	if (p->cfg.peft_version)
		cJSON_AddStringToObject(root, "peft_version", p->cfg.peft_version);
	else
		cJSON_AddNullToObject(root, "peft_version");
	cJSON_AddNumberToObject(root, "user_scale", o->scale);
	cJSON_AddNumberToObject(root, "adapter_tensors", (double)p->nadapter_tensors);
	cJSON_AddNumberToObject(root, "adapter_tensors_consumed", (double)p->nadapter_tensors);
	if (p->moe_layout != CK_MOE_AUTO) {
		cJSON *m = cJSON_AddObjectToObject(root, "moe_layout");
		cJSON_AddStringToObject(m, "layout", ck_moe_layout_name(p->moe_layout));
		cJSON_AddStringToObject(m, "decided_by", p->moe_why);
		cJSON_AddStringToObject(m, "lora_B", p->cfg.b_layout == CK_LORA_B_GROUPED ? "grouped_by_expert"
							: "rank_major");
	}
	if (tok)
		cJSON_AddItemToObject(root, "tokenizer", tok);
	else
		cJSON_AddNullToObject(root, "tokenizer");
	arr = cJSON_AddArrayToObject(root, "tensors");
	for (size_t i = 0; i < p->nitems; i++) {
		const struct ck_lora_item *it = &p->items[i];
		cJSON *t;
		if ((it->op == CK_LOP_NONE && !it->replace && !it->tt) || it->pair)
			continue;
		t = cJSON_CreateObject();
		cJSON_AddStringToObject(t, "name", it->out_name);
		if (it->mx_scales)
			cJSON_AddStringToObject(t, "from", it->requant ? "mxfp4, quantized back" : "mxfp4");
		if (it->bnb)
			cJSON_AddStringToObject(t, "from", "bitsandbytes");
		cJSON_AddStringToObject(t, "op", it->op != CK_LOP_NONE ? ck_lora_op_name(it->op) :
						  it->tt ? "trainable-tokens" : "replace");
		if (it->tt) {
			cJSON_AddNumberToObject(t, "token_rows", (double)it->tt->shape[0]);
			cJSON_AddNumberToObject(t, "max_abs_delta", it->max_delta);
		}
		cJSON_AddBoolToObject(t, "replaced", it->replace != NULL);
		if (it->op != CK_LOP_NONE) {
			cJSON_AddStringToObject(t, "module", it->key);
			cJSON_AddNumberToObject(t, "rank", (double)it->r);
			cJSON_AddNumberToObject(t, "alpha", it->alpha);
			cJSON_AddNumberToObject(t, "scale", it->scale);
			cJSON_AddNumberToObject(t, "max_abs_delta", it->max_delta);
			if (it->mag)
				cJSON_AddBoolToObject(t, "dora", 1);
			if (it->op == CK_LOP_EXPERTS) {
				cJSON_AddNumberToObject(t, "experts", (double)it->E);
				cJSON_AddStringToObject(t, "layout", ck_moe_layout_name(it->layout));
			}
		}
		cJSON_AddItemToArray(arr, t);
	}
	s = cJSON_Print(root);
	cJSON_Delete(root);
	return s;
}

/* The files merge-lora writes itself next to the tensors. */
struct files {
	const struct ck_model *base;
	int dequant;
	const char *report;
};

static int write_files(void *ctx, struct ck_out *out, struct ck_diag *d)
{
	const struct files *f = ctx;

	/* MXFP4 experts / bnb weights came out dequantized: the config loses quantization_config. */
	if (f->dequant && ck_model_kind(f->base) == CK_MODEL_FOLDER)
		CK_TRY(ck_job_edit_config(out, ck_model_dir(f->base), "quantization_config", NULL,
					  CK_JSON_AT_END, 0, d));
	return ck_out_write_file(out, "merge-report.json", f->report, strlen(f->report), d);
}

static enum ck_dtype dtype_of(const char *s)
{
	if (!s)
		return CK_DT_UNKNOWN;
	return !strcmp(s, "bf16") ? CK_DT_BF16 : !strcmp(s, "f16") ? CK_DT_F16 : CK_DT_F32;
}

int cmd_merge_lora(int argc, char **argv)
{
	struct ml_opts o = { .scale = 1.0, .shard_size = CK_SHARD_SIZE_DEFAULT, .jobs = 0 };
	const struct ck_option opts[] = {
		CK_OPT_DOUBLE(0, "scale", &o.scale, "X", "multiply every LoRA delta by X [1]"),
		CK_OPT_CHOICE(0, "dtype", &o.dtype, "bf16|f16|f32", "write float tensors in this type [the base's]"),
		CK_OPT_CHOICE(0, "moe-layout", &o.moe_layout, "standard|swapped",
			      "orientation of expert LoRA when the adapter does not decide it"),
		CK_OPT_FLAG(0, "requant-mxfp4", &o.requant,
			    "write touched MXFP4 experts back as MXFP4 (default: BF16, config without "
			    "quantization_config); untouched ones are copied"),
		CK_OPT_FLAG(0, "allow-tokenizer-mismatch", &o.allow_tok,
			    "merge even when the adapter's tokenizer differs from the base's"),
		CK_OPT_SIZE(0, "shard-size", &o.shard_size, "SIZE", "largest output shard [5GB]"),
		CK_OPT_INT('j', "jobs", &o.jobs, "N", "threads for the merge arithmetic [all cores]"),
		CK_OPT_FLAG('f', "force", &o.force, "replace an existing OUT"),
		CK_OPT_FLAG('q', "quiet", &o.quiet, "print nothing on success"),
		CK_OPT_END,
	};
	const struct ck_usage u = {
		.tool = TOOL,
		.synopsis = "ckpt merge-lora [options] BASE ADAPTER OUT",
		.about = "Merge a PEFT LoRA adapter (a folder with adapter_config.json and\n"
			 "adapter_model.safetensors) into BASE (a model folder or .safetensors file) and\n"
			 "write the merged model folder OUT: sharded safetensors, BASE's config and\n"
			 "tokenizer files, and merge-report.json.  First the adapter's tokenizer (if it has\n"
			 "one) is compared with BASE's (tokcheck): a breaking difference prints the report\n"
			 "and exits 1.  Every adapter tensor must map to a base tensor (Linear and\n"
			 "embedding LoRA, DoRA, lora_bias, rslora, rank/alpha patterns, modules_to_save,\n"
			 "trainable tokens, gpt-oss expert target_parameters, Unsloth per-expert LoRA);\n"
			 "anything else is refused.  MXFP4 experts and bitsandbytes 4-bit weights are\n"
			 "dequantized (BF16, quantization_config dropped).  The arithmetic is PEFT\n"
			 "merge_and_unload's, bit for bit; memory stays at a few blocks of rows.",
		.min_args = 3,
		.max_args = 3,
	};
	struct ck_diag d = CK_DIAG_INIT;
	struct ck_model *base = NULL, *ad = NULL;
	struct ck_lora_config cfg;
	struct ck_lora_plan *plan = NULL;
	struct ck_lora_opts lo = { 0 };
	struct ck_out *out = NULL;
	char *st_path = NULL, *rep = NULL;
	cJSON *tok = NULL;
	int rc = 0;

	ck_parse_options(argc, argv, opts, &u);
	if (!isfinite(o.scale))
		return ck_usage_error(TOOL, "--scale needs a finite number");
	if (o.jobs < 0 || o.jobs > 1024)
		return ck_usage_error(TOOL, "--jobs needs a number from 1 to 1024");
	if (!o.jobs)
		o.jobs = ck_ncpus();
	lo.scale = o.scale;
	lo.requant_mxfp4 = o.requant;
	lo.moe_layout = !o.moe_layout ? CK_MOE_AUTO : !strcmp(o.moe_layout, "standard") ? CK_MOE_STANDARD
										      : CK_MOE_SWAPPED;
	if ((rc = ck_model_open(&base, argv[0], &d)))
		goto fail;
	if (ck_model_kind(base) == CK_MODEL_GGUF) {
		rc = ck_fail(&d, CK_EUNSUPPORTED, "'%s': a GGUF base is not supported (merge into the "
			     "safetensors model, then convert)", argv[0]);
		goto fail;
	}
	if ((rc = open_adapter(argv[1], &ad, &cfg, &st_path, &d)))
		goto fail;
	if ((rc = tokenizer_gate(&o, base, ad, argv[1], &tok, &d))) {
		ck_lora_config_release(&cfg);
		goto fail;
	}
	if ((rc = ck_lora_plan(&plan, base, ad, &cfg, &lo, &d)))
		goto fail;
	{
		const char *inputs[] = { ck_model_path(base), argv[1] };
		static const char *const skip[] = { "merge-report.json", "config.json" };
		struct files f = { .base = base, .dequant = plan->nmxfp4 || plan->nbnb };
		const struct ck_job_out jo = { .dst = argv[2], .folder = 1, .force = o.force, .inputs = inputs,
					       .ninputs = 2, .aux = base, .skip = skip, .nskip = f.dequant ? 2 : 1,
					       .config = write_files, .ctx = &f };
		if ((rc = ck_job_begin(&jo, &out, &d)))
			goto fail;
		if ((rc = ck_lora_write(plan, base, out, o.shard_size, dtype_of(o.dtype), (int)o.jobs, &d)))
			goto fail;
		f.report = rep = report_json(plan, argv[0], argv[1], &o, tok);
		tok = NULL;	/* the report owns it now */
		if (!rep) {
			rc = ck_fail(&d, CK_ENOMEM, "out of memory");
			goto fail;
		}
		rc = ck_job_end(&jo, out, &d);
		out = NULL;
		if (rc)
			goto fail;
	}
	if (!o.quiet) {
		size_t nmerged = 0, nout = 0;
		for (size_t i = 0; i < plan->nitems; i++) {
			nmerged += plan->items[i].op != CK_LOP_NONE || plan->items[i].replace || plan->items[i].tt;
			nout += !plan->items[i].drop;
		}
		printf("merged %zu adapter tensors into %zu of %zu tensors", plan->nadapter_tensors, nmerged, nout);
		if (plan->nmxfp4)
			printf("; %zu MXFP4 expert tensors dequantized to BF16", plan->nmxfp4);
		if (plan->nbnb)
			printf("; %zu bitsandbytes 4-bit weights dequantized", plan->nbnb);
		if (plan->nrequant)
			printf("; %zu MXFP4 expert tensors merged and quantized back", plan->nrequant);
		if (plan->moe_layout != CK_MOE_AUTO)
			printf("; experts: %s layout (decided by %s)", ck_moe_layout_name(plan->moe_layout),
			       plan->moe_why);
		printf("\n");
	}
	goto done;
fail:
	rc = ck_report(TOOL, &d);
done:
	ck_out_abort(out);
	cJSON_Delete(tok);
	free(rep);
	free(st_path);
	ck_lora_plan_free(plan);
	ck_model_free(ad);
	ck_model_free(base);
	return rc;
}
