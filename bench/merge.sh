#!/bin/sh
# ckpt merge-lora on the synthetic gpt-oss-20b-shaped checkpoint (bench/make-synthetic.py,
# BF16 flavor, $MERGE_LAYERS layers + embeddings) with a rank-32 adapter on every attention
# projection and on both expert parameters of every layer (PEFT target_parameters layout,
# F32), against cp of the same bytes in the same run.  Also the MXFP4 flavor (experts
# dequantized to BF16 on the way).  Peak RSS must stay under 512 MB.
#
# usage: sh bench/merge.sh   (from bench/run.sh, which sets CKPT PY BENCH_DATA OUT ROOT)
set -e
ROOT=${ROOT:-$(cd "$(dirname "$0")/.." && pwd)}
CKPT=${CKPT:-$ROOT/build/ckpt}
PY=${PY:-$ROOT/build/venv/bin/python}
BENCH_DATA=${BENCH_DATA:-$ROOT/bench/out/data}
OUT=${OUT:-$ROOT/bench/out}
L=${MERGE_LAYERS:-4}
mkdir -p "$BENCH_DATA" "$OUT"
touch "$OUT/results.tsv"
. "$ROOT/bench/lib.sh"

BF=$BENCH_DATA/bf$L
MX=$BENCH_DATA/mx$L
AD=$BENCH_DATA/lora-r32-$L
[ -f "$BF/config.json" ] || "$PY" "$ROOT/bench/make-synthetic.py" "$BF" --layers "$L" --flavor bf16
[ -f "$AD/adapter_config.json" ] || "$PY" - "$AD" "$L" <<'EOF'
import json, os, sys
import numpy as np
from safetensors.numpy import save_file
out, layers = sys.argv[1], int(sys.argv[2])
H, I, E, r = 2880, 2880, 32, 32
rng = np.random.default_rng(0)
def f(*shape):
    return (0.01 * rng.standard_normal(shape, dtype=np.float32))
t = {}
for l in range(layers):
    p = f"base_model.model.model.layers.{l}."
    for m, o, i in (("q_proj", 4096, H), ("k_proj", 512, H), ("v_proj", 512, H), ("o_proj", H, 4096)):
        t[p + f"self_attn.{m}.lora_A.weight"] = f(r, i)
        t[p + f"self_attn.{m}.lora_B.weight"] = f(o, r)
    t[p + "mlp.experts.base_layer.lora_A.weight"] = f(r * E, H)       # gate_up_proj [E, H, 2I]
    t[p + "mlp.experts.base_layer.lora_B.weight"] = f(2 * I, r * E)
    t[p + "mlp.experts.lora_A.weight"] = f(r * E, I)                  # down_proj [E, I, H]
    t[p + "mlp.experts.lora_B.weight"] = f(H, r * E)
os.makedirs(out, exist_ok=True)
save_file(t, os.path.join(out, "adapter_model.safetensors"), metadata={"format": "pt"})
json.dump({"peft_type": "LORA", "r": r, "lora_alpha": 64, "peft_version": "0.21.2",
           "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
           "target_parameters": ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]},
          open(os.path.join(out, "adapter_config.json"), "w"), indent=2)
EOF

echo "# merge-lora input: $BF ($(size_gb "$BF") GB) + rank-32 adapter ($(size_gb "$AD") GB), $(nproc) cores" |
	tee -a "$OUT/results.tsv"
cat "$BF"/*.safetensors "$AD"/*.safetensors > /dev/null
rm -rf "$OUT/cp.out" "$OUT/merged"
measure "cp -r bf$L (+sync)" sh -c "cp -r '$BF' '$OUT/cp.out' && sync"
rm -rf "$OUT/cp.out"
measure "ckpt merge-lora bf$L (all cores)" "$CKPT" merge-lora "$BF" "$AD" "$OUT/merged"
echo "# output $(size_gb "$OUT/merged") GB" | tee -a "$OUT/results.tsv"
rm -rf "$OUT/merged"
if [ -n "$MERGE_MXFP4" ]; then
	[ -f "$MX/config.json" ] || "$PY" "$ROOT/bench/make-synthetic.py" "$MX" --layers "$L"
	cat "$MX"/*.safetensors > /dev/null
	measure "ckpt merge-lora mx$L (experts MXFP4 -> BF16)" "$CKPT" merge-lora "$MX" "$AD" "$OUT/merged"
	echo "# output $(size_gb "$OUT/merged") GB" | tee -a "$OUT/results.tsv"
	rm -rf "$OUT/merged"
fi
