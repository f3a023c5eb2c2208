"""bitsandbytes 4-bit: dequant-nf4 and quant-bnb against bitsandbytes' own results.

The fixtures (tests/fixtures/bnb/, made by scripts/make-fixtures-bnb.py with bitsandbytes on CPU)
hold, per case, a group "w.weight" exactly as Linear4bit saves it and bnb's reference values
(ref.*).  Nothing here compares with ckpt's own earlier output.
"""
import json
import struct

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file
import ml_dtypes

from conftest import FIXTURES, assert_one_line_error, leftovers, run

FIX = FIXTURES / "bnb"
CASES = sorted(p.name[len("case-"):-len(".safetensors")] for p in FIX.glob("case-*.safetensors"))
BF16 = ml_dtypes.bfloat16


def load(name):
    return load_file(str(FIX / f"case-{name}.safetensors"))


def state(d):
    k = [k for k in d if ".quant_state.bitsandbytes__" in k][0]
    return json.loads(bytes(d[k]).decode())


def bits(a):
    """Bit patterns, so -0.0 != 0.0 and NaN == NaN of the same payload."""
    a = np.ascontiguousarray(a)
    return a.view({2: np.uint16, 4: np.uint32}[a.dtype.itemsize])


def test_cases_present():
    assert len(CASES) >= 10


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", ["bf16", "f16", "f32"])
def test_dequant_matches_bnb(tmp_path, case, dtype):
    d = load(case)
    out = tmp_path / "out.safetensors"
    r = run("dequant-nf4", "--dtype", dtype, FIX / f"case-{case}.safetensors", out)
    assert r.code == 0, r
    got = load_file(str(out))
    ref = d["ref.dq." + dtype]
    assert list(got["w.weight"].shape) == state(d)["shape"]
    assert got["w.weight"].dtype == ref.dtype
    np.testing.assert_array_equal(bits(got["w.weight"]), bits(ref))
    # the group's auxiliary tensors are gone, the other tensors copied as they were
    assert not [k for k in got if k.startswith("w.weight.")]
    np.testing.assert_array_equal(bits(got["ref.src"]), bits(d["ref.src"]))


@pytest.mark.parametrize("case", CASES)
def test_dequant_default_dtype_is_quant_state_dtype(tmp_path, case):
    d = load(case)
    out = tmp_path / "out.safetensors"
    assert run("dequant-nf4", "-j", "3", FIX / f"case-{case}.safetensors", out).code == 0
    want = {"bfloat16": "bf16", "float16": "f16", "float32": "f32"}[state(d)["dtype"]]
    np.testing.assert_array_equal(bits(load_file(str(out))["w.weight"]), bits(d["ref.dq." + want]))



def codes(packed):
    p = np.asarray(packed).reshape(-1)
    q = np.empty(p.size * 2, dtype=np.uint8)
    q[0::2] = p >> 4
    q[1::2] = p & 15
    return q


def quantize_case(tmp_path, case, *extra):
    """Write ref.src as a 2-D "w.weight" and run quant-bnb with the case's settings."""
    d = load(case)
    st = state(d)
    src = d["ref.src"]
    if src.ndim == 1:
        src = src.reshape(-1, 64)
    inp = tmp_path / "in.safetensors"
    save_file({"w.weight": np.ascontiguousarray(src)}, str(inp))
    out = tmp_path / "out.safetensors"
    args = ["quant-bnb", "--type", st["quant_type"], "--blocksize", st["blocksize"], *extra]
    if "nested_offset" in st:
        args.append("--double-quant")
    r = run(*args, inp, out)
    assert r.code == 0, r
    return d, st, load_file(str(out))


def allowed_differences(d, st, ours, theirs):
    """Where bnb's CPU path (all we can run here) and its CUDA kernel (what ckpt follows) differ."""
    n = int(np.prod(st["shape"]))
    ours, theirs = ours[:n], theirs[:n]
    bs = st["blocksize"]
    zero_block = np.repeat(d["ref.absmax"] == 0, bs)[:n]
    allowed = zero_block.copy()
    if st["quant_type"] == "fp4":
        # CUDA pivots vs CPU midpoints, and +-0: CUDA takes the sign bit from x < 0
        allowed |= d["ref.fp4.gap"].astype(bool)
        allowed |= np.isin(ours, [0, 8]) & np.isin(theirs, [0, 8])
    return allowed


@pytest.mark.parametrize("case", CASES)
def test_quant_codes_and_absmax_match_bnb(tmp_path, case):
    d, st, got = quantize_case(tmp_path, case)
    n = int(np.prod(st["shape"]))
    ours, theirs = codes(got["w.weight"])[:n], codes(d["w.weight"])[:n]
    allowed = allowed_differences(d, st, ours, theirs)
    bad = np.nonzero((ours != theirs) & ~allowed)[0]
    assert bad.size == 0, (bad[:10], ours[bad[:10]], theirs[bad[:10]])
    # only a handful may differ at all, and only where the rule says so
    assert (ours != theirs).sum() <= max(64, n // 50)
    # CUDA semantics where they differ: an all-zero block is code 0, FP4 zero keeps the sign
    zb = np.repeat(d["ref.absmax"] == 0, st["blocksize"])[:n]
    assert (ours[zb] == 0).all()
    assert got["w.weight"].shape == d["w.weight"].shape and got["w.weight"].dtype == np.uint8
    if "nested_offset" not in st:
        np.testing.assert_array_equal(bits(got["w.weight.absmax"]), bits(d["w.weight.absmax"]))
    np.testing.assert_array_equal(bits(got["w.weight.quant_map"]), bits(d["w.weight.quant_map"]))


@pytest.mark.parametrize("case", [c for c in CASES if "-dq-" in c])
def test_double_quant_matches_bnb_given_its_offset(tmp_path, case):
    d = load(case)
    off = repr(float(d["ref.offset"][0]))
    d, st, got = quantize_case(tmp_path, case, "--nested-offset", off)
    # nearest-code nested quantization (bnb's reference kernel, CUDA's rule) with bnb's offset
    np.testing.assert_array_equal(got["w.weight.absmax"], d["ref.nested.q"])
    np.testing.assert_array_equal(bits(got["w.weight.nested_absmax"]), bits(d["ref.nested.absmax"]))
    np.testing.assert_array_equal(bits(got["w.weight.nested_quant_map"]),
                                  bits(d["w.weight.nested_quant_map"]))
    # the packed JSON is byte for byte what bnb wrote (key order, spacing, repr of the offset)
    key = "w.weight.quant_state.bitsandbytes__" + st["quant_type"]
    assert bytes(got[key]) == bytes(d[key])


@pytest.mark.parametrize("case", [c for c in CASES if "-dq-" not in c])
def test_quant_state_json_is_bnb_s_bytes(tmp_path, case):
    d, st, got = quantize_case(tmp_path, case)
    key = "w.weight.quant_state.bitsandbytes__" + st["quant_type"]
    # our input is the 2-D view of the 1-D midpoint cases: compare the rest of the JSON
    want = bytes(d[key])
    if len(d["ref.src"].shape) == 1:
        want = json.dumps(dict(json.loads(want), shape=[int(d["ref.src"].size) // 64, 64])).encode()
    assert bytes(got[key]) == want


def test_quant_then_dequant_roundtrip_is_exact(tmp_path):
    """Spec 3.4: dequant -> F32 -> quantize reproduces the packed codes and absmax."""
    case = "nf4-bs64-bf16"
    d = load(case)
    inp = tmp_path / "in.safetensors"
    save_file({"w.weight": d["ref.dq.f32"]}, str(inp))
    out = tmp_path / "q.safetensors"
    assert run("quant-bnb", inp, out).code == 0
    got = load_file(str(out))
    np.testing.assert_array_equal(got["w.weight"], d["w.weight"])
    np.testing.assert_array_equal(bits(got["w.weight.absmax"]), bits(d["w.weight.absmax"]))


# ---- the tiny gpt-oss in both bnb layouts --------------------------------------------------

UNSLOTH = FIX / "tiny-gpt-oss-unsloth-bnb4"
STANDARD = FIX / "tiny-gpt-oss-bnb-nf4"
TINY = FIXTURES / "tiny-gpt-oss"


def folder(path):
    from safetensors import safe_open
    out = {}
    for f in sorted(path.glob("*.safetensors")):
        with safe_open(str(f), "numpy") as h:
            for k in h.keys():
                out[k] = h.get_tensor(k)
    return out


def test_unsloth_layout_dequant_to_hf(tmp_path):
    out = tmp_path / "hf"
    r = run("dequant-nf4", UNSLOTH, out)
    assert r.code == 0, r
    got, ref = folder(out), load_file(str(FIX / "tiny-gpt-oss-unsloth-ref.safetensors"))
    assert sorted(got) == sorted(ref)
    for k in ref:
        assert got[k].dtype == ref[k].dtype and got[k].shape == ref[k].shape, k
        np.testing.assert_array_equal(bits(got[k]), bits(ref[k]), err_msg=k)
    cfg = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in cfg
    assert cfg["swiglu_limit"] == 7.0 and "7.0" in (out / "config.json").read_text()
    assert (out / "tokenizer.json").read_bytes() == (UNSLOTH / "tokenizer.json").read_bytes()
    # the tensors that were never quantized are the original BF16 model's
    src = folder(TINY)
    for k in ("model.embed_tokens.weight", "model.layers.1.mlp.experts.down_proj_bias",
              "model.layers.0.mlp.router.weight", "model.layers.1.self_attn.sinks"):
        np.testing.assert_array_equal(bits(got[k]), bits(src[k]))


def test_unsloth_layout_keep(tmp_path):
    out = tmp_path / "keep.safetensors"
    assert run("dequant-nf4", "--layout", "keep", "--dtype", "f32", UNSLOTH, out).code == 0
    got, ref = load_file(str(out)), load_file(str(FIX / "tiny-gpt-oss-unsloth-ref.safetensors"))
    for e in range(4):
        w = got[f"model.layers.1.mlp.experts.gate_up_projs.{e}.weight"]
        assert w.dtype == np.float32 and w.shape == (128, 64)
        # bnb's BF16 output is the float32 product rounded once: so is ours, via ml_dtypes
        want = ref["model.layers.1.mlp.experts.gate_up_proj"][e].T
        np.testing.assert_array_equal(bits(w.astype(BF16)), bits(want))
        assert f"model.layers.1.mlp.experts.down_projs.{e}.bias" in got
    assert "model.layers.0.mlp.router.linear.weight" in got


def test_standard_layout_dequant(tmp_path):
    out = tmp_path / "std.safetensors"
    assert run("dequant-nf4", STANDARD, out).code == 0
    got, ref = load_file(str(out)), load_file(str(FIX / "tiny-gpt-oss-unsloth-ref.safetensors"))
    # the same bnb quantize_4bit of the same q/k/v/o weights, saved by transformers
    for k in ref:
        if ".self_attn." in k and k.endswith("_proj.weight"):
            np.testing.assert_array_equal(bits(got[k]), bits(ref[k]), err_msg=k)
    assert not [k for k in got if "absmax" in k or "quant_" in k]


def _nested_close(a, b, k):
    """bnb's CPU 8-bit quantizer (a 65536-bin table) is not always the nearest code: neighbours.
    (test_double_quant_matches_bnb_given_its_offset checks the nearest rule exactly.)"""
    assert a.shape == b.shape and a.dtype == b.dtype, k
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1, k
    assert (a != b).mean() <= 0.15, k


def test_quant_bnb_matches_transformers_save(tmp_path):
    out = tmp_path / "q"
    r = run("quant-bnb", "--double-quant", TINY, out)
    assert r.code == 0, r
    got, ref = folder(out), folder(STANDARD)
    assert sorted(got) == sorted(ref)
    for k in ref:
        if k.endswith(".weight.absmax"):
            _nested_close(got[k], ref[k], k)
        else:
            assert got[k].dtype == ref[k].dtype and got[k].shape == ref[k].shape, k
            np.testing.assert_array_equal(bits(got[k]) if got[k].dtype.itemsize > 1 else got[k],
                                          bits(ref[k]) if ref[k].dtype.itemsize > 1 else ref[k],
                                          err_msg=k)
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    want = json.loads((STANDARD / "config.json").read_text())["quantization_config"]
    skips = qc.pop("llm_int8_skip_modules")
    want.pop("llm_int8_skip_modules")
    assert qc == want
    assert "model.layers.1.mlp.router" in skips and "lm_head" in skips
    assert not [s for s in skips if "self_attn" in s]


def test_quant_bnb_per_expert_matches_unsloth_layout(tmp_path):
    out = tmp_path / "pe"
    r = run("quant-bnb", "--double-quant", "--experts", "per-expert", TINY, out)
    assert r.code == 0, r
    got, ref = folder(out), folder(UNSLOTH)
    assert sorted(got) == sorted(ref)
    for k in ref:
        if k.endswith(".weight.absmax"):
            _nested_close(got[k], ref[k], k)
        elif "quant_state" in k:
            a, b = json.loads(bytes(got[k])), json.loads(bytes(ref[k]))
            assert list(a) == list(b) and a["shape"] == b["shape"], k
            assert abs(a["nested_offset"] - b["nested_offset"]) <= 1e-7 * abs(b["nested_offset"])
        else:
            np.testing.assert_array_equal(bits(got[k]) if got[k].dtype.itemsize > 1 else got[k],
                                          bits(ref[k]) if ref[k].dtype.itemsize > 1 else ref[k],
                                          err_msg=k)


def test_quant_bnb_skip_glob(tmp_path):
    out = tmp_path / "q"
    r = run("quant-bnb", "--skip", "*.q_proj", "--skip", "model.layers.1.*", TINY, out)
    assert r.code == 0, r
    got = folder(out)
    assert got["model.layers.0.self_attn.q_proj.weight"].dtype == BF16
    assert got["model.layers.1.self_attn.k_proj.weight"].dtype == BF16
    assert got["model.layers.0.self_attn.k_proj.weight"].dtype == np.uint8
    skips = json.loads((out / "config.json").read_text())["quantization_config"]["llm_int8_skip_modules"]
    assert "model.layers.0.self_attn.q_proj" in skips and "model.layers.1.self_attn.v_proj" in skips
    assert "model.layers.0.self_attn.k_proj" not in skips


@pytest.mark.parametrize("argv", [["dequant-nf4", UNSLOTH], ["quant-bnb", "--double-quant", TINY]])
@pytest.mark.parametrize("at", ["1", "5"])
def test_write_failure_leaves_nothing(tmp_path, argv, at):
    out = tmp_path / "out"
    r = run(*argv, out, env={"CKPT_FAULT_WRITE_AT": at})
    assert_one_line_error(r, 4)
    assert not out.exists() and not leftovers(tmp_path)
