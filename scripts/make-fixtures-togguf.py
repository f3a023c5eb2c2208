#!/usr/bin/env python3
"""Reference logits for ckpt to-gguf's llama.cpp test, with llama.cpp's YaRN.

    FIXTURE_VENV=/path/to/venv sh -c '$FIXTURE_VENV/bin/python scripts/make-fixtures-togguf.py'

(the venv comes from `sh scripts/ensure-venv.sh "$FIXTURE_VENV" scripts/requirements-fixtures.txt`).
Run by hand, never by CI.

gpt-oss's config says rope "truncate": false (YaRN correction range not rounded),
but llama.cpp always rounds it (ggml_rope_yarn_corr_dims: floor / ceil).  On the tiny
model that moves two of its eight rotary frequencies and the logits by up to ~0.02
by position 20, which is enough to swap a near-tie.  So besides the shared reference
(tests/fixtures/tiny-gpt-oss-ref, truncate false) we keep transformers' logits of the
same model and prompt with truncate true: what llama.cpp should reproduce to f32
rounding if to-gguf converted every tensor and key right.

Writes tests/fixtures/togguf/logits-truncate.safetensors and appends VERSIONS.txt.
"""
import json
import pathlib
import shutil
import tempfile

import numpy as np
import torch
from safetensors.numpy import load_file, save_file
from transformers import GptOssForCausalLM

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures"
TINY, REF, OUT = FIX / "tiny-gpt-oss", FIX / "tiny-gpt-oss-ref", FIX / "togguf"


def logits(path, ids):
	m = GptOssForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager")
	m = m.to(torch.float32)
	m.eval()
	with torch.no_grad():
		return m(torch.tensor([ids])).logits[0].float().numpy()


def main():
	import importlib.metadata as md
	ref = load_file(str(REF / "logits.safetensors"))
	ids = ref["input_ids"].tolist()
	with tempfile.TemporaryDirectory() as tmp:
		d = pathlib.Path(tmp) / "m"
		shutil.copytree(TINY, d)
		cfg = json.loads((d / "config.json").read_text())
		rope = cfg.get("rope_parameters") or cfg["rope_scaling"]
		assert rope.get("truncate") is False, rope
		again = logits(d, ids)
		# the same code path reproduces the shared reference first
		assert np.abs(again - ref["logits_f32"]).max() < 1e-4, np.abs(again - ref["logits_f32"]).max()
		rope["truncate"] = True
		(d / "config.json").write_text(json.dumps(cfg, indent=2))
		trunc = logits(d, ids)
	print(f"max |truncate true - false| = {np.abs(trunc - ref['logits_f32']).max():.4f}")
	OUT.mkdir(parents=True, exist_ok=True)
	save_file({"input_ids": np.array(ids, dtype=np.int64), "logits_f32": np.ascontiguousarray(trunc)},
	          str(OUT / "logits-truncate.safetensors"),
	          metadata={"model": "tests/fixtures/tiny-gpt-oss", "rope_truncate": "true",
	                    "dtype": "float32", "attn_implementation": "eager", "device": "cpu"})
	with open(OUT / "VERSIONS.txt", "a") as f:
		f.write("# scripts/make-fixtures-togguf.py\n")
		for n in ("torch", "transformers", "safetensors", "numpy"):
			f.write(f"{n}=={md.version(n)}\n")


if __name__ == "__main__":
	main()
