"""ckpt merge-lora against PEFT merge_and_unload (scripts/make-fixtures-lora.py).

The references are the tensors real PEFT 0.21.2 changed when it merged each
adapter into the tiny models, stored as BF16 bit patterns; every other tensor
must come out byte-identical to the base.  Merged tensors must match within
one BF16 ulp everywhere and bit for bit on at least 99.9% of the elements
(in practice every element: the delta is PyTorch's FMA chain).
"""
import json
import pathlib
import struct

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file

from conftest import FIXTURES, assert_one_line_error, leftovers, run

LORA = FIXTURES / "lora"
BASES = {"oss": FIXTURES / "tiny-gpt-oss", "llama": FIXTURES / "tiny-llama"}

# case -> extra arguments
CASES = {
    "llama-attn": [],
    "llama-rslora-patterns": [],
    "llama-dora": [],
    "llama-mts": [],
    "llama-embed": [],
    "llama-tokens": [],
    "gpt2-fifo": [],
    "oss-attn": [],
    "oss-attn-bias": [],
    "oss-experts": [],
    "oss-experts-gateup": [],
    "oss-experts-down": ["--moe-layout", "standard"],
    "oss-mxfp4-experts": [],
    "oss-bnb-attn": [],
    "oss-bnb-experts": [],
}
MXFP4_BASE = LORA / "tiny-gpt-oss-mxfp4"
BNB_BASE = FIXTURES / "bnb" / "tiny-gpt-oss-bnb-nf4"
# case -> adapter folder, when the case has no adapter of its own
ADAPTER = {"oss-mxfp4-experts": "oss-experts", "oss-bnb-attn": "oss-attn", "oss-bnb-experts": "oss-experts"}


def raw_tensors(folder):
    """name -> (dtype, shape, bytes) straight from the safetensors headers."""
    folder = pathlib.Path(folder)
    idx = folder / "model.safetensors.index.json"
    files = sorted(set(json.loads(idx.read_text())["weight_map"].values())) if idx.exists() \
        else ["model.safetensors"]
    out = {}
    for fn in files:
        b = (folder / fn).read_bytes()
        n = struct.unpack("<Q", b[:8])[0]
        h = json.loads(b[8:8 + n])
        h.pop("__metadata__", None)
        for k, v in h.items():
            s, e = v["data_offsets"]
            out[k] = (v["dtype"], v["shape"], b[8 + n + s:8 + n + e])
    return out


def bf16_ulps(a, b):
    """Distance in BF16 ulps between two arrays of bit patterns (uint16)."""
    def ordered(x):
        x = x.astype(np.int32)
        return np.where(x & 0x8000, 0x8000 - (x & 0x7FFF), x + 0x8000)
    return np.abs(ordered(a) - ordered(b))


def base_of(case):
    if "mxfp4" in case:
        return MXFP4_BASE
    if case.startswith("gpt2"):
        return LORA / "tiny-gpt2"	# Conv1D weights stored [in, out]: fan_in_fan_out
    return BNB_BASE if "bnb" in case else BASES[case.split("-")[0]]


@pytest.mark.parametrize("case", list(CASES))
def test_equals_peft(case, tmp_path):
    out = tmp_path / "merged"
    r = run("merge-lora", base_of(case), LORA / ADAPTER.get(case, case), out, *CASES[case])
    assert r.code == 0, r
    got = raw_tensors(out)
    base = raw_tensors(base_of(case))
    ref = load_file(str(LORA / "ref" / f"{case}.safetensors"))
    ref.pop("__logits__")
    # MXFP4 pairs come out as one BF16 tensor each (the HF layout); the rest keeps its names.
    pairs = {k[:-len("_blocks")] for k in base if k.endswith("_blocks")}
    packed = {p + sfx for p in pairs for sfx in ("_blocks", "_scales")}
    # bitsandbytes weights come out dequantized under their own name; the aux tensors go.
    bnb = {k for k in base if k + ".quant_state.bitsandbytes__nf4" in base}
    packed |= {k for k in base for w in bnb if k.startswith(w + ".")}
    pairs |= bnb
    assert set(got) == (set(base) - packed) | pairs
    total = exact = 0
    for name, (dt, shape, data) in got.items():
        if name in pairs:
            assert dt == "BF16" and name in ref, name
        else:
            assert (dt, shape) == base[name][:2], name
        if name not in ref:
            assert data == base[name][2], f"{name} changed but PEFT left it alone"
            continue
        g = np.frombuffer(data, dtype=np.uint16).reshape(shape)
        want = ref[name].reshape(shape)
        ulps = bf16_ulps(g, want)
        assert ulps.max() <= 1, (name, int(ulps.max()))
        total += g.size
        exact += int((ulps == 0).sum())
    assert total > 0
    assert exact / total >= 0.999, (case, exact, total)
    print(f"{case}: {exact}/{total} elements bit-exact")
    rep = json.loads((out / "merge-report.json").read_text())
    assert rep["adapter_tensors"] == rep["adapter_tensors_consumed"]
    assert {t["name"] for t in rep["tensors"]} >= set(ref) - pairs
    # config and tokenizer come along byte for byte (an MXFP4 base loses quantization_config)
    for f in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        if (base_of(case) / f).exists():
            assert (out / f).read_bytes() == (base_of(case) / f).read_bytes()
    cfg, bcfg = json.loads((out / "config.json").read_text()), json.loads((base_of(case) / "config.json").read_text())
    if pairs:
        assert bcfg.pop("quantization_config") and "quantization_config" not in cfg
    assert cfg == bcfg


def test_square_experts_need_a_decision(tmp_path):
    """down_proj alone is square: PEFT >= 0.19 leaves its orientation to the
    transformers version, which the adapter does not record."""
    out = tmp_path / "o"
    r = run("merge-lora", BASES["oss"], LORA / "oss-experts-down", out)
    assert_one_line_error(r, 2, "--moe-layout")
    assert not out.exists() and not leftovers(tmp_path)


def test_swapped_is_not_standard(tmp_path):
    """The wrong orientation gives another model (the test can fail)."""
    out = tmp_path / "o"
    r = run("merge-lora", BASES["oss"], LORA / "oss-experts-down", out, "--moe-layout", "swapped")
    assert r.code == 0, r
    ref = load_file(str(LORA / "ref" / "oss-experts-down.safetensors"))
    got = raw_tensors(out)
    name = "model.layers.0.mlp.experts.down_proj"
    g = np.frombuffer(got[name][2], dtype=np.uint16)
    assert bf16_ulps(g, ref[name].reshape(-1)).max() > 1


def test_scale_zero_is_the_base(tmp_path):
    out = tmp_path / "o"
    r = run("merge-lora", BASES["llama"], LORA / "llama-attn", out, "--scale", "0")
    assert r.code == 0, r
    got, base = raw_tensors(out), raw_tensors(BASES["llama"])
    assert all(got[k][2] == base[k][2] for k in base)


def test_dtype_f32_and_shards(tmp_path):
    out = tmp_path / "o"
    r = run("merge-lora", BASES["oss"], LORA / "oss-experts", out, "--dtype", "f32",
            "--shard-size", "200KB", "-j", "3")
    assert r.code == 0, r
    assert (out / "model.safetensors.index.json").exists()
    got = raw_tensors(out)
    ref = load_file(str(LORA / "ref" / "oss-experts.safetensors"))
    for name, (dt, shape, data) in got.items():
        assert dt == "F32"
        if name in ref:
            f = np.frombuffer(data, dtype=np.float32).reshape(shape)
            want = (ref[name].astype(np.uint32) << 16).view(np.float32).reshape(shape)
            # F32 output keeps the bits PEFT rounds away: within one BF16 ulp of it.
            assert np.allclose(f, want, rtol=2 ** -7, atol=1e-6), name


def test_existing_output_needs_force(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    r = run("merge-lora", BASES["llama"], LORA / "llama-attn", out)
    assert r.code != 0
    r = run("merge-lora", BASES["llama"], LORA / "llama-attn", out, "--force")
    assert r.code == 0, r


def test_help():
    r = run("merge-lora", "-h")
    assert r.code == 0
    for opt in ("--scale", "--dtype", "--moe-layout", "--allow-tokenizer-mismatch", "--shard-size", "--jobs"):
        assert opt in r.out


def test_tokenizer_mismatch_is_refused(tmp_path):
    """The adapter's tokenizer gives one token another string: exit 1, the
    tokcheck report on stdout, one error line, nothing written."""
    out = tmp_path / "o"
    r = run("merge-lora", BASES["oss"], LORA / "oss-tok-vocab", out)
    assert_one_line_error(r, 1, "tokenizer", "--allow-tokenizer-mismatch")
    assert "vocab" in r.out and "breaking" in r.out and "Ġckpt" in r.out
    assert not out.exists() and not leftovers(tmp_path)
    r = run("merge-lora", BASES["oss"], LORA / "oss-tok-vocab", out, "--allow-tokenizer-mismatch")
    assert r.code == 0, r
    tok = json.loads((out / "merge-report.json").read_text())["tokenizer"]
    assert tok["severity"] == "breaking"


def test_tokenizer_warning_merges(tmp_path):
    """A changed pad token is a warning: merged, and the report says so."""
    out = tmp_path / "o"
    r = run("merge-lora", BASES["oss"], LORA / "oss-tok-pad", out)
    assert r.code == 0, r
    assert "roles" in r.out and "warning" in r.out
    tok = json.loads((out / "merge-report.json").read_text())["tokenizer"]
    assert tok["severity"] == "warning"
    ref = load_file(str(LORA / "ref" / "oss-tok-pad.safetensors"))
    got = raw_tensors(out)
    for name in ref:
        if name != "__logits__":
            g = np.frombuffer(got[name][2], dtype=np.uint16)
            assert bf16_ulps(g, ref[name].reshape(-1)).max() <= 1


def test_same_tokenizer_is_recorded(tmp_path):
    out = tmp_path / "o"
    r = run("merge-lora", BASES["oss"], LORA / "oss-attn", out)
    assert r.code == 0, r
    tok = json.loads((out / "merge-report.json").read_text())["tokenizer"]
    assert tok["severity"] in ("same", "cosmetic")
    r = run("merge-lora", BASES["llama"], LORA / "llama-dora", tmp_path / "o2")
    assert r.code == 0, r
    tok = json.loads((tmp_path / "o2" / "merge-report.json").read_text())["tokenizer"]
    assert tok["checked"] is False


def test_unsloth_grouped_by_expert_marker(tmp_path):
    """Unsloth's lora_B_layout "grouped_by_expert" packs lora_B expert-major
    (column e*r + k); PEFT's (and "rank_major") is expert-fastest (k*E + e).
    The same adapter repacked with the marker must merge to the same model."""
    from safetensors.numpy import save_file
    src = LORA / "oss-experts"
    ad = load_file(str(src / "adapter_model.safetensors"))
    cfg = json.loads((src / "adapter_config.json").read_text())
    E, r = 4, cfg["r"]
    out = {}
    for k, v in ad.items():
        if "experts" in k and k.endswith("lora_B.weight"):
            cols = [kk * E + e for e in range(E) for kk in range(r)]
            v = np.ascontiguousarray(v[:, cols])
        out[k] = v
    for marker in ("grouped_by_expert", "rank_major"):
        d = tmp_path / marker
        d.mkdir()
        save_file(out if marker == "grouped_by_expert" else ad, str(d / "adapter_model.safetensors"),
                  metadata={"format": "pt"})
        (d / "adapter_config.json").write_text(json.dumps(dict(cfg, lora_B_layout=marker)))
        r_ = run("merge-lora", BASES["oss"], d, tmp_path / f"o-{marker}")
        assert r_.code == 0, r_
        got = raw_tensors(tmp_path / f"o-{marker}")
        ref = load_file(str(LORA / "ref" / "oss-experts.safetensors"))
        for name in ref:
            if name != "__logits__":
                assert np.array_equal(np.frombuffer(got[name][2], dtype=np.uint16), ref[name].reshape(-1)), name
    # The marker read the wrong way scrambles the experts (the test can fail).
    d = tmp_path / "wrong"
    d.mkdir()
    save_file(out, str(d / "adapter_model.safetensors"), metadata={"format": "pt"})
    (d / "adapter_config.json").write_text(json.dumps(dict(cfg, lora_B_layout="rank_major")))
    assert run("merge-lora", BASES["oss"], d, tmp_path / "o-wrong").code == 0
    got = raw_tensors(tmp_path / "o-wrong")
    name = "model.layers.0.mlp.experts.gate_up_proj"
    assert not np.array_equal(np.frombuffer(got[name][2], dtype=np.uint16), ref[name].reshape(-1))


def test_unsloth_per_expert_linear_lora(tmp_path):
    """Unsloth's per-expert Linear adapters (mlp.experts.gate_up_projs.<e>,
    down_projs.<e>: A_e [r, in], B_e [out, r]) folded into the fused HF
    experts as W[e] += (s B_e A_e)^T.  The PEFT target_parameters adapter
    split per expert (A_e = A[e*r:(e+1)*r], B_e = B[:, e::E]) must give
    PEFT's merged model (ParamWrapper rounds the delta to BF16 first, a
    per-expert Linear does not: one BF16 rounding apart)."""
    from safetensors.numpy import save_file
    src = LORA / "oss-experts"
    ad = load_file(str(src / "adapter_model.safetensors"))
    cfg = json.loads((src / "adapter_config.json").read_text())
    E, r = 4, cfg["r"]
    out = {}
    for k, v in ad.items():
        pre = "base_model.model.model.layers."
        if ".mlp.experts." not in k:
            out[k] = v
            continue
        layer = k[len(pre):].split(".")[0]
        param = "gate_up_projs" if ".experts.base_layer." in k else "down_projs"
        for e in range(E):
            name = f"{pre}{layer}.mlp.experts.{param}.{e}.lora_{'A' if 'lora_A' in k else 'B'}.weight"
            out[name] = np.ascontiguousarray(v[e * r:(e + 1) * r] if "lora_A" in k else v[:, e::E])
    d = tmp_path / "per-expert"
    d.mkdir()
    save_file(out, str(d / "adapter_model.safetensors"), metadata={"format": "pt"})
    cfg = dict(cfg, target_parameters=None,
               target_modules=["q_proj", "v_proj"] + [f"{p}.{e}" for p in ("gate_up_projs", "down_projs")
                                                      for e in range(E)])
    (d / "adapter_config.json").write_text(json.dumps(cfg))
    r_ = run("merge-lora", BASES["oss"], d, tmp_path / "o")
    assert r_.code == 0, r_
    got = raw_tensors(tmp_path / "o")
    ref = load_file(str(LORA / "ref" / "oss-experts.safetensors"))
    base = raw_tensors(BASES["oss"])
    f = lambda b: (b.astype(np.uint32) << 16).view(np.float32)
    scale = np.float32(cfg["lora_alpha"] / r)
    total = exact = 0
    for name in ref:
        if name == "__logits__":
            continue
        g = np.frombuffer(got[name][2], dtype=np.uint16)
        if "experts" not in name:
            assert np.array_equal(g, ref[name].reshape(-1)), name
            continue
        # numpy's float32 matmul, one rounding to BF16 (ml_dtypes, round to nearest even)
        w = f(np.frombuffer(base[name][2], dtype=np.uint16)).reshape(base[name][1])
        layer, param = name.split(".")[2], name.split(".")[-1] + "s"
        for e in range(E):
            pre = f"base_model.model.model.layers.{layer}.mlp.experts.{param}.{e}."
            dl = (out[pre + "lora_B.weight"] @ out[pre + "lora_A.weight"]).astype(np.float32) * scale
            w[e] = w[e] + dl.T
        want = w.astype(ml_dtypes.bfloat16).view(np.uint16).reshape(-1)
        u = bf16_ulps(g, want)
        assert u.max() <= 1, name
        total += g.size
        exact += int((u == 0).sum())
        # and PEFT's own (double-rounded) result is close
        assert np.allclose(f(g), f(ref[name].reshape(-1)), rtol=2 ** -6, atol=2 ** -8), name
    assert exact / total >= 0.999, (exact, total)
    rep = json.loads((tmp_path / "o" / "merge-report.json").read_text())
    ops = {t["name"]: t["op"] for t in rep["tensors"]}
    assert ops["model.layers.0.mlp.experts.gate_up_proj"] == "per-expert"


def test_requant_mxfp4(tmp_path):
    """--requant-mxfp4: the touched expert pair is the BF16 merge quantized with
    quant-mxfp4's rule (transformers'); untouched pairs and every other tensor
    are the base's bytes; the config keeps its quantization_config."""
    rq, bf, q = tmp_path / "rq", tmp_path / "bf", tmp_path / "q"
    ad = LORA / "oss-experts-gateup"	# layer 0 gate_up_proj only
    r = run("merge-lora", MXFP4_BASE, ad, rq, "--requant-mxfp4")
    assert r.code == 0, r
    assert run("merge-lora", MXFP4_BASE, ad, bf).code == 0
    assert run("quant-mxfp4", bf, q).code == 0
    got, base, want = raw_tensors(rq), raw_tensors(MXFP4_BASE), raw_tensors(q)
    assert set(got) == set(base)
    touched = {"model.layers.0.mlp.experts.gate_up_proj_blocks", "model.layers.0.mlp.experts.gate_up_proj_scales"}
    for name in got:
        assert got[name][:2] == base[name][:2], name
        if name in touched:
            assert got[name][2] == want[name][2], name
            assert got[name][2] != base[name][2], name
        else:
            assert got[name][2] == base[name][2], name
    assert (rq / "config.json").read_bytes() == (MXFP4_BASE / "config.json").read_bytes()


@pytest.mark.parametrize("at", [1, 3, 9])
def test_write_failure_leaves_nothing(tmp_path, at):
    """Disk full in the middle (fault injection): exit 4, one line, no output, no temporaries."""
    out = tmp_path / "o"
    r = run("merge-lora", MXFP4_BASE, LORA / "oss-experts", out, "--shard-size", "100KB",
            env={"CKPT_FAULT_WRITE_AT": str(at)})
    assert_one_line_error(r, 4)
    assert not out.exists() and not leftovers(tmp_path)


def test_many_shards(tmp_path):
    """Small shards: the index names them all, transformers' way (bench/merge.sh
    measures memory on the 20b shape)."""
    out = tmp_path / "o"
    r = run("merge-lora", BASES["oss"], LORA / "oss-experts", out, "--shard-size", "50KB")
    assert r.code == 0, r
    idx = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(idx["weight_map"].values())) > 4
    assert set(idx["weight_map"]) == set(raw_tensors(out)) == set(raw_tensors(BASES["oss"]))


def test_keys_without_peft_prefix(tmp_path):
    """PEFT's loader also takes keys without "base_model.model." (adapters injected
    by transformers' integration): the same merge."""
    from safetensors.numpy import save_file
    src = LORA / "llama-attn"
    ad = load_file(str(src / "adapter_model.safetensors"))
    d = tmp_path / "bare"
    d.mkdir()
    save_file({k[len("base_model.model."):]: v for k, v in ad.items()}, str(d / "adapter_model.safetensors"),
              metadata={"format": "pt"})
    (d / "adapter_config.json").write_bytes((src / "adapter_config.json").read_bytes())
    assert run("merge-lora", BASES["llama"], d, tmp_path / "a").code == 0
    assert run("merge-lora", BASES["llama"], src, tmp_path / "b").code == 0
    a, b = raw_tensors(tmp_path / "a"), raw_tensors(tmp_path / "b")
    assert a == b
