"""`ckpt ls` and `ckpt cp` on safetensors files and model folders, checked with the
real safetensors package (and numpy / ml_dtypes for dtype conversions)."""
import json
import os
import signal
import subprocess
import time

import ml_dtypes
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from conftest import CKPT, assert_one_line_error, leftovers, run

BF16 = ml_dtypes.bfloat16
ST_DTYPE = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", np.dtype(BF16): "BF16",
            np.dtype(np.int64): "I64", np.dtype(np.uint8): "U8", np.dtype(np.int8): "I8",
            np.dtype(np.int32): "I32", np.dtype(np.float64): "F64", np.dtype(np.bool_): "BOOL",
            np.dtype(np.uint16): "U16"}


def sample(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "model.embed_tokens.weight": rng.standard_normal((37, 16)).astype(BF16),
        "model.layers.0.self_attn.q_proj.weight": rng.standard_normal((16, 16)).astype(np.float32),
        "model.layers.0.self_attn.q_proj.bias": rng.standard_normal((16,)).astype(np.float16),
        "model.layers.0.mlp.experts.gate_up_proj_blocks": rng.integers(0, 255, (2, 8, 1, 16), dtype=np.uint8),
        "model.layers.0.mlp.experts.gate_up_proj_scales": rng.integers(100, 130, (2, 8, 1), dtype=np.uint8),
        "model.norm.weight": np.ones((16,), np.float32),
        "counts": np.arange(10, dtype=np.int64),
        "flags": np.array([True, False, True]),
        "scalar": np.array(3.5, dtype=np.float64),
        "empty": np.zeros((0, 4), np.float32),
    }


@pytest.fixture
def stfile(tmp_path):
    p = tmp_path / "m.safetensors"
    save_file(sample(), str(p), metadata={"format": "pt", "note": "tab\there"})
    return p


def ls_json(path, *extra):
    r = run("ls", "--json", *extra, path)
    assert r.code == 0, r
    return json.loads(r.out)


def test_ls_json_agrees_with_safetensors(stfile):
    doc = ls_json(stfile)
    got = {t["name"]: (t["dtype"], t["shape"]) for t in doc["models"][0]["tensors"]}
    want = {}
    with safe_open(str(stfile), "np") as f:
        for k in f.keys():
            sl = f.get_slice(k)
            want[k] = (sl.get_dtype(), list(sl.get_shape()))
    assert got == want


def test_ls_offsets_are_absolute_and_bytes_match(stfile):
    doc = ls_json(stfile)
    raw = stfile.read_bytes()
    arrays = load_file(str(stfile))
    for t in doc["models"][0]["tensors"]:
        blob = raw[t["offset"]:t["offset"] + t["bytes"]]
        assert blob == np.ascontiguousarray(arrays[t["name"]]).tobytes(), t["name"]


def test_ls_pipe_is_tsv_and_layouts_are_annotated(stfile):
    r = run("ls", stfile)
    assert r.code == 0, r
    rows = {l.split("\t")[0]: l.split("\t") for l in r.out.splitlines()}
    assert len(rows) == len(sample())
    assert rows["model.layers.0.self_attn.q_proj.weight"][1:4] == ["F32", "[16, 16]", "1024"]
    assert "mxfp4" in r.out.lower()


def test_ls_filter_sort_summary(stfile):
    r = run("ls", "--filter", "model.layers.*", "--sort", "size", stfile)
    assert r.code == 0, r
    names = [l.split("\t")[0] for l in r.out.splitlines()]
    assert set(names) == {k for k in sample() if k.startswith("model.layers.")}
    sizes = [int(l.split("\t")[3]) for l in r.out.splitlines()]
    assert sizes == sorted(sizes, reverse=True) or sizes == sorted(sizes)
    r = run("ls", "--summary", "--json", stfile)
    s = json.loads(r.out)["models"][0]["summary"]
    assert s["tensors"] == len(sample())
    assert s["bytes"] == sum(a.nbytes for a in sample().values())


def test_ls_sha256(stfile):
    import hashlib
    r = run("ls", "--sha256", "--json", stfile)
    assert r.code == 0, r
    arrays = load_file(str(stfile))
    for t in json.loads(r.out)["models"][0]["tensors"]:
        assert t["sha256"] == hashlib.sha256(np.ascontiguousarray(arrays[t["name"]]).tobytes()).hexdigest()


def test_ls_meta_and_escaping(tmp_path):
    p = tmp_path / "e.safetensors"
    save_file({"a\x01b": np.zeros(2, np.float32)}, str(p), metadata={"k": "v"})
    r = run("ls", p)
    assert r.code == 0 and "\x01" not in r.out and "a\\x01b" in r.out.replace("\\u0001", "\\x01"), r
    r = run("ls", "--meta", "--json", p)
    assert r.code == 0, r
    assert "\"k\"" in r.out and "\"v\"" in r.out


def test_ls_closed_pipe_is_quiet(stfile):
    p = subprocess.Popen(f"'{CKPT}' ls '{stfile}' '{stfile}' '{stfile}' | head -1", shell=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0 and len(out.splitlines()) == 1 and err == b""


def sharded(tmp_path, n=3):
    src = tmp_path / "src.safetensors"
    save_file(sample(), str(src))
    out = tmp_path / "sharded"
    r = run("cp", "--shard-size", "700", src, out)
    assert r.code == 0, r
    return src, out


def test_cp_sharded_folder_reads_back(tmp_path):
    src, out = sharded(tmp_path)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1
    assert shards == sorted(p.name for p in out.glob("*.safetensors"))
    got = {}
    for s in shards:
        got.update(load_file(str(out / s)))
    want = sample()
    assert set(got) == set(want) == set(index["weight_map"])
    for k in want:
        assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape
        assert got[k].tobytes() == want[k].tobytes(), k
    assert index["metadata"]["total_size"] == sum(a.nbytes for a in want.values())
    for s in shards:   # the reference writer's header rules: "format":"pt", padded to 8
        raw = (out / s).read_bytes()
        n = int.from_bytes(raw[:8], "little")
        assert n % 8 == 0
        assert json.loads(raw[8:8 + n])["__metadata__"]["format"] == "pt"
    # and ls of the folder lists them all, once
    assert sorted(t["name"] for t in ls_json(out)["models"][0]["tensors"]) == sorted(want)


def test_cp_folder_round_trip_byte_exact(tmp_path):
    src, out = sharded(tmp_path)
    (out / "config.json").write_text('{"model_type": "gpt_oss"}')
    (out / "tokenizer.json").write_text("{}")
    again = tmp_path / "again"
    r = run("cp", out, again)
    assert r.code == 0, r
    assert (again / "config.json").read_text() == '{"model_type": "gpt_oss"}'
    assert (again / "tokenizer.json").exists()
    got = load_file(str(again / "model.safetensors"))
    for k, v in sample().items():
        assert got[k].tobytes() == v.tobytes()


def test_cp_filter_exclude_rename(tmp_path, stfile):
    out = tmp_path / "f.safetensors"
    r = run("cp", "--filter", "model.*", "--exclude", "*bias", "--rename", "model.=base.", stfile, out)
    assert r.code == 0, r
    got = load_file(str(out))
    want = {k.replace("model.", "base.", 1): v for k, v in sample().items()
            if k.startswith("model.") and not k.endswith("bias")}
    assert set(got) == set(want)
    for k in want:
        assert got[k].tobytes() == want[k].tobytes()


SPECIALS = np.array([0.0, -0.0, 1.0, -1.5, np.inf, -np.inf, np.nan, 65504.0, 65519.99, 65520.0, 1e-8,
                     6e-8, 2.98e-8, 5.96e-8, 1e-40, -1e-45, 3.4e38, 1.00390625, 1.01171875,
                     1.0 + 2**-8, 1.0 + 3 * 2**-8, 2**-24, 2**-25, 3 * 2**-26, 2**-14 - 2**-25], np.float32)


@pytest.mark.parametrize("to", ["bf16", "f16"])
def test_cp_dtype_rounding_equals_ml_dtypes(tmp_path, to):
    rng = np.random.default_rng(7)
    bits = rng.integers(0, 2**32, 200000, dtype=np.uint64).astype(np.uint32)
    x = np.concatenate([SPECIALS, bits.view(np.float32)])
    x = x[~np.isnan(x) | (np.arange(x.size) < SPECIALS.size)]
    src = tmp_path / "x.safetensors"
    save_file({"x": x}, str(src))
    out = tmp_path / "y.safetensors"
    r = run("cp", "--dtype", to, src, out)
    assert r.code == 0, r
    got = load_file(str(out))["x"]
    with np.errstate(over="ignore"):
        want = x.astype(BF16 if to == "bf16" else np.float16)
    assert got.dtype == want.dtype
    g = got.view(np.uint16)
    w = want.view(np.uint16)
    nan = np.isnan(x)
    assert np.array_equal(g[~nan], w[~nan])
    assert np.isnan(got[nan].astype(np.float32)).all()


@pytest.mark.parametrize("frm", ["bf16", "f16"])
def test_cp_dtype_widening_is_exact(tmp_path, frm):
    dt = BF16 if frm == "bf16" else np.float16
    x = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(dt)
    src = tmp_path / "x.safetensors"
    save_file({"x": x}, str(src))
    out = tmp_path / "y.safetensors"
    assert run("cp", "--dtype", "f32", src, out).code == 0
    got = load_file(str(out))["x"]
    want = x.astype(np.float32)
    nan = np.isnan(want)
    assert np.array_equal(got.view(np.uint32)[~nan], want.view(np.uint32)[~nan])
    assert np.isnan(got[nan]).all()
    # and back: F32 -> original type is the identity on every non-NaN value
    back = tmp_path / "z.safetensors"
    assert run("cp", "--dtype", frm, out, back).code == 0
    z = load_file(str(back))["x"]
    assert np.array_equal(z.view(np.uint16)[~nan], x.view(np.uint16)[~nan])


def test_cp_bf16_to_f16_single_rounding(tmp_path):
    x = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(BF16)
    src = tmp_path / "x.safetensors"
    save_file({"x": x}, str(src))
    out = tmp_path / "y.safetensors"
    assert run("cp", "--dtype", "f16", src, out).code == 0
    got = load_file(str(out))["x"]
    with np.errstate(over="ignore"):
        want = x.astype(np.float32).astype(np.float16)
    nan = np.isnan(want)
    assert np.array_equal(got.view(np.uint16)[~nan], want.view(np.uint16)[~nan])


def test_cp_refuses_existing_output_without_force(tmp_path, stfile):
    out = tmp_path / "o.safetensors"
    out.write_bytes(b"keep me")
    r = run("cp", stfile, out)
    assert_one_line_error(r, 2, "exists")
    assert out.read_bytes() == b"keep me"
    r = run("cp", "--force", stfile, out)
    assert r.code == 0, r
    assert set(load_file(str(out))) == set(sample())


def test_cp_refuses_output_equal_to_input(tmp_path, stfile):
    before = stfile.read_bytes()
    r = run("cp", "--force", stfile, stfile)
    assert r.code == 2, r
    assert stfile.read_bytes() == before
    src, folder = sharded(tmp_path)
    r = run("cp", "--force", folder, folder)
    assert r.code == 2, r
    r = run("cp", "--force", src, folder / "inside.safetensors")
    assert r.code == 0, r   # a new file inside another folder is fine


@pytest.mark.parametrize("at", [1, 2, 3, 5])
def test_cp_write_failure_leaves_nothing(tmp_path, at):
    src = tmp_path / "src.safetensors"
    save_file(sample(), str(src))
    dst = tmp_path / "dst"
    dst.mkdir()
    r = run("cp", "--shard-size", "700", src, dst / "out", env={"CKPT_FAULT_WRITE_AT": str(at)})
    assert_one_line_error(r, 4, "No space left")
    assert list(dst.iterdir()) == []


def test_cp_sigint_leaves_nothing(tmp_path):
    big = tmp_path / "big.safetensors"
    save_file({f"t{i}": np.zeros((1024, 1024), np.float32) for i in range(48)}, str(big))
    out = tmp_path / "out"
    out.mkdir()
    # Slow the copy down through the pread fallback; stop it in the middle.
    p = subprocess.Popen([str(CKPT), "cp", "--dtype", "bf16", str(big), str(out / "o.safetensors")],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    p.communicate(timeout=60)
    if p.returncode == 0:
        pytest.skip("the copy finished before the signal")
    assert p.returncode == -signal.SIGINT
    assert list(out.iterdir()) == []


def test_cp_bad_usage(tmp_path, stfile):
    assert_one_line_error(run("cp", stfile), 2, "")
    assert_one_line_error(run("cp", "--dtype", "f8", stfile, tmp_path / "o"), 2, "dtype")
    assert_one_line_error(run("cp", "--shard-size", "lots", stfile, tmp_path / "o"), 2, "shard-size")
    assert_one_line_error(run("cp", tmp_path / "absent", tmp_path / "o"), 3, "absent")
    assert leftovers(tmp_path) == []


def load_folder(d):
    idx = d / "model.safetensors.index.json"
    files = sorted(set(json.loads(idx.read_text())["weight_map"].values())) if idx.exists() else ["model.safetensors"]
    out = {}
    for f in files:
        with safe_open(str(d / f), "np") as h:   # raw bytes: BF16 is not a numpy dtype here
            for k in h.keys():
                out[k] = (h.get_slice(k).get_dtype(), h.get_slice(k).get_shape())
        raw = (d / f).read_bytes()
        n = int.from_bytes(raw[:8], "little")
        hdr = json.loads(raw[8:8 + n])
        for k, v in hdr.items():
            if k != "__metadata__":
                b, e = v["data_offsets"]
                out[k] = out[k] + (raw[8 + n + b:8 + n + e],)
    return out


def test_cp_round_trips_the_tiny_gpt_oss(tmp_path):
    from conftest import FIXTURES
    src = FIXTURES / "tiny-gpt-oss"
    if not src.exists():
        pytest.skip("tests/fixtures/tiny-gpt-oss is not there")
    out = tmp_path / "copy"
    r = run("cp", "--shard-size", "100KB", src, out)
    assert r.code == 0, r
    a, b = load_folder(src), load_folder(out)
    assert a.keys() == b.keys() and len(a) > 30
    for k in a:
        assert a[k] == b[k], k
    for f in src.iterdir():
        if not f.name.endswith(".safetensors") and f.name != "model.safetensors.index.json":
            assert (out / f.name).read_bytes() == f.read_bytes(), f.name
    # and back to one file, through F32 and back to BF16: the identity on BF16 data
    f32 = tmp_path / "f32"
    assert run("cp", "--dtype", "f32", src, f32).code == 0
    back = tmp_path / "back"
    assert run("cp", "--dtype", "bf16", "--shard-size", "0", f32, back).code == 0
    c = load_folder(back)
    assert all(c[k] == a[k] for k in a)


def test_ls_annotates_bnb_groups_and_per_expert_names(tmp_path):
    qs = json.dumps({"quant_type": "fp4", "absmax": "a", "blocksize": 128, "quant_map": "q",
                     "dtype": "bfloat16", "shape": [96, 64]}).encode()
    p = "model.layers.0.mlp.experts.gate_up_projs.3."
    f = tmp_path / "bnb.safetensors"
    save_file({p + "weight": np.zeros((3072, 1), np.uint8), p + "weight.absmax": np.zeros(48, np.float32),
               p + "weight.quant_map": np.zeros(16, np.float32),
               p + "weight.quant_state.bitsandbytes__fp4": np.frombuffer(qs, np.uint8).copy(),
               "model.layers.0.mlp.experts.down_proj.weights.2.bias": np.zeros(4, np.float32)}, str(f))
    r = run("ls", f)
    assert r.code == 0, r
    notes = {l.split("\t")[0]: l.split("\t")[-1] for l in r.out.splitlines()}
    w = notes[p + "weight"]
    assert "fp4" in w and "128" in w and "[96, 64]" in w and "expert 3" in w, w
    assert "expert 2" in notes["model.layers.0.mlp.experts.down_proj.weights.2.bias"]
    s = json.loads(run("ls", "--summary", "--json", f).out)["models"][0]["summary"]
    assert s["parameters"] == 96 * 64 + 4   # logical parameters, not packed bytes or state


def test_input_truncated_while_read_is_one_line_not_a_crash(tmp_path):
    """Another process truncates a mapped input mid-run: SIGBUS becomes exit 4, one line, no output."""
    big = tmp_path / "big.safetensors"
    save_file({f"t{i}": np.ones((1024, 1024), np.float32) for i in range(100)}, str(big))
    out = tmp_path / "out"
    out.mkdir()
    p = subprocess.Popen([str(CKPT), "cp", "--dtype", "bf16", str(big), str(out / "o.safetensors")],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.1)
    p.send_signal(signal.SIGSTOP)
    os.truncate(big, 1 << 20)
    p.send_signal(signal.SIGCONT)
    _, err = p.communicate(timeout=120)
    if p.returncode == 0:
        pytest.skip("the copy finished before the input was truncated")
    assert p.returncode in (3, 4), (p.returncode, err)
    assert len(err.strip().splitlines()) == 1 and err.startswith("ckpt"), err
    assert list(out.iterdir()) == []


def test_paths_that_name_nothing_usable_are_bad_input(tmp_path):
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    assert_one_line_error(run("ls", tmp_path / "a"), 3, "symbolic links")
    f = tmp_path / "file"
    f.write_bytes(b"")
    assert_one_line_error(run("ls", f / "x.safetensors"), 3, "Not a directory")
