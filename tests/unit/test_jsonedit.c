/*
 * test_jsonedit.c - ck_json_set_key: members removed or set with every other
 * byte kept.  The expected texts of the set cases are what Python's
 * json.dumps(..., indent=N, sort_keys=...) + "\n" writes for the edited
 * dict (transformers' save_pretrained writes config.json that way).
 */
#include <stdlib.h>
#include <string.h>
#include "tap.h"
#include "../../libtensor/jsonedit.h"

static char *edit(const char *src, const char *value, enum ck_json_at at, int *rc)
{
	struct ck_diag d = CK_DIAG_INIT;
	char *o = NULL;
	size_t n = 0;

	*rc = ck_json_set_key(src, strlen(src), "quantization_config", value, at, &o, &n, &d);
	if (o && n != strlen(o))
		*rc = -100;
	return o;
}

static void remove_keeps_every_other_byte(void)
{
	static const struct {
		const char *in, *out;
	} cases[] = {
		{ "{\"a\": 7.0, \"quantization_config\": {\"x\": [1, \"}\"]}, \"b\": 1}",
		  "{\"a\": 7.0, \"b\": 1}" },
		{ "{\n  \"a\": 7.0,\n  \"quantization_config\": {\"q\": 1}\n}", "{\n  \"a\": 7.0\n}" },
		{ "{\"quantization_config\": null}", "{}" },
		{ "{\n  \"quantization_config\": {}\n}\n", "{\n}\n" },
		{ "{\"quantization_config\": 1, \"z\": \"q,}\"}", "{\"z\": \"q,}\"}" },
		{ "{\"a\": {\"quantization_config\": 1}}", "{\"a\": {\"quantization_config\": 1}}" },
		{ "{\"a\": \"\\\"quantization_config\\\": 1\"}", "{\"a\": \"\\\"quantization_config\\\": 1\"}" },
	};
	for (size_t i = 0; i < CK_ARRAY_SIZE(cases); i++) {
		int rc;
		char *o = edit(cases[i].in, NULL, CK_JSON_AT_SORTED, &rc);
		CHECK(rc == 0);
		CHECK_STR(o, cases[i].out);
		free(o);
	}
}

static void set_sorted_in_the_file_layout(void)
{
	static const char value[] = "{\"e\": [], \"m\": [\"x\", \"y\"], \"q\": \"mxfp4\"}";
	static const struct {
		const char *in, *out;
	} cases[] = {
		{ "{\n  \"a\": 7.0,\n  \"b\": [\n    1,\n    2\n  ],\n  \"z\": 1\n}\n",
		  "{\n  \"a\": 7.0,\n  \"b\": [\n    1,\n    2\n  ],\n  \"quantization_config\": {\n    \"e\": [],\n"
		  "    \"m\": [\n      \"x\",\n      \"y\"\n    ],\n    \"q\": \"mxfp4\"\n  },\n  \"z\": 1\n}\n" },
		{ "{\n    \"a\": 7.0,\n    \"b\": [\n        1,\n        2\n    ],\n    \"z\": 1\n}\n",
		  "{\n    \"a\": 7.0,\n    \"b\": [\n        1,\n        2\n    ],\n    \"quantization_config\": {\n"
		  "        \"e\": [],\n        \"m\": [\n            \"x\",\n            \"y\"\n        ],\n"
		  "        \"q\": \"mxfp4\"\n    },\n    \"z\": 1\n}\n" },
		{ "{\"a\": 7.0, \"b\": [1, 2], \"z\": 1}\n",
		  "{\"a\": 7.0, \"b\": [1, 2], \"quantization_config\": {\"e\": [], \"m\": [\"x\", \"y\"], "
		  "\"q\": \"mxfp4\"}, \"z\": 1}\n" },
		/* replaced where it was; last of all when nothing sorts after it */
		{ "{\"a\": 7.0, \"quantization_config\": {\"old\": 1}, \"z\": 1}\n",
		  "{\"a\": 7.0, \"quantization_config\": {\"e\": [], \"m\": [\"x\", \"y\"], \"q\": \"mxfp4\"}, "
		  "\"z\": 1}\n" },
		{ "{\"a\": 7.0, \"b\": 1}", "{\"a\": 7.0, \"b\": 1, \"quantization_config\": {\"e\": [], "
		  "\"m\": [\"x\", \"y\"], \"q\": \"mxfp4\"}}" },
	};
	for (size_t i = 0; i < CK_ARRAY_SIZE(cases); i++) {
		int rc;
		char *o = edit(cases[i].in, value, CK_JSON_AT_SORTED, &rc);
		CHECK(rc == 0);
		CHECK_STR(o, cases[i].out);
		free(o);
	}
}

static void set_at_end_replaces(void)
{
	int rc;
	char *o = edit("{\n  \"z\": 1,\n  \"a\": 7.0,\n  \"quantization_config\": {\n    \"old\": 1\n  },\n"
		       "  \"b\": 2\n}\n", "{\"m\":[\"x\",\"y\"],\"e\":[],\"q\":\"mxfp4\"}", CK_JSON_AT_END, &rc);

	CHECK(rc == 0);
	CHECK_STR(o, "{\n  \"z\": 1,\n  \"a\": 7.0,\n  \"b\": 2,\n  \"quantization_config\": {\n    \"m\": [\n"
		  "      \"x\",\n      \"y\"\n    ],\n    \"e\": [],\n    \"q\": \"mxfp4\"\n  }\n}\n");
	free(o);
	o = edit("{}", "{\"q\": 6.0}", CK_JSON_AT_END, &rc);
	CHECK(rc == 0);
	CHECK_STR(o, "{\n  \"quantization_config\": {\n    \"q\": 6.0\n  }\n}");
	free(o);
}

static void refusals(void)
{
	int rc;
	char *o = edit("[1]", NULL, CK_JSON_AT_SORTED, &rc);

	CHECK(rc == CK_EINVAL && !o);
	o = edit("{\"a\": 1", "1", CK_JSON_AT_END, &rc);
	CHECK(rc == CK_EINVAL && !o);
	o = edit("{\"a\": 1}", "{bad", CK_JSON_AT_END, &rc);
	CHECK(rc == CK_EINVAL && !o);
}

int main(void)
{
	RUN(remove_keeps_every_other_byte);
	RUN(set_sorted_in_the_file_layout);
	RUN(set_at_end_replaces);
	RUN(refusals);
	return tap_done();
}
