#!/usr/bin/env python3
"""Make the MXFP4 fixtures under tests/fixtures/mxfp4/ with the real libraries.

    FIXTURE_VENV=/path/to/venv sh -c '$FIXTURE_VENV/bin/python scripts/make-fixtures-mxfp4.py'

Run by hand, never by CI (CI has no torch).  Needs tests/fixtures/tiny-gpt-oss/.

Writes
  rules-in.safetensors        a HF BF16 down_proj [1, 32, R]: R crafted 32-blocks (every tie of
                              the tie table at many scales, all-zero and all -0 blocks, negative
                              tiny values, amax > 6*scale, mantissa > 1.5, BF16 subnormals and
                              near-max values, values on the grid, random rows)
  rules-in-ggml.safetensors   the same without the rows gguf-py cannot encode (amax < 2^-125,
                              where its uint8 cast wraps)
  rules-expected.safetensors  for each rule "<scale>-<round>": blocks, scales (OpenAI layout) and
                              dequant (transformers convert_moe_packed_tensors of those blocks)
        up-rne      triton downcast_to_mxfp_torch's scale (f32 amax/6, bits rounded up), element
                    codes by ml_dtypes float4_e2m1fn casts (RNE, saturating, sign kept), scale
                    byte by ml_dtypes float8_e8m0fnu (what transformers does today)
        up-half-up  the same scale; midpoints nudged away from zero before the ml_dtypes cast
                    (triton_kernels before PR #8110: ties away from zero)
        ocp-rne     OCP scale floor(log2 amax) - 2 (np.frexp), ml_dtypes cast with saturation
        ocp-ggml    gguf-py quants.quantize(MXFP4) bytes, reordered from ggml's split halves to
                    OpenAI's pairs (rules-in-ggml rows only)
  edges-in.safetensors        every code at every scale byte 0..254 (blocks/scales, one layer)
  edges-expected.safetensors  transformers' dequantization of it (BF16 subnormals, Inf)
  tiny-gpt-oss-mxfp4/         the tiny gpt-oss with its experts in OpenAI's HF MXFP4 flavor (up-rne),
                              quantization_config as OpenAI ships it
  tiny-gpt-oss-mxfp4-dequant.safetensors  transformers' BF16 experts of that folder: loaded with
                              Mxfp4Config(dequantize=True) and save_pretrained (checked equal to
                              convert_moe_packed_tensors)
  tiny-gpt-oss-original/original/  the same checkpoint in OpenAI's original flavor (block.N...,
                              fused attn.qkv, norm.scale, dtypes.json, original config.json)
  VERSIONS.txt
"""
import json
import pathlib
import shutil
import sys
import tempfile

import ml_dtypes
import numpy as np
import torch
from safetensors.numpy import load_file, save_file

import gguf
import safetensors
import transformers
from gguf import quants
from transformers.integrations.mxfp4 import convert_moe_packed_tensors

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures"
OUT = FIX / "mxfp4"
TINY = FIX / "tiny-gpt-oss"
rng = np.random.default_rng(20265)

BF16 = ml_dtypes.bfloat16
P_DOWN = "model.layers.0.mlp.experts.down_proj"


# ---- the quantizers ----

def scale_up(amax):
    """triton ROUND_UP: f32 amax / 6, exponent bits rounded up; byte via float8_e8m0fnu."""
    ds = (amax.astype(np.float32) / np.float32(6.0)).astype(np.float32)
    b = ((ds.view(np.uint32).astype(np.uint64) + 0x7FFFFF) & 0x7F800000).astype(np.uint32)
    dsr = b.view(np.float32)
    byte = np.where(dsr == 0, 0, dsr.astype(ml_dtypes.float8_e8m0fnu).view(np.uint8)).astype(np.uint8)
    assert np.array_equal(byte, (b >> 23).astype(np.uint8))
    return byte


def scale_ocp(amax):
    """OCP MX: floor(log2 amax) - 2 + 127, clamped at 0."""
    _, e = np.frexp(amax.astype(np.float64))          # amax = m * 2^e, m in [0.5, 1)
    byte = np.where(amax > 0, (e - 1) - 2 + 127, 0)
    return np.clip(byte, 0, 254).astype(np.uint8)


def inv_scale(byte):
    return np.ldexp(np.float64(1.0), 127 - byte.astype(np.int64)).astype(np.float32)


def codes_rne(y):
    return y.astype(ml_dtypes.float4_e2m1fn).view(np.uint8) & 0xF


MIDS = np.array([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0], np.float32)


def codes_half_up(y):
    a = np.abs(y)
    tie = np.isin(a, MIDS)
    nudged = np.where(tie, np.nextafter(a, np.float32(np.inf)) * np.where(np.signbit(y), -1, 1), y)
    return codes_rne(nudged.astype(np.float32))


def quant_rows(x, scale_rule, code_rule):
    """x [R, 32] f32 -> (pairs [R, 16] u8, scales [R] u8)."""
    amax = np.abs(x).max(axis=1)
    s = scale_rule(amax)
    q = np.where(amax == 0, np.float32(0), inv_scale(s))
    y = (x * q[:, None]).astype(np.float32)
    c = code_rule(y).astype(np.uint8)
    return (c[:, 0::2] | (c[:, 1::2] << 4)).astype(np.uint8), s


def quant_ggml(x):
    raw = quants.quantize(x.astype(np.float32), gguf.GGMLQuantizationType.MXFP4).reshape(len(x), 17)
    s, qs = raw[:, 0], raw[:, 1:]
    elem = np.concatenate([qs & 0xF, qs >> 4], axis=1)        # ggml: elem[k] | elem[k+16] << 4
    back = quants.dequantize(raw.reshape(-1), gguf.GGMLQuantizationType.MXFP4).reshape(len(x), 32)
    return (elem[:, 0::2] | (elem[:, 1::2] << 4)).astype(np.uint8), s.astype(np.uint8), back


def hf_dequant(blocks, scales):
    """transformers: blocks [E, OUT, G, 16], scales [E, OUT, G] -> BF16 [E, IN, OUT] (as uint16 bits)."""
    t = convert_moe_packed_tensors(torch.from_numpy(blocks), torch.from_numpy(scales))
    assert t.dtype == torch.bfloat16
    return t.contiguous().view(torch.int16).numpy().view(np.uint16)


def as_bf16_bits(x):
    return np.asarray(x, np.float32).astype(BF16).view(np.uint16)


def st_bf16(bits):
    """A uint16 array of BF16 bits as the BF16 array safetensors.numpy writes."""
    return bits.view(BF16)


# ---- the crafted rows ----

def crafted_rows():
    rows = []
    ties = np.array([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0], np.float32)
    for k in list(range(-30, 31, 3)) + [-120, -100, 100, 120]:
        f = np.float32(2.0) ** k
        for sign in (1, -1):
            r = np.zeros(32, np.float32)
            r[0] = 6.0
            r[1:8] = sign * ties
            r[8:15] = -sign * ties
            r[15] = -0.0
            r[16] = -0.1
            r[17] = -0.2
            r[18] = 0.1
            r[19:26] = sign * (ties + 0.0078125)        # just above each midpoint
            r[26:32] = [-6.0, 4.0, -4.0, 3.0, -1.5, 0.5]
            rows.append(r * f)
    rows.append(np.zeros(32, np.float32))
    rows.append(-np.zeros(32, np.float32))
    rows.append(np.array([0.0, -0.0] * 16, np.float32))
    for amax in (7.5, 7.0, 6.5, 6.25, 4.5, 3.25, 3.0, 1.5, 1.0):      # amax > 6*scale under OCP, mantissa > 1.5
        for k in (-5, 0, 7):
            r = rng.uniform(-amax, amax, 32).astype(np.float32)
            r[rng.integers(32)] = amax * (1 if k % 2 else -1)
            rows.append(r * np.float32(2.0) ** k)
    for amax_exp in (-133, -130, -127, -126, -125, 120, 126, 127):   # BF16 subnormals .. near max
        r = rng.choice([-1, 1], 32) * np.float32(2.0) ** amax_exp * rng.uniform(0.5, 1.99, 32)
        rows.append(r.astype(np.float32))
    neg_tiny = -np.abs(rng.normal(0, 0.02, 32)).astype(np.float32)
    neg_tiny[0] = 6.0
    rows.append(neg_tiny)
    grid = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6], np.float32)
    for _ in range(40):                                             # on the grid: no rounding at all
        r = rng.choice(grid, 32) * rng.choice([-1, 1], 32)
        rows.append((r * np.float32(2.0) ** rng.integers(-10, 10)).astype(np.float32))
    for _ in range(300):                                            # plain random rows
        rows.append((rng.normal(0, 1, 32) * np.float32(2.0) ** rng.integers(-20, 20)).astype(np.float32))
    x = np.stack(rows).astype(np.float32)
    return as_bf16_bits(x).view(BF16).astype(np.float32)            # the BF16 values, as f32


def to_hf(rows_bits):
    """[R, 32] BF16 rows -> HF down_proj [1, 32, R] (blocks along IN, OUT = row)."""
    return np.ascontiguousarray(rows_bits.T[None])


def make_rules():
    x = crafted_rows()
    bits = as_bf16_bits(x)
    amax = np.abs(x).max(axis=1)
    ok_ggml = (amax == 0) | (amax >= np.float32(2.0) ** -125)
    save_file({"model.layers.0.mlp.experts.down_proj": st_bf16(to_hf(bits))}, OUT / "rules-in.safetensors")
    save_file({"model.layers.0.mlp.experts.down_proj": st_bf16(to_hf(bits[ok_ggml]))},
              OUT / "rules-in-ggml.safetensors")
    exp = {}
    rules = {
        "up-rne": lambda v: quant_rows(v, scale_up, codes_rne),
        "up-half-up": lambda v: quant_rows(v, scale_up, codes_half_up),
        "ocp-rne": lambda v: quant_rows(v, scale_ocp, codes_rne),
    }
    for name, fn in rules.items():
        b, s = fn(x)
        exp[name] = (b, s)
    b, s, back = quant_ggml(x[ok_ggml])
    exp["ocp-ggml"] = (b, s)
    out = {}
    for name, (b, s) in exp.items():
        blocks = b[None, :, None, :]                 # [E=1, OUT=R, G=1, 16]
        scales = s[None, :, None]
        deq = hf_dequant(blocks, scales)             # [1, 32, R]
        out[f"{name}.blocks"] = blocks
        out[f"{name}.scales"] = scales
        out[f"{name}.dequant"] = st_bf16(deq)
        if name == "ocp-ggml":                       # gguf-py's own dequantization agrees
            assert np.array_equal(deq[0].T.view(BF16).astype(np.float32), back.astype(np.float32)), name
    # the tie table of mxfp4.md §4.5 holds in these references (row 0: scale 1)
    print("rules:", {k: int(v[0].shape[0]) for k, v in exp.items()}, "rows")
    save_file(out, OUT / "rules-expected.safetensors")


def make_edges():
    """Every code at every scale byte but 255 (subnormal results at 0-1, Inf at 253-254)."""
    codes = np.arange(32, dtype=np.uint8) % 16
    blk = (codes[0::2] | (codes[1::2] << 4)).astype(np.uint8)          # codes 0..15, twice
    blocks = np.tile(blk, (255, 1)).reshape(1, 255, 1, 16)
    scales = np.arange(255, dtype=np.uint8).reshape(1, 255, 1)
    deq = hf_dequant(blocks, scales)
    save_file({P_DOWN + "_blocks": blocks, P_DOWN + "_scales": scales}, OUT / "edges-in.safetensors")
    save_file({P_DOWN: st_bf16(deq)}, OUT / "edges-expected.safetensors")
    print("edges: inf", int(np.isinf(deq.view(BF16).astype(np.float32)).sum()),
          "subnormal", int(((deq & 0x7F80) == 0).sum() - ((deq & 0x7FFF) == 0).sum()))


# ---- the tiny gpt-oss in both MXFP4 flavors ----

def quant_expert_tensor(w_bits):
    """HF BF16 [E, IN, OUT] -> blocks [E, OUT, IN/32, 16], scales [E, OUT, IN/32] (up-rne)."""
    e, n_in, n_out = w_bits.shape
    x = w_bits.view(BF16).astype(np.float32).transpose(0, 2, 1).reshape(-1, 32)
    b, s = quant_rows(x, scale_up, codes_rne)
    return b.reshape(e, n_out, n_in // 32, 16), s.reshape(e, n_out, n_in // 32)


def load_tiny():
    t = {}
    for f in sorted(TINY.glob("*.safetensors")):
        t.update(load_file(f))
    return t


MX_CONFIG = {"modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router",
                                        "model.embed_tokens", "lm_head"], "quant_method": "mxfp4"}


def make_tiny_mxfp4():
    src = load_tiny()
    cfg = json.loads((TINY / "config.json").read_text())
    out = {}
    for name, v in src.items():
        if name.endswith(("experts.gate_up_proj", "experts.down_proj")):
            b, s = quant_expert_tensor(v.view(np.uint16))
            out[name + "_blocks"] = b
            out[name + "_scales"] = s
        else:
            out[name] = v
    d = OUT / "tiny-gpt-oss-mxfp4"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir()
    save_file(out, d / "model.safetensors", metadata={"format": "pt"})
    cfg["quantization_config"] = MX_CONFIG
    (d / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    for f in ("generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(TINY / f, d / f)
    # transformers' dequantization, two ways that must agree
    ref = {}
    for name, v in out.items():
        if name.endswith("_blocks"):
            base = name[: -len("_blocks")]
            ref[base] = hf_dequant(v, out[base + "_scales"])
    loaded = transformers.GptOssForCausalLM.from_pretrained(
        d, quantization_config=transformers.Mxfp4Config(dequantize=True), dtype=torch.bfloat16)
    with tempfile.TemporaryDirectory() as tmp:
        loaded.save_pretrained(tmp)
        saved = {}
        for f in sorted(pathlib.Path(tmp).glob("*.safetensors")):
            saved.update(load_file(f))
        saved_cfg = json.loads((pathlib.Path(tmp) / "config.json").read_text())
    assert "quantization_config" not in saved_cfg, "transformers kept quantization_config"
    for base, bits in ref.items():
        assert np.array_equal(saved[base].view(np.uint16), bits), base
    # every non-expert tensor comes back unchanged
    for name, v in src.items():
        if name in saved and name not in ref:
            assert np.array_equal(saved[name].view(np.uint8), v.view(np.uint8)), name
    save_file({k: st_bf16(v) for k, v in ref.items()}, OUT / "tiny-gpt-oss-mxfp4-dequant.safetensors")
    print("tiny mxfp4:", len(out), "tensors; transformers save_pretrained == convert_moe_packed_tensors")
    return out, cfg


ORIG = [("model.embed_tokens.weight", "embedding.weight"), ("model.norm.weight", "norm.scale"),
        ("lm_head.weight", "unembedding.weight")]
LAYER = [("input_layernorm.weight", "attn.norm.scale"), ("post_attention_layernorm.weight", "mlp.norm.scale"),
         ("self_attn.sinks", "attn.sinks"), ("self_attn.o_proj.weight", "attn.out.weight"),
         ("self_attn.o_proj.bias", "attn.out.bias"), ("mlp.router.weight", "mlp.gate.weight"),
         ("mlp.router.bias", "mlp.gate.bias"),
         ("mlp.experts.gate_up_proj_blocks", "mlp.mlp1_weight.blocks"),
         ("mlp.experts.gate_up_proj_scales", "mlp.mlp1_weight.scales"),
         ("mlp.experts.gate_up_proj_bias", "mlp.mlp1_bias"),
         ("mlp.experts.down_proj_blocks", "mlp.mlp2_weight.blocks"),
         ("mlp.experts.down_proj_scales", "mlp.mlp2_weight.scales"),
         ("mlp.experts.down_proj_bias", "mlp.mlp2_bias")]


def make_original(mx, cfg):
    out = {}
    for hf, o in ORIG:
        out[o] = mx[hf]
    for n in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{n}."
        for hf, o in LAYER:
            out[f"block.{n}.{o}"] = mx[p + hf]
        for part in ("weight", "bias"):
            out[f"block.{n}.attn.qkv.{part}"] = np.concatenate(
                [mx[p + f"self_attn.{x}_proj.{part}"] for x in "qkv"], axis=0)
    d = OUT / "tiny-gpt-oss-original"
    shutil.rmtree(d, ignore_errors=True)
    (d / "original").mkdir(parents=True)
    save_file(out, d / "original" / "model.safetensors")
    dtypes = {k: ("FP4" if k.endswith(".blocks") else "UE8" if k.endswith(".scales") else "BF16")
              for k in sorted(out)}
    (d / "original" / "dtypes.json").write_text(json.dumps(dtypes))
    rp = cfg["rope_parameters"]
    ocfg = {"num_hidden_layers": cfg["num_hidden_layers"], "num_experts": cfg["num_local_experts"],
            "experts_per_token": cfg["num_experts_per_tok"], "vocab_size": cfg["vocab_size"],
            "hidden_size": cfg["hidden_size"], "intermediate_size": cfg["intermediate_size"],
            "swiglu_limit": cfg["swiglu_limit"], "head_dim": cfg["head_dim"],
            "num_attention_heads": cfg["num_attention_heads"],
            "num_key_value_heads": cfg["num_key_value_heads"], "sliding_window": cfg["sliding_window"],
            "initial_context_length": rp["original_max_position_embeddings"],
            "rope_theta": rp["rope_theta"], "rope_scaling_factor": rp["factor"],
            "rope_ntk_alpha": rp["beta_slow"], "rope_ntk_beta": rp["beta_fast"]}
    (d / "original" / "config.json").write_text(json.dumps(ocfg, indent=2) + "\n")
    print("original flavor:", len(out), "tensors")


# ---- hostile inputs: tests/bad/mx-* and tests/bad/mxfp4.tsv ----

def make_bad():
    bad = ROOT / "tests" / "bad"
    p = "model.layers.0.mlp.experts."
    u8 = lambda *shape: rng.integers(0, 256, shape).astype(np.uint8)
    sc = lambda *shape: rng.integers(118, 130, shape).astype(np.uint8)
    bf = lambda *shape: rng.normal(0, 1, shape).astype(np.float32).astype(BF16)
    files = {
        "mx-shape-mismatch": {p + "down_proj_blocks": u8(1, 4, 2, 16), p + "down_proj_scales": sc(1, 4, 3)},
        "mx-blocks-not-16": {p + "down_proj_blocks": u8(1, 4, 2, 8), p + "down_proj_scales": sc(1, 4, 2)},
        "mx-missing-scales": {p + "down_proj_blocks": u8(1, 4, 2, 16)},
        "mx-missing-blocks": {"block.0.mlp.mlp2_weight.scales": sc(1, 4, 2)},
        "mx-blocks-not-u8": {p + "down_proj_blocks": bf(1, 4, 2, 16), p + "down_proj_scales": sc(1, 4, 2)},
        "mx-in-not-32": {p + "down_proj": bf(1, 48, 32)},
        "mx-fused-2d": {p + "gate_up_proj": bf(64, 8)},
        "mx-expert-missing": {p + "down_projs.0.weight": bf(8, 32), p + "down_projs.2.weight": bf(8, 32)},
        "mx-expert-shape": {p + "down_projs.0.weight": bf(8, 32), p + "down_projs.1.weight": bf(8, 64)},
    }
    s255 = sc(2, 4, 2)
    s255[1, 2, 1] = 255
    files["mx-scale-255"] = {p + "gate_up_proj_blocks": u8(2, 4, 2, 16), p + "gate_up_proj_scales": s255}
    for kind, v in (("nan", np.nan), ("inf", -np.inf)):
        w = rng.normal(0, 1, (2, 64, 8)).astype(np.float32)
        w[1, 40, 3] = v                      # expert 1, input 40 (block 1), output row 3
        files["mx-" + kind] = {p + "gate_up_proj": w.astype(BF16)}
    for name, t in files.items():
        save_file(t, bad / f"{name}.safetensors")
    rows = [
        ("dequant-mxfp4 {BAD}/mx-shape-mismatch.safetensors {OUT}", 3, "does not match scales shape"),
        ("dequant-mxfp4 {BAD}/mx-blocks-not-16.safetensors {OUT}", 3, "does not match scales shape"),
        ("dequant-mxfp4 {BAD}/mx-missing-scales.safetensors {OUT}", 3, "without its scales partner"),
        ("dequant-mxfp4 {BAD}/mx-missing-blocks.safetensors {OUT}", 3, "without its blocks partner"),
        ("dequant-mxfp4 {BAD}/mx-blocks-not-u8.safetensors {OUT}", 3, "must be U8"),
        ("dequant-mxfp4 {BAD}/mx-scale-255.safetensors {OUT}", 3, "expert 1, row 2, block 1: scale byte 255"),
        ("dequant-mxfp4 {BAD}/mx-scale-255.safetensors {OUT}.safetensors", 3, "gate_up_proj_scales"),
        ("quant-mxfp4 {BAD}/mx-in-not-32.safetensors {OUT}", 3, "input dimension 48 is not a multiple of 32"),
        ("quant-mxfp4 {BAD}/mx-nan.safetensors {OUT}", 3, "expert 1, row 3, block 1: NaN or Inf"),
        ("quant-mxfp4 -j 3 {BAD}/mx-inf.safetensors {OUT}.safetensors", 3, "expert 1, row 3, block 1: NaN or Inf"),
        ("quant-mxfp4 {BAD}/mx-fused-2d.safetensors {OUT}", 3, "want a float [E, IN, OUT]"),
        ("quant-mxfp4 {BAD}/mx-expert-missing.safetensors {OUT}", 3, "expert 1 of 3 is missing"),
        ("quant-mxfp4 {BAD}/mx-expert-shape.safetensors {OUT}", 3, "dtype or shape differs"),
        ("quant-mxfp4 --keep-from {BAD}/mx-shape-mismatch.safetensors {BAD}/mx-in-not-32.safetensors {OUT}", 3,
         "not a multiple of 32"),
        ("quant-mxfp4 --keep-from {BAD}/mx-missing-scales.safetensors {BAD}/mx-nan.safetensors {OUT}", 3,
         "no MXFP4 blocks/scales for layer 0 gate_up"),
        ("quant-mxfp4 --round nearest {BAD}/mx-nan.safetensors {OUT}", 2, "--round"),
        ("dequant-mxfp4 --layout gguf {BAD}/mx-scale-255.safetensors {OUT}", 2, "--layout"),
        ("dequant-mxfp4 {BAD}/st-truncated-data.safetensors {OUT}", 3, "st-truncated-data"),
    ]
    with open(bad / "mxfp4.tsv", "w") as f:
        f.write("# made by scripts/make-fixtures-mxfp4.py: argv\texit code\tneedle\n")
        for argv, code, needle in rows:
            f.write(f"{argv}\t{code}\t{needle}\n")
    print("bad inputs:", len(files), "files,", len(rows), "cases")


def main():
    if not (TINY / "config.json").exists():
        sys.exit("tests/fixtures/tiny-gpt-oss is missing (scripts/make-fixtures-tiny.py)")
    OUT.mkdir(parents=True, exist_ok=True)
    make_rules()
    make_edges()
    mx, cfg = make_tiny_mxfp4()
    make_original(mx, cfg)
    make_bad()
    with open(OUT / "VERSIONS.txt", "w") as f:
        f.write("# scripts/make-fixtures-mxfp4.py\n")
        for m in (torch, transformers, safetensors, np, ml_dtypes, gguf):
            f.write(f"{m.__name__} {getattr(m, '__version__', '?')}\n")
        f.write("triton_kernels: not installed (hub kernel); its ROUND_UP/RTNE rule is emulated with "
                "numpy f32 bit ops + ml_dtypes casts\n")


if __name__ == "__main__":
    main()
