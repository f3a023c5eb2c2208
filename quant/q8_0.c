/*
 * q8_0.c - row loops over the Q8_0 block functions of q8_0.h.
 */
#include "q8_0.h"

size_t ck_q8_0_nbytes(size_t n)
{
	if (n % CK_Q8_0_BLOCK || n / CK_Q8_0_BLOCK > SIZE_MAX / CK_Q8_0_BYTES)
		return 0;
	return n / CK_Q8_0_BLOCK * CK_Q8_0_BYTES;
}

int ck_q8_0_quantize(const float *x, uint8_t *out, size_t n)
{
	if (n % CK_Q8_0_BLOCK)
		return -1;
	for (size_t b = 0; b < n / CK_Q8_0_BLOCK; b++)
		ck_q8_0_block(x + b * CK_Q8_0_BLOCK, out + b * CK_Q8_0_BYTES);
	return 0;
}

int ck_q8_0_dequantize(const uint8_t *in, float *y, size_t n)
{
	if (n % CK_Q8_0_BLOCK)
		return -1;
	for (size_t b = 0; b < n / CK_Q8_0_BLOCK; b++)
		ck_q8_0_block_dequant(in + b * CK_Q8_0_BYTES, y + b * CK_Q8_0_BLOCK);
	return 0;
}
