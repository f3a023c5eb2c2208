"""ckpt tokcheck on the real gpt-oss tokenizer and variants of it.

The expected component hashes are computed here, from Python's json module
decoding the files, by the serializations verify/tokenizer.h documents; the
gpt-oss values are also pinned (they are the test vectors of the spec,
safetensors-tokenizer.md section 5).  Variants are made with Python's json
module from the real files.
"""
import hashlib
import json
import os
import shutil
import struct

import pytest

from conftest import TOKENIZER_DIR, assert_one_line_error, run

TJ = TOKENIZER_DIR / "tokenizer.json"
TC = TOKENIZER_DIR / "tokenizer_config.json"

GOLD = {
    "tokenizer.json.md5": "50732becd3190df1ba056e6b050345eb",
    "tokenizer.json.sha256": "0614fe83cadab421296e664e1f48f4261fa8fef6e03e63bb75c20f38e37d07d3",
    "tokenizer_config.json.sha256": "9279e942392b742d633c7adbb89ebe002c98399db8926a7af5125c726f404070",
    "vocab": "3fd5c4194880915166dc03ccc8d05c52b0316651310fa0784e7b134543b70ef8",
    "merges": "55e57f3558b6fbbd762fcd6566213739f36f3f314aa9d1b7b11a84a3d6be2903",
    "added": "93ed36e2969a1b2507cc82b93160e6d220567f14f14a94ecf215c81d4e8b2c4b",
    "pipeline": "278a54c624f38637ecd8b73f2b18384aafb78427fde98cf1b8e700b901d450e0",
}

TEMPLATE = (
    "{%- for message in messages %}\n"
    "{{- '<|start|>' + message['role'] + '<|message|>' + message['content'] + '<|end|>' }}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "{{- '<|start|>assistant' }}\n"
    "{%- endif %}\n"
)


# ---- the reference serializations (tokenizer.h), from Python's decoded JSON ----

def ref_vocab(tj):
    h = hashlib.sha256()
    for tok, i in sorted(tj["model"]["vocab"].items(), key=lambda kv: kv[1]):
        b = tok.encode()
        h.update(struct.pack("<II", i, len(b)) + b)
    return h.hexdigest()


def ref_merges(tj):
    h = hashlib.sha256()
    for m in tj["model"]["merges"]:
        a, b = m if isinstance(m, list) else m.split(" ", 1)
        a, b = a.encode(), b.encode()
        h.update(struct.pack("<I", len(a)) + a + struct.pack("<I", len(b)) + b)
    return h.hexdigest()


def ref_added(tj):
    h = hashlib.sha256()
    for t in sorted(tj["added_tokens"], key=lambda t: t["id"]):
        c = t["content"].encode()
        fl = t["special"] | t["normalized"] << 1 | t["lstrip"] << 2 | t["rstrip"] << 3 | t["single_word"] << 4
        h.update(struct.pack("<II", t["id"], len(c)) + c + bytes([fl]))
    return h.hexdigest()


def ref_pipeline(tj):
    p = {k: tj.get(k) for k in ("normalizer", "pre_tokenizer", "post_processor", "decoder")}
    p["model_opts"] = {k: v for k, v in tj["model"].items() if k not in ("vocab", "merges")}
    s = json.dumps(p, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(s.encode()).hexdigest()


def ref_roles(tc, tj, cfg=None, gen=None):
    ids = {t["content"]: t["id"] for t in tj["added_tokens"]}
    lines = []
    for r in ("bos", "eos", "pad", "unk"):
        tok = tc.get(r + "_token")
        if isinstance(tok, dict):
            tok = tok["content"]
        if tok is None:
            lines.append(f"{r}\t-\t-1")
        else:
            lines.append(f"{r}\t{tok}\t{ids.get(tok, tj['model']['vocab'].get(tok, -1))}")

    def v(d, k):
        if d is None or k not in d:
            return "-"
        x = d[k]
        if x is None:
            return "null"
        return ",".join(str(i) for i in (x if isinstance(x, list) else [x]))
    for src, d in (("config", cfg), ("generation", gen)):
        for k in ("bos_token_id", "eos_token_id", "pad_token_id"):
            lines.append(f"{src}.{k}\t{v(d, k)}")
    return hashlib.sha256(("\n".join(lines) + "\n").encode()).hexdigest()


@pytest.fixture(scope="module")
def real():
    return json.loads(TJ.read_text(encoding="utf-8")), json.loads(TC.read_text(encoding="utf-8"))


def identity(path, *extra):
    r = run("tokcheck", "--json", *extra, path)
    assert r.code == 0, r
    return json.loads(r.out)


def make_dir(base, name, tj=None, tc=None, *, tj_dump=None, extra=None):
    """A tokenizer folder: tokenizer.json linked from the real one unless tj is given."""
    d = base / name
    d.mkdir()
    if tj is None:
        os.symlink(TJ, d / "tokenizer.json")
    else:
        with open(d / "tokenizer.json", "w", encoding="utf-8") as f:
            (tj_dump or (lambda o, f: json.dump(o, f, ensure_ascii=False)))(tj, f)
    if tc is None:
        os.symlink(TC, d / "tokenizer_config.json")
    else:
        (d / "tokenizer_config.json").write_text(json.dumps(tc, indent=2, ensure_ascii=False))
    for k, v in (extra or {}).items():
        (d / k).write_text(v)
    return d


# ---- identity ----

def test_real_file_digests_and_component_hashes(real):
    tj, tc = real
    j = identity(TOKENIZER_DIR)
    files = j["files"]
    assert files["tokenizer.json"]["md5"] == GOLD["tokenizer.json.md5"]
    assert files["tokenizer.json"]["sha256"] == GOLD["tokenizer.json.sha256"]
    assert files["tokenizer.json"]["size"] == TJ.stat().st_size == 27868174
    assert files["tokenizer_config.json"]["sha256"] == GOLD["tokenizer_config.json.sha256"]
    assert files["tokenizer_config.json"]["md5"] == hashlib.md5(TC.read_bytes()).hexdigest()
    assert files["special_tokens_map.json"] is None and files["chat_template.jinja"] is None
    c = j["components"]
    for k in ("vocab", "merges", "added", "pipeline"):
        assert c[k] == GOLD[k], k
    assert c["vocab"] == ref_vocab(tj)
    assert c["merges"] == ref_merges(tj)
    assert c["added"] == ref_added(tj)
    assert c["pipeline"] == ref_pipeline(tj)
    assert c["roles"] == ref_roles(tc, tj)
    assert c["template"] is None and j["template"] is None
    assert j["model_type"] == "BPE"
    assert (j["vocab"], j["added"], j["tokens"]) == (len(tj["model"]["vocab"]), 21, 200019)
    assert j["merges"] == len(tj["model"]["merges"]) and j["merges_format"] == "pairs"
    assert j["roles"]["pad"] == {"token": "<|endoftext|>", "id": 199999, "source": "tokenizer_config.json"}
    assert j["roles"]["eos"]["id"] == 200002 and j["roles"]["bos"]["id"] == 199998
    assert j["roles"]["unk"] is None


def test_text_output_prints_full_digests():
    r = run("tokcheck", TOKENIZER_DIR)
    assert r.code == 0, r
    assert GOLD["tokenizer.json.md5"] in r.out and GOLD["tokenizer.json.sha256"] in r.out
    assert "special_tokens_map.json absent" in r.out
    assert "pad '<|endoftext|>'(199999)" in r.out


# ---- reformatting keeps every component hash ----

REFORMATS = {
    "compact": lambda o, f: json.dump(o, f, ensure_ascii=False, separators=(",", ":")),
    "indent4-ascii": lambda o, f: json.dump(o, f, indent=4),
    "legacy-merges": lambda o, f: json.dump(o, f, ensure_ascii=False, indent=1),
}


@pytest.fixture(scope="module")
def reformatted(real, tmp_path_factory):
    tj, tc = real
    base = tmp_path_factory.mktemp("reformat")
    out = {}
    for name, dump in REFORMATS.items():
        o = tj
        if name == "legacy-merges":
            o = dict(tj, model=dict(tj["model"], merges=[" ".join(m) for m in tj["model"]["merges"]]))
        # Key order shuffled too: the hashes must not depend on it.
        o = dict(reversed(list(o.items())))
        out[name] = make_dir(base, name, o, dict(reversed(list(tc.items()))), tj_dump=dump)
    return out


@pytest.mark.parametrize("name", list(REFORMATS))
def test_reformatting_keeps_component_hashes(reformatted, name):
    d = reformatted[name]
    j = identity(d)
    assert j["files"]["tokenizer.json"]["md5"] != GOLD["tokenizer.json.md5"]
    for k in ("vocab", "merges", "added", "pipeline"):
        assert j["components"][k] == GOLD[k], k
    assert j["merges_format"] == ("legacy" if name == "legacy-merges" else "pairs")
    r = run("tokcheck", "--strict", TOKENIZER_DIR, d)
    assert r.code == 0, r
    assert "files     differs: tokenizer.json bytes differ" in r.out
    for k in ("vocab", "merges", "added", "pipeline", "roles"):
        assert f"\n{k:<9} same\n" in r.out, k
    if name == "legacy-merges":
        assert "merges format pairs -> legacy" in r.out


# ---- changes that must be seen ----

def test_one_vocab_string_changed_breaks(real, tmp_path):
    tj, tc = real
    vocab = dict(tj["model"]["vocab"])
    del vocab["Hello"]
    vocab["Hallo-x"] = 13225
    t2 = dict(tj, model=dict(tj["model"], vocab=vocab))
    d = make_dir(tmp_path, "v", t2)
    j = identity(d)
    assert j["components"]["vocab"] == ref_vocab(t2) != GOLD["vocab"]
    r = run("tokcheck", TOKENIZER_DIR, d)
    assert r.code == 1, r
    assert "vocab     differs: 1 ids with another string, 0 only in A, 0 only in B" in r.out
    assert "id 13225: 'Hello' -> 'Hallo-x'" in r.out
    assert "[breaking]" in r.out and "verdict   breaking (exit 1)" in r.out


def test_added_token_id_changed_breaks(real, tmp_path):
    tj, tc = real
    added = [dict(t) for t in tj["added_tokens"]]
    added[-1]["id"] = 200020                      # <|endofprompt|> 200018 -> 200020
    t2 = dict(tj, added_tokens=added)
    d = make_dir(tmp_path, "a", t2)
    assert identity(d)["components"]["added"] == ref_added(t2) != GOLD["added"]
    r = run("tokcheck", "--json", TOKENIZER_DIR, d)
    assert r.code == 1, r
    j = json.loads(r.out)
    comp = {c["name"]: c for c in j["components"]}
    assert comp["added"]["severity"] == "breaking"
    assert "'<|endofprompt|>' moved: id 200018 -> 200020" in comp["added"]["details"]
    assert comp["vocab"]["severity"] == "same"
    assert j["severity"] == "breaking" and j["exit"] == 1


def test_pad_changed_is_a_warning(real, tmp_path):
    tj, tc = real
    tc2 = dict(tc, pad_token="<|reserved_200017|>")
    d = make_dir(tmp_path, "p", None, tc2)
    j = identity(d)
    assert j["components"]["roles"] == ref_roles(tc2, tj) != ref_roles(tc, tj)
    assert j["roles"]["pad"]["id"] == 200017
    r = run("tokcheck", TOKENIZER_DIR, d)
    assert r.code == 0, r
    assert "pad '<|endoftext|>'(199999) -> '<|reserved_200017|>'(200017)" in r.out
    assert "roles     differs: 1 role changed [warning]" in r.out
    r = run("tokcheck", "--strict", TOKENIZER_DIR, d)
    assert r.code == 1, r


def test_chat_template_changed_is_a_warning(tmp_path):
    a = make_dir(tmp_path, "a", extra={"chat_template.jinja": TEMPLATE})
    b = make_dir(tmp_path, "b", extra={"chat_template.jinja": TEMPLATE.replace("<|end|>", "<|return|>")
                                       + "{#- trailing #}\n"})
    ja, jb = identity(a), identity(b)
    assert ja["components"]["template"] == hashlib.sha256(TEMPLATE.encode()).hexdigest()
    assert ja["template"] == {"origin": "chat_template.jinja", "shadowed_jinja": False}
    assert jb["components"]["template"] != ja["components"]["template"]
    r = run("tokcheck", a, b)
    assert r.code == 0, r
    assert "template  differs: +2/-1 lines (chat_template.jinja -> chat_template.jinja) [warning]" in r.out
    r = run("tokcheck", "--strict", "--diff", a, b)
    assert r.code == 1, r
    assert "-{{- '<|start|>' + message['role'] + '<|message|>' + message['content'] + '<|end|>' }}" in r.out
    assert "+{{- '<|start|>' + message['role'] + '<|message|>' + message['content'] + '<|return|>' }}" in r.out
    assert "+{#- trailing #}" in r.out


def test_embedded_template_wins_over_jinja(real, tmp_path):
    tj, tc = real
    d = make_dir(tmp_path, "e", None, dict(tc, chat_template="{{ 'embedded' }}"),
                 extra={"chat_template.jinja": TEMPLATE})
    j = identity(d)
    assert j["template"] == {"origin": "tokenizer_config.json", "shadowed_jinja": True}
    assert j["components"]["template"] == hashlib.sha256(b"{{ 'embedded' }}").hexdigest()


def test_dropped_merge_breaks(real, tmp_path):
    tj, tc = real
    merges = list(tj["model"]["merges"])
    dropped = merges.pop(1000)
    t2 = dict(tj, model=dict(tj["model"], merges=merges))
    d = make_dir(tmp_path, "m", t2)
    assert identity(d)["components"]["merges"] == ref_merges(t2) != GOLD["merges"]
    r = run("tokcheck", TOKENIZER_DIR, d)
    assert r.code == 1, r
    assert f"merges    differs: {len(merges) + 1} -> {len(merges)} merges, 1 only in A, 0 only in B, " \
           "ranks differ from 1000 on [breaking]" in r.out
    assert f"rank 1000 only in A: '{dropped[0]}' '{dropped[1]}'" in r.out


# ---- --expect ----

def test_expect_pins_components():
    r = run("tokcheck", "--expect", "vocab=" + GOLD["vocab"], "--expect", "tokenizer.json=" +
            GOLD["tokenizer.json.sha256"], TOKENIZER_DIR)
    assert r.code == 0, r
    r = run("tokcheck", "--expect", "merges=" + GOLD["vocab"], TOKENIZER_DIR)
    assert r.code == 1, r
    assert "merges: " + GOLD["merges"] + ", expected " + GOLD["vocab"] + " [mismatch]" in r.out
    all_hash = identity(TOKENIZER_DIR)["components"]["all"]
    assert run("tokcheck", "--expect", all_hash, TOKENIZER_DIR).code == 0
    r = run("tokcheck", "--expect", "vocab=123", TOKENIZER_DIR)
    assert r.code == 2, r
    r = run("tokcheck", "--expect", "nosuch=" + GOLD["vocab"], TOKENIZER_DIR)
    assert r.code == 2, r


def test_help():
    r = run("tokcheck", "-h")
    assert r.code == 0 and "--strict" in r.out and "--expect" in r.out and "--diff" in r.out
