#!/bin/sh
# tokcheck on the real gpt-oss tokenizer (tokenizer.json 27.9 MB): parse + hash on one
# core (taskset), the two-folder comparison, and for scale md5sum of the same bytes and
# Python's json.load + the same component hashes (tests/test_tokcheck.py's reference).
# Run by bench/run.sh (or alone: CKPT=build/ckpt OUT=/tmp sh bench/tokcheck.sh).
# Rows: name, wall seconds, peak RSS MiB; then the CPU seconds (user+sys) of each ckpt row.
set -e
ROOT=${ROOT:-$(cd "$(dirname "$0")/.." && pwd)}
CKPT=${CKPT:-$ROOT/build/ckpt}
PY=${PY:-$ROOT/build/venv/bin/python}
OUT=${OUT:-$ROOT/bench/out}
TOK=${TOKENIZER_DIR:-$ROOT/../shared/data/gpt-oss-tokenizer}
mkdir -p "$OUT"
. "$ROOT/bench/lib.sh"
[ -f "$TOK/tokenizer.json" ] || { echo "no $TOK/tokenizer.json" >&2; exit 1; }
ONE=
command -v taskset >/dev/null && ONE="taskset -c 0"

cat "$TOK"/* > /dev/null
cpu() {
	_name=$1; shift
	best=
	for i in 1 2 3 4 5; do
		/usr/bin/time -f "%U %S %e" -o "$OUT/.cpu" "$@" >/dev/null
		t=$(awk '{printf "%.3f", $1 + $2}' "$OUT/.cpu")
		if [ -z "$best" ] || [ "$(echo "$t < $best" | bc)" = 1 ]; then best=$t; fi
	done
	printf '%s\tbest of 5: %s s CPU (user+sys)\n' "$_name" "$best" | tee -a "$OUT/results.tsv"
}
measure "md5sum tokenizer.json" $ONE md5sum "$TOK/tokenizer.json"
measure "ckpt tokcheck DIR (1 core)" $ONE "$CKPT" tokcheck "$TOK"
cpu "ckpt tokcheck DIR (1 core)" $ONE "$CKPT" tokcheck "$TOK"
measure "ckpt tokcheck DIR DIR (1 core)" $ONE "$CKPT" tokcheck "$TOK" "$TOK"
cpu "ckpt tokcheck DIR DIR (1 core)" $ONE "$CKPT" tokcheck "$TOK" "$TOK"
measure "python json.load + component hashes" $ONE "$PY" -c '
import hashlib, json, struct, sys
tj = json.load(open(sys.argv[1], encoding="utf-8"))
h = hashlib.sha256()
for t, i in sorted(tj["model"]["vocab"].items(), key=lambda kv: kv[1]):
    b = t.encode(); h.update(struct.pack("<II", i, len(b)) + b)
h = hashlib.sha256()
for a, b in tj["model"]["merges"]:
    a, b = a.encode(), b.encode(); h.update(struct.pack("<I", len(a)) + a + struct.pack("<I", len(b)) + b)
' "$TOK/tokenizer.json"
