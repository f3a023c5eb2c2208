"""The contract every tool keeps, checked the same way for all of them.

Outputs: an output that is an input (file or folder, the output inside the input
folder, the input inside the output folder) is refused with exit 2 and the input
untouched; an existing output is refused without --force and replaced with it;
an injected write failure (CKPT_FAULT_WRITE_AT=N) or SIGINT/SIGTERM mid-run
leaves nothing behind.  Inputs: a missing path, an empty folder, a folder of the
wrong model family and a truncated shard give one line and exit 3.  Every tool
answers -h with every option of its table, and a closed stdout ends it quietly.

The inputs are the committed fixtures, copied to tmp_path when a case could
touch them.
"""
import hashlib
import os
import pathlib
import re
import shutil
import signal
import subprocess
import time

import pytest

from conftest import CKPT, FIXTURES, ROOT, assert_one_line_error, leftovers, run

TINY = FIXTURES / "tiny-gpt-oss"
LLAMA = FIXTURES / "tiny-llama"
MXFP4 = FIXTURES / "mxfp4" / "tiny-gpt-oss-mxfp4"
NF4 = FIXTURES / "bnb" / "tiny-gpt-oss-bnb-nf4"
ADAPTER = FIXTURES / "lora" / "oss-attn"

# tool -> (input model, extra arguments before the paths, output name, gpt-oss only)
WRITERS = {
    "cp": (TINY, [], "out", False),
    "merge-lora": (TINY, [], "out", False),
    "dequant-nf4": (NF4, [], "out", False),
    "quant-bnb": (TINY, [], "out", False),
    "quant-mxfp4": (TINY, ["-q"], "out", True),
    "dequant-mxfp4": (MXFP4, [], "out", True),
    "to-gguf": (TINY, [], "out.gguf", True),
}
READERS = {"ls": [], "tokcheck": []}
ALL = list(READERS) + list(WRITERS)


def argv(tool, model, out, extra=()):
    """The command line of a writer: merge-lora takes the adapter between."""
    _, pre, _, _ = WRITERS[tool]
    mid = [ADAPTER] if tool == "merge-lora" else []
    return [tool, *pre, *extra, model, *mid, out]


def tree_hash(path):
    """One hash over every file name and content under path (or of one file)."""
    h = hashlib.sha256()
    path = pathlib.Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*"))
    for p in files:
        h.update(str(p.relative_to(path) if p != path else p.name).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def copy_model(src, dst):
    shutil.copytree(src, dst)
    return dst


def no_tmp_anywhere(root):
    return [str(p) for p in pathlib.Path(root).rglob("*") if ".ckpt-tmp" in p.name]


# ---- -h lists every option of the tool's table ----------------------------------

# The options every writer spells the same way (cmd/ckpt.h).
SHARED_OPTS = {"CK_OPT_SHARD_SIZE(": "shard-size", "CK_OPT_FORCE(": "force", "CK_OPT_JOBS(": "jobs"}


def table_options(tool):
    src = (ROOT / "cmd" / (tool.replace("-", "_") + ".c")).read_text()
    opts = set(re.findall(r'CK_OPT_[A-Z]+\(\s*\'?[^,]*,\s*"([a-z0-9-]+)"', src))
    opts |= {o for macro, o in SHARED_OPTS.items() if macro in src}
    return sorted(opts)


@pytest.mark.parametrize("tool", ALL)
def test_help_lists_every_option(tool):
    opts = table_options(tool)
    assert opts, tool
    for flag in ("-h", "--help"):
        r = run(tool, flag)
        assert r.code == 0 and r.err == "", r
        assert r.out.startswith(f"usage: ckpt {tool} "), r
        for o in opts:
            assert f"--{o}" in r.out, (o, r)


# ---- outputs that are inputs -----------------------------------------------------

def overlap_cases(tool, tmp):
    """(description, argv, output kind) cases where OUT is, holds or sits in IN."""
    model, _, outname, _ = WRITERS[tool]
    m = copy_model(model, tmp / "in")
    cases = [("out is in", argv(tool, m, m, ["-f"])),
             ("in inside out", argv(tool, m, tmp, ["-f"]))]
    if not outname.endswith(".gguf"):
        # A folder written inside the folder it reads.
        cases.append(("out inside in", argv(tool, m, m / "sub")))
    # The output replaces the input file itself.
    shard = sorted(m.glob("*.safetensors"))[0]
    cases.append(("out is an input file", argv(tool, m, shard, ["-f"])))
    return m, cases


@pytest.mark.parametrize("tool", list(WRITERS))
def test_output_is_input_refused(tool, tmp_path):
    m, cases = overlap_cases(tool, tmp_path)
    before = tree_hash(m)
    for what, args in cases:
        r = run(*args)
        assert_one_line_error(r, 2)
        assert tree_hash(m) == before, (what, r)
        assert not no_tmp_anywhere(tmp_path), (what, r)
        assert not (m / "sub").exists(), (what, r)


def test_merge_lora_adapter_as_output_refused(tmp_path):
    a = copy_model(ADAPTER, tmp_path / "adapter")
    before = tree_hash(a)
    for out in (a, tmp_path):
        r = run("merge-lora", "-f", TINY, a, out)
        assert_one_line_error(r, 2)
        assert tree_hash(a) == before


# ---- --force ---------------------------------------------------------------------

@pytest.mark.parametrize("tool", list(WRITERS))
def test_existing_output_needs_force(tool, tmp_path):
    model, _, outname, _ = WRITERS[tool]
    out = tmp_path / outname
    if outname.endswith(".gguf"):
        out.write_bytes(b"old")
    else:
        out.mkdir()
        (out / "old.txt").write_text("old")
    before = tree_hash(out)
    r = run(*argv(tool, model, out))
    assert_one_line_error(r, 2, "exists")
    assert tree_hash(out) == before
    r = run(*argv(tool, model, out, ["--force"]))
    assert r.code == 0, r
    assert tree_hash(out) != before
    assert not (out / "old.txt").exists() if out.is_dir() else out.read_bytes()[:4] == b"GGUF"
    assert leftovers(tmp_path) == []


# ---- write failures and signals leave nothing ------------------------------------

@pytest.mark.parametrize("tool", list(WRITERS))
def test_write_failure_leaves_nothing(tool, tmp_path):
    model, _, outname, _ = WRITERS[tool]
    out = tmp_path / outname
    failed = 0
    for at in range(1, 40):
        r = run(*argv(tool, model, out), env={"CKPT_FAULT_WRITE_AT": str(at)})
        if r.code == 0:
            # Fewer writes than `at`: the run is complete and the output whole.
            assert out.exists()
            break
        assert_one_line_error(r, 4, "write failed")
        assert not out.exists(), (at, r)
        assert leftovers(tmp_path) == [], (at, r)
        failed += 1
    assert failed >= 1


def stop_mid_run(args, tmp, sig):
    """Start ckpt, freeze it once its temporary output exists, send sig, resume.

    Returns (exit code, whether it was caught mid-run)."""
    p = subprocess.Popen([str(CKPT), *map(str, args)], stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE)
    caught = False
    deadline = time.monotonic() + 60
    while p.poll() is None and time.monotonic() < deadline:
        if leftovers(tmp):
            os.kill(p.pid, signal.SIGSTOP)
            caught = bool(leftovers(tmp))
            os.kill(p.pid, sig if caught else signal.SIGCONT)
            if caught:
                os.kill(p.pid, signal.SIGCONT)
            break
    p.communicate(timeout=60)
    return p.returncode, caught


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("tool", list(WRITERS))
def test_signal_leaves_nothing(tool, sig, tmp_path):
    model, _, outname, _ = WRITERS[tool]
    caught = 0
    for i in range(5):
        out = tmp_path / f"{i}{outname}"
        code, mid = stop_mid_run(argv(tool, model, out), tmp_path, sig)
        if mid:
            caught += 1
            assert code == -sig, code
            assert not out.exists()
        else:
            assert code == 0
        assert leftovers(tmp_path) == []
        if caught:
            break
    if not caught:
        pytest.skip("the run always finished before the signal")


# ---- hostile inputs ---------------------------------------------------------------

def bad_inputs(tmp):
    empty = tmp / "empty"
    empty.mkdir()
    trunc = copy_model(TINY, tmp / "trunc")
    shard = trunc / "model-00002-of-00002.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[:len(data) - 100])
    # A FIFO must be refused, not opened and waited on: as the model, and as a shard.
    fifo = tmp / "fifo.safetensors"
    os.mkfifo(fifo)
    fshard = copy_model(TINY, tmp / "fifo-shard")
    (fshard / "model-00002-of-00002.safetensors").unlink()
    os.mkfifo(fshard / "model-00002-of-00002.safetensors")
    return {"missing": tmp / "nope", "empty": empty, "truncated": trunc, "fifo": fifo,
            "fifo shard": fshard}


@pytest.mark.parametrize("tool", ALL)
def test_bad_input_one_line(tool, tmp_path):
    cases = bad_inputs(tmp_path)
    if tool in READERS or WRITERS[tool][3]:
        cases["wrong family"] = LLAMA
    for what, model in cases.items():
        if tool in READERS:
            r = run(tool, model, timeout=30)
        else:
            out = tmp_path / WRITERS[tool][2]
            r = run(*argv(tool, model, out), timeout=30)
            assert not out.exists(), (what, r)
            assert leftovers(tmp_path) == [], (what, r)
        if tool in READERS and what == "wrong family":
            continue  # a llama folder is fine to list, and a fine tokenizer
        assert_one_line_error(r, 3)


def test_merge_lora_missing_or_empty_adapter(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    for a in (tmp_path / "nope", empty):
        out = tmp_path / "out"
        r = run("merge-lora", TINY, a, out)
        assert_one_line_error(r, 3)
        assert not out.exists() and leftovers(tmp_path) == []


# ---- a closed stdout ends quietly ---------------------------------------------------

STDOUT = {
    "ls": lambda tmp: ["ls", "-l", TINY],
    "tokcheck": lambda tmp: ["tokcheck", TINY],
    "to-gguf": lambda tmp: ["to-gguf", "-n", TINY],
    "merge-lora": lambda tmp: ["merge-lora", TINY, ADAPTER, tmp / "out"],
    "quant-mxfp4": lambda tmp: ["quant-mxfp4", TINY, tmp / "out"],
}


@pytest.mark.parametrize("tool", list(STDOUT))
def test_closed_stdout_quiet(tool, tmp_path):
    p = subprocess.Popen([str(CKPT), *map(str, STDOUT[tool](tmp_path))],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()
    err = p.stderr.read()
    code = p.wait()
    assert err == b"", err
    assert code in (0, 128 + signal.SIGPIPE), code
    # A tool that writes an output still writes it whole: the message is only news.
    if (tmp_path / "out").exists() or tool in ("merge-lora", "quant-mxfp4"):
        assert (tmp_path / "out").is_dir()
        assert leftovers(tmp_path) == []


@pytest.mark.parametrize("tool", [t for t in STDOUT if t != "quant-mxfp4"])  # it reports on stderr
def test_full_stdout_one_line(tool, tmp_path):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    with open("/dev/full", "w") as full:
        p = subprocess.run([str(CKPT), *map(str, STDOUT[tool](tmp_path))], stdout=full,
                           stderr=subprocess.PIPE, text=True, timeout=60)
    lines = p.stderr.splitlines()
    assert p.returncode == 4 and len(lines) == 1, (p.returncode, p.stderr)
    assert lines[0].startswith(f"ckpt {tool}: ") and "standard output" in lines[0], lines


@pytest.mark.parametrize("tool", [t for t in WRITERS if WRITERS[t][2].endswith(".gguf")] + ["cp"])
def test_file_output_with_slash_refused_first(tool, tmp_path):
    out = tmp_path / "x.gguf" if tool == "to-gguf" else tmp_path / "x.safetensors"
    model = WRITERS[tool][0]
    r = run(*argv(tool, model, str(out) + "/"))
    if tool == "cp":
        # cp decides by the name: "x.safetensors/" is a folder, and that is fine.
        assert r.code == 0, r
        assert (tmp_path / "x.safetensors").is_dir()
        return
    assert_one_line_error(r, 2, "cannot end in '/'")
    assert list(tmp_path.iterdir()) == []
