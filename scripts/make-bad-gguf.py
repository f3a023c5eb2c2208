#!/usr/bin/env python3
"""Write the hostile GGUF files of tests/bad/ and their table tests/bad/gguf.tsv.

Stdlib only: each file is built byte by byte from the layout (header, KVs,
tensor infos, padding, data), then broken in exactly one way.  Run from the
repository root: python3 scripts/make-bad-gguf.py
"""
import pathlib
import struct

BAD = pathlib.Path(__file__).resolve().parent.parent / "tests" / "bad"

U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)
GGML_F32, GGML_Q8_0 = 0, 8


def s(b):
    b = b.encode() if isinstance(b, str) else b
    return struct.pack("<Q", len(b)) + b


def kv(key, vtype, payload):
    return s(key) + struct.pack("<I", vtype) + payload


def kv_u32(key, v):
    return kv(key, U32, struct.pack("<I", v))


def tinfo(name, ne, gtype, offset):
    return s(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", x) for x in ne) \
        + struct.pack("<IQ", gtype, offset)


def gguf(kvs=(), infos=(), data=b"", version=3, n_tensors=None, n_kv=None, align=32, magic=b"GGUF"):
    head = magic + struct.pack("<IQQ", version, len(infos) if n_tensors is None else n_tensors,
                               len(kvs) if n_kv is None else n_kv)
    meta = head + b"".join(kvs) + b"".join(infos)
    meta += b"\0" * (-len(meta) % align)
    return meta + data


ARCH = kv("general.architecture", STRING, s("llama"))
T1 = tinfo("w", [8], GGML_F32, 0)
DATA1 = struct.pack("<8f", *range(8))
GOOD = gguf([ARCH], [T1], DATA1)
INFO_END = len(gguf([ARCH], [T1], align=1))     # end of the tensor infos

CASES = []


def case(name, content, needle, tool="ls", code=3):
    CASES.append((name, content, needle, tool, code))


case("gguf-trunc-header.gguf", GOOD[:14], "header past end of file")
case("gguf-version-1.gguf", gguf([ARCH], [T1], DATA1, version=1), "version 1 not supported")
case("gguf-version-4.gguf", gguf([ARCH], [T1], DATA1, version=4), "version 4 not supported")
case("gguf-big-endian.gguf", gguf([ARCH], [T1], DATA1, version=3 << 16), "big-endian")
case("gguf-trunc-kv.gguf", gguf([ARCH, kv_u32("b", 1)], align=1)[:-2], "u32 value past end of file")
case("gguf-trunc-kv-value.gguf", GOOD[:len(gguf([ARCH], align=1)) - 2], "string length")
case("gguf-trunc-tinfo.gguf", GOOD[:INFO_END - 6], "type or offset past end of file")
case("gguf-trunc-data.gguf", GOOD[:-5], "past end of file")
case("gguf-trunc-padding.gguf", GOOD[:INFO_END + 3], "past end of file")
case("gguf-nkv-huge.gguf", gguf([ARCH], [T1], DATA1, n_kv=1 << 63), "n_kv")
case("gguf-ntensors-huge.gguf", gguf([ARCH], [T1], DATA1, n_tensors=(1 << 64) - 1), "n_tensors")
case("gguf-nkv-past-eof.gguf", gguf([ARCH], n_kv=3, align=1), "key #1 past end of file")
case("gguf-ntensors-past-eof.gguf", gguf([ARCH], [T1], n_tensors=2, align=1),
     "tensor info #1 past end of file")
case("gguf-key-len-huge.gguf", gguf([struct.pack("<Q", 1 << 62) + b"k" * 40]), "length")
case("gguf-key-empty.gguf", gguf([kv("", U8, b"\1")], [T1], DATA1), "is empty")
case("gguf-key-nul.gguf", gguf([kv("a\0b", U8, b"\1")], [T1], DATA1), "NUL or invalid UTF-8")
case("gguf-key-bad-utf8.gguf", gguf([kv(b"a\xff", U8, b"\1")], [T1], DATA1), "invalid UTF-8")
case("gguf-str-huge.gguf", gguf([kv("k", STRING, struct.pack("<Q", 1 << 62) + b"x" * 40)]),
     "string length")
case("gguf-str-past-eof.gguf", gguf([kv("k", STRING, struct.pack("<Q", 1000) + b"x" * 40)]),
     "string length 1000 past end of file")
case("gguf-bad-type.gguf", gguf([kv("k", 13, b"\0" * 8)], [T1], DATA1), "bad value type 13")
case("gguf-bad-type-huge.gguf", gguf([kv("k", 0xFFFFFFFF, b"\0" * 8)], [T1], DATA1),
     "bad value type")
case("gguf-array-bad-type.gguf", gguf([kv("k", ARRAY, struct.pack("<IQ", 99, 1) + b"\0" * 8)],
                                      [T1], DATA1), "bad array element type 99")
case("gguf-array-huge.gguf", gguf([kv("k", ARRAY, struct.pack("<IQ", U8, 1 << 40) + b"\0" * 8)],
                                  [T1], DATA1), "array of 1099511627776 u8")
case("gguf-array-past-eof.gguf", gguf([kv("k", ARRAY, struct.pack("<IQ", U64, 100) + b"\0" * 8)],
                                      [T1], DATA1), "past end of file")
case("gguf-array-strings-bomb.gguf", gguf([kv("k", ARRAY, struct.pack("<IQ", STRING, 1 << 29))],
                                          [T1], DATA1), "array of 536870912 string")
# Arrays of arrays, 100 deep: ggml refuses any nesting, we allow 8 levels.
nest = struct.pack("<IQ", U8, 0)
for _ in range(100):
    nest = struct.pack("<IQ", ARRAY, 1) + nest
case("gguf-array-nest-deep.gguf", gguf([kv("k", ARRAY, nest)], [T1], DATA1), "nested deeper")
# An array claiming 2^29 empty arrays in a few bytes.
case("gguf-array-nest-count.gguf", gguf([kv("k", ARRAY, struct.pack("<IQ", ARRAY, 1 << 29)
                                             + struct.pack("<IQ", U8, 0) * 4)], [T1], DATA1),
     "array of 536870912 array")
case("gguf-dup-key.gguf", gguf([ARCH, kv_u32("a", 1), ARCH], [T1], DATA1), "duplicate key")
case("gguf-align-0.gguf", gguf([kv_u32("general.alignment", 0)], [T1], DATA1), "not a power of two")
case("gguf-align-3.gguf", gguf([kv_u32("general.alignment", 3)], [T1], DATA1), "not a power of two")
case("gguf-align-u64.gguf", gguf([kv("general.alignment", U64, struct.pack("<Q", 32))], [T1], DATA1),
     "type u64, not u32")
case("gguf-align-string.gguf", gguf([kv("general.alignment", STRING, s("32"))], [T1], DATA1),
     "type string, not u32")
case("gguf-dup-tensor.gguf", gguf([ARCH], [T1, tinfo("w", [8], GGML_F32, 32)], DATA1 + DATA1),
     "duplicate tensor name")
case("gguf-name-64.gguf", gguf([ARCH], [tinfo("n" * 64, [8], GGML_F32, 0)], DATA1), "longer than 63")
case("gguf-name-huge.gguf", gguf([ARCH], [struct.pack("<Q", 1 << 62) + b"n" * 40]), "name length")
case("gguf-name-nul.gguf", gguf([ARCH], [tinfo("a\0b", [8], GGML_F32, 0)], DATA1), "NUL")
case("gguf-dims-0.gguf", gguf([ARCH], [tinfo("w", [], GGML_F32, 0)], DATA1), "0 dims")
case("gguf-dims-5.gguf", gguf([ARCH], [tinfo("w", [1, 1, 1, 1, 8], GGML_F32, 0)], DATA1), "5 dims")
case("gguf-ne-zero.gguf", gguf([ARCH], [tinfo("w", [8, 0], GGML_F32, 0)], DATA1), "ne[1] = 0")
case("gguf-ne-negative.gguf", gguf([ARCH], [tinfo("w", [8, (1 << 64) - 1], GGML_F32, 0)], DATA1),
     "not a positive size")
case("gguf-ne-overflow.gguf", gguf([ARCH], [tinfo("w", [1 << 32, 1 << 32], GGML_F32, 0)], DATA1),
     "element count overflows")
case("gguf-bytes-overflow.gguf", gguf([ARCH], [tinfo("w", [1 << 61], GGML_F32, 0)], DATA1),
     "byte size overflows")
case("gguf-type-unknown.gguf", gguf([ARCH], [tinfo("w", [8], 77, 0)], DATA1), "type unknown(77) is not a known ggml type")
case("gguf-type-removed.gguf", gguf([ARCH], [tinfo("w", [32], 4, 0)], DATA1), "unknown(4)")
case("gguf-block-multiple.gguf", gguf([ARCH], [tinfo("w", [33], GGML_Q8_0, 0)], DATA1 * 3),
     "not a multiple of the q8_0 block size 32")
case("gguf-offset-unaligned.gguf", gguf([ARCH], [tinfo("w", [8], GGML_F32, 4)], DATA1 * 2),
     "not a multiple of the alignment 32")
case("gguf-offset-past-eof.gguf", gguf([ARCH], [tinfo("w", [8], GGML_F32, 1 << 20)], DATA1),
     "past end of file")
case("gguf-offset-wraps.gguf", gguf([ARCH], [tinfo("w", [8], GGML_F32, (1 << 64) - 32)], DATA1),
     "past end of file")
case("gguf-overlap.gguf", gguf([ARCH], [T1, tinfo("v", [16], GGML_F32, 0)], DATA1 * 2),
     "overlaps")
case("gguf-overlap-tail.gguf", gguf([ARCH], [tinfo("a", [16], GGML_F32, 0), tinfo("b", [8], GGML_F32, 32)],
                                    DATA1 * 3), "overlaps")
# The same hostile files through cp: still one line, exit 3, nothing written.
case("gguf-trunc-data.gguf", None, "past end of file", tool="cp")
case("gguf-nkv-huge.gguf", None, "n_kv", tool="cp")
case("gguf-overlap.gguf", None, "overlaps", tool="cp")


def main():
    BAD.mkdir(parents=True, exist_ok=True)
    rows = ["# made by scripts/make-bad-gguf.py: argv\texit code\tneedle"]
    for name, content, needle, tool, code in CASES:
        if content is not None:
            (BAD / name).write_bytes(content)
        argv = f"ls {{BAD}}/{name}" if tool == "ls" else f"cp {{BAD}}/{name} {{OUT}}.gguf"
        rows.append(f"{argv}\t{code}\t{needle}")
    (BAD / "gguf.tsv").write_text("\n".join(rows) + "\n")
    print(f"{sum(c[1] is not None for c in CASES)} files, {len(CASES)} cases")


if __name__ == "__main__":
    main()
