"""The shared tiny models (scripts/make-fixtures-tiny.py) load with the real
safetensors reader, keep the gpt-oss traps they were made for, and `ckpt ls`
agrees with safetensors on every tensor."""
import json

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file

from conftest import FIXTURES, run

OSS = FIXTURES / "tiny-gpt-oss"
LLAMA = FIXTURES / "tiny-llama"
REF = FIXTURES / "tiny-gpt-oss-ref"


def reference_tensors(folder):
    """name -> (dtype, shape, file) as the safetensors package reads them."""
    idx = folder / "model.safetensors.index.json"
    files = sorted(set(json.loads(idx.read_text())["weight_map"].values())) if idx.exists() \
        else ["model.safetensors"]
    out = {}
    for fn in files:
        with safe_open(str(folder / fn), framework="numpy") as f:
            for name in f.keys():
                sl = f.get_slice(name)
                assert name not in out
                out[name] = (sl.get_dtype(), list(sl.get_shape()), fn)
    return out


@pytest.mark.parametrize("folder", [OSS, LLAMA], ids=["gpt-oss", "llama"])
def test_ls_agrees_with_safetensors(folder):
    ref = reference_tensors(folder)
    r = run("ls", "--json", "-l", folder)
    assert r.code == 0, r
    doc = json.loads(r.out)
    got = {t["name"]: (t["dtype"], t["shape"], t["file"]) for t in doc["models"][0]["tensors"]}
    assert got == ref
    assert all(d == "BF16" for d, _, _ in ref.values())


def test_gpt_oss_traps():
    cfg = json.loads((OSS / "config.json").read_text())
    assert cfg["architectures"] == ["GptOssForCausalLM"]
    assert cfg["hidden_size"] == cfg["intermediate_size"] == 64
    assert cfg["layer_types"] == ["sliding_attention", "full_attention"]
    assert cfg["rope_parameters"]["rope_type"] == "yarn"
    idx = json.loads((OSS / "model.safetensors.index.json").read_text())
    assert len(set(idx["weight_map"].values())) == 2
    t = {k: tuple(v[1]) for k, v in reference_tensors(OSS).items()}
    assert set(t) == set(idx["weight_map"])
    E, H, I = cfg["num_local_experts"], cfg["hidden_size"], cfg["intermediate_size"]
    assert t["model.layers.0.mlp.experts.gate_up_proj"] == (E, H, 2 * I)
    assert t["model.layers.0.mlp.experts.down_proj"] == (E, I, H)
    assert t["model.layers.1.self_attn.sinks"] == (cfg["num_attention_heads"],)
    # More embedding rows than tokens; the harmony specials at the top ids.
    tok = json.loads((OSS / "tokenizer.json").read_text())
    ntok = len(tok["model"]["vocab"]) + len(tok["added_tokens"])
    assert cfg["vocab_size"] > ntok
    assert t["model.embed_tokens.weight"][0] == cfg["vocab_size"]
    special = {a["content"]: a["id"] for a in tok["added_tokens"]}
    assert min(special.values()) == len(tok["model"]["vocab"])
    for s in ("<|startoftext|>", "<|endoftext|>", "<|return|>", "<|start|>", "<|end|>",
              "<|message|>", "<|channel|>", "<|constrain|>", "<|call|>", "<|endofprompt|>"):
        assert s in special
    assert cfg["eos_token_id"] == special["<|return|>"]
    tc = json.loads((OSS / "tokenizer_config.json").read_text())
    assert "<|start|>assistant" in tc["chat_template"]
    assert (LLAMA / "tokenizer.json").read_bytes() == (OSS / "tokenizer.json").read_bytes()


def test_reference_logits():
    for name, folder in (("logits", OSS), ("tiny-llama-logits", LLAMA)):
        ref = load_file(str(REF / f"{name}.safetensors"))
        cfg = json.loads((folder / "config.json").read_text())
        n = ref["input_ids"].shape[0]
        assert n > (cfg.get("sliding_window") or 8)
        assert ref["logits_f32"].shape == ref["logits_bf16"].shape == (n, cfg["vocab_size"])
        assert np.isfinite(ref["logits_f32"]).all()
        assert ref["input_ids"].max() < cfg["vocab_size"]
