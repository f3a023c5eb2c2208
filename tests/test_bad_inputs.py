"""Hostile inputs: every file in tests/bad/ is run through the tool its table names.

Each tests/bad/<area>.tsv row is: argv (space separated; {BAD} is tests/bad, {OUT} a fresh
output path in a scratch folder), the expected exit code, and a needle the one error line
must contain.  Every case must give exactly one stderr line, that exit code, and leave
nothing behind in the scratch folder (no output, no temporary file).
"""
import pathlib

import pytest

from conftest import BAD, assert_one_line_error, run


def cases():
    out = []
    for tsv in sorted(BAD.glob("*.tsv")):
        for n, line in enumerate(tsv.read_text().splitlines(), 1):
            if not line.strip() or line.startswith("#"):
                continue
            cols = line.split("\t")
            assert len(cols) == 3, f"{tsv.name}:{n}: want 3 tab-separated columns"
            out.append(pytest.param(cols[0], int(cols[1]), cols[2], id=f"{tsv.stem}:{n}"))
    return out


@pytest.mark.parametrize("argv,code,needle", cases())
def test_bad_input(tmp_path, argv, code, needle):
    scratch = tmp_path / "out"
    scratch.mkdir()
    args = [a.replace("{BAD}", str(BAD)).replace("{OUT}", str(scratch / "result")) for a in argv.split()]
    before = {p: p.stat().st_mtime_ns for p in BAD.rglob("*")}
    r = run(*args, timeout=60)
    assert_one_line_error(r, code, needle)
    assert list(scratch.iterdir()) == [], "a failed run left files behind"
    assert {p: p.stat().st_mtime_ns for p in BAD.rglob("*")} == before, "an input was modified"


def test_enough_cases():
    assert len(cases()) >= 30
