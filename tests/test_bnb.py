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


def _bad_rows():
    from conftest import BAD
    rows = []
    for line in (BAD / "bnb.tsv").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            argv, code, needle = line.split("\t")
            rows.append((argv, int(code), needle))
    return rows


@pytest.mark.parametrize("argv,code,needle", _bad_rows())
def test_bad_input_one_line_no_output(tmp_path, argv, code, needle):
    from conftest import BAD
    out = tmp_path / "out.safetensors"
    args = argv.replace("{BAD}", str(BAD)).replace("{OUT}", str(out)).split(" ")
    r = run(*args)
    assert_one_line_error(r, code, needle)
    assert not out.exists() and not leftovers(tmp_path)
