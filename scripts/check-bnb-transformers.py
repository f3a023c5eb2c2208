#!/usr/bin/env python3
"""Proof that `ckpt quant-bnb` writes what transformers + bitsandbytes write, and that
transformers loads it (needs torch; not part of `make test`).

For the tiny gpt-oss (tests/fixtures/tiny-gpt-oss) and each of nf4, fp4, nf4 + double quant:
  1. transformers quantizes the BF16 model itself (BitsAndBytesConfig, load_in_4bit, on CPU) and
     save_pretrained()s it: bnb's own quantization of the same weights;
  2. ckpt quant-bnb quantizes the same BF16 folder;
  3. the two checkpoints are compared tensor by tensor (names, dtypes, shapes, bytes), and
     transformers loads ckpt's output; its logits on a fixed prompt are compared with those of
     bnb's own quantized model.
Usage: FIXTURE_VENV=... $FIXTURE_VENV/bin/python scripts/check-bnb-transformers.py [build/ckpt]
"""
import json
import pathlib
import subprocess
import sys
import tempfile

import torch
import bitsandbytes as bnb
import transformers
from safetensors import safe_open
from transformers import AutoModelForCausalLM, BitsAndBytesConfig

ROOT = pathlib.Path(__file__).resolve().parent.parent
TINY = ROOT / "tests" / "fixtures" / "tiny-gpt-oss"
CKPT = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "build" / "ckpt"


def tensors(folder):
    out = {}
    for f in sorted(pathlib.Path(folder).glob("*.safetensors")):
        with safe_open(str(f), "pt") as s:
            for k in s.keys():
                out[k] = s.get_tensor(k)
    return out


def logits(model):
    ids = torch.tensor([[1, 5, 9, 42, 77, 100, 200, 300, 17, 3, 250, 8]])
    with torch.no_grad():
        return model(ids).logits.float()


def compare(ours, ref):
    """Per-tensor comparison; returns a list of lines."""
    lines = []
    only_o, only_r = sorted(set(ours) - set(ref)), sorted(set(ref) - set(ours))
    if only_o or only_r:
        lines.append(f"  names: only ckpt {only_o[:6]}, only bnb {only_r[:6]}")
    same = diff = 0
    for k in sorted(set(ours) & set(ref)):
        a, b = ours[k], ref[k]
        if a.dtype != b.dtype or a.shape != b.shape:
            lines.append(f"  {k}: ckpt {a.dtype} {list(a.shape)} vs bnb {b.dtype} {list(b.shape)}")
            diff += 1
            continue
        if torch.equal(a.view(torch.uint8) if a.dtype != torch.uint8 else a,
                       b.view(torch.uint8) if b.dtype != torch.uint8 else b):
            same += 1
            continue
        diff += 1
        if "quant_state" in k:
            ja, jb = json.loads(bytes(a.tolist())), json.loads(bytes(b.tolist()))
            keys = [x for x in ja if ja.get(x) != jb.get(x)]
            lines.append(f"  {k}: JSON differs in {keys} (ckpt {[ja[x] for x in keys]}, "
                         f"bnb {[jb[x] for x in keys]}); key order same: {list(ja) == list(jb)}")
        elif a.dtype == torch.uint8 and k.endswith(".weight"):
            qa = torch.stack([a.view(-1) >> 4, a.view(-1) & 15], 1).view(-1)
            qb = torch.stack([b.view(-1) >> 4, b.view(-1) & 15], 1).view(-1)
            dif = qa != qb
            zeros = dif & ((qa == 0) | (qa == 8)) & ((qb == 0) | (qb == 8))
            lines.append(f"  {k}: {int(dif.sum())} of {qa.numel()} codes differ, {int(zeros.sum())} "
                         f"of them +0/-0 (fp4 codes 0/8), the rest at CUDA pivots != CPU midpoints")
        else:
            n = int((a.view(-1).float() != b.view(-1).float()).sum())
            lines.append(f"  {k}: {n} of {a.numel()} elements differ")
    lines.insert(0, f"  {same} tensors byte-identical, {diff} differ, {len(only_o)}+{len(only_r)} "
                    f"names unmatched")
    return lines


def main():
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
          f"bitsandbytes {bnb.__version__}")
    ok = True
    for qt, dq in (("nf4", False), ("fp4", False), ("nf4", True)):
        tag = qt + (" + double quant" if dq else "")
        with tempfile.TemporaryDirectory() as tmp:
            tmp = pathlib.Path(tmp)
            cfg = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=qt,
                                     bnb_4bit_use_double_quant=dq,
                                     bnb_4bit_compute_dtype=torch.bfloat16)
            ref_model = AutoModelForCausalLM.from_pretrained(TINY, quantization_config=cfg,
                                                             dtype=torch.bfloat16, device_map="cpu")
            ref_model.save_pretrained(tmp / "bnb")
            ref_logits = logits(ref_model)
            args = [str(CKPT), "quant-bnb", "--type", qt, str(TINY), str(tmp / "ckpt")]
            if dq:
                args.insert(2, "--double-quant")
            subprocess.run(args, check=True)
            ours = AutoModelForCausalLM.from_pretrained(tmp / "ckpt", device_map="cpu")
            our_logits = logits(ours)
            n4 = sum(1 for m in ours.modules() if isinstance(m, bnb.nn.Linear4bit))
            same = torch.equal(our_logits, ref_logits)
            maxd = float((our_logits - ref_logits).abs().max())
            print(f"{tag}: transformers loaded ckpt's output ({n4} Linear4bit modules); logits "
                  f"{'IDENTICAL' if same else f'differ, max abs diff {maxd:.3g}'} to bnb's own "
                  f"quantization")
            for line in compare(tensors(tmp / "ckpt"), tensors(tmp / "bnb")):
                print(line)
            if not dq and not same:
                ok = False
    # dequant-nf4 of the Unsloth per-expert fixture -> transformers' fused layout, loaded by
    # transformers; compared with a model holding bnb's own dequantization of every group
    import shutil
    fix = ROOT / "tests" / "fixtures" / "bnb"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        subprocess.run([str(CKPT), "dequant-nf4", str(fix / "tiny-gpt-oss-unsloth-bnb4"),
                        str(tmp / "hf")], check=True)
        (tmp / "ref").mkdir()
        shutil.copy(fix / "tiny-gpt-oss-unsloth-ref.safetensors", tmp / "ref" / "model.safetensors")
        shutil.copy(TINY / "config.json", tmp / "ref" / "config.json")
        a = AutoModelForCausalLM.from_pretrained(tmp / "hf", device_map="cpu")
        b = AutoModelForCausalLM.from_pretrained(tmp / "ref", device_map="cpu")
        la, lb = logits(a), logits(b)
        same = torch.equal(la, lb)
        print(f"unsloth per-expert NF4 -> dequant-nf4 --layout hf: transformers loaded it; logits "
              f"{'IDENTICAL' if same else 'DIFFER'} to bnb's dequantization in the fused layout")
        ok &= same
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
