/*
 * test_merge.c - adapter_config.json parsing and PEFT's rank/alpha pattern
 * rules (merge/lora.h).  The expected matches are Python's
 * re.match(r"(.*\.)?(k)$", key), as PEFT >= 0.15 get_pattern_key uses it.
 */
#include <stdlib.h>
#include <string.h>
#include "tap.h"
#include "../../merge/lora.h"

static int parse(struct ck_lora_config *c, const char *json, struct ck_diag *d)
{
	return ck_lora_config_parse(c, json, strlen(json), "adapter_config.json", d);
}

static void minimal_config_takes_peft_defaults(void)
{
	struct ck_lora_config c;
	struct ck_diag d = CK_DIAG_INIT;
	CHECK(parse(&c, "{\"peft_type\":\"LORA\",\"target_modules\":[\"q_proj\"]}", &d) == 0);
	CHECK(c.r == 8 && c.alpha == 8 && !c.use_rslora && !c.use_dora);
	CHECK(c.peft_version == NULL && c.peft_ver[0] == -1);
	ck_lora_config_release(&c);
}

static void config_fields_are_read(void)
{
	struct ck_lora_config c;
	struct ck_diag d = CK_DIAG_INIT;
	CHECK(parse(&c, "{\"peft_type\":\"LORA\",\"r\":16,\"lora_alpha\":22.6,\"use_rslora\":true,"
		  "\"rank_pattern\":{\"down_proj\":4,\"q_proj\":2},\"alpha_pattern\":{},"
		  "\"target_parameters\":[\"7.mlp.experts.gate_up_proj\"],\"peft_version\":\"0.19.0.dev0@abc\","
		  "\"lora_B_layout\":\"grouped_by_expert\",\"init_lora_weights\":\"gaussian\"}", &d) == 0);
	CHECK(c.r == 16 && c.alpha == 22.6 && c.use_rslora);
	CHECK_EQ_U64(c.nrank_pat, 2);
	CHECK_STR(c.rank_pat[0].key, "down_proj");
	CHECK_EQ_U64(c.ntarget_params, 1);
	CHECK(c.peft_ver[0] == 0 && c.peft_ver[1] == 19 && c.peft_ver[2] == 0);
	CHECK(c.b_layout_given && c.b_layout == CK_LORA_B_GROUPED);
	ck_lora_config_release(&c);
}

static void refusals_say_why(void)
{
	static const struct {
		const char *json, *needle;
		int status;
	} bad[] = {
		{ "[]", "not a JSON object", CK_EINVAL },
		{ "{\"r\":4}", "peft_type", CK_EINVAL },
		{ "{\"peft_type\":\"ADALORA\"}", "ADALORA", CK_EUNSUPPORTED },
		{ "{\"peft_type\":\"LORA\",\"init_lora_weights\":\"olora\"}", "olora", CK_EUNSUPPORTED },
		{ "{\"peft_type\":\"LORA\",\"init_lora_weights\":\"corda\"}", "corda", CK_EUNSUPPORTED },
		{ "{\"peft_type\":\"LORA\",\"alora_invocation_tokens\":[1,2]}", "alora", CK_EUNSUPPORTED },
		{ "{\"peft_type\":\"LORA\",\"use_qalora\":true}", "use_qalora", CK_EUNSUPPORTED },
		{ "{\"peft_type\":\"LORA\",\"r\":0}", "\"r\"", CK_EINVAL },
		{ "{\"peft_type\":\"LORA\",\"r\":-4}", "\"r\"", CK_EINVAL },
		{ "{\"peft_type\":\"LORA\",\"use_dora\":1}", "use_dora", CK_EINVAL },
		{ "{\"peft_type\":\"LORA\",\"rank_pattern\":{\"q\":\"4\"}}", "rank_pattern", CK_EINVAL },
		{ "{\"peft_type\":\"LORA\",\"lora_B_layout\":\"odd\"}", "lora_B_layout", CK_EUNSUPPORTED },
		{ "{\"peft_type\":\"LORA\",\"target_parameters\":[3]}", "target_parameters", CK_EINVAL },
		{ "{\"peft_type\":\"LORA\",\"trainable_token_indices\":[1,1]}", "twice", CK_EINVAL },
		{ "{\"peft_type\":\"LORA\",\"trainable_token_indices\":[-1]}", "token id", CK_EINVAL },
		{ "{\"peft_type\":\"LORA\",\"trainable_token_indices\":3}", "list or an object", CK_EINVAL },
	};
	for (size_t i = 0; i < CK_ARRAY_SIZE(bad); i++) {
		struct ck_lora_config c;
		struct ck_diag d = CK_DIAG_INIT;
		int rc = parse(&c, bad[i].json, &d);
		CHECK(rc == bad[i].status);
		CHECK(strstr(d.msg, bad[i].needle) != NULL);
		if (rc != bad[i].status || !strstr(d.msg, bad[i].needle))
			printf("# case %zu: rc %d msg '%s'\n", i, rc, d.msg);
	}
	/* Settings that merge like vanilla LoRA are fine. */
	{
		struct ck_lora_config c;
		struct ck_diag d = CK_DIAG_INIT;
		CHECK(parse(&c, "{\"peft_type\":\"LORA\",\"init_lora_weights\":true,\"layer_replication\":null,"
			  "\"use_qalora\":false,\"trainable_token_indices\":null}", &d) == 0);
		ck_lora_config_release(&c);
	}
}

static double lookup(const char *json_pats, const char *key, int *hit)
{
	/* json_pats: a rank_pattern object */
	char buf[512];
	struct ck_lora_config c;
	struct ck_diag d = CK_DIAG_INIT;
	double v = -1;
	snprintf(buf, sizeof(buf), "{\"peft_type\":\"LORA\",\"rank_pattern\":%s}", json_pats);
	if (parse(&c, buf, &d))
		return -2;
	*hit = ck_lora_pattern(c.rank_pat, c.nrank_pat, key, &v, &d);
	ck_lora_config_release(&c);
	return v;
}

static void patterns_match_like_peft(void)
{
	int hit;
	/* A bare name matches on a '.' boundary only. */
	CHECK(lookup("{\"q_proj\":2}", "model.layers.0.self_attn.q_proj", &hit) == 2 && hit == 1);
	lookup("{\"proj\":2}", "model.layers.0.self_attn.q_proj", &hit);
	CHECK(hit == 0);
	/* A full path matches itself (PEFT >= 0.15; 0.14 needed a dot before it). */
	CHECK(lookup("{\"model.layers.1.self_attn.q_proj\":6}", "model.layers.1.self_attn.q_proj", &hit) == 6);
	lookup("{\"model.layers.1.self_attn.q_proj\":6}", "model.layers.11.self_attn.q_proj", &hit);
	CHECK(hit == 0);
	/* First key in JSON order wins. */
	CHECK(lookup("{\"down_proj\":2,\"mlp.down_proj\":3}", "model.layers.0.mlp.down_proj", &hit) == 2);
	/* Regexes, as ERE. */
	CHECK(lookup("{\"layers\\\\.[0-9]+\\\\.mlp\\\\.(up|down)_proj\":5}", "model.layers.3.mlp.up_proj", &hit) == 5);
	lookup("{\"layers\\\\.[0-9]+\\\\.mlp\\\\.(up|down)_proj\":5}", "model.layers.3.mlp.gate_proj", &hit);
	CHECK(hit == 0);
	CHECK(lookup("{\".*experts\\\\.gate_up_proj\":4}", "model.layers.7.mlp.experts.gate_up_proj", &hit) == 4);
	/* Python-only syntax is refused, not guessed. */
	lookup("{\"layers\\\\.\\\\d+\\\\.q_proj\":4}", "model.layers.3.q_proj", &hit);
	CHECK(hit == CK_EUNSUPPORTED);
	lookup("{\"(?:q|k)_proj\":4}", "model.layers.3.q_proj", &hit);
	CHECK(hit == CK_EUNSUPPORTED);
}

int main(void)
{
	RUN(minimal_config_takes_peft_defaults);
	RUN(config_fields_are_read);
	RUN(refusals_say_why);
	RUN(patterns_match_like_peft);
	return tap_done();
}
