/*
 * dtype.h - element types of the two container formats, and the float
 * conversions every tool shares.
 *
 * safetensors dtypes are strings in the header ("BF16", "F8_E8M0", ...); we
 * keep the 22 the reference reader knows (safetensors 0.8), with their bit
 * sizes.  F4 and F6_* are sub-byte: a tensor of them must end on a byte.
 *
 * ggml types are numbers in a GGUF tensor info.  Quantized ones come in
 * blocks: blck elements are stored in type_size bytes.  Ids we do not know
 * are not errors here: ck_ggml_type() returns NULL and ck_ggml_type_name()
 * prints "unknown(N)"; the GGUF reader decides what to do with them.
 *
 * Conversions between F32, F16 and BF16 round to nearest, ties to even,
 * keep NaN a (quiet) NaN of the same sign, keep Inf, and produce and read
 * subnormals exactly as numpy / ml_dtypes do.  They are written as plain
 * loops over integers so the compiler can vectorize them, and they do not
 * depend on the FPU rounding mode or on -ffast-math (which we never use).
 */
#ifndef CK_DTYPE_H
#define CK_DTYPE_H

#include <stddef.h>
#include <stdint.h>

enum ck_dtype {
	CK_DT_UNKNOWN = 0,
	CK_DT_BOOL,
	CK_DT_F4,
	CK_DT_F6_E2M3,
	CK_DT_F6_E3M2,
	CK_DT_U8,
	CK_DT_I8,
	CK_DT_F8_E5M2,
	CK_DT_F8_E4M3,
	CK_DT_F8_E8M0,
	CK_DT_F8_E4M3FNUZ,
	CK_DT_F8_E5M2FNUZ,
	CK_DT_I16,
	CK_DT_U16,
	CK_DT_F16,
	CK_DT_BF16,
	CK_DT_I32,
	CK_DT_U32,
	CK_DT_F32,
	CK_DT_C64,
	CK_DT_F64,
	CK_DT_I64,
	CK_DT_U64,
	CK_DT_COUNT
};
/* The enum order above is the safetensors "increasing alignment" order. */

/* "BF16" -> CK_DT_BF16; CK_DT_UNKNOWN when s[0..len) names no dtype. */
enum ck_dtype ck_dtype_from_name(const char *s, size_t len);
/* CK_DT_BF16 -> "BF16"; "unknown" for CK_DT_UNKNOWN or out of range. */
const char *ck_dtype_name(enum ck_dtype dt);
/* Bits per element (4 for F4, 6 for F6_*); 0 for CK_DT_UNKNOWN. */
unsigned ck_dtype_bits(enum ck_dtype dt);
/* True for F32, F16 and BF16: the types --dtype converts between. */
int ck_dtype_is_float(enum ck_dtype dt);

/* ggml type ids (ggml.h enum ggml_type); only the ones we name in code. */
enum {
	CK_GGML_F32 = 0,
	CK_GGML_F16 = 1,
	CK_GGML_Q4_0 = 2,
	CK_GGML_Q4_1 = 3,
	CK_GGML_Q5_0 = 6,
	CK_GGML_Q5_1 = 7,
	CK_GGML_Q8_0 = 8,
	CK_GGML_Q8_1 = 9,
	CK_GGML_I8 = 24,
	CK_GGML_I16 = 25,
	CK_GGML_I32 = 26,
	CK_GGML_I64 = 27,
	CK_GGML_F64 = 28,
	CK_GGML_BF16 = 30,
	CK_GGML_MXFP4 = 39,
};

struct ck_ggml_type {
	uint32_t id;
	const char *name;	/* ggml's type_name: "f32", "q8_0", "mxfp4" */
	uint32_t blck;		/* elements per block (1 for plain types) */
	uint32_t type_size;	/* bytes per block */
};

/* The traits of ggml type id, or NULL when we do not know it (or it was removed). */
const struct ck_ggml_type *ck_ggml_type(uint32_t id);
/* Its name, or "unknown(N)" written into buf (at least 24 bytes). */
const char *ck_ggml_type_name(uint32_t id, char *buf, size_t cap);

/* Scalar conversions (round to nearest even; NaN stays NaN). */
uint16_t ck_f32_to_bf16(float f);
float ck_bf16_to_f32(uint16_t h);
uint16_t ck_f32_to_f16(float f);
float ck_f16_to_f32(uint16_t h);

/* Array conversions; src and dst must not overlap. */
void ck_f32_to_bf16_n(const float *restrict src, uint16_t *restrict dst, size_t n);
void ck_bf16_to_f32_n(const uint16_t *restrict src, float *restrict dst, size_t n);
void ck_f32_to_f16_n(const float *restrict src, uint16_t *restrict dst, size_t n);
void ck_f16_to_f32_n(const uint16_t *restrict src, float *restrict dst, size_t n);

/*
 * Convert n elements between any two of F32, F16, BF16 (the same type is a
 * copy).  F16<->BF16 goes through F32, which is exact, so there is a single
 * rounding.  Returns 0, or -1 if a type is not one of the three.
 */
int ck_convert(enum ck_dtype from, const void *src, enum ck_dtype to, void *dst, size_t n);

/* Read element i of a F32/F16/BF16 array as float (for tests and reports). */
float ck_load_float(enum ck_dtype dt, const void *src, size_t i);

#endif
