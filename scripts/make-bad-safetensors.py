#!/usr/bin/env python3
"""Write the hostile safetensors files and model folders of tests/bad/ (stdlib only).

Each case is a small file (or folder) that breaks one rule of the format; the table
tests/bad/safetensors.tsv says which tool runs on it, the exit code and a word the one
error line must hold.  Run from the repository root: python3 scripts/make-bad-safetensors.py
"""
import json
import os
import shutil
import struct

BAD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "bad")
rows = []


def st_bytes(header, data=b"", hlen=None, raw_header=None):
    h = raw_header if raw_header is not None else json.dumps(header, separators=(",", ":")).encode()
    n = len(h) if hlen is None else hlen
    return struct.pack("<Q", n) + h + data


def put(name, blob, tool="ls", code=3, needle=""):
    with open(os.path.join(BAD, name), "wb") as f:
        f.write(blob)
    rows.append((f"{tool} {{BAD}}/{name}" + (" {OUT}" if tool == "cp" else ""), code, needle))


def good(extra=None):
    h = {"a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}
    if extra:
        h.update(extra)
    return h


def folder(name, files, needle, code=3):
    d = os.path.join(BAD, name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    for fn, blob in files.items():
        with open(os.path.join(d, fn), "wb") as f:
            f.write(blob if isinstance(blob, bytes) else blob.encode())
    rows.append((f"ls {{BAD}}/{name}", code, needle))


def main():
    for f in os.listdir(BAD):
        if f.startswith("st-"):
            p = os.path.join(BAD, f)
            shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)
    z16 = bytes(16)
    put("st-empty.safetensors", b"", needle="header too small")
    put("st-short-len.safetensors", b"\x05\x00\x00", needle="header too small")
    put("st-hlen-past-eof.safetensors", st_bytes(good(), z16, hlen=4096), needle="past EOF")
    put("st-hlen-huge.safetensors", struct.pack("<Q", 1 << 62) + b"{}", needle="cap")
    put("st-hlen-max.safetensors", struct.pack("<Q", (1 << 64) - 1) + b"{}", needle="cap")
    put("st-not-json.safetensors", st_bytes(None, z16, raw_header=b"{\"a\":{\"dtype\":"), needle="not valid JSON")
    put("st-not-object.safetensors", st_bytes([1, 2, 3]), needle="not a JSON object")
    put("st-bad-utf8.safetensors", st_bytes(None, z16, raw_header=b'{"a\xff":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}'), needle="UTF-8")
    put("st-nul-name.safetensors", st_bytes(None, z16, raw_header=b'{"a\\u0000b":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}'), needle="NUL")
    put("st-junk-after.safetensors", st_bytes(None, z16, raw_header=json.dumps(good()).encode() + b"xx"), needle="junk")
    put("st-unknown-dtype.safetensors", st_bytes({"a": {"dtype": "F12", "shape": [2, 2], "data_offsets": [0, 16]}}, z16), needle="unknown dtype")
    put("st-dtype-not-string.safetensors", st_bytes({"a": {"dtype": 7, "shape": [2, 2], "data_offsets": [0, 16]}}, z16), needle="dtype")
    put("st-shape-negative.safetensors", st_bytes({"a": {"dtype": "F32", "shape": [-2, 2], "data_offsets": [0, 16]}}, z16), needle="non-negative integer")
    put("st-shape-float.safetensors", st_bytes({"a": {"dtype": "F32", "shape": [2.5, 2], "data_offsets": [0, 16]}}, z16), needle="non-negative integer")
    put("st-shape-overflow.safetensors", st_bytes({"a": {"dtype": "F32", "shape": [1 << 40, 1 << 40], "data_offsets": [0, 16]}}, z16), needle="overflows")
    put("st-bytes-overflow.safetensors", st_bytes({"a": {"dtype": "F64", "shape": [1 << 31, 1 << 31, 4], "data_offsets": [0, 16]}}, z16), needle="overflows")
    put("st-wrong-bytes.safetensors", st_bytes({"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 16]}}, z16), needle="give 24 bytes")
    put("st-offsets-reversed.safetensors", st_bytes({"a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [16, 0]}}, z16), needle="'a'")
    put("st-offset-hole.safetensors", st_bytes({"a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [8, 24]}}, bytes(24)), needle="hole")
    put("st-offset-overlap.safetensors", st_bytes({"a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
                                                  "b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}, z16), needle="overlap")
    put("st-offset-float.safetensors", st_bytes({"a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16.0001]}}, z16), needle="non-negative integer")
    put("st-offsets-one.safetensors", st_bytes({"a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0]}}, z16), needle="data_offsets")
    put("st-truncated-data.safetensors", st_bytes(good(), bytes(10)), needle="past EOF")
    put("st-trailing.safetensors", st_bytes(good(), bytes(20)), needle="trailing")
    put("st-dup-name.safetensors", st_bytes(None, bytes(32), raw_header=b'{"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},"a":{"dtype":"F32","shape":[2,2],"data_offsets":[16,32]}}'), needle="duplicate")
    put("st-meta-number.safetensors", st_bytes(good({"__metadata__": {"format": "pt", "n": 5}}), z16), needle="not a string")
    put("st-meta-not-object.safetensors", st_bytes(good({"__metadata__": "pt"}), z16), needle="__metadata__")
    put("st-f4-odd.safetensors", st_bytes({"a": {"dtype": "F4", "shape": [3], "data_offsets": [0, 2]}}, bytes(2)), needle="end on a byte")
    put("st-shape-exponent.safetensors", st_bytes(None, bytes(16), raw_header=b'{"a":{"dtype":"F32","shape":[4e0],"data_offsets":[0,16]}}'), needle="non-negative integer")
    put("st-shape-huge-int.safetensors", st_bytes(None, bytes(16), raw_header=b'{"a":{"dtype":"U8","shape":[18446744073709551616],"data_offsets":[0,16]}}'), needle="non-negative integer")
    put("st-9-dims.safetensors", st_bytes({"a": {"dtype": "U8", "shape": [1] * 9, "data_offsets": [0, 1]}}, bytes(1)), needle="dimensions")
    put("st-entry-not-object.safetensors", st_bytes({"a": [1, 2]}, z16), needle="not a JSON object")
    put("st-empty-name.safetensors", st_bytes({"": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}, z16), needle="empty tensor name")
    put("st-named-gguf.gguf", b"xx", needle="GGUF")  # a .gguf name gets the GGUF reader's error
    put("st-bad-cp.safetensors", st_bytes(good(), bytes(10)), tool="cp", needle="past EOF")

    one = st_bytes(good(), z16)
    two = st_bytes({"b": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, z16)
    idx = lambda wm: json.dumps({"metadata": {"total_size": 32}, "weight_map": wm})
    folder("st-idx-missing-shard", {"model.safetensors.index.json": idx({"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}),
                                    "model-00001-of-00002.safetensors": one}, "missing")
    folder("st-idx-absent-tensor", {"model.safetensors.index.json": idx({"a": "s1.safetensors", "zz": "s1.safetensors"}),
                                    "s1.safetensors": one}, "'zz'")
    folder("st-idx-extra-tensor", {"model.safetensors.index.json": idx({"a": "s1.safetensors"}),
                                   "s1.safetensors": st_bytes({"a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
                                                               "b": {"dtype": "F32", "shape": [4], "data_offsets": [16, 32]}}, bytes(32))}, "not in the index")
    folder("st-idx-not-json", {"model.safetensors.index.json": "{\"weight_map\": {", "s1.safetensors": one}, "JSON")
    folder("st-idx-no-map", {"model.safetensors.index.json": "{\"metadata\": {}}", "s1.safetensors": one}, "weight_map")
    folder("st-idx-path-escape", {"model.safetensors.index.json": idx({"a": "../st-idx-missing-shard/model-00001-of-00002.safetensors"})}, "plain file name")
    folder("st-idx-dup-across", {"model.safetensors.index.json": idx({"a": "s1.safetensors", "b": "s2.safetensors"}),
                                 "s1.safetensors": one, "s2.safetensors": st_bytes({"a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
                                                                                    "b": {"dtype": "F32", "shape": [4], "data_offsets": [16, 32]}}, bytes(32))}, "'a'")
    folder("st-idx-bad-shard", {"model.safetensors.index.json": idx({"a": "s1.safetensors", "b": "s2.safetensors"}),
                                "s1.safetensors": one, "s2.safetensors": st_bytes({"b": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, bytes(3))}, "s2.safetensors")
    folder("st-empty-folder", {"README.md": "no weights here\n"}, "safetensors")
    with open(os.path.join(BAD, "safetensors.tsv"), "w") as f:
        f.write("# made by scripts/make-bad-safetensors.py: argv\texit code\tneedle\n")
        for argv, code, needle in rows:
            f.write(f"{argv}\t{code}\t{needle}\n")


if __name__ == "__main__":
    main()
