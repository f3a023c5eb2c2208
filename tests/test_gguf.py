"""GGUF: `ckpt ls` and `ckpt cp` against gguf-py (GGUFWriter makes the inputs, GGUFReader
reads our outputs), numpy / ml_dtypes for the --dtype casts."""
import json
import os

import ml_dtypes
import numpy as np
import pytest
import gguf
from gguf import GGMLQuantizationType as QT
from gguf import GGUFValueType as VT

from conftest import BAD, assert_one_line_error, leftovers, run

BF16 = ml_dtypes.bfloat16
TYPE_NAME = {VT.UINT8: "u8", VT.INT8: "i8", VT.UINT16: "u16", VT.INT16: "i16", VT.UINT32: "u32",
             VT.INT32: "i32", VT.FLOAT32: "f32", VT.BOOL: "bool", VT.STRING: "string",
             VT.ARRAY: "array", VT.UINT64: "u64", VT.INT64: "i64", VT.FLOAT64: "f64"}

# Every value type, arrays of scalars and strings, an array of arrays, awkward strings.
KVS = [
    ("t.u8", 200, VT.UINT8), ("t.i8", -100, VT.INT8), ("t.u16", 60000, VT.UINT16),
    ("t.i16", -30000, VT.INT16), ("t.u32", 4000000000, VT.UINT32), ("t.i32", -2000000000, VT.INT32),
    ("t.f32", 0.1, VT.FLOAT32), ("t.bool", True, VT.BOOL), ("t.false", False, VT.BOOL),
    ("t.str", "tab\tnewline\n\"quote\" é 😀", VT.STRING), ("t.empty", "", VT.STRING),
    ("t.u64", 2**64 - 1, VT.UINT64), ("t.i64", -2**63, VT.INT64), ("t.f64", 1e300, VT.FLOAT64),
    ("t.ints", list(range(-5, 20)), VT.ARRAY), ("t.floats", [0.5, -1.25, 3.0e-5], VT.ARRAY),
    ("t.strs", ["a", "", "b c", "ü"] * 5, VT.ARRAY), ("t.nested", [[1, 2], [3], [4, 5, 6]], VT.ARRAY),
    ("t.nested_strs", [["x", "y"], ["z"]], VT.ARRAY),
]


def tensors(rng):
    f32 = rng.standard_normal((4, 64)).astype(np.float32)
    return {
        "blk.0.f32": (f32, None),
        "blk.0.f16": (rng.standard_normal((3, 5)).astype(np.float16), None),
        "blk.0.bf16": (rng.standard_normal((2, 3, 32)).astype(BF16).view(np.uint16), QT.BF16),
        "blk.0.q8_0": (gguf.quants.quantize(f32, QT.Q8_0), QT.Q8_0),
        "blk.0.mxfp4": (gguf.quants.quantize(rng.standard_normal((2, 64)).astype(np.float32), QT.MXFP4),
                        QT.MXFP4),
        "blk.0.i32": (np.arange(-7, 9, dtype=np.int32).reshape(2, 2, 2, 2), None),
        "token_embd.weight": (rng.standard_normal((9, 32)).astype(np.float32), None),
    }


def make_gguf(path, alignment=None, seed=0):
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), "llama")
    if alignment:
        w.add_custom_alignment(alignment)
    for k, v, t in KVS:
        if t == VT.ARRAY:
            w.add_array(k, v)
        else:
            w.add_key_value(k, v, t)
    ts = tensors(rng)
    for name, (arr, raw) in ts.items():
        w.add_tensor(name, arr, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return ts


@pytest.fixture(params=[None, 64, 8], ids=["align32", "align64", "align8"])
def sample(request, tmp_path):
    p = tmp_path / "in.gguf"
    make_gguf(p, request.param)
    return p


def ls_json(path, *opts):
    r = run("ls", "--json", *opts, path)
    assert r.code == 0, r
    return json.loads(r.out)["models"][0]


def test_ls_agrees_with_gguf_reader(sample):
    m = ls_json(sample, "-l")
    rd = gguf.GGUFReader(str(sample))
    assert m["kind"] == "gguf"
    assert [t["name"] for t in m["tensors"]] == [t.name for t in rd.tensors]
    for ours, ref in zip(m["tensors"], rd.tensors):
        assert ours["dtype"] == ref.tensor_type.name.lower()
        assert ours["shape"] == [int(x) for x in reversed(ref.shape.tolist())]
        assert ours["bytes"] == ref.n_bytes
        assert ours["offset"] == ref.data_offset
    assert m["summary"]["tensors"] == len(rd.tensors)


def py_value(v, t):
    """What ls --json should print for a value written as type t."""
    if t == VT.FLOAT32:
        return float(np.float32(v))
    return v


def test_meta_json_equals_written_values(sample):
    meta = ls_json(sample, "--meta", "--full")["metadata"]
    rd = gguf.GGUFReader(str(sample))
    keys = [k for k in meta if not k.startswith("GGUF.")]
    assert keys == [f.name for f in rd.fields.values() if not f.name.startswith("GGUF.")]
    assert meta["GGUF.version"]["value"] == 3
    assert meta["GGUF.alignment"]["value"] == rd.alignment
    assert meta["general.architecture"] == {"type": "string", "value": "llama"}
    for k, v, t in KVS:
        got = meta[k]
        assert got["type"] == TYPE_NAME[t], k
        if t == VT.ARRAY:
            sub = VT.get_type(v[0])
            assert got["element_type"] == TYPE_NAME[sub] and got["count"] == len(v)
            if sub == VT.FLOAT32:
                v = [float(np.float32(x)) for x in v]
            assert got["value"] == v, k
            if sub != VT.ARRAY:     # gguf-py's reader flattens nested arrays
                assert rd.fields[k].contents() == got["value"], k
        else:
            assert got["value"] == py_value(v, t), k
            assert rd.fields[k].contents() == got["value"], k


def test_meta_text_shortens_unless_full(sample):
    r = run("ls", "--meta", sample)
    assert r.code == 0, r
    lines = dict(l.split("\t", 1) for l in r.out.splitlines())
    assert lines["t.ints"] == "array[i32]\t[-5, -4, -3, -2, -1, 0, 1, 2, ... (25 items)]"
    assert lines["t.str"] == "string\ttab\\x09newline\\x0a\"quote\" é 😀"
    assert lines["t.nested"] == "array[array]\t[[1, 2], [3], [4, 5, 6]]"
    assert lines["t.u64"] == "u64\t18446744073709551615"
    assert lines["t.bool"] == "bool\ttrue"
    full = run("ls", "--meta", "--full", sample)
    assert "... (25 items)" not in full.out and "18, 19]" in full.out
    j = ls_json(sample, "--meta")["metadata"]["t.ints"]
    assert j["shortened"] is True and j["count"] == 25 and j["value"] == list(range(-5, 3))


def read_all(path):
    rd = gguf.GGUFReader(str(path))
    fields = {f.name: (f.types, f.contents()) for f in rd.fields.values()}
    ts = {t.name: (t.tensor_type, t.shape.tolist(), np.array(t.data)) for t in rd.tensors}
    return rd, fields, ts


def test_cp_is_byte_identical_and_readable(sample, tmp_path):
    out = tmp_path / "out.gguf"
    r = run("cp", sample, out)
    assert r.code == 0 and r.out == "" and r.err == "", r
    # gguf-py lays a file out exactly as we do (KVs in order, infos, padding after each tensor).
    assert out.read_bytes() == sample.read_bytes()
    _, f_in, t_in = read_all(sample)
    rd, f_out, t_out = read_all(out)
    assert f_out.keys() == f_in.keys()
    for k in f_in:
        if k != "GGUF.kv_count":
            assert f_out[k] == f_in[k], k
    assert list(t_out) == list(t_in)
    for k in t_in:
        assert t_out[k][:2] == t_in[k][:2] and np.array_equal(t_out[k][2], t_in[k][2]), k


@pytest.mark.parametrize("dt", ["bf16", "f16", "f32"])
def test_cp_dtype_filter_rename(tmp_path, dt):
    src = tmp_path / "in.gguf"
    ts = make_gguf(src, 64)
    out = tmp_path / "out.gguf"
    r = run("cp", "--dtype", dt, "--exclude", "*.i32", "--rename", "blk.0.=layer0.", src, out)
    assert r.code == 0, r
    rd, fields, got = read_all(out)
    assert rd.alignment == 64
    want_names = [n.replace("blk.0.", "layer0.") for n in ts if not n.endswith(".i32")]
    assert list(got) == want_names
    np_dt = {"bf16": BF16, "f16": np.float16, "f32": np.float32}[dt]
    qt = {"bf16": QT.BF16, "f16": QT.F16, "f32": QT.F32}[dt]
    for name, (arr, raw) in ts.items():
        if name.endswith(".i32"):
            continue
        gtype, _, data = got[name.replace("blk.0.", "layer0.")]
        if raw in (None, QT.BF16):
            src_vals = arr.view(BF16) if raw == QT.BF16 else arr
            want = src_vals.astype(np.float32).astype(np_dt)
            assert gtype == qt, name
            vals = data.view(np.uint16).view(BF16) if qt == QT.BF16 else data
            assert vals.shape == want.shape and np.array_equal(
                vals.view(np.uint8), want.view(np.uint8)), name
        else:   # Q8_0 and MXFP4 are copied as they are
            assert gtype == raw and np.array_equal(data, arr), name
    assert fields["t.strs"][1] == dict((k, v) for k, v, _ in KVS)["t.strs"]


def test_cp_needs_gguf_destination_and_no_overwrite(sample, tmp_path):
    r = run("cp", sample, tmp_path / "x.safetensors")
    assert_one_line_error(r, 2, ".gguf destination")
    out = tmp_path / "o.gguf"
    out.write_bytes(b"old")
    r = run("cp", sample, out)
    assert r.code != 0 and out.read_bytes() == b"old", r
    assert run("cp", "-f", sample, out).code == 0
    assert out.read_bytes() == sample.read_bytes()
    r = run("cp", "-f", sample, sample)
    assert r.code != 0 and gguf.GGUFReader(str(sample)).tensors
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("at", [1, 2, 3, 5])
def test_cp_write_fault_leaves_nothing(sample, tmp_path, at):
    out = tmp_path / "out.gguf"
    r = run("cp", "--dtype", "bf16", sample, out, env={"CKPT_FAULT_WRITE_AT": str(at)})
    assert_one_line_error(r, 4)
    assert not out.exists() and leftovers(tmp_path) == []


def test_cp_rename_too_long_is_refused(sample, tmp_path):
    out = tmp_path / "out.gguf"
    r = run("cp", "--rename", "blk.=" + "x" * 60, sample, out)
    assert_one_line_error(r, 3, "shorter than 64")
    assert not out.exists() and leftovers(tmp_path) == []


def test_version_2_is_read_and_written_as_3(tmp_path):
    # v2 and v3 are the same bytes on disk for a little-endian file; gguf-py writes only v3.
    src, out = tmp_path / "v2.gguf", tmp_path / "out.gguf"
    make_gguf(src)
    b = bytearray(src.read_bytes())
    b[4:8] = (2).to_bytes(4, "little")
    src.write_bytes(bytes(b))
    assert ls_json(src, "--meta")["metadata"]["GGUF.version"]["value"] == 2
    assert run("cp", src, out).code == 0
    assert out.read_bytes()[4:8] == (3).to_bytes(4, "little")
    assert out.read_bytes()[8:] == bytes(b[8:])
    assert gguf.GGUFReader(str(out)).fields["GGUF.version"].contents() == 3


def test_cp_metadata_only_file(tmp_path):
    src, out = tmp_path / "in.gguf", tmp_path / "out.gguf"
    w = gguf.GGUFWriter(str(src), "llama")
    w.add_custom_alignment(1 << 20)
    w.add_array("t.strs", ["a", "b"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    r = run("cp", src, out)
    assert r.code == 0, r
    assert out.stat().st_size < 200     # no padding to 1 MiB without tensors (as ggml)
    rd = gguf.GGUFReader(str(out))
    assert rd.alignment == 1 << 20 and rd.tensors == []
    assert rd.fields["t.strs"].contents() == ["a", "b"]
    assert ls_json(out)["summary"]["tensors"] == 0


def test_q8_0_fixture_is_gguf_py_output():
    """The fixture the C unit test compares against is what gguf-py computes today."""
    rd = gguf.GGUFReader(str(BAD.parent / "fixtures" / "gguf" / "q8_0.gguf"))
    x, q = rd.tensors
    with np.errstate(over="ignore"):
        assert np.array_equal(gguf.quants.quantize(np.array(x.data), QT.Q8_0), np.array(q.data))
