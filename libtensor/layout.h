/*
 * layout.h - recognize the packed layouts a checkpoint may hold, from names,
 * dtypes and shapes alone (no tensor data is decoded, except the small
 * bitsandbytes quant_state JSON):
 *
 *  - MXFP4 pairs as OpenAI stores them: U8 "<p>_blocks" [..., OUT, G, 16] and
 *    "<p>_scales" [..., OUT, G] (original flavor: "<p>.blocks"/"<p>.scales"),
 *    which hold a logical BF16 tensor [..., OUT, 32*G];
 *  - bitsandbytes 4-bit groups: "<m>.weight" (packed U8) with
 *    "<m>.weight.absmax", ".quant_map", ".nested_absmax", ".nested_quant_map"
 *    and ".quant_state.bitsandbytes__nf4|fp4" (a U8 tensor holding JSON with
 *    quant_type, blocksize, dtype and the logical shape);
 *  - per-expert names: "...experts.gate_up_projs.N..." and
 *    "...experts.<proj>.weights.N...".
 */
#ifndef CK_LAYOUT_H
#define CK_LAYOUT_H

#include "model.h"

enum ck_layout_kind {
	CK_LAYOUT_PLAIN = 0,
	CK_LAYOUT_MXFP4_BLOCKS,
	CK_LAYOUT_MXFP4_SCALES,
	CK_LAYOUT_BNB_WEIGHT,	/* the packed 4-bit codes */
	CK_LAYOUT_BNB_STATE,	/* absmax, quant_map, nested_*, quant_state */
	CK_LAYOUT_EXPERT,	/* one expert of a per-expert layout */
};

struct ck_layout {
	enum ck_layout_kind kind;
	char role[48];		/* "absmax", "quant_state", "gate_up_projs" ... */
	char quant[8];		/* "nf4", "fp4", "mxfp4" */
	char dtype[16];		/* logical dtype: "BF16", "bfloat16" ... */
	int ndim;		/* logical shape, when known */
	uint64_t shape[CK_MAX_DIMS];
	uint64_t blocksize;
	int64_t expert;		/* -1 unless per-expert */
};

/* Classify t (a tensor of m). */
void ck_layout_detect(const struct ck_model *m, const struct ck_tensor *t, struct ck_layout *out);

/* Human note for a listing ("" for plain tensors). */
char *ck_layout_note(const struct ck_layout *l, char *buf, size_t cap);

/* The logical parameter count t contributes (0 for quantization state). */
uint64_t ck_layout_params(const struct ck_layout *l, const struct ck_tensor *t);

const char *ck_layout_kind_name(enum ck_layout_kind k);

/* How many tensors of m are of layout kind. */
size_t ck_layout_count(const struct ck_model *m, enum ck_layout_kind kind);

/*
 * A tool that rewrites config.json for one quantization must not pass
 * another's tensors through (the output would carry them without their
 * quantization_config).  CK_EUNSUPPORTED naming the first tensor of m of
 * layout kind, with what_to_run ("dequant-nf4"), else 0.
 */
int ck_layout_refuse(const struct ck_model *m, enum ck_layout_kind kind, const char *what_to_run,
		     struct ck_diag *d);

/*
 * Parse a bitsandbytes packed quant_state (the bytes of the U8 tensor) into
 * quant type, blocksize, dtype and shape.  Returns 0 or CK_EINVAL.
 */
int ck_layout_bnb_state(const uint8_t *json, size_t len, struct ck_layout *out);

#endif
