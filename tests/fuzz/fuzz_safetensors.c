/*
 * fuzz_safetensors.c - libFuzzer harness for the safetensors reader.
 *	make fuzz && build-fuzz/fuzz_safetensors -max_total_time=300 build-fuzz/corpus tests/bad
 * (the first folder receives new inputs: never make it tests/bad)
 * Any input must give 0 or a clean error: never a crash, a leak, a hang.
 */
#include <stddef.h>
#include <stdint.h>
#include "../../libtensor/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct ck_diag d = { 0 };
	struct ck_st_file *f = NULL;
	if (ck_st_parse(&f, data, size, "fuzz", &d) == 0) {
		uint64_t sum = 0;
		for (size_t i = 0; i < f->n; i++)	/* every view must be inside the buffer */
			if (f->tensors[i].nbytes)
				sum += f->tensors[i].data[0] + f->tensors[i].data[f->tensors[i].nbytes - 1];
		(void)sum;
	}
	ck_st_close(f);
	return 0;
}
