#!/usr/bin/env python3
"""Make tests/fixtures/gguf/ with gguf-py (the reference GGUF writer and quantizer).

    FIXTURE_VENV=/path/to/venv sh -c '$FIXTURE_VENV/bin/python scripts/make-fixtures-gguf.py'

(the venv comes from `sh scripts/ensure-venv.sh "$FIXTURE_VENV" scripts/requirements-fixtures.txt`).

Writes
  tests/fixtures/gguf/q8_0.gguf   written by gguf.GGUFWriter: tensor "x" (F32, [N, 32]) and
                                  tensor "q" = gguf.quants.quantize(x, Q8_0), the reference bytes
                                  the C quantizer must reproduce (tests/unit/test_gguf.c)
  tests/fixtures/gguf/VERSIONS.txt  the library versions used (appended)

The rows of x are chosen to hit the traps: ties at .5 after the scale (roundf rounds half
away from zero), scales that are not exact (x * (1/d) instead of x / d), an all-zero block,
d below the f16 normal range (subnormal and zero f16 scales), d above 65504 (an inf scale),
signed zeros, the largest floats, and plain random rows at several magnitudes.
"""
import pathlib
import sys

import numpy as np
import gguf

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "gguf"


def rows():
    rng = np.random.default_rng(8)
    r = []
    for scale in (1e-3, 1.0, 1e3):
        for _ in range(8):
            r.append(rng.standard_normal(32) * scale)
    tie = np.array([127.0] + [k + 0.5 for k in range(-15, 16)])        # d = 1: exact ties
    r.append(tie)
    r.append(-tie)
    r.append(tie * 3.0)                     # d = 3, id = 1/3 rounded: near-ties
    r.append(tie * 0.1)
    r.append(np.zeros(32))
    z = np.zeros(32)
    z[5] = -0.0
    z[7] = 1e-3
    r.append(z)
    r.append(rng.standard_normal(32) * 1e-6)    # d ~ 1e-8: an f16-subnormal scale
    r.append(rng.standard_normal(32) * 1e-9)    # d rounds to f16 zero, codes are not zero
    r.append(rng.standard_normal(32) * 1e7)     # d > 65504: an inf f16 scale
    big = np.full(32, 3.0e38)
    big[::2] *= -1
    big[3] = 1.0
    r.append(big)
    one = np.zeros(32)
    one[31] = -5.0
    r.append(one)                               # one value, the last one, negative
    r.append(rng.integers(-127, 128, 32).astype(np.float64) * (1.0 / 7.0))
    return np.stack(r).astype(np.float32)


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    x = rows()
    q = gguf.quants.quantize(x, gguf.GGMLQuantizationType.Q8_0)
    w = gguf.GGUFWriter(str(OUT / "q8_0.gguf"), "test")
    w.add_tensor("x", x)
    w.add_tensor("q", q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    from importlib.metadata import version
    with open(OUT / "VERSIONS.txt", "a") as f:
        f.write(f"# scripts/make-fixtures-gguf.py\ngguf=={version('gguf')}\nnumpy=={np.__version__}\n"
                f"python=={sys.version.split()[0]}\n")
    print(f"{x.shape[0]} blocks")


if __name__ == "__main__":
    main()
