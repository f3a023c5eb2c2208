#!/bin/sh
# bench/mxfp4.sh - dequant-mxfp4 and quant-mxfp4 on the synthetic gpt-oss-20b-shaped
# checkpoint (bench/run.sh makes it: 20b shapes, 4 layers, MXFP4 experts), on 1 core and on
# all cores, and gguf-py's numpy MXFP4 code doing the same work on one expert, in the same run.
#
# The ckpt rows run on the expert tensors only (copied out first with ckpt cp --filter), so
# the figure is the MXFP4 work, not the embedding copy; one more row runs the whole folder.
# Throughput is GB/s of BF16 expert weights: what dequant writes and quant reads.
# Needs from run.sh: CKPT, PY, BENCH_DATA, OUT, ROOT.
set -e
. "$ROOT/bench/lib.sh"
SRC=$BENCH_DATA/mx4
EXP=$OUT/mx-experts.safetensors
BF=$OUT/mx-bf16.safetensors
rm -rf "$EXP" "$BF" "$OUT/mx-q.safetensors" "$OUT/mx-q1.safetensors" "$OUT/mx-keep.safetensors" "$OUT/mx-folder"
"$CKPT" cp --filter '*experts*' "$SRC" "$EXP"
cat "$EXP" > /dev/null

layers=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["num_hidden_layers"])' "$SRC/config.json")
# per layer: gate_up 32 x 2880 x 5760 and down 32 x 2880 x 2880 BF16 values
BYTES=$((layers * 32 * (2880 * 5760 + 2880 * 2880) * 2))
rate() {
	tail -n 1 "$OUT/results.tsv" | awk -F '\t' -v b="$BYTES" -v n="$1" \
		'{ printf "%s\t%.2f GB/s of BF16\n", n, b / 1e9 / $2 }' | tee -a "$OUT/results.tsv"
}

measure "dequant-mxfp4 -j1 (experts)" "$CKPT" dequant-mxfp4 -j 1 "$EXP" "$OUT/mx-bf16-1.safetensors"
rate "  dequant -j1"
measure "dequant-mxfp4 (all cores)" "$CKPT" dequant-mxfp4 "$EXP" "$BF"
rate "  dequant all cores"
cmp "$BF" "$OUT/mx-bf16-1.safetensors" || { echo "dequant-mxfp4: -j1 and all cores differ" >&2; exit 1; }
rm -f "$OUT/mx-bf16-1.safetensors"
cat "$BF" > /dev/null
measure "quant-mxfp4 -j1 (experts)" "$CKPT" quant-mxfp4 -j 1 "$BF" "$OUT/mx-q1.safetensors"
rate "  quant -j1"
cat "$BF" > /dev/null
measure "quant-mxfp4 (all cores)" "$CKPT" quant-mxfp4 "$BF" "$OUT/mx-q.safetensors"
rate "  quant all cores"
cmp "$OUT/mx-q.safetensors" "$OUT/mx-q1.safetensors" || { echo "quant-mxfp4: -j1 and all cores differ" >&2; exit 1; }
cat "$BF" > /dev/null
measure "quant-mxfp4 --keep-from (nothing changed)" "$CKPT" quant-mxfp4 --keep-from "$EXP" "$BF" "$OUT/mx-keep.safetensors"
rate "  quant --keep-from"
cmp "$EXP" "$OUT/mx-keep.safetensors" || { echo "quant-mxfp4 --keep-from did not give the input back" >&2; exit 1; }
measure "dequant-mxfp4 whole folder ($(size_gb "$SRC") GB in)" "$CKPT" dequant-mxfp4 "$SRC" "$OUT/mx-folder"
rm -rf "$OUT/mx-folder" "$OUT/mx-q1.safetensors" "$OUT/mx-keep.safetensors"

# gguf-py (numpy): dequantize and quantize one gate_up expert (5760 x 2880), same bytes
"$PY" - "$EXP" "$OUT/results.tsv" <<'EOF'
import sys, time
import numpy as np
from safetensors import safe_open
from gguf import quants, GGMLQuantizationType as T

with safe_open(sys.argv[1], "np") as f:
    b = f.get_slice("model.layers.0.mlp.experts.gate_up_proj_blocks")[0]
    s = f.get_slice("model.layers.0.mlp.experts.gate_up_proj_scales")[0]
b, s = b.reshape(-1, 16), s.reshape(-1, 1)
e = np.empty((len(b), 32), np.uint8)                         # OpenAI pairs -> elements
e[:, 0::2], e[:, 1::2] = b & 0xF, b >> 4
ggml = np.concatenate([s, e[:, :16] | (e[:, 16:] << 4)], axis=1).astype(np.uint8)
n = ggml.shape[0] * 32
t0 = time.perf_counter()
x = quants.dequantize(ggml.reshape(-1), T.MXFP4)
t1 = time.perf_counter()
for i in range(0, len(x), 1 << 21):                          # chunks: its argmin needs 64 B per element
    quants.quantize(x[i:i + (1 << 21)], T.MXFP4)
t2 = time.perf_counter()
with open(sys.argv[2], "a") as out:
    for name, dt in (("gguf-py MXFP4 dequantize (1 expert)", t1 - t0), ("gguf-py MXFP4 quantize (1 expert)", t2 - t1)):
        line = f"{name}\t{dt:.2f}\t-\n  {name.split(' (')[0]}\t{n * 2 / 1e9 / dt:.2f} GB/s of BF16\n"
        out.write(line)
        print(line, end="")
EOF
rm -f "$EXP" "$BF" "$OUT/mx-q.safetensors"
