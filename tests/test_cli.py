"""The dispatcher: help, exit-code table, unknown tools."""
import re

import pytest

from conftest import assert_one_line_error, run

TOOLS = ["ls", "cp", "tokcheck", "merge-lora", "dequant-nf4", "quant-bnb", "quant-mxfp4",
         "dequant-mxfp4", "to-gguf"]


def built():
    r = run("--help")
    return [t for t in TOOLS if re.search(rf"^\s+{re.escape(t)}\s", r.out, re.M)]


def test_help_lists_exit_codes():
    r = run("--help")
    assert r.code == 0
    for code in "01234":
        assert re.search(rf"^\s+{code}\s", r.out, re.M), r.out
    assert "ls" in built() and "cp" in built()


@pytest.mark.parametrize("tool", TOOLS)
def test_tool_help(tool):
    if tool not in built():
        pytest.skip(f"{tool} is not built into this ckpt yet")
    for args in (["help", tool], [tool, "--help"], [tool, "-h"]):
        r = run(*args)
        assert r.code == 0, r
        assert f"ckpt {tool}" in r.out, r


def test_unknown_tool_and_option():
    assert_one_line_error(run("frobnicate"), 2, "frobnicate")
    assert_one_line_error(run("ls", "--no-such-option", "x"), 2, "no-such-option")
    assert run().code == 2


def test_version():
    r = run("--version")
    assert r.code == 0 and r.out.startswith("ckpt ")


def test_man_page_has_the_exit_code_table():
    from conftest import ROOT
    man = (ROOT / "cmd" / "ckpt.1").read_text()
    for code in "01234":
        assert f".B {code}\n" in man
    for tool in TOOLS:
        assert tool in man


def test_short_options_take_attached_values_and_bundle():
    from conftest import FIXTURES
    m = FIXTURES / "tiny-llama"
    a = run("ls", "-j1", "-l", "--sha256", m)
    b = run("ls", "-j", "1", "-l", "--sha256", m)
    assert a.code == 0 and a.out == b.out and "model.safetensors" in a.out
    assert_one_line_error(run("ls", "-lq", m), 2, "-lq")


@pytest.mark.parametrize("tool,what", [("dequant-mxfp4", "MXFP4"), ("dequant-nf4", "bitsandbytes")])
def test_dequant_of_a_plain_model_says_it_only_copied(tmp_path, tool, what):
    from conftest import FIXTURES
    if tool not in built():
        pytest.skip(f"{tool} is not built")
    r = run(tool, FIXTURES / "tiny-gpt-oss", tmp_path / "out")
    assert r.code == 0 and what in r.err and "plain copy" in r.err, r
    src = FIXTURES / ("mxfp4/tiny-gpt-oss-mxfp4" if tool == "dequant-mxfp4" else "bnb/tiny-gpt-oss-bnb-nf4")
    r = run(tool, src, tmp_path / "out2")
    assert r.code == 0 and "plain copy" not in r.err, r
