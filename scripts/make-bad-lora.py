#!/usr/bin/env python3
"""Write the hostile LoRA adapters of tests/bad/lora-* and tests/bad/merge.tsv.

Runs with the test venv (numpy, safetensors): `build/venv/bin/python scripts/make-bad-lora.py`.
Each adapter is a small variation of a valid attention LoRA on tests/fixtures/tiny-llama.
"""
import json
import pathlib
import shutil

import numpy as np
from safetensors.numpy import save_file

ROOT = pathlib.Path(__file__).resolve().parent.parent
BAD = ROOT / "tests" / "bad"
LLAMA = "{BAD}/../fixtures/tiny-llama"
P = "base_model.model.model.layers.0.self_attn."


def config(**kw):
	c = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"],
	     "peft_version": "0.21.2"}
	c.update(kw)
	return c


def tensors(**kw):
	rng = np.random.default_rng(1)
	t = {P + "q_proj.lora_A.weight": rng.standard_normal((4, 64), dtype=np.float32),
	     P + "q_proj.lora_B.weight": rng.standard_normal((64, 4), dtype=np.float32)}
	t.update(kw)
	return {k: v for k, v in t.items() if v is not None}


def adapter(name, cfg=None, ts=None, raw_cfg=None, st=True):
	d = BAD / name
	shutil.rmtree(d, ignore_errors=True)
	d.mkdir()
	if raw_cfg is not None:
		(d / "adapter_config.json").write_text(raw_cfg)
	elif cfg is not None:
		(d / "adapter_config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
	if st:
		save_file(ts if ts is not None else tensors(), str(d / "adapter_model.safetensors"),
		          metadata={"format": "pt"})
	return d


def main():
	rows = []

	def case(name, code, needle, extra="", base=LLAMA):
		rows.append(f"merge-lora {base} {{BAD}}/{name} {{OUT}}{extra}\t{code}\t{needle}")

	adapter("lora-no-config", cfg=None)
	case("lora-no-config", 3, "adapter_config.json")
	adapter("lora-bad-json", raw_cfg='{"peft_type": "LORA", "r": ')
	case("lora-bad-json", 3, "not a JSON object")
	adapter("lora-unknown-peft", cfg=config(peft_type="IA3"))
	case("lora-unknown-peft", 3, "peft_type 'IA3'")
	adapter("lora-no-peft-type", cfg={"r": 4})
	case("lora-no-peft-type", 3, "peft_type")
	adapter("lora-pissa", cfg=config(init_lora_weights="pissa_niter_4"))
	case("lora-pissa", 3, "pissa")
	adapter("lora-replication", cfg=config(layer_replication=[[0, 2]]))
	case("lora-replication", 3, "layer_replication")
	adapter("lora-alpha-string", cfg=config(lora_alpha="8"))
	case("lora-alpha-string", 3, "lora_alpha")
	adapter("lora-rank-mismatch", cfg=config(),
	        ts=tensors(**{P + "q_proj.lora_B.weight": np.ones((64, 3), np.float32)}))
	case("lora-rank-mismatch", 3, "rank mismatch")
	adapter("lora-config-rank", cfg=config(r=8))
	case("lora-config-rank", 3, "rank mismatch")
	adapter("lora-no-module", cfg=config(), ts=tensors(**{
		P + "x_proj.lora_A.weight": np.ones((4, 64), np.float32),
		P + "x_proj.lora_B.weight": np.ones((64, 4), np.float32)}))
	case("lora-no-module", 3, "x_proj")
	adapter("lora-wrong-shape", cfg=config(), ts=tensors(**{
		P + "q_proj.lora_A.weight": np.ones((4, 65), np.float32)}))
	case("lora-wrong-shape", 3, "do not fit")
	nan = np.ones((4, 64), np.float32)
	nan[2, 7] = np.nan
	adapter("lora-nan", cfg=config(), ts=tensors(**{P + "q_proj.lora_A.weight": nan}))
	case("lora-nan", 3, "non-finite")
	adapter("lora-only-a", cfg=config(), ts=tensors(**{P + "q_proj.lora_B.weight": None}))
	case("lora-only-a", 3, "without lora_B")
	adapter("lora-stray", cfg=config(), ts=tensors(**{
		"base_model.model.model.layers.0.mlp.gate_proj.lora_C.weight": np.ones((4, 4), np.float32)}))
	case("lora-stray", 3, "lora_C")
	adapter("lora-int-dtype", cfg=config(), ts=tensors(**{
		P + "q_proj.lora_A.weight": np.ones((4, 64), np.int32)}))
	case("lora-int-dtype", 3, "I32")
	adapter("lora-empty-tensor", cfg=config(), ts=tensors(**{
		P + "q_proj.lora_A.weight": np.ones((0, 64), np.float32)}))
	case("lora-empty-tensor", 3, "no elements")
	adapter("lora-resized-vocab", cfg=config(), ts=tensors(**{
		"base_model.model.lm_head.weight": np.ones((400, 64), np.float32)}))
	case("lora-resized-vocab", 3, "resized vocabulary")
	adapter("lora-python-regex", cfg=config(rank_pattern={r"layers\.\d+\.self_attn\.q_proj": 4}))
	case("lora-python-regex", 3, "Python-only")
	d = adapter("lora-pickle", cfg=config(), st=False)
	(d / "adapter_model.bin").write_bytes(b"\x80\x02}q\x00.")
	case("lora-pickle", 3, "pickled")
	adapter("lora-no-tensors", cfg=config(), ts={})
	case("lora-no-tensors", 3, "no tensors")
	adapter("lora-bad-header", cfg=config())
	p = BAD / "lora-bad-header" / "adapter_model.safetensors"
	p.write_bytes(p.read_bytes()[:40])
	case("lora-bad-header", 3, "adapter_model.safetensors")
	# Expert LoRA on the tiny gpt-oss (E = 4, gate_up_proj [4, 64, 128], down_proj [4, 64, 64]).
	OSS = "{BAD}/../fixtures/tiny-gpt-oss"
	X = "base_model.model.model.layers.0.mlp.experts."
	ecfg = config(target_modules=[], target_parameters=["mlp.experts.gate_up_proj"], r=2)
	adapter("lora-experts-rank", cfg=ecfg, ts={X + "lora_A.weight": np.ones((7, 64), np.float32),
	                                           X + "lora_B.weight": np.ones((128, 7), np.float32)})
	case("lora-experts-rank", 3, "rank mismatch", base=OSS)
	adapter("lora-experts-untargeted", cfg=config(target_modules=[], target_parameters=["mlp.experts.up_proj"], r=2),
	        ts={X + "lora_A.weight": np.ones((8, 64), np.float32), X + "lora_B.weight": np.ones((128, 8), np.float32)})
	case("lora-experts-untargeted", 3, "no targeted parameter", base=OSS)
	adapter("lora-experts-shape", cfg=ecfg, ts={X + "lora_A.weight": np.ones((8, 32), np.float32),
	                                            X + "lora_B.weight": np.ones((128, 8), np.float32)})
	case("lora-experts-shape", 3, "either way", base=OSS)
	adapter("lora-experts-dora", cfg=ecfg, ts={X + "lora_A.weight": np.ones((8, 64), np.float32),
	                                           X + "lora_B.weight": np.ones((128, 8), np.float32),
	                                           X + "lora_magnitude_vector": np.ones((128,), np.float32)})
	case("lora-experts-dora", 3, "DoRA", base=OSS)
	adapter("lora-perexpert-index", cfg=config(target_modules=["gate_up_projs.9"], r=2),
	        ts={X + "gate_up_projs.9.lora_A.weight": np.ones((2, 64), np.float32),
	            X + "gate_up_projs.9.lora_B.weight": np.ones((128, 2), np.float32)})
	case("lora-perexpert-index", 3, "expert 9 of 4", base=OSS)
	adapter("lora-down-ambiguous", cfg=config(target_modules=[], target_parameters=["mlp.experts.down_proj"], r=2),
	        ts={X + "lora_A.weight": np.ones((8, 64), np.float32), X + "lora_B.weight": np.ones((64, 8), np.float32)})
	case("lora-down-ambiguous", 2, "--moe-layout", base=OSS)
	# A base whose index names a shard that is not there.
	b = BAD / "lora-base-noshard"
	shutil.rmtree(b, ignore_errors=True)
	b.mkdir()
	(b / "model.safetensors.index.json").write_text(json.dumps(
		{"metadata": {"total_size": 8}, "weight_map": {"lm_head.weight": "model-00001-of-00001.safetensors"}}))
	adapter("lora-ok", cfg=config())
	case("lora-ok", 3, "model-00001-of-00001.safetensors", base="{BAD}/lora-base-noshard")
	case("lora-ok", 2, "--moe-layout", extra=" --moe-layout sideways")
	case("lora-ok", 2, "--scale", extra=" --scale nan")
	(BAD / "merge.tsv").write_text("# made by scripts/make-bad-lora.py: argv\texit code\tneedle\n" +
	                               "\n".join(rows) + "\n")
	print(f"{len(rows)} cases")


if __name__ == "__main__":
	main()
