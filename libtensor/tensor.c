/*
 * tensor.c - small helpers over struct ck_tensor.
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include "tensor.h"

const char *ck_tensor_type_name(const struct ck_tensor *t, char *buf, size_t cap)
{
	if (t->ggml_type >= 0)
		return ck_ggml_type_name((uint32_t)t->ggml_type, buf, cap);
	snprintf(buf, cap, "%s", ck_dtype_name(t->dtype));
	return buf;
}

char *ck_shape_str(const uint64_t *shape, int ndim, char *buf, size_t cap)
{
	size_t o = 0;
	if (!cap)
		return buf;
	buf[0] = 0;
	o += (size_t)snprintf(buf + o, cap - o, "[");
	for (int i = 0; i < ndim && o < cap; i++)
		o += (size_t)snprintf(buf + o, cap - o, "%s%" PRIu64, i ? ", " : "", shape[i]);
	if (o < cap)
		snprintf(buf + o, cap - o, "]");
	return buf;
}
