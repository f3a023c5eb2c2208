#!/bin/sh
# Benchmarks: ckpt against cp / sha256sum / the reference tools on the same bytes, in
# the same run.  Makes a synthetic gpt-oss-20b-shaped checkpoint (bench/make-synthetic.py,
# 4 layers + embeddings, 4.2 GB) once under $BENCH_DATA, then runs each bench/*.sh.
# Figures: wall seconds, throughput, peak RSS (GNU time), warm page cache (each input
# is read once before timing, so disk speed does not decide; the output is written to
# the same filesystem and fsynced by ckpt, and by `sync` after cp).
#
# usage: sh bench/run.sh [path/to/ckpt]      (make bench)
set -e
CKPT=$(readlink -f "${1:-build/ckpt}")
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PY:-$ROOT/build/venv/bin/python}
BENCH_DATA=${BENCH_DATA:-$ROOT/bench/out/data}
OUT=${BENCH_OUT:-$ROOT/bench/out}
mkdir -p "$BENCH_DATA" "$OUT"
export CKPT PY BENCH_DATA OUT ROOT

[ -f "$BENCH_DATA/mx4/config.json" ] || "$PY" "$ROOT/bench/make-synthetic.py" "$BENCH_DATA/mx4" --layers 4

. "$ROOT/bench/lib.sh"

: > "$OUT/results.tsv"
SRC=$BENCH_DATA/mx4
echo "# input: $SRC ($(size_gb "$SRC") GB), $(nproc) cores" | tee -a "$OUT/results.tsv"
cat "$SRC"/*.safetensors > /dev/null

rm -rf "$OUT/cp.out" "$OUT/ckpt.out"
measure "cp -r (+sync)" sh -c "cp -r '$SRC' '$OUT/cp.out' && sync"
rm -rf "$OUT/cp.out"
measure "ckpt cp" "$CKPT" cp "$SRC" "$OUT/ckpt.out"
"$CKPT" ls --sha256 --diffable "$SRC" > "$OUT/.a"
"$CKPT" ls --sha256 --diffable "$OUT/ckpt.out" > "$OUT/.b"
cmp -s "$OUT/.a" "$OUT/.b" || { echo "ckpt cp output differs from its input" >&2; exit 1; }
rm -rf "$OUT/ckpt.out"
measure "ckpt cp --shard-size 1GB" "$CKPT" cp --shard-size 1GB "$SRC" "$OUT/ckpt.out"
rm -rf "$OUT/ckpt.out"
measure "sha256sum (shards, 1 core)" sh -c "sha256sum '$SRC'/*.safetensors"
measure "ckpt ls --sha256 -j1" "$CKPT" ls --sha256 -j 1 "$SRC"
measure "ckpt ls --sha256 (all cores)" "$CKPT" ls --sha256 "$SRC"
measure "ckpt ls (headers only)" "$CKPT" ls "$SRC"

for b in "$ROOT"/bench/*.sh; do
	case "$(basename "$b")" in run.sh|lib.sh) continue;; esac
	echo "== $(basename "$b")"
	sh "$b" || echo "$(basename "$b") failed" >&2
done
echo "results in $OUT/results.tsv"
