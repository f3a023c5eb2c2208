/*
 * bnb.h - bitsandbytes 4-bit (NF4 / FP4) blockwise quantization, with and
 * without double quantization, bit-exact with bitsandbytes.
 *
 * Layout of one quantized tensor W (any shape, n elements, flattened
 * row-major):
 *
 *	blocks of `blocksize` consecutive elements (the last may be short);
 *	absmax[b] = max |W| over block b, float32;
 *	code[k]   = 4-bit index into the 16-entry table of the quant type, of
 *	            W[k] * (1/absmax[b]);
 *	packed    = (n+1)/2 bytes, element 2j in the HIGH nibble of byte j and
 *	            element 2j+1 in the LOW nibble (the opposite of MXFP4):
 *
 *	    byte j:  7 6 5 4 | 3 2 1 0
 *	             q[2j]   | q[2j+1]      e.g. 0xF7 -> codes 15, 7
 *
 * Dequantization is one IEEE float32 multiply, table[code] * absmax, then a
 * round-to-nearest-even conversion to the output type.  Never fused.
 *
 * Double quantization ("nested") stores absmax itself as 8-bit codes:
 *	offset        = mean(absmax)                        (float32)
 *	nested_absmax = max |absmax - offset| per 256 blocks (float32)
 *	qabsmax[b]    = nearest index into the 256-entry dynamic map of
 *	                (absmax[b] - offset) * (1/nested_absmax[b/256])
 * and reads back as f32(f32(map[qabsmax[b]] * nested_absmax[b/256]) + offset),
 * two roundings.  The map used is the one stored with the tensor.
 *
 * The per-element math is static inline here so other tools (merge-lora,
 * to-gguf) and tests share it; the loops, the checkpoint-level reader
 * (struct ck_bnb_group) and the threads live in bnb.c.
 *
 * Errors follow ck.h: 0 or a negative status with d filled, naming the
 * tensor.  A group borrows everything from its model, which must outlive it.
 */
#ifndef CK_BNB_H
#define CK_BNB_H

#include <math.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "../libtensor/ck.h"
#include "../libtensor/model.h"

enum ck_bnb_type { CK_BNB_NF4 = 0, CK_BNB_FP4 = 1 };

#define CK_BNB_NESTED_BLOCKSIZE 256

/* The tables, defined once in bnb.c: code order, exact float32 values. */
extern const float ck_bnb_nf4_table[16];
extern const float ck_bnb_fp4_table[16];
/* bnb create_dynamic_map(signed=True): what CUDA-made checkpoints store. */
extern const float ck_bnb_dynamic_map[256];
/* NF4 decision thresholds: the float32 midpoints of ck_bnb_nf4_table. */
extern const float ck_bnb_nf4_thresholds[15];

/* "nf4" / "fp4" */
const char *ck_bnb_type_name(enum ck_bnb_type t);
static inline const float *ck_bnb_table(enum ck_bnb_type t)
{
	return t == CK_BNB_FP4 ? ck_bnb_fp4_table : ck_bnb_nf4_table;
}

/* Blocksizes bitsandbytes 0.50 accepts for 4-bit: 32 .. 4096, powers of two. */
static inline bool ck_bnb_blocksize_ok(uint64_t bs)
{
	return bs >= 32 && bs <= 4096 && !(bs & (bs - 1));
}

/*
 * NF4 code of a scaled value: the number of thresholds x is strictly above,
 * which is what bnb's CUDA decision tree (dQuantizeNF4) computes: a tie goes
 * to the lower code, NaN to code 0.
 */
static inline uint8_t ck_bnb_nf4_code(float x)
{
	uint8_t q = 0;
	for (int i = 0; i < 15; i++)
		q += x > ck_bnb_nf4_thresholds[i];
	return q;
}

/*
 * FP4 code: bnb's CUDA tree (dQuantizeFP4) literally.  Five of its pivots are
 * not the table midpoints, so this is not "nearest"; the torch fallback bnb
 * uses on CPU is, and differs from CUDA in those gaps and at -0.0.
 */
static inline uint8_t ck_bnb_fp4_code(float x)
{
	uint8_t sign = x < 0 ? 8 : 0;
	x = fabsf(x);
	if (x > 0.29166667f) {
		if (x > 0.583333f)
			return (uint8_t)((x > 0.8333333f ? 3 : 2) + sign);
		return (uint8_t)((x > 0.4166667f ? 5 : 4) + sign);
	}
	if (x > 0.0859375f)
		return (uint8_t)((x > 0.20833333f ? 7 : 6) + sign);
	return (uint8_t)((x > 0.00260417f ? 1 : 0) + sign);
}

static inline uint8_t ck_bnb_code(enum ck_bnb_type t, float x)
{
	return t == CK_BNB_FP4 ? ck_bnb_fp4_code(x) : ck_bnb_nf4_code(x);
}

/* One element back: a single float32 product (bnb: LUT[q] * absmax). */
static inline float ck_bnb_dq(const float *table, uint8_t q, float absmax)
{
	return table[q & 15] * absmax;
}

/* One double-quantized absmax back: two float32 roundings, in bnb's order. */
static inline float ck_bnb_nested_dq(const float *map, uint8_t q, float nested_absmax, float offset)
{
	float v = map[q] * nested_absmax;
	return v + offset;
}

/*
 * Nested 8-bit code of x (already scaled by 1/nested_absmax) in a sorted
 * 256-entry map: the nearest entry; an exact tie with the float32 midpoint
 * goes to the even index, as bnb's CUDA binary search does.  NaN gives 0.
 */
static inline uint8_t ck_bnb_nested_code(const float *map, float x)
{
	int lo = 0;

	if (!(x == x))
		return 0;
	/* branchless lower bound: lo = the first index whose entry is >= x (or 255) */
	for (int s = 128; s; s >>= 1)
		lo += map[lo + s - 1] < x ? s : 0;
	if (lo > 0) {
		float m = (map[lo - 1] + map[lo]) * 0.5f;
		if (x < m || (x == m && !((lo - 1) & 1)))
			lo--;
	}
	return (uint8_t)lo;
}

/* ---- arrays --------------------------------------------------------------- */

/*
 * Quantize n elements of src (CK_DT_F32, F16 or BF16) in blocks: packed gets
 * (n+1)/2 bytes, absmax ceil(n/blocksize) floats.  The reciprocal is the IEEE
 * 1.0f/absmax (bnb CUDA uses an approximate one; for BF16 input this gives
 * the same codes, see tests).  An all-zero block gets absmax 0 and, as on
 * CUDA, NF4 code 0 (x = 0 * inf = NaN); FP4 code 0.  A pad element past n is
 * code 7 for NF4 and 0 for FP4, i.e. a quantized 0.  Runs on nthreads
 * threads (<= 1: the caller's).
 */
int ck_bnb_quantize(enum ck_bnb_type type, uint64_t blocksize, enum ck_dtype src_dtype, const void *src,
		    uint64_t n, uint8_t *packed, float *absmax, int nthreads, struct ck_diag *d);

/* Only the absmax of each block (the first pass of double quantization). */
void ck_bnb_absmax(uint64_t blocksize, enum ck_dtype src_dtype, const void *src, uint64_t n, float *absmax);

/*
 * The absmax of the blocks of the transpose of src [A, B] (i.e. of a [B, A]
 * matrix), read in src's order: no transposed copy.  A must be a multiple
 * of blocksize, so no block straddles two rows of the transpose.
 */
void ck_bnb_absmax_t(uint64_t blocksize, enum ck_dtype src_dtype, const void *src, uint64_t A,
		     uint64_t B, float *absmax);

/*
 * The double-quantization offset we use: the mean of absmax[0..nb) summed in
 * double precision in index order, divided in double, rounded once to
 * float32.  (bnb takes a float32 torch reduction whose order depends on the
 * device and thread count; it is not reproducible bit for bit.)
 */
float ck_bnb_mean(const float *absmax, uint64_t nb);

/*
 * Double-quantize absmax[0..nb) with offset and map (sorted, 256 entries):
 * q gets nb codes, nested_absmax ceil(nb/256) floats.
 */
void ck_bnb_nested_quantize(const float *absmax, uint64_t nb, float offset, const float *map,
			    uint8_t *q, float *nested_absmax);

/*
 * Dequantize count elements starting at element `first` (both multiples of
 * nothing in particular) from packed codes and per-block absmax (absmax[0]
 * is the block of element 0) into dst of type to (F32, F16 or BF16).
 */
void ck_bnb_dequant_range(enum ck_bnb_type type, uint64_t blocksize, const uint8_t *packed,
			  const float *absmax, uint64_t first, uint64_t count, enum ck_dtype to, void *dst);

/*
 * dst [C, R] = the transpose of src [R, C], elements of es bytes (2 or 4),
 * on nthreads threads: how per-expert Linear weights [out, in] and fused
 * experts [in, out] map.
 */
void ck_bnb_transpose(const void *src, void *dst, uint64_t R, uint64_t C, size_t es, int nthreads);

/*
 * Python repr() of a float32 widened to double: the shortest decimal that
 * reads back as the same double, in fixed notation when its exponent is in
 * [-4, 16), else like "1e-05".  Returns the length (buf holds >= 32 bytes).
 */
size_t ck_bnb_pyrepr(double v, char *buf, size_t cap);

/* ---- a quantized tensor of a checkpoint ----------------------------------- */

struct ck_bnb_group {
	char name[512];			/* "<module>.weight" */
	enum ck_bnb_type type;
	uint64_t blocksize;
	enum ck_dtype dtype;		/* logical dtype (enum ck_dtype) from the JSON */
	int ndim;
	uint64_t shape[CK_MAX_DIMS];	/* logical shape */
	uint64_t n;			/* logical element count */
	uint64_t nblocks;
	bool nested;
	uint64_t nested_blocksize;	/* 256 */
	float offset;			/* nested_offset */
	float nested_map[256];
	const struct ck_tensor *weight, *absmax, *quant_map, *nested_absmax, *nested_quant_map,
		*state;
};

/*
 * The bnb group whose packed weight is the tensor called name.  Checks the
 * JSON (keys, types, quant type matching the key, blocksize allowed, shape),
 * that the packed bytes, absmax count, nested sizes and quant_map agree, and
 * reads the small tables.  CK_EINVAL with d naming the tensor otherwise.
 */
int ck_bnb_group_open(const struct ck_model *m, const char *name, struct ck_bnb_group *g,
		      struct ck_diag *d);

/* True when name is a bnb packed weight of m (has a quant_state sibling). */
bool ck_bnb_is_weight(const struct ck_model *m, const char *name);
/* True when name is one of the auxiliary tensors of a bnb group. */
bool ck_bnb_is_aux(const char *name);

/* The float32 absmax of blocks [b0, b0+nb) (decoding the nested codes if any). */
void ck_bnb_group_absmax(const struct ck_bnb_group *g, uint64_t b0, uint64_t nb, float *out);

/*
 * Dequantize elements [first, first+count) of g into dst (F32, F16 or BF16)
 * on nthreads threads.  Memory: a few floats per block of the range.
 */
int ck_bnb_group_dequant(const struct ck_bnb_group *g, uint64_t first, uint64_t count, enum ck_dtype to,
			 void *dst, int nthreads, struct ck_diag *d);

/* ---- whole checkpoints: the jobs of dequant-nf4 and quant-bnb ------------- */

/*
 * Dequantize every bnb 4-bit group of in (a .safetensors file or a folder)
 * into out (a .safetensors file or a folder), copy the other tensors, write
 * config.json without quantization_config (bnb_dequant_model.c).  With hf,
 * Unsloth's per-expert gpt-oss tensors are fused as transformers loads them,
 * one expert in memory at a time.
 */
struct ck_bnb_dq_job {
	const char *in, *out;
	enum ck_dtype dtype;		/* CK_DT_UNKNOWN: each group's own */
	int hf;				/* 1 fuse per-expert tensors, 0 keep, -1 when IN has them */
	uint64_t shard_size;		/* folder outputs */
	int threads;
	int force;
};
int ck_bnb_dequant_model(const struct ck_bnb_dq_job *job, struct ck_diag *d);

/*
 * Quantize the Linear weights of in as transformers + bitsandbytes save a
 * load_in_4bit model (bnb_quant_model.c; what is a Linear weight is said
 * there).  CK_EUSAGE for a bad nested_offset.
 */
struct ck_bnb_q_job {
	const char *in, *out;
	enum ck_bnb_type type;
	uint64_t blocksize;
	int double_quant;
	int per_expert;			/* gpt-oss experts as Unsloth's per-expert Linears */
	const char *const *skips;	/* globs on module or tensor names left unquantized */
	size_t nskips;
	const char *nested_offset;	/* testing: every tensor's double-quant offset; NULL: the mean */
	uint64_t shard_size;		/* folder outputs */
	int threads;
	int force;
};
int ck_bnb_quant_model(const struct ck_bnb_q_job *job, struct ck_diag *d);

#endif
