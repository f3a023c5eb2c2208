"""quant-mxfp4 / dequant-mxfp4 against the reference libraries.

References: tests/fixtures/mxfp4/ (made by scripts/make-fixtures-mxfp4.py with transformers'
convert_moe_packed_tensors and save_pretrained, ml_dtypes casts, gguf-py's MXFP4), plus
ml_dtypes' float4_e2m1fn / float8_e8m0fnu casts computed here at test time.
"""
import json

import ml_dtypes  # noqa: F401  (registers bfloat16 for safetensors.numpy)
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from conftest import FIXTURES, assert_one_line_error, leftovers, run

MX = FIXTURES / "mxfp4"
TINY = FIXTURES / "tiny-gpt-oss"
BF16 = ml_dtypes.bfloat16
P = "model.layers.0.mlp.experts."


def load_dir(d):
    out = {}
    for f in sorted(d.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def bits(a):
    return np.ascontiguousarray(a).view(np.uint8)


def codes(blocks):
    """[..., 16] pairs -> [..., 32] codes (low nibble = even element)."""
    c = np.empty(blocks.shape[:-1] + (32,), np.uint8)
    c[..., 0::2] = blocks & 0xF
    c[..., 1::2] = blocks >> 4
    return c


@pytest.mark.parametrize("rule", ["up-rne", "up-half-up", "ocp-rne", "ocp-ggml"])
def test_rules_match_references(tmp_path, rule):
    scale, rnd = rule.split("-", 1)
    src = MX / ("rules-in-ggml.safetensors" if rnd == "ggml" else "rules-in.safetensors")
    exp = load_file(MX / "rules-expected.safetensors")
    q, dq = tmp_path / "q.safetensors", tmp_path / "dq.safetensors"
    r = run("quant-mxfp4", "--scale", scale, "--round", rnd, src, q)
    assert r.code == 0, r
    got = load_file(q)
    b, s = got[P + "down_proj_blocks"], got[P + "down_proj_scales"]
    eb, es = exp[rule + ".blocks"], exp[rule + ".scales"]
    bad = np.nonzero((b != eb).any(-1).ravel() | (s != es).ravel())[0]
    assert len(bad) == 0, f"{len(bad)} of {s.size} blocks differ, first rows {bad[:10]}"
    r = run("dequant-mxfp4", q, dq)
    assert r.code == 0, r
    d = load_file(dq)[P + "down_proj"]
    assert d.dtype == BF16 and d.shape == exp[rule + ".dequant"].shape
    assert np.array_equal(bits(d), bits(exp[rule + ".dequant"])), "differs from transformers"


def test_element_codes_match_ml_dtypes(tmp_path):
    """Every BF16 value in [-6, 6] at scale 1 becomes ml_dtypes' float4_e2m1fn code (RNE, saturating)."""
    allbits = np.arange(0x10000, dtype=np.uint32).astype(np.uint16)
    v = allbits.view(BF16).astype(np.float32)
    v = v[np.isfinite(v) & (np.abs(v) <= 6)]
    n = -(-len(v) // 31)
    rows = np.zeros((n, 32), np.float32)
    rows[:, 0] = 6.0                                  # amax 6: scale byte 127 under "up"
    flat = np.zeros(n * 31, np.float32)
    flat[: len(v)] = v
    rows[:, 1:] = flat.reshape(n, 31)
    # amax = 6 -> ds = 1 exactly; the scale byte must be float8_e8m0fnu(1.0)
    save_file({P + "down_proj": np.ascontiguousarray(rows.T[None]).astype(BF16)}, tmp_path / "in.safetensors")
    r = run("quant-mxfp4", tmp_path / "in.safetensors", tmp_path / "q.safetensors")
    assert r.code == 0, r
    got = load_file(tmp_path / "q.safetensors")
    c = codes(got[P + "down_proj_blocks"][0, :, 0])
    want = rows.astype(ml_dtypes.float4_e2m1fn).view(np.uint8) & 0xF
    assert np.array_equal(c, want), np.argwhere(c != want)[:5]
    e8 = np.float32(1.0).astype(ml_dtypes.float8_e8m0fnu).view(np.uint8)
    assert (got[P + "down_proj_scales"] == e8).all()


def test_scale_bytes_match_ml_dtypes(tmp_path):
    """Scale byte = float8_e8m0fnu(2^ceil(log2(amax/6))) for BF16 amax over the whole range."""
    rng = np.random.default_rng(7)
    amax = (rng.uniform(1, 2, 4000) * np.float32(2.0) ** rng.integers(-120, 120, 4000)).astype(BF16)
    amax = amax.astype(np.float32)
    rows = np.zeros((len(amax), 32), np.float32)
    rows[:, 5] = -amax
    save_file({P + "down_proj": np.ascontiguousarray(rows.T[None]).astype(BF16)}, tmp_path / "in.safetensors")
    r = run("quant-mxfp4", tmp_path / "in.safetensors", tmp_path / "q.safetensors")
    assert r.code == 0, r
    s = load_file(tmp_path / "q.safetensors")[P + "down_proj_scales"].ravel()
    ds = np.float32(2.0) ** np.ceil(np.log2(amax.astype(np.float64) / 6))
    want = ds.astype(np.float32).astype(ml_dtypes.float8_e8m0fnu).view(np.uint8)
    assert np.array_equal(s, want), np.argwhere(s != want)[:5]


def test_dequant_tiny_matches_transformers(tmp_path):
    out = tmp_path / "bf16"
    r = run("dequant-mxfp4", MX / "tiny-gpt-oss-mxfp4", out)
    assert r.code == 0, r
    got, src, ref = load_dir(out), load_dir(MX / "tiny-gpt-oss-mxfp4"), load_file(MX / "tiny-gpt-oss-mxfp4-dequant.safetensors")
    assert len(ref) == 4
    for name, want in ref.items():
        assert got[name].dtype == BF16 and got[name].shape == want.shape, name
        assert np.array_equal(bits(got[name]), bits(want)), name
    plain = {k for k in src if not k.endswith(("_blocks", "_scales"))}
    assert set(got) == plain | set(ref)
    for k in plain:
        assert np.array_equal(bits(got[k]), bits(src[k])), k
    cfg, cin = json.loads((out / "config.json").read_text()), json.loads((MX / "tiny-gpt-oss-mxfp4/config.json").read_text())
    cin.pop("quantization_config")
    assert cfg == cin
    assert (out / "tokenizer.json").read_bytes() == (MX / "tiny-gpt-oss-mxfp4/tokenizer.json").read_bytes()
    # the tiny model's experts contain code 8 (-0.0): HF keeps it as 0x8000
    gu = load_dir(MX / "tiny-gpt-oss-mxfp4")
    if any((codes(v) == 8).any() for k, v in gu.items() if k.endswith("_blocks")):
        assert any((bits(v).view(np.uint16) == 0x8000).any() for v in ref.values())


def test_original_flavor_gives_the_hf_tensors(tmp_path):
    a, b = tmp_path / "hf", tmp_path / "orig"
    assert run("dequant-mxfp4", MX / "tiny-gpt-oss-mxfp4", a).code == 0
    r = run("dequant-mxfp4", "-j", "2", MX / "tiny-gpt-oss-original", b)
    assert r.code == 0, r
    ta, tb = load_dir(a), load_dir(b)
    assert set(ta) == set(tb)
    for k in ta:
        assert ta[k].dtype == tb[k].dtype and ta[k].shape == tb[k].shape, k
        assert np.array_equal(bits(ta[k]), bits(tb[k])), k
    cfg = json.loads((b / "config.json").read_text())
    assert cfg["model_type"] == "gpt_oss" and "quantization_config" not in cfg
    assert cfg["num_local_experts"] == 4 and cfg["rope_scaling"]["rope_type"] == "yarn"
    assert isinstance(cfg["swiglu_limit"], float)       # transformers 5 refuses an int here
    assert not (b / "dtypes.json").exists()


def test_round_trip_and_canonical_blocks(tmp_path):
    """quant(dequant(x)) == x byte for byte on canonical blocks (max code 4 or 6), same values elsewhere."""
    src = load_dir(MX / "tiny-gpt-oss-mxfp4")
    assert run("dequant-mxfp4", MX / "tiny-gpt-oss-mxfp4", tmp_path / "bf16").code == 0
    assert run("quant-mxfp4", tmp_path / "bf16", tmp_path / "mx").code == 0
    back = load_dir(tmp_path / "mx")
    n_canon = n_other = 0
    for k in src:
        if not k.endswith("_blocks"):
            if not k.endswith("_scales"):
                assert np.array_equal(bits(back[k]), bits(src[k])), k
            continue
        s = k[: -len("_blocks")] + "_scales"
        canon = (codes(src[k]) & 7).max(axis=-1) >= 6
        same = (back[k] == src[k]).all(-1) & (back[s] == src[s])
        assert same[canon].all(), k
        n_canon += int(canon.sum())
        n_other += int((~canon).sum())
    # up-rne blocks of real-valued data are not all canonical (max code 3.0 when amax/scale < 3.5)
    assert n_canon > 1000 and n_other > 100
    # config.json: quantization_config removed and put back in save_pretrained's layout, byte for byte
    assert (tmp_path / "mx" / "config.json").read_bytes() == (MX / "tiny-gpt-oss-mxfp4/config.json").read_bytes()
    # values survive even where the bytes change
    assert run("dequant-mxfp4", tmp_path / "mx", tmp_path / "bf16b").code == 0
    a, b = load_dir(tmp_path / "bf16"), load_dir(tmp_path / "bf16b")
    for k in a:
        assert np.array_equal(bits(a[k]), bits(b[k])), k


def test_keep_from_copies_untouched_experts(tmp_path):
    assert run("dequant-mxfp4", MX / "tiny-gpt-oss-mxfp4", tmp_path / "bf16").code == 0
    t = load_dir(tmp_path / "bf16")
    gu = t["model.layers.1.mlp.experts.gate_up_proj"].astype(np.float32)
    gu[2, 5, 7] += 0.25                                  # touch expert 2 of layer 1
    t["model.layers.1.mlp.experts.gate_up_proj"] = gu.astype(BF16)
    (tmp_path / "ft").mkdir()
    save_file(t, tmp_path / "ft" / "model.safetensors")
    (tmp_path / "ft" / "config.json").write_text((tmp_path / "bf16" / "config.json").read_text())
    r = run("quant-mxfp4", "--keep-from", MX / "tiny-gpt-oss-mxfp4", tmp_path / "ft", tmp_path / "mx")
    assert r.code == 0, r
    assert "15 experts copied" in r.err and "1 quantized" in r.err, r
    src, back = load_dir(MX / "tiny-gpt-oss-mxfp4"), load_dir(tmp_path / "mx")
    for k in src:
        if k.endswith(("_blocks", "_scales")):
            for e in range(src[k].shape[0]):
                if "layers.1.mlp.experts.gate_up" in k and e == 2:
                    continue
                assert np.array_equal(back[k][e], src[k][e]), (k, e)
    # the original flavor works as --keep-from too
    r = run("quant-mxfp4", "--keep-from", MX / "tiny-gpt-oss-original", tmp_path / "ft", tmp_path / "mx2")
    assert r.code == 0 and "15 experts copied" in r.err, r


def test_per_expert_input_equals_fused(tmp_path):
    """Unsloth-style experts.gate_up_projs.N.weight [OUT, IN] give the same bytes as the fused HF tensors."""
    t = load_dir(TINY)
    per = {}
    for k, v in t.items():
        if k.endswith("experts.gate_up_proj") or k.endswith("experts.down_proj"):
            stem = k.rsplit(".", 1)[0] + "." + k.rsplit(".", 1)[1] + "s"
            for e in range(v.shape[0]):
                per[f"{stem}.{e}.weight"] = np.ascontiguousarray(v[e].T)
        elif k.endswith("_proj_bias"):
            stem = k[: -len("_bias")] + "s"
            for e in range(v.shape[0]):
                per[f"{stem}.{e}.bias"] = v[e]
        elif k.endswith("mlp.router.weight"):
            per[k.replace("router.weight", "router.linear.weight")] = v
        else:
            per[k] = v
    (tmp_path / "per").mkdir()
    save_file(per, tmp_path / "per" / "model.safetensors")
    a = run("quant-mxfp4", TINY, tmp_path / "a.safetensors")
    b = run("quant-mxfp4", tmp_path / "per" / "model.safetensors", tmp_path / "b.safetensors")
    assert a.code == 0 and b.code == 0, (a, b)
    ta, tb = load_file(tmp_path / "a.safetensors"), load_file(tmp_path / "b.safetensors")
    assert set(ta) == set(tb)
    for k in ta:
        assert ta[k].dtype == tb[k].dtype and np.array_equal(bits(ta[k]), bits(tb[k])), k


def test_threads_do_not_change_bytes(tmp_path):
    outs = []
    for j in ("1", "4"):
        o = tmp_path / f"j{j}.safetensors"
        r = run("quant-mxfp4", "-j", j, "--scale", "ocp", MX / "rules-in.safetensors", o)
        assert r.code == 0, r
        outs.append(o.read_bytes())
    assert outs[0] == outs[1]


def test_output_is_not_left_on_failure(tmp_path):
    r = run("dequant-mxfp4", MX / "tiny-gpt-oss-mxfp4", tmp_path / "x", env={"CKPT_FAULT_WRITE_AT": "3"})
    assert r.code == 4, r
    assert not (tmp_path / "x").exists() and leftovers(tmp_path) == []
    r = run("quant-mxfp4", MX / "rules-in.safetensors", MX / "rules-in.safetensors", "-f")
    assert_one_line_error(r, 2, "output is the input")


@pytest.mark.parametrize("tool", ["quant-mxfp4", "dequant-mxfp4"])
def test_help(tool):
    r = run(tool, "-h")
    assert r.code == 0 and "--jobs" in r.out and "--force" in r.out


def test_unsloth_chain_keep_equals_hf(tmp_path):
    """dequant-nf4 --layout keep (per-expert) then quant-mxfp4 == dequant-nf4 --layout hf then quant-mxfp4."""
    src = FIXTURES / "bnb" / "tiny-gpt-oss-unsloth-bnb4"
    if not src.exists() or run("dequant-nf4", "-h").code != 0:
        pytest.skip("needs dequant-nf4 and the bnb fixtures")
    for lay in ("keep", "hf"):
        assert run("dequant-nf4", "--layout", lay, src, tmp_path / lay).code == 0
        r = run("quant-mxfp4", tmp_path / lay, tmp_path / f"q-{lay}.safetensors")
        assert r.code == 0, r
    a, b = load_file(tmp_path / "q-keep.safetensors"), load_file(tmp_path / "q-hf.safetensors")
    assert set(a) == set(b) and any(k.endswith("gate_up_proj_blocks") for k in a)
    for k in a:
        assert a[k].dtype == b[k].dtype and np.array_equal(bits(a[k]), bits(b[k])), k


def test_every_code_at_every_scale_matches_transformers(tmp_path):
    """Scale bytes 0..254 x codes 0..15: BF16 subnormals at the bottom, Inf at the top, as transformers gives."""
    r = run("dequant-mxfp4", MX / "edges-in.safetensors", tmp_path / "e.safetensors")
    assert r.code == 0, r
    got = load_file(tmp_path / "e.safetensors")[P + "down_proj"]
    want = load_file(MX / "edges-expected.safetensors")[P + "down_proj"]
    assert np.array_equal(bits(got), bits(want)), np.argwhere(bits(got).view(np.uint16) != bits(want).view(np.uint16))[:5]
    w = bits(want).view(np.uint16)
    assert ((w & 0x7FFF) == 0x7F80).any() and (((w & 0x7F80) == 0) & ((w & 0x7F) != 0)).any()
