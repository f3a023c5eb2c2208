#!/usr/bin/env python3
"""bitsandbytes' CPU quantize_4bit / dequantize_4bit (NF4, double quant, blocksize 64) on the
layer-0 experts of a synthetic BF16 checkpoint, one expert matrix at a time, transposed as in
Unsloth's layout; prints TSV rows for bench/results.tsv.  usage: bnb-ref.py SRC THREADS"""
import sys
import time

import torch
import bitsandbytes.functional as F
from safetensors import safe_open

src, threads = sys.argv[1], int(sys.argv[2])
torch.set_num_threads(threads)
mats = []
import glob
for f in sorted(glob.glob(src + "/*.safetensors")):
    with safe_open(f, "pt") as h:
        for k in h.keys():
            if k.endswith(("layers.0.mlp.experts.gate_up_proj", "layers.0.mlp.experts.down_proj")):
                t = h.get_tensor(k)
                mats += [t[e].t().contiguous() for e in range(t.shape[0])]
nbytes = sum(m.numel() * 2 for m in mats)
t0 = time.perf_counter()
states = [F.quantize_4bit(m, blocksize=64, compress_statistics=True, quant_type="nf4") for m in mats]
t1 = time.perf_counter()
for p, s in states:
    F.dequantize_4bit(p, s)
t2 = time.perf_counter()
print(f"bitsandbytes quantize_4bit nf4+dq, {threads} thread(s)\t{t1 - t0:.2f}\t-\t"
      f"{nbytes / (t1 - t0) / 1e9:.2f} GB/s")
print(f"bitsandbytes dequantize_4bit -> bf16, {threads} thread(s)\t{t2 - t1:.2f}\t-\t"
      f"{nbytes / (t2 - t1) / 1e9:.2f} GB/s")
