"""Shared fixtures for the ckpt test suite.

The suite runs against the binary in $CKPT_BUILD (build/ by default, build-asan/
under `make asan`).  Tests make their scratch data in pytest's tmp_path and
compare our outputs with what the real libraries (safetensors, gguf-py, numpy,
ml_dtypes) read or compute, never with our own earlier output.
"""
import os
import pathlib
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
BUILD = pathlib.Path(os.environ.get("CKPT_BUILD", ROOT / "build"))
CKPT = BUILD / "ckpt"
FIXTURES = ROOT / "tests" / "fixtures"
BAD = ROOT / "tests" / "bad"
SHARED = ROOT.parent / "shared"
TOKENIZER_DIR = SHARED / "data" / "gpt-oss-tokenizer"
SANITIZED = bool(os.environ.get("CKPT_SANITIZED"))


class Result:
    def __init__(self, p):
        self.code = p.returncode
        self.out = p.stdout
        self.err = p.stderr

    def __repr__(self):
        return f"<exit {self.code}\nstdout: {self.out[:2000]!r}\nstderr: {self.err[:2000]!r}>"


def run(*args, input=None, env=None, cwd=None, timeout=600, text=True):
    """Run `ckpt ARGS...`; returns a Result with code, out, err."""
    e = dict(os.environ)
    if env:
        e.update(env)
    p = subprocess.run([str(CKPT), *map(str, args)], input=input, capture_output=True,
                       env=e, cwd=cwd, timeout=timeout, text=text)
    r = Result(p)
    # A sanitizer report is always a failure, whatever the exit code says.
    err = r.err if text else r.err.decode("utf-8", "replace")
    assert "ERROR: AddressSanitizer" not in err and "runtime error:" not in err, r
    return r


def assert_one_line_error(r, code, *needles):
    """A bad input: non-zero exit `code`, exactly one line on stderr naming the problem."""
    assert r.code == code, r
    lines = [l for l in r.err.splitlines() if l.strip()]
    assert len(lines) == 1, r
    assert lines[0].startswith("ckpt"), r
    for n in needles:
        assert n in lines[0], (n, r)


def leftovers(directory):
    """Temporary files a run may have left behind in directory."""
    return sorted(p.name for p in pathlib.Path(directory).iterdir() if ".ckpt-tmp" in p.name)


@pytest.fixture
def ckpt():
    return run
