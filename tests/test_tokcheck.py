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

from conftest import FIXTURES, TOKENIZER_DIR, assert_one_line_error, run

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


def compare(a, b, code, *extra):
    """tokcheck --json A B: the report, its components by name, and B's hashes."""
    r = run("tokcheck", "--json", *extra, a, b)
    assert r.code == code, r
    j = json.loads(r.out)
    return j, {c["name"]: c for c in j["components"]}, j["hashes"]["b"]


def make_dir(base, name, tj=None, tc=None, *, tj_dump=None, extra=None):
    """A tokenizer folder: tokenizer.json linked from the real one unless tj is given."""
    d = base / name
    d.mkdir()
    if tj is False:
        pass
    elif tj is None:
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
    assert j["consistency"] == [] and j["expect_mismatch"] == []


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
    j, comp, hb = compare(TOKENIZER_DIR, d, 0, "--strict")
    for k in ("vocab", "merges", "added", "pipeline"):
        assert hb[k] == GOLD[k], k
        assert comp[k]["severity"] == "same" and comp[k]["summary"] == "same", k
    assert comp["roles"]["severity"] == "same"
    assert comp["files"] == {"name": "files", "severity": "cosmetic", "details": [],
                             "summary": "differs: tokenizer.json bytes differ, tokenizer_config.json bytes differ"}
    assert j["severity"] == "cosmetic" and j["exit"] == 0
    if name == "legacy-merges":
        assert comp["cosmetic"]["summary"] == "merges format pairs -> legacy \"a b\""
    else:
        assert comp["cosmetic"]["severity"] == "same"


# ---- changes that must be seen ----

def test_one_vocab_string_changed_breaks(real, tmp_path):
    tj, tc = real
    vocab = dict(tj["model"]["vocab"])
    del vocab["Hello"]
    vocab["Hallo-x"] = 13225
    t2 = dict(tj, model=dict(tj["model"], vocab=vocab))
    d = make_dir(tmp_path, "v", t2)
    j, comp, hb = compare(TOKENIZER_DIR, d, 1)
    assert hb["vocab"] == ref_vocab(t2) != GOLD["vocab"]
    assert comp["vocab"]["severity"] == "breaking"
    assert comp["vocab"]["summary"] == f"differs: 1 ids with another string, 0 only in A, 0 only in B " \
                                       f"({len(vocab)} -> {len(vocab)} entries)"
    assert comp["vocab"]["details"] == ["id 13225: 'Hello' -> 'Hallo-x'"]
    assert hb["merges"] == GOLD["merges"] and comp["merges"]["severity"] == "same"
    assert j["severity"] == "breaking" and j["exit"] == 1


def test_added_token_id_changed_breaks(real, tmp_path):
    tj, tc = real
    added = [dict(t) for t in tj["added_tokens"]]
    added[-1]["id"] = 200020                      # <|endofprompt|> 200018 -> 200020
    t2 = dict(tj, added_tokens=added)
    d = make_dir(tmp_path, "a", t2)
    j, comp, hb = compare(TOKENIZER_DIR, d, 1)
    assert hb["added"] == ref_added(t2) != GOLD["added"]
    assert comp["added"]["severity"] == "breaking"
    assert "'<|endofprompt|>' moved: id 200018 -> 200020" in comp["added"]["details"]
    assert comp["vocab"]["severity"] == "same"
    assert j["severity"] == "breaking" and j["exit"] == 1


def test_pad_changed_is_a_warning(real, tmp_path):
    tj, tc = real
    tc2 = dict(tc, pad_token="<|reserved_200017|>")
    d = make_dir(tmp_path, "p", None, tc2)
    r = run("tokcheck", TOKENIZER_DIR, d)
    assert r.code == 0, r
    assert "pad '<|endoftext|>'(199999) -> '<|reserved_200017|>'(200017)" in r.out
    assert "roles     differs: 1 role changed [warning]" in r.out
    j, comp, hb = compare(TOKENIZER_DIR, d, 1, "--strict")
    assert hb["roles"] == ref_roles(tc2, tj) != ref_roles(tc, tj)
    assert comp["roles"]["severity"] == "warning" and j["severity"] == "warning"


def test_chat_template_changed_is_a_warning(tmp_path):
    # Only the real tokenizer_config.json: the template does not need the 28 MB file.
    a = make_dir(tmp_path, "a", False, extra={"chat_template.jinja": TEMPLATE})
    b = make_dir(tmp_path, "b", False, extra={"chat_template.jinja": TEMPLATE.replace("<|end|>", "<|return|>")
                                              + "{#- trailing #}\n"})
    ja = identity(a)
    assert ja["components"]["template"] == hashlib.sha256(TEMPLATE.encode()).hexdigest()
    assert ja["template"] == {"origin": "chat_template.jinja", "shadowed_jinja": False}
    r = run("tokcheck", a, b)
    assert r.code == 0, r
    assert "template  differs: +2/-1 lines (chat_template.jinja -> chat_template.jinja) [warning]" in r.out
    r = run("tokcheck", "--strict", "--diff", a, b)
    assert r.code == 1, r
    assert "-{{- '<|start|>' + message['role'] + '<|message|>' + message['content'] + '<|end|>' }}" in r.out
    assert "+{{- '<|start|>' + message['role'] + '<|message|>' + message['content'] + '<|return|>' }}" in r.out
    assert "+{#- trailing #}" in r.out
    # The unified diff is the one difflib writes (same hunks, same lines).
    import difflib
    want = "".join(difflib.unified_diff(TEMPLATE.splitlines(True), (b / "chat_template.jinja").read_text()
                                        .splitlines(True), "A/chat_template.jinja", "B/chat_template.jinja"))
    assert want in r.out


def test_embedded_template_wins_over_jinja(real, tmp_path):
    tj, tc = real
    d = make_dir(tmp_path, "e", False, dict(tc, chat_template="{{ 'embedded' }}"),
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
    r = run("tokcheck", TOKENIZER_DIR, d)
    assert r.code == 1, r
    assert f"merges    differs: {len(merges) + 1} -> {len(merges)} merges, 1 only in A, 0 only in B, " \
           "ranks differ from 1000 on [breaking]" in r.out
    assert f"rank 1000 only in A: '{dropped[0]}' '{dropped[1]}'" in r.out
    assert "verdict   breaking (exit 1)" in r.out
    assert run("tokcheck", "--json", d).out.count(ref_merges(t2)) == 1
    assert ref_merges(t2) != GOLD["merges"]


# ---- --expect ----

def test_expect_pins_components(tmp_path):
    d = make_dir(tmp_path, "x", False)
    want = hashlib.sha256(TC.read_bytes()).hexdigest()
    r = run("tokcheck", "--expect", "added=" + GOLD["added"], "--expect", "tokenizer_config.json=" + want, d)
    assert r.code == 0, r
    r = run("tokcheck", "--expect", "added=" + GOLD["vocab"], d)
    assert r.code == 1, r
    assert "added: " + GOLD["added"] + ", expected " + GOLD["vocab"] + " [mismatch]" in r.out
    r = run("tokcheck", "--expect", "vocab=" + GOLD["vocab"], d)
    assert r.code == 1 and "vocab: absent, expected" in r.out, r
    r = run("tokcheck", "--json", "--expect", "added=" + GOLD["vocab"], "--expect", "vocab=" + GOLD["vocab"], d)
    assert r.code == 1, r
    assert json.loads(r.out)["expect_mismatch"] == [
        {"component": "added", "expected": GOLD["vocab"], "actual": GOLD["added"]},
        {"component": "vocab", "expected": GOLD["vocab"], "actual": None}]
    all_hash = identity(d)["components"]["all"]
    assert identity(d, "--expect", all_hash)["expect_mismatch"] == []
    assert run("tokcheck", "--expect", all_hash, d).code == 0
    assert run("tokcheck", "--expect", all_hash.upper(), d).code == 0
    assert_one_line_error(run("tokcheck", "--expect", "vocab=123", d), 2, "64 hex digits")
    assert_one_line_error(run("tokcheck", "--expect", "nosuch=" + GOLD["vocab"], d), 2, "unknown component")


def test_help():
    r = run("tokcheck", "-h")
    assert r.code == 0 and "--strict" in r.out and "--expect" in r.out and "--diff" in r.out


# ---- other model types hash too ----

def small_tokenizer(model):
    return {"version": "1.0", "truncation": None, "padding": None,
            "added_tokens": [{"id": 0, "content": "[UNK]", "single_word": False, "lstrip": False,
                              "rstrip": False, "normalized": False, "special": True}],
            "normalizer": {"type": "BertNormalizer", "clean_text": True, "handle_chinese_chars": True,
                           "strip_accents": None, "lowercase": True},
            "pre_tokenizer": {"type": "Whitespace"}, "post_processor": None,
            "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": True}, "model": model}


def ref_unigram_vocab(tj):
    h = hashlib.sha256()
    for i, (piece, score) in enumerate(tj["model"]["vocab"]):
        b = piece.encode()
        h.update(struct.pack("<II", i, len(b)) + b + struct.pack("<d", score))
    return h.hexdigest()


@pytest.mark.parametrize("kind", ["WordPiece", "WordLevel", "Unigram"])
def test_other_model_types_hash(tmp_path, kind):
    if kind == "Unigram":
        model = {"type": "Unigram", "unk_id": 0, "byte_fallback": False,
                 "vocab": [["[UNK]", 0.0], ["\u2581the", -2.5], ["\u00e9t\u00e9", -7.125], ["x\"\\", -1e-3]]}
    else:
        model = {"type": kind, "unk_token": "[UNK]",
                 "vocab": {"[UNK]": 0, "the": 1, "##s": 2, "\u00e9t\u00e9": 3, "x\"\\\t": 4}}
        if kind == "WordPiece":
            model.update(continuing_subword_prefix="##", max_input_chars_per_word=100)
    tj = small_tokenizer(model)
    d = tmp_path / kind
    d.mkdir()
    (d / "tokenizer.json").write_text(json.dumps(tj, indent=3))
    j = identity(d)
    assert j["model_type"] == kind
    assert j["components"]["vocab"] == (ref_unigram_vocab(tj) if kind == "Unigram" else ref_vocab(tj))
    assert j["components"]["pipeline"] == ref_pipeline(tj)
    assert j["components"]["added"] == ref_added(tj)
    assert j["merges"] == 0 and j["merges_format"] == "none"
    # A float score change is a vocab change for Unigram.
    if kind == "Unigram":
        tj["model"]["vocab"][1][1] = -2.5000001
        (d / "tokenizer.json").write_text(json.dumps(tj))
        assert identity(d)["components"]["vocab"] == ref_unigram_vocab(tj) != j["components"]["vocab"]


def test_numbers_beyond_64_bits_are_fine(real, tmp_path):
    tj, tc = real
    assert tc["model_max_length"] > 2 ** 64        # the real file already has int(1e30)
    d = make_dir(tmp_path, "n", None, dict(tc, model_max_length=10 ** 400))
    (d / "config.json").write_text('{"vocab_size": 201088, "rope_theta": 1e400, "x": -1e-400}')
    j = identity(d)
    assert j["components"]["roles"] == ref_roles(tc, tj, {"vocab_size": 201088})
    r = run("tokcheck", "--strict", TOKENIZER_DIR, d)
    assert r.code == 0, r
    assert "cosmetic  tokenizer_config.json model_max_length 1e+30 -> 1e999" in r.out


def test_huge_file_is_refused(tmp_path):
    d = tmp_path / "huge"
    d.mkdir()
    with open(d / "tokenizer.json", "wb") as f:
        f.truncate((256 << 20) + 1)                 # sparse: no disk used
    r = run("tokcheck", d)
    assert_one_line_error(r, 3, "tokenizer.json", "limit")


def test_missing_files_compare_what_exists(real, tmp_path):
    tj, tc = real
    d = tmp_path / "cfg-only"
    d.mkdir()
    shutil.copy(TC, d / "tokenizer_config.json")
    j = identity(d)
    assert j["files"]["tokenizer.json"] is None
    assert j["components"]["vocab"] is None and j["components"]["added"] == GOLD["added"]
    assert j["components"]["roles"] == ref_roles(tc, tj)
    r = run("tokcheck", TOKENIZER_DIR, d)
    assert r.code == 0, r
    assert "files     differs: tokenizer.json absent in B [cosmetic]" in r.out
    assert "vocab     not compared: no tokenizer.json in B [warning]" in r.out
    assert "added     same" in r.out and "roles     same" in r.out
    assert run("tokcheck", "--strict", TOKENIZER_DIR, d).code == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(run("tokcheck", empty), 3, "no tokenizer files")
    r = run("tokcheck", TOKENIZER_DIR, empty)
    assert r.code == 0 and "vocab     not compared: no tokenizer.json in B [warning]" in r.out, r


# ---- against the weights, on the tiny gpt-oss and the LoRA fixtures ----

def st_rows(path, name):
    from safetensors import safe_open
    with safe_open(str(path), "np") as f:
        return f.get_slice(name).get_shape()[0]


def test_tiny_gpt_oss_ids_fit_the_embedding():
    tiny = FIXTURES / "tiny-gpt-oss"
    idx = json.loads((tiny / "model.safetensors.index.json").read_text())
    rows = st_rows(tiny / idx["weight_map"]["model.embed_tokens.weight"], "model.embed_tokens.weight")
    tj = json.loads((tiny / "tokenizer.json").read_text())
    ntok = 1 + max([*tj["model"]["vocab"].values()] + [t["id"] for t in tj["added_tokens"]])
    assert ntok <= rows
    j = identity(tiny)
    assert j["tokens"] == ntok
    assert j["embedding"] == {"ok": True, "summary": f"ok: {rows} rows (model.embed_tokens.weight) "
                                                     f"for {ntok} token ids"}
    assert j["roles"]["pad"]["id"] == tj["model"]["vocab"].get("<|endoftext|>", 353)


def test_lora_fixture_tokenizers():
    tiny, lora = FIXTURES / "tiny-gpt-oss", FIXTURES / "lora"
    r = run("tokcheck", tiny, lora / "oss-tok-pad")
    assert r.code == 0, r
    tc = json.loads((lora / "oss-tok-pad" / "tokenizer_config.json").read_text())
    pad = tc["pad_token"]
    pid = json.loads((lora / "oss-tok-pad" / "tokenizer.json").read_text())
    pid = {t["content"]: t["id"] for t in pid["added_tokens"]}[pad]
    assert f"pad '<|endoftext|>'(353) -> '{pad}'({pid})" in r.out
    assert run("tokcheck", "--strict", tiny, lora / "oss-tok-pad").code == 1
    a = json.loads((tiny / "tokenizer.json").read_text())["model"]["vocab"]
    b = json.loads((lora / "oss-tok-vocab" / "tokenizer.json").read_text())["model"]["vocab"]
    ra, rb = {v: k for k, v in a.items()}, {v: k for k, v in b.items()}
    diff = [i for i in ra if ra[i] != rb.get(i)]
    r = run("tokcheck", tiny, lora / "oss-tok-vocab")
    assert r.code == 1, r
    assert f"vocab     differs: {len(diff)} ids with another string" in r.out
    assert f"id {diff[0]}: '{ra[diff[0]]}' -> '{rb[diff[0]]}'" in r.out


def write_st(path, tensors):
    import numpy as np
    from safetensors.numpy import save_file
    save_file({k: np.zeros(v, dtype=np.float32) for k, v in tensors.items()}, str(path))


def test_token_ids_beyond_embedding_rows(tmp_path):
    tiny = FIXTURES / "tiny-gpt-oss"
    d = tmp_path / "short"
    d.mkdir()
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny / f, d / f)
    write_st(d / "model.safetensors", {"model.embed_tokens.weight": (360, 4), "lm_head.weight": (360, 4)})
    tj = json.loads((d / "tokenizer.json").read_text())
    names = {t["id"]: t["content"] for t in tj["added_tokens"]}
    names.update({v: k for k, v in tj["model"]["vocab"].items()})
    r = run("tokcheck", d)
    assert r.code == 1, r
    assert f"embedding token id 360 ('{names[360]}') has no embedding row: 360 rows for 373 token ids" in r.out
    assert run("tokcheck", "--no-weights", d).code == 0


def test_adapter_embedding_rows_rule(tmp_path):
    tiny = FIXTURES / "tiny-gpt-oss"
    ad = tmp_path / "adapter"
    ad.mkdir()
    (ad / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny / f, ad / f)
    name = "base_model.model.model.embed_tokens.weight"
    write_st(ad / "adapter_model.safetensors", {name: (400, 64)})
    r = run("tokcheck", tiny, ad)
    assert r.code == 1, r
    assert "B: the adapter's embeddings have 400 rows, the base's 384" in r.out
    write_st(ad / "adapter_model.safetensors", {name: (384, 64)})
    r = run("tokcheck", tiny, ad)
    assert r.code == 0 and "embedding ok: A 384 rows for 373 token ids; B 384 rows for 373 token ids" in r.out, r
    # A resized vocabulary that the adapter's own tokenizer fills is fine.
    tj = json.loads((ad / "tokenizer.json").read_text())
    tj["added_tokens"].append({"id": 390, "content": "<|new|>", "single_word": False, "lstrip": False,
                               "rstrip": False, "normalized": False, "special": True})
    (ad / "tokenizer.json").write_text(json.dumps(tj))
    write_st(ad / "adapter_model.safetensors", {name: (392, 64)})
    r = run("tokcheck", tiny, ad)
    assert "embedding ok: A 384 rows for 373 token ids; B 392 rows for 391 token ids" in r.out, r
    assert r.code == 1 and "added     differs: 0 ids with another content, 0 moved, 0 only in A, 1 only in B" in r.out


def test_huge_id_against_rows_is_quick(tmp_path):
    d = tmp_path / "huge-id"
    d.mkdir()
    (d / "tokenizer_config.json").write_text(json.dumps(
        {"added_tokens_decoder": {"4294967294": {"content": "<|far|>", "special": True}}}))
    (d / "config.json").write_text('{"vocab_size": 10}')
    r = run("tokcheck", d, timeout=20)
    assert r.code == 1, r
    assert "embedding token id 4294967294 ('<|far|>') has no embedding row: 10 rows for 4294967295 token ids" \
        in r.out
    assert_one_line_error(run("tokcheck", d, tmp_path / "nope"), 3, "nope", "cannot open")


def test_files_of_one_folder_must_agree(tmp_path):
    """Unsloth's pad fix: tokenizer pad <|reserved_200017|>, config.json still pad_token_id = <|endoftext|>."""
    tiny = FIXTURES / "tiny-gpt-oss"
    d = tmp_path / "unsloth"
    d.mkdir()
    shutil.copy(tiny / "tokenizer.json", d / "tokenizer.json")
    tj = json.loads((tiny / "tokenizer.json").read_text())
    ids = {t["content"]: t["id"] for t in tj["added_tokens"]}
    tc = json.loads((tiny / "tokenizer_config.json").read_text())
    tc["pad_token"] = "<|reserved_200017|>"
    cfg = json.loads((tiny / "config.json").read_text())
    gen = json.loads((tiny / "generation_config.json").read_text())
    (d / "tokenizer_config.json").write_text(json.dumps(tc, indent=2))
    (d / "config.json").write_text(json.dumps(cfg))
    (d / "generation_config.json").write_text(json.dumps(gen))
    assert cfg["pad_token_id"] == gen["pad_token_id"] == ids["<|endoftext|>"]
    assert ids["<|return|>"] in gen["eos_token_id"]
    r = run("tokcheck", "--no-weights", d)
    assert r.code == 0, r
    pad = f"'<|reserved_200017|>'({ids['<|reserved_200017|>']})"
    assert "consistency 2 disagreements between the files [warning]" in r.out
    assert f"  config.json pad_token_id {cfg['pad_token_id']} does not name the tokenizer's pad {pad}" in r.out
    assert f"  generation_config.json pad_token_id {gen['pad_token_id']} does not name the tokenizer's pad " \
           f"{pad}" in r.out
    assert run("tokcheck", "--strict", "--no-weights", d).code == 1
    # tokenizer_config's added_tokens_decoder must match tokenizer.json's added_tokens.
    tid = str(ids["<|endofprompt|>"])
    tc["added_tokens_decoder"][tid]["content"] = "<|endofprompt2|>"
    tc["added_tokens_decoder"]["999"] = dict(tc["added_tokens_decoder"][tid], content="<|extra|>")
    tc["pad_token"] = "<|nosuch|>"
    (d / "tokenizer_config.json").write_text(json.dumps(tc, indent=2))
    j = identity(d, "--no-weights")
    assert j["consistency"] == [
        f"id {tid}: tokenizer.json '<|endofprompt|>' (special), tokenizer_config.json '<|endofprompt2|>' (special)",
        "id 999 '<|extra|>': in tokenizer_config.json added_tokens_decoder, not in tokenizer.json added_tokens",
        "pad token '<|nosuch|>' (tokenizer_config.json) is not a token of this tokenizer",
    ]
    assert identity(tiny)["consistency"] == []
