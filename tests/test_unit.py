"""Run each C unit-test binary (tests/unit/test_*.c, built into $CKPT_BUILD/tests)."""
import subprocess

import pytest

from conftest import BUILD, ROOT

UNITS = sorted(p.stem for p in (ROOT / "tests" / "unit").glob("test_*.c"))


@pytest.mark.parametrize("name", UNITS)
def test_unit(name):
    exe = BUILD / "tests" / name
    assert exe.exists(), f"{exe} not built"
    p = subprocess.run([str(exe)], capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert p.returncode == 0, p.stdout[-6000:] + p.stderr[-3000:]
    assert "not ok" not in p.stdout, p.stdout[-6000:]
