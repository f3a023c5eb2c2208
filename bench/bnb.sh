#!/bin/sh
# bitsandbytes 4-bit: ckpt quant-bnb / dequant-nf4 throughput and peak RSS, and bitsandbytes'
# own CPU path on the same expert weights in the same run.
#
# Input: a synthetic gpt-oss-20b-shaped BF16 checkpoint with one layer (bench/make-synthetic.py
# --flavor bf16 --layers 1: 32 experts, gate_up_proj 1.06 GB + down_proj 0.53 GB of BF16, plus
# embeddings and lm_head, 4 GB in all).  quant-bnb --experts per-expert quantizes the 1.6 GB of
# experts and the attention (NF4, double quant, Unsloth's layout); dequant-nf4 turns that back
# into the fused BF16 layout.  GB/s counts BF16 bytes quantized or produced.
# bitsandbytes (torch, CPU) runs when $FIXTURE_VENV has it: quantize_4bit / dequantize_4bit
# of the same 64 expert matrices (transposed like Unsloth's), no file I/O.
#
# usage: sh bench/bnb.sh [path/to/ckpt]  (or from bench/run.sh)
set -e
ROOT=${ROOT:-$(cd "$(dirname "$0")/.." && pwd)}
CKPT=${CKPT:-$(readlink -f "${1:-$ROOT/build/ckpt}")}
PY=${PY:-$ROOT/build/venv/bin/python}
BENCH_DATA=${BENCH_DATA:-$ROOT/bench/out/data}
OUT=${OUT:-$ROOT/bench/out}
FIXTURE_VENV=${FIXTURE_VENV:-$ROOT/build/venv-fixtures}
mkdir -p "$BENCH_DATA" "$OUT"
. "$ROOT/bench/lib.sh"

FULL=$BENCH_DATA/bf16-1layer
SRC=$BENCH_DATA/bnb-layer0
[ -f "$FULL/config.json" ] || "$PY" "$ROOT/bench/make-synthetic.py" "$FULL" --layers 1 --flavor bf16
# the throughput runs use layer 0 alone (no 2.3 GB of embeddings to copy)
[ -f "$SRC/config.json" ] || "$CKPT" cp --filter '*layers.0.*' "$FULL" "$SRC"
cat "$SRC"/*.safetensors > /dev/null
# BF16 bytes that quant-bnb quantizes: experts + q/k/v/o of one layer
QB=$("$CKPT" ls --json "$SRC" | "$PY" -c '
import json, sys
t = json.load(sys.stdin)["models"][0]["tensors"]
print(sum(x["bytes"] for x in t if x["name"].endswith(("experts.gate_up_proj", "experts.down_proj"))
          or (x["name"].endswith("_proj.weight") and "self_attn" in x["name"])))')
echo "# bnb: $(size_gb "$SRC") GB input, $QB BF16 bytes quantized, $(nproc) cores" | tee -a "$OUT/results.tsv"

rate() {	# NAME BYTES: append GB/s of the last measure line
	awk -v n="$1" -v b="$2" -F'\t' 'END { printf "%s\t%.2f GB/s\n", n, b / $2 / 1e9 }' \
		"$OUT/results.tsv" | tee -a "$OUT/results.tsv"
}
Q=$OUT/bnb-q; D=$OUT/bnb-dq
rm -rf "$Q" "$D"
cat "$FULL"/*.safetensors > /dev/null
measure "ckpt quant-bnb --double-quant --experts per-expert, whole 1-layer 20b ($(size_gb "$FULL") GB)" \
	"$CKPT" quant-bnb --double-quant --experts per-expert "$FULL" "$Q"
rm -rf "$Q"
cat "$SRC"/*.safetensors > /dev/null
measure "ckpt quant-bnb --double-quant --experts per-expert -j1" "$CKPT" quant-bnb -j 1 \
	--double-quant --experts per-expert "$SRC" "$Q"
rate "  quant -j1" "$QB"
rm -rf "$Q"
measure "ckpt quant-bnb --double-quant --experts per-expert (all cores)" "$CKPT" quant-bnb \
	--double-quant --experts per-expert "$SRC" "$Q"
rate "  quant all cores" "$QB"
cat "$Q"/*.safetensors > /dev/null
measure "ckpt dequant-nf4 (Unsloth -> hf) -j1" "$CKPT" dequant-nf4 -j 1 "$Q" "$D"
rate "  dequant -j1" "$QB"
rm -rf "$D"
measure "ckpt dequant-nf4 (Unsloth -> hf, all cores)" "$CKPT" dequant-nf4 "$Q" "$D"
rate "  dequant all cores" "$QB"
rm -rf "$D"
measure "ckpt dequant-nf4 --layout keep (all cores)" "$CKPT" dequant-nf4 --layout keep "$Q" "$D"
rate "  dequant keep all cores" "$QB"
rm -rf "$D"

# the same with the outputs in memory (tmpfs): the tools' compute, without this disk
SHM=/dev/shm/ckpt-bnb-bench.$$
if mkdir "$SHM" 2>/dev/null; then
	measure "ckpt quant-bnb ... -j1, output on tmpfs" "$CKPT" quant-bnb -j 1 \
		--double-quant --experts per-expert "$SRC" "$SHM/q"
	rate "  quant -j1, tmpfs" "$QB"
	rm -rf "$SHM/q"
	measure "ckpt quant-bnb ... (all cores), output on tmpfs" "$CKPT" quant-bnb \
		--double-quant --experts per-expert "$SRC" "$SHM/q"
	rate "  quant all cores, tmpfs" "$QB"
	measure "ckpt dequant-nf4 -j1, tmpfs" "$CKPT" dequant-nf4 -j 1 "$SHM/q" "$SHM/d"
	rate "  dequant -j1, tmpfs" "$QB"
	rm -rf "$SHM/d"
	measure "ckpt dequant-nf4 (all cores), tmpfs" "$CKPT" dequant-nf4 "$SHM/q" "$SHM/d"
	rate "  dequant all cores, tmpfs" "$QB"
	rm -rf "$SHM/d"
	measure "ckpt dequant-nf4 --layout keep (all cores), tmpfs" "$CKPT" dequant-nf4 --layout keep \
		"$SHM/q" "$SHM/d"
	rate "  dequant keep all cores, tmpfs" "$QB"
	rm -rf "$SHM"
fi

# the kernels alone, in memory, 1 GiB of BF16 (bench/bnb-kernels.c against build/libckpt.a)
LIB=$(dirname "$CKPT")/libckpt.a
if ${CC:-cc} -std=c11 -D_GNU_SOURCE -O2 -ffp-contract=off -pthread -o "$OUT/bnb-kernels" \
	"$ROOT/bench/bnb-kernels.c" "$LIB" -lcjson -lzstd -lcrypto -lm 2>/dev/null; then
	"$OUT/bnb-kernels" "$(nproc)" | tee -a "$OUT/results.tsv"
fi

if [ -x "$FIXTURE_VENV/bin/python" ] && "$FIXTURE_VENV/bin/python" -c "import bitsandbytes" 2>/dev/null; then
	for th in 1 $(nproc); do
		"$FIXTURE_VENV/bin/python" "$ROOT/bench/bnb-ref.py" "$SRC" "$th" 2>/dev/null | tee -a "$OUT/results.tsv"
	done
else
	echo "bitsandbytes: not run (no $FIXTURE_VENV with bitsandbytes)" | tee -a "$OUT/results.tsv"
fi
rm -rf "$Q"
