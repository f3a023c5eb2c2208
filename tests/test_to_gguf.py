"""ckpt to-gguf: gpt-oss checkpoints into GGUFs that gguf-py reads and llama.cpp runs.

Checks against the real libraries of the test venv:
  - gguf-py reads every GGUF we write; its dequantization of our tensors equals the
    source values (BF16/F32 exactly; MXFP4 inputs exactly; MXFP4 from float inputs
    equal to the OpenAI rule, and byte-equal to gguf-py's own quantizer with
    --mxfp4-round ggml; Q8_0 byte-equal to gguf-py's quantizer);
  - llama.cpp (llama-cpp-python) loads the tiny gpt-oss and its logits match the
    transformers reference logits of tests/fixtures/tiny-gpt-oss-ref;
  - llama.cpp's tokenizer on the real gpt-oss vocabulary gives the known ids.
Input flavors (HF BF16, HF MXFP4, original/, per-expert names) are made here from the
tiny fixture with numpy, so every flavor carries the same weights.
"""
import json
import os
import pathlib
import shutil
import struct

import ml_dtypes
import numpy as np
import pytest

from conftest import FIXTURES, TOKENIZER_DIR, leftovers, run

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as QT  # noqa: E402
from gguf.quants import dequantize, quantize  # noqa: E402

TINY = FIXTURES / "tiny-gpt-oss"
REF = FIXTURES / "tiny-gpt-oss-ref"
BF16 = ml_dtypes.bfloat16

needs_tiny = pytest.mark.skipif(not (TINY / "config.json").exists(), reason="tiny gpt-oss fixture missing")

# ---- safetensors by hand (BF16 included, no torch) ------------------------------------

ST_DT = {"BF16": BF16, "F16": np.float16, "F32": np.float32, "U8": np.uint8, "I64": np.int64}


def st_read(path):
    raw = pathlib.Path(path).read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    hdr = json.loads(raw[8:8 + n])
    out = {}
    for k, v in hdr.items():
        if k == "__metadata__":
            continue
        b, e = v["data_offsets"]
        out[k] = np.frombuffer(raw[8 + n + b:8 + n + e], dtype=ST_DT[v["dtype"]]).reshape(v["shape"])
    return out


def st_write(path, tensors):
    hdr, off, blobs = {}, 0, []
    inv = {np.dtype(BF16): "BF16", np.dtype(np.float16): "F16", np.dtype(np.float32): "F32",
           np.dtype(np.uint8): "U8"}
    for k, a in tensors.items():
        a = np.ascontiguousarray(a)
        hdr[k] = {"dtype": inv[a.dtype], "shape": list(a.shape), "data_offsets": [off, off + a.nbytes]}
        blobs.append(a.tobytes())
        off += a.nbytes
    h = json.dumps(hdr).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for b in blobs:
            f.write(b)


def load_model(d):
    d = pathlib.Path(d)
    out = {}
    for p in sorted(d.glob("*.safetensors")):
        out.update(st_read(p))
    return out


def f32(a):
    return np.asarray(a, dtype=np.float32)


# ---- MXFP4 references -----------------------------------------------------------------

FP4 = np.array([0, .5, 1, 1.5, 2, 3, 4, 6, -0., -.5, -1, -1.5, -2, -3, -4, -6], dtype=np.float32)


def oai_dequant(blocks, scales):
    """OpenAI/HF MXFP4 [..., G, 16] + [..., G] -> f32 [..., G*32] (low nibble = even element)."""
    lo, hi = FP4[blocks & 15], FP4[blocks >> 4]
    v = np.stack([lo, hi], axis=-1).reshape(*blocks.shape[:-1], 32)
    v = v * np.exp2(scales.astype(np.float32) - 127)[..., None]
    return v.reshape(*blocks.shape[:-2], -1)


def oai_quant(x):
    """The OpenAI rule (triton downcast_to_mxfp, ROUND_UP scale, RTNE elements) on rows of x.
    Returns (blocks [..., G, 16], scales [..., G]) in the checkpoint's pairs order."""
    x = f32(x).reshape(*x.shape[:-1], -1, 32)
    amax = np.abs(x).max(axis=-1)
    b = ((amax / np.float32(6)).astype(np.float32).view(np.uint32) + np.uint32(0x7FFFFF)) & np.uint32(0x7F800000)
    scale = (b >> 23).astype(np.uint8)
    with np.errstate(divide="ignore"):
        q = np.where(b > 0, np.float32(1) / b.view(np.float32), np.float32(0))
    y = x * q[..., None]
    mag = np.abs(y)
    grid = FP4[:8]
    dist = np.abs(mag[..., None] - grid)
    best = dist.min(axis=-1, keepdims=True)
    ties = dist == best
    # nearest, ties to the even code
    even = ties & (np.arange(8) % 2 == 0)
    code = np.where(even.any(axis=-1), even.argmax(axis=-1), ties.argmax(axis=-1)).astype(np.uint8)
    code |= np.signbit(y).astype(np.uint8) << 3
    blocks = code[..., 0::2] | (code[..., 1::2] << 4)
    return blocks.astype(np.uint8), scale


# ---- input flavors of the tiny model ----------------------------------------------------

TOK_FILES = ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "chat_template.jinja")


def copy_aux(src, dst):
    for n in TOK_FILES:
        if (pathlib.Path(src) / n).exists():
            shutil.copy(pathlib.Path(src) / n, pathlib.Path(dst) / n)


def make_mxfp4(tmp, seed=7):
    """HF MXFP4 flavor: the tiny model's experts replaced by random MXFP4 blocks."""
    cfg = json.loads((TINY / "config.json").read_text())
    w = load_model(TINY)
    rng = np.random.default_rng(seed)
    E, H, I = cfg["num_local_experts"], cfg["hidden_size"], cfg["intermediate_size"]
    out = {}
    for k, a in w.items():
        if k.endswith("mlp.experts.gate_up_proj") or k.endswith("mlp.experts.down_proj"):
            rows, cols = (2 * I, H) if "gate_up" in k else (H, I)
            out[k + "_blocks"] = rng.integers(0, 256, (E, rows, cols // 32, 16), dtype=np.uint8)
            out[k + "_scales"] = rng.integers(118, 130, (E, rows, cols // 32), dtype=np.uint8)
        else:
            out[k] = a
    d = tmp / "mxfp4"
    d.mkdir()
    cfg["quantization_config"] = {"quant_method": "mxfp4", "modules_to_not_convert": []}
    (d / "config.json").write_text(json.dumps(cfg, indent=2))
    st_write(d / "model.safetensors", out)
    copy_aux(TINY, d)
    return d, out


def make_original(tmp, hf):
    """original/ flavor of the same tensors (OpenAI names, fused qkv, ModelConfig fields)."""
    cfg = json.loads((TINY / "config.json").read_text())
    L = cfg["num_hidden_layers"]
    o = {"embedding.weight": hf["model.embed_tokens.weight"], "norm.scale": hf["model.norm.weight"],
         "unembedding.weight": hf["lm_head.weight"]}
    for i in range(L):
        p, q = f"model.layers.{i}.", f"block.{i}."
        o[q + "attn.norm.scale"] = hf[p + "input_layernorm.weight"]
        o[q + "mlp.norm.scale"] = hf[p + "post_attention_layernorm.weight"]
        o[q + "attn.qkv.weight"] = np.concatenate([hf[p + f"self_attn.{x}_proj.weight"] for x in "qkv"])
        o[q + "attn.qkv.bias"] = np.concatenate([hf[p + f"self_attn.{x}_proj.bias"] for x in "qkv"])
        o[q + "attn.sinks"] = hf[p + "self_attn.sinks"]
        o[q + "attn.out.weight"] = hf[p + "self_attn.o_proj.weight"]
        o[q + "attn.out.bias"] = hf[p + "self_attn.o_proj.bias"]
        o[q + "mlp.gate.weight"] = hf[p + "mlp.router.weight"]
        o[q + "mlp.gate.bias"] = hf[p + "mlp.router.bias"]
        for a, b in (("mlp1", "gate_up_proj"), ("mlp2", "down_proj")):
            o[q + f"mlp.{a}_weight.blocks"] = hf[p + f"mlp.experts.{b}_blocks"]
            o[q + f"mlp.{a}_weight.scales"] = hf[p + f"mlp.experts.{b}_scales"]
            o[q + f"mlp.{a}_bias"] = hf[p + f"mlp.experts.{b}_bias"]
    root = tmp / "orig"
    d = root / "original"
    d.mkdir(parents=True)
    ocfg = {"num_hidden_layers": L, "num_experts": cfg["num_local_experts"],
            "experts_per_token": cfg["num_experts_per_tok"], "vocab_size": cfg["vocab_size"],
            "hidden_size": cfg["hidden_size"], "intermediate_size": cfg["intermediate_size"],
            "swiglu_limit": 7.0, "head_dim": cfg["head_dim"],
            "num_attention_heads": cfg["num_attention_heads"],
            "num_key_value_heads": cfg["num_key_value_heads"], "sliding_window": cfg["sliding_window"],
            "initial_context_length": 4096, "rope_theta": 150000, "rope_scaling_factor": 32.0,
            "rope_ntk_alpha": 1, "rope_ntk_beta": 32}
    (d / "config.json").write_text(json.dumps(ocfg))
    st_write(d / "model.safetensors", o)
    copy_aux(TINY, root)
    return d


def make_per_expert(tmp, form):
    """Per-expert Linear modules (Unsloth-style), float: experts.gate_up_projs.N.{weight,bias}."""
    cfg = json.loads((TINY / "config.json").read_text())
    w = load_model(TINY)
    out = {}
    for k, a in w.items():
        p = k.rsplit("mlp.experts.", 1)
        if len(p) == 2 and p[1] in ("gate_up_proj", "down_proj", "gate_up_proj_bias", "down_proj_bias"):
            proj = "gate_up_proj" if p[1].startswith("gate_up") else "down_proj"
            for e in range(a.shape[0]):
                name = f"{p[0]}mlp.experts." + (f"{proj}s.{e}" if form == "s" else f"{proj}.weights.{e}")
                if p[1].endswith("_bias"):
                    out[name + ".bias"] = a[e]
                else:
                    out[name + ".weight"] = np.ascontiguousarray(a[e].T)	# Linear: [OUT, IN]
        elif k.endswith("mlp.router.weight") or k.endswith("mlp.router.bias"):
            out[k.replace("mlp.router.", "mlp.router.linear.")] = a
        else:
            out[k] = a
    d = tmp / f"pe-{form}"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(cfg))
    st_write(d / "model.safetensors", out)
    copy_aux(TINY, d)
    return d


def convert(src, out, *opts):
    r = run("to-gguf", src, out, *opts)
    assert r.code == 0, r
    return gguf.GGUFReader(str(out))


def tensors(reader):
    return {t.name: t for t in reader.tensors}


def deq(t):
    """gguf-py's dequantization in numpy order (ggml ne reversed)."""
    return dequantize(t.data, t.tensor_type).reshape([int(x) for x in reversed(t.shape)])


# ---- tests ------------------------------------------------------------------------------


def test_help_lists_every_option():
    r = run("to-gguf", "-h")
    assert r.code == 0
    for opt in ("--outtype", "--experts", "--mxfp4-round", "--dry-run", "--force"):
        assert opt in r.out


@needs_tiny
def test_bf16_input_kvs_and_values(tmp_path):
    """HF BF16 -> f32 everywhere: every value gguf-py reads equals the source; KVs as llama.cpp needs."""
    cfg = json.loads((TINY / "config.json").read_text())
    r = convert(TINY, tmp_path / "a.gguf", "--outtype", "f32", "--experts", "f32")
    f = r.fields
    assert f["general.architecture"].contents() == "gpt-oss"
    kv = {k: f[k].contents() for k in f if k.startswith("gpt-oss.")}
    assert kv["gpt-oss.block_count"] == cfg["num_hidden_layers"]
    assert kv["gpt-oss.embedding_length"] == cfg["hidden_size"]
    assert kv["gpt-oss.expert_feed_forward_length"] == cfg["intermediate_size"]
    assert kv["gpt-oss.expert_count"] == cfg["num_local_experts"]
    assert kv["gpt-oss.expert_used_count"] == cfg["num_experts_per_tok"]
    assert kv["gpt-oss.attention.head_count_kv"] == cfg["num_key_value_heads"]
    assert kv["gpt-oss.attention.key_length"] == cfg["head_dim"]
    assert kv["gpt-oss.attention.sliding_window"] == cfg["sliding_window"]
    assert kv["gpt-oss.rope.freq_base"] == 150000.0
    assert kv["gpt-oss.rope.scaling.type"] == "yarn"
    assert kv["gpt-oss.rope.scaling.factor"] == 32.0
    assert kv["gpt-oss.rope.scaling.original_context_length"] == 4096
    assert kv["gpt-oss.context_length"] == cfg["max_position_embeddings"]
    assert f["general.file_type"].contents() == 0
    # exact GGUF value types llama.cpp's loader insists on
    assert f["gpt-oss.block_count"].types == [gguf.GGUFValueType.UINT32]
    assert f["gpt-oss.rope.freq_base"].types == [gguf.GGUFValueType.FLOAT32]
    assert f["tokenizer.ggml.token_type"].types == [gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.INT32]

    w = load_model(TINY)
    t = tensors(r)
    L, E = cfg["num_hidden_layers"], cfg["num_local_experts"]
    assert len(t) == 3 + 19 * L
    assert all(x.tensor_type == QT.F32 for x in t.values())
    np.testing.assert_array_equal(deq(t["token_embd.weight"]), f32(w["model.embed_tokens.weight"]))
    np.testing.assert_array_equal(deq(t["output.weight"]), f32(w["lm_head.weight"]))
    for i in range(L):
        p = f"model.layers.{i}."
        gu, gub = f32(w[p + "mlp.experts.gate_up_proj"]), f32(w[p + "mlp.experts.gate_up_proj_bias"])
        np.testing.assert_array_equal(deq(t[f"blk.{i}.ffn_gate_exps.weight"]), gu[:, :, 0::2].transpose(0, 2, 1))
        np.testing.assert_array_equal(deq(t[f"blk.{i}.ffn_up_exps.weight"]), gu[:, :, 1::2].transpose(0, 2, 1))
        np.testing.assert_array_equal(deq(t[f"blk.{i}.ffn_down_exps.weight"]),
                                      f32(w[p + "mlp.experts.down_proj"]).transpose(0, 2, 1))
        np.testing.assert_array_equal(deq(t[f"blk.{i}.ffn_gate_exps.bias"]), gub[:, 0::2])
        np.testing.assert_array_equal(deq(t[f"blk.{i}.ffn_up_exps.bias"]), gub[:, 1::2])
        for src, dst in (("self_attn.sinks", "attn_sinks.weight"), ("mlp.router.weight", "ffn_gate_inp.weight"),
                         ("self_attn.q_proj.weight", "attn_q.weight"), ("self_attn.o_proj.bias", "attn_output.bias"),
                         ("post_attention_layernorm.weight", "post_attention_norm.weight")):
            np.testing.assert_array_equal(deq(t[f"blk.{i}.{dst}"]), f32(w[p + src]))
    assert t["blk.0.ffn_gate_exps.weight"].shape.tolist() == [cfg["hidden_size"], cfg["intermediate_size"], E]


@needs_tiny
def test_default_types_and_tokenizer(tmp_path):
    """Default: BF16 weights (bits copied), F32 norms/biases/router/sinks, MXFP4 experts, file_type 38."""
    r = convert(TINY, tmp_path / "a.gguf")
    t = tensors(r)
    w = load_model(TINY)
    types = {}
    for n, x in t.items():
        types.setdefault(x.tensor_type.name, []).append(n)
    assert sorted(n for n in types["MXFP4"]) == sorted(f"blk.{i}.ffn_{p}_exps.weight" for i in range(2)
                                                       for p in ("gate", "up", "down"))
    assert set(types["BF16"]) == {"token_embd.weight", "output.weight"} | {
        f"blk.{i}.attn_{p}.weight" for i in range(2) for p in ("q", "k", "v", "output")}
    assert r.fields["general.file_type"].contents() == 38
    np.testing.assert_array_equal(t["token_embd.weight"].data.view(np.uint16).reshape(-1),
                                  w["model.embed_tokens.weight"].view(np.uint16).reshape(-1))
    # tokenizer: every embedding row has a token; specials CONTROL; padding rows UNUSED
    tj = json.loads((TINY / "tokenizer.json").read_text())
    tc = json.loads((TINY / "tokenizer_config.json").read_text())
    toks = r.fields["tokenizer.ggml.tokens"].contents()
    tt = r.fields["tokenizer.ggml.token_type"].contents()
    rows = w["model.embed_tokens.weight"].shape[0]
    assert len(toks) == len(tt) == rows
    for s, i in tj["model"]["vocab"].items():
        assert toks[i] == s and tt[i] == 1
    for a in tj["added_tokens"]:
        assert toks[a["id"]] == a["content"] and tt[a["id"]] == (3 if a["special"] else 4)
    named = set(tj["model"]["vocab"].values()) | {a["id"] for a in tj["added_tokens"]}
    for i in set(range(rows)) - named:
        assert toks[i] == f"[PAD{i}]" and tt[i] == 5
    merges = r.fields["tokenizer.ggml.merges"].contents()
    assert merges == [m if isinstance(m, str) else " ".join(m) for m in tj["model"]["merges"]]
    ids = {a["content"]: a["id"] for a in tj["added_tokens"]}
    assert r.fields["tokenizer.ggml.bos_token_id"].contents() == ids[tc["bos_token"]]
    assert r.fields["tokenizer.ggml.eos_token_id"].contents() == ids[tc["eos_token"]]
    assert r.fields["tokenizer.ggml.padding_token_id"].contents() == ids[tc["pad_token"]]
    assert r.fields["tokenizer.ggml.pre"].contents() == "gpt-4o"
    assert r.fields["tokenizer.ggml.model"].contents() == "gpt2"
    assert r.fields["tokenizer.ggml.add_bos_token"].contents() is False
    assert r.fields["tokenizer.chat_template"].contents() == tc["chat_template"]
    # experts from BF16: the OpenAI rule, then ggml's nibble order
    gu = f32(w["model.layers.1.mlp.experts.gate_up_proj"])
    for name, ref in (("gate", gu[:, :, 0::2]), ("up", gu[:, :, 1::2])):
        blocks, scales = oai_quant(ref.transpose(0, 2, 1))
        np.testing.assert_array_equal(deq(t[f"blk.1.ffn_{name}_exps.weight"]), oai_dequant(blocks, scales))


@needs_tiny
def test_mxfp4_ggml_rule_and_q8_0_bit_exact_with_gguf_py(tmp_path):
    r = convert(TINY, tmp_path / "a.gguf", "--outtype", "q8_0", "--mxfp4-round", "ggml")
    t = tensors(r)
    w = load_model(TINY)
    for src, dst in (("model.embed_tokens.weight", "token_embd.weight"), ("lm_head.weight", "output.weight"),
                     ("model.layers.0.self_attn.q_proj.weight", "blk.0.attn_q.weight")):
        assert t[dst].tensor_type == QT.Q8_0
        np.testing.assert_array_equal(t[dst].data.reshape(-1), quantize(f32(w[src]), QT.Q8_0).reshape(-1))
    gu = f32(w["model.layers.0.mlp.experts.gate_up_proj"])
    up = np.ascontiguousarray(gu[:, :, 1::2].transpose(0, 2, 1))
    np.testing.assert_array_equal(t["blk.0.ffn_up_exps.weight"].data.reshape(-1), quantize(up, QT.MXFP4).reshape(-1))
    dn = np.ascontiguousarray(f32(w["model.layers.0.mlp.experts.down_proj"]).transpose(0, 2, 1))
    np.testing.assert_array_equal(t["blk.0.ffn_down_exps.weight"].data.reshape(-1), quantize(dn, QT.MXFP4).reshape(-1))


@needs_tiny
def test_mxfp4_input_copied_and_original_flavor_identical(tmp_path):
    src, hf = make_mxfp4(tmp_path)
    a = tmp_path / "a.gguf"
    r = convert(src, a)
    t = tensors(r)
    for i in range(2):
        p = f"model.layers.{i}.mlp.experts."
        ref = oai_dequant(hf[p + "gate_up_proj_blocks"], hf[p + "gate_up_proj_scales"])
        np.testing.assert_array_equal(deq(t[f"blk.{i}.ffn_gate_exps.weight"]), ref[:, 0::2])
        np.testing.assert_array_equal(deq(t[f"blk.{i}.ffn_up_exps.weight"]), ref[:, 1::2])
        ref = oai_dequant(hf[p + "down_proj_blocks"], hf[p + "down_proj_scales"])
        np.testing.assert_array_equal(deq(t[f"blk.{i}.ffn_down_exps.weight"]), ref)
        # the scale bytes are copied, not recomputed
        raw = t[f"blk.{i}.ffn_down_exps.weight"].data.reshape(-1, 17)
        np.testing.assert_array_equal(raw[:, 0], hf[p + "down_proj_scales"].reshape(-1))
    orig = make_original(tmp_path, hf)
    b = tmp_path / "b.gguf"
    convert(orig, b)
    assert a.read_bytes() == b.read_bytes()


@needs_tiny
@pytest.mark.parametrize("form", ["s", "weights"])
def test_per_expert_names_give_the_same_gguf(tmp_path, form):
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    convert(TINY, a)
    convert(make_per_expert(tmp_path, form), b)
    assert a.read_bytes() == b.read_bytes()


MXDIR = FIXTURES / "mxfp4"
BNBDIR = FIXTURES / "bnb"


@pytest.mark.skipif(not (MXDIR / "tiny-gpt-oss-mxfp4").exists(), reason="mxfp4 fixtures missing")
def test_transformers_mxfp4_and_original_fixtures(tmp_path):
    """quant-mxfp4's fixtures (HF MXFP4 flavor and original/ flavor of the same weights): the two
    GGUFs are byte-identical, and gguf-py's dequantization of our experts equals transformers'
    dequantization (tiny-gpt-oss-mxfp4-dequant.safetensors), gate/up split even/odd."""
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    r = convert(MXDIR / "tiny-gpt-oss-mxfp4", a)
    convert(MXDIR / "tiny-gpt-oss-original", b, "--tokenizer", MXDIR / "tiny-gpt-oss-mxfp4")
    assert a.read_bytes() == b.read_bytes()
    t = tensors(r)
    ref = st_read(MXDIR / "tiny-gpt-oss-mxfp4-dequant.safetensors")
    n = 0
    for i in range(2):
        p = f"model.layers.{i}.mlp.experts."
        gu, dn = f32(ref[p + "gate_up_proj"]), f32(ref[p + "down_proj"])	# HF form [E, IN, OUT]
        assert t[f"blk.{i}.ffn_gate_exps.weight"].tensor_type == QT.MXFP4
        np.testing.assert_array_equal(deq(t[f"blk.{i}.ffn_gate_exps.weight"]), gu[:, :, 0::2].transpose(0, 2, 1))
        np.testing.assert_array_equal(deq(t[f"blk.{i}.ffn_up_exps.weight"]), gu[:, :, 1::2].transpose(0, 2, 1))
        np.testing.assert_array_equal(deq(t[f"blk.{i}.ffn_down_exps.weight"]), dn.transpose(0, 2, 1))
        n += 3
    assert n == 6


@pytest.mark.skipif(not (BNBDIR / "tiny-gpt-oss-unsloth-bnb4").exists(), reason="bnb fixtures missing")
def test_unsloth_per_expert_nf4(tmp_path):
    """Unsloth's per-expert bitsandbytes NF4 layout (fixture from bitsandbytes): dequantized on the
    fly, its GGUF is byte-identical to the GGUF of bitsandbytes' own dequantization
    (tiny-gpt-oss-unsloth-ref.safetensors) in the standard HF BF16 layout."""
    src = BNBDIR / "tiny-gpt-oss-unsloth-bnb4"
    ref = tmp_path / "ref"
    ref.mkdir()
    cfg = json.loads((src / "config.json").read_text())
    del cfg["quantization_config"]
    (ref / "config.json").write_text(json.dumps(cfg))
    shutil.copy(BNBDIR / "tiny-gpt-oss-unsloth-ref.safetensors", ref / "model.safetensors")
    copy_aux(src, ref)
    for opts in ((), ("--outtype", "f32", "--experts", "bf16")):
        a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
        convert(src, a, "-f", *opts)
        convert(ref, b, "-f", *opts)
        assert a.read_bytes() == b.read_bytes(), opts
    # transformers' own bnb layout (attention Linear layers in NF4, experts BF16) converts too
    r = convert(BNBDIR / "tiny-gpt-oss-bnb-nf4", tmp_path / "c.gguf")
    assert len(r.tensors) == 3 + 19 * 2


@needs_tiny
def test_dry_run_prints_the_mapping(tmp_path):
    r = run("to-gguf", "--dry-run", TINY)
    assert r.code == 0, r
    lines = r.out.splitlines()
    assert len(lines) == 3 + 19 * 2
    assert "model.layers.0.mlp.experts.gate_up_proj (transposed, even columns) -> blk.0.ffn_gate_exps.weight mxfp4 [4, 64, 64]" in lines
    assert "model.embed_tokens.weight -> token_embd.weight bf16 [384, 64]" in lines
    assert not list(tmp_path.iterdir())


@needs_tiny
def test_unmapped_tensor_is_named(tmp_path):
    d = tmp_path / "m"
    shutil.copytree(TINY, d)
    w = load_model(TINY)
    for p in d.glob("model*.safetensors*"):
        p.unlink()
    w["model.layers.0.mlp.experts.extra_proj"] = np.zeros(4, dtype=BF16)
    st_write(d / "model.safetensors", w)
    out = tmp_path / "o.gguf"
    r = run("to-gguf", d, out)
    from conftest import assert_one_line_error
    assert_one_line_error(r, 3, "model.layers.0.mlp.experts.extra_proj", "maps to no GGUF tensor")
    assert not out.exists() and not leftovers(tmp_path)


# ---- llama.cpp ------------------------------------------------------------------------

try:
    import llama_cpp
except ImportError as e:  # keep the reason visible in -ra
    llama_cpp = None
    LLAMA_SKIP = f"llama_cpp cannot be imported: {e}"
else:
    LLAMA_SKIP = ""

needs_llama = pytest.mark.skipif(llama_cpp is None, reason=LLAMA_SKIP or "x")


def llama_logits(path, ids):
    # F32 K/V cache: the default F16 cache alone moves these logits by ~1e-2
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=128, n_batch=128, logits_all=True,
                          n_threads=2, verbose=False, seed=0, type_k=0, type_v=0, flash_attn=False)
    llm.eval(list(map(int, ids)))
    out = np.array(llm.scores[:len(ids)], dtype=np.float32)
    llm.close()
    return out


def ref_logits(name="tiny-gpt-oss-ref/logits.safetensors"):
    ref = st_read(FIXTURES / name)
    return ref["input_ids"], ref["logits_f32"]


# transformers with rope truncate=true, as llama.cpp computes YaRN (scripts/make-fixtures-togguf.py)
TRUNC = "togguf/logits-truncate.safetensors"


@needs_llama
@needs_tiny
def test_llama_cpp_logits_match_transformers_f32(tmp_path):
    """F32 GGUF in llama.cpp (F32 KV cache) against transformers F32, eager, CPU.

    With llama.cpp's YaRN (correction range rounded, transformers' truncate=true): max abs
    difference < 1e-4 (measured 3.1e-6), top-1 equal at every position.  Against the shared
    reference (gpt-oss's truncate=false, which llama.cpp cannot express): < 0.03 (measured
    0.021, the rope alone), top-1 equal wherever the reference's top-2 margin exceeds that."""
    ids, trunc = ref_logits(TRUNC)
    ids0, ref = ref_logits()
    assert (ids == ids0).all()
    out = tmp_path / "a.gguf"
    convert(TINY, out, "--outtype", "f32", "--experts", "f32")
    got = llama_logits(out, ids)
    assert got.shape == ref.shape
    np.testing.assert_array_equal(got.argmax(-1), trunc.argmax(-1))
    assert np.abs(got - trunc).max() < 1e-4, np.abs(got - trunc).max()
    assert np.abs(got - ref).max() < 0.03, np.abs(got - ref).max()
    top2 = np.sort(ref, axis=-1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 0.03
    assert clear.sum() >= len(ids) - 4
    np.testing.assert_array_equal(got.argmax(-1)[clear], ref.argmax(-1)[clear])


@needs_llama
@needs_tiny
def test_llama_cpp_logits_bf16_and_mxfp4(tmp_path):
    """BF16 weights (llama.cpp rounds activations to BF16 for them): within 0.1, correlation
    > 0.9999; the default BF16 + MXFP4 experts (OpenAI rule): correlation > 0.95 (lossy by design)."""
    ids, trunc = ref_logits(TRUNC)
    out = tmp_path / "a.gguf"
    convert(TINY, out, "--experts", "bf16")
    got = llama_logits(out, ids)
    assert np.abs(got - trunc).max() < 0.1, np.abs(got - trunc).max()
    assert np.corrcoef(got.ravel(), trunc.ravel())[0, 1] > 0.9999
    convert(TINY, out, "-f")
    got = llama_logits(out, ids)
    assert np.corrcoef(got.ravel(), trunc.ravel())[0, 1] > 0.95


def vocab_model(tmp):
    """A gpt-oss with the real tokenizer and a vocab-sized (201088-row) embedding, tiny otherwise."""
    V, H, I, E, L = 201088, 32, 32, 2, 1
    d = tmp / "vocab"
    d.mkdir()
    cfg = json.loads((TINY / "config.json").read_text()) if (TINY / "config.json").exists() else {}
    cfg.update({"model_type": "gpt_oss", "architectures": ["GptOssForCausalLM"], "num_hidden_layers": L,
                "hidden_size": H, "intermediate_size": I, "num_attention_heads": 2, "num_key_value_heads": 1,
                "head_dim": 16, "num_local_experts": E, "num_experts_per_tok": 1, "vocab_size": V,
                "sliding_window": 128, "max_position_embeddings": 131072, "layer_types": ["sliding_attention"],
                "rope_parameters": {"rope_type": "yarn", "rope_theta": 150000.0, "factor": 32.0,
                                    "original_max_position_embeddings": 4096, "beta_fast": 32.0, "beta_slow": 1.0},
                "bos_token_id": 199998, "eos_token_id": 200002, "pad_token_id": 199999})
    (d / "config.json").write_text(json.dumps(cfg))
    z = lambda *s: np.zeros(s, dtype=BF16)  # noqa: E731
    w = {"model.embed_tokens.weight": z(V, H), "lm_head.weight": z(V, H), "model.norm.weight": z(H)}
    p = "model.layers.0."
    w.update({p + "input_layernorm.weight": z(H), p + "post_attention_layernorm.weight": z(H),
              p + "self_attn.q_proj.weight": z(32, H), p + "self_attn.q_proj.bias": z(32),
              p + "self_attn.k_proj.weight": z(16, H), p + "self_attn.k_proj.bias": z(16),
              p + "self_attn.v_proj.weight": z(16, H), p + "self_attn.v_proj.bias": z(16),
              p + "self_attn.o_proj.weight": z(H, 32), p + "self_attn.o_proj.bias": z(H),
              p + "self_attn.sinks": z(2), p + "mlp.router.weight": z(E, H), p + "mlp.router.bias": z(E),
              p + "mlp.experts.gate_up_proj": z(E, H, 2 * I), p + "mlp.experts.gate_up_proj_bias": z(E, 2 * I),
              p + "mlp.experts.down_proj": z(E, I, H), p + "mlp.experts.down_proj_bias": z(E, H)})
    st_write(d / "model.safetensors", w)
    for n in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(TOKENIZER_DIR / n, d / n)
    return d


@pytest.mark.skipif(not (TOKENIZER_DIR / "tokenizer.json").exists(), reason="no gpt-oss tokenizer in shared/data")
def test_real_tokenizer_kvs(tmp_path):
    out = tmp_path / "v.gguf"
    r = convert(vocab_model(tmp_path), out, "--experts", "bf16")
    toks = r.fields["tokenizer.ggml.tokens"].contents()
    assert len(toks) == 201088 and toks[13225] == "Hello" and toks[200006] == "<|start|>"
    assert toks[201087] == "[PAD201087]"
    assert len(r.fields["tokenizer.ggml.merges"].contents()) == 446189
    assert r.fields["tokenizer.ggml.bos_token_id"].contents() == 199998
    assert r.fields["tokenizer.ggml.eos_token_id"].contents() == 200002
    assert r.fields["tokenizer.ggml.padding_token_id"].contents() == 199999
    if llama_cpp is None:
        pytest.skip(LLAMA_SKIP)
    llm = llama_cpp.Llama(model_path=str(out), vocab_only=True, verbose=False)
    assert llm.tokenize(b"Hello World", add_bos=False, special=True) == [13225, 5922]
    s = b"<|startoftext|><|start|><|message|>Hello World<|end|><|endoftext|>"
    assert llm.tokenize(s, add_bos=False, special=True) == [199998, 200006, 200008, 13225, 5922, 200007, 199999]
    llm.close()



@needs_tiny
def test_q8_0_matches_ggml_org_mxfp4_recipe_and_ls_shows_all(tmp_path):
    """--outtype q8_0 with MXFP4 experts: ggml-org's gpt-oss-*-mxfp4.gguf recipe (Q8_0 token_embd,
    output and attention; MXFP4 experts; F32 the rest; file_type 38), every tensor of the
    19·L + 3 llama.cpp asks for, in llama-quantize's order; ckpt ls lists them and the KVs."""
    out = tmp_path / "a.gguf"
    r = convert(TINY, out, "--outtype", "q8_0")
    names = [t.name for t in r.tensors]
    types = {t.name: t.tensor_type for t in r.tensors}
    layer = ["attn_k.bias", "attn_k.weight", "attn_norm.weight", "attn_output.bias", "attn_output.weight",
             "attn_q.bias", "attn_q.weight", "attn_sinks.weight", "attn_v.bias", "attn_v.weight",
             "ffn_down_exps.bias", "ffn_down_exps.weight", "ffn_gate_exps.bias", "ffn_gate_exps.weight",
             "ffn_gate_inp.bias", "ffn_gate_inp.weight", "ffn_up_exps.bias", "ffn_up_exps.weight",
             "post_attention_norm.weight"]
    assert names == ["output.weight", "output_norm.weight", "token_embd.weight"] + [
        f"blk.{i}.{n}" for i in range(2) for n in layer]
    for n, ty in types.items():
        if n in ("token_embd.weight", "output.weight") or n.split(".", 2)[-1] in (
                "attn_q.weight", "attn_k.weight", "attn_v.weight", "attn_output.weight"):
            assert ty == QT.Q8_0, n
        elif "_exps.weight" in n:
            assert ty == QT.MXFP4, n
        else:
            assert ty == QT.F32, n
    assert r.fields["general.file_type"].contents() == 38
    ls = run("ls", out)
    assert ls.code == 0, ls
    assert [l.split("\t")[0] for l in ls.out.splitlines()] == names
    meta = run("ls", "--meta", out)
    assert meta.code == 0 and "gpt-oss.expert_feed_forward_length" in meta.out and "tokenizer.ggml.pre" in meta.out


@needs_tiny
def test_transformers_v4_rope_scaling_form_gives_the_same_gguf(tmp_path):
    """config.json in the transformers 4 form (top-level rope_theta + rope_scaling, as OpenAI
    ships it) and the 5 form (rope_parameters) give byte-identical GGUFs."""
    d = tmp_path / "v4"
    shutil.copytree(TINY, d)
    cfg = json.loads((d / "config.json").read_text())
    rope = cfg.pop("rope_parameters")
    cfg["rope_theta"] = rope.pop("rope_theta")
    cfg["rope_scaling"] = rope
    (d / "config.json").write_text(json.dumps(cfg))
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    convert(TINY, a)
    convert(d, b)
    assert a.read_bytes() == b.read_bytes()
