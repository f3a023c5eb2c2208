#!/usr/bin/env python3
"""Make tests/fixtures/bnb/: bitsandbytes 4-bit reference data for ckpt's bnb tests.

Run under the fixture venv (torch + bitsandbytes, pinned in scripts/requirements-fixtures.txt):
    FIXTURE_VENV=... sh scripts/ensure-venv.sh "$FIXTURE_VENV" scripts/requirements-fixtures.txt
    "$FIXTURE_VENV/bin/python" scripts/make-fixtures-bnb.py

Everything is computed by bitsandbytes itself, on CPU (no GPU here):
  - the group tensors are QuantState.as_dict(packed=True) of F.quantize_4bit, i.e. exactly what
    Linear4bit._save_to_state_dict writes;
  - ref.dq.{bf16,f16,f32} are F.dequantize_4bit of that state (the native CPU kernel), checked
    equal to bnb's torch "default" kernel;
  - for double quantization, ref.absmax is the plain float32 absmax (quantize_4bit without
    compress_statistics), and ref.nested.{q,absmax} are bnb's "default" quantize_blockwise
    (nearest code, the CUDA rule) of absmax - offset with the stored offset and dynamic map:
    what CUDA computes given that offset (bnb's CPU native 8-bit quantizer uses a coarse
    65536-bin table and is not nearest, so the stored codes differ from CUDA's);
  - ref.fp4.gap marks FP4 elements whose scaled value lies between bnb's CUDA pivot and the
    table midpoint the CPU path uses (the two bnb paths differ there; ckpt follows CUDA).
Each case is one safetensors file case-<name>.safetensors; the group is named "w.weight".
"""
import json
import pathlib
import sys

import numpy as np
import torch
import bitsandbytes as bnb
import bitsandbytes.functional as F
from safetensors.torch import save_file

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "bnb"
CEA = torch._C.DispatchKeySet(torch._C.DispatchKey.CompositeExplicitAutograd)


def default_quantize_blockwise(a, code, bs):
    return torch.ops.bitsandbytes.quantize_blockwise.default.redispatch(CEA, a, code, bs)


def default_dequantize_4bit(packed, absmax, bs, qt, shape, dtype):
    return torch.ops.bitsandbytes.dequantize_4bit.default.redispatch(CEA, packed, absmax, bs, qt,
                                                                    list(shape), dtype)


FP4_CUDA_PIVOTS = np.array([0.29166667, 0.583333, 0.8333333, 0.4166667, 0.0859375, 0.20833333,
                            0.00260417], dtype=np.float32)


def fp4_gap(src, absmax, bs):
    """Elements whose scaled |x| lies between a CUDA pivot and the CPU midpoint (either order)."""
    code = F.get_4bit_type("fp4", device="cpu").numpy()
    srt = np.sort(np.abs(code[:8]))
    mids = ((srt[:-1] + srt[1:]) * np.float32(0.5)).astype(np.float32)
    x = src.float().reshape(-1).numpy()
    am = np.repeat(absmax.numpy(), bs)[: x.size]
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.abs(x * (np.float32(1) / am))
    piv = np.sort(FP4_CUDA_PIVOTS)
    gap = np.zeros(x.size, dtype=bool)
    for p, m in zip(piv, mids):
        lo, hi = min(p, m), max(p, m)
        gap |= (s >= lo) & (s <= hi)
    gap |= (x == 0) & np.signbit(x)
    return torch.from_numpy(gap.astype(np.uint8))


def make_case(name, src, qt, bs, nested):
    packed, st = F.quantize_4bit(src, blocksize=bs, compress_statistics=nested, quant_type=qt)
    d = {"w.weight": packed}
    for k, v in st.as_dict(packed=True).items():
        d["w.weight." + k] = v
    d["ref.src"] = src.contiguous()
    st2 = type(st).from_dict({k[len("w.weight."):]: v for k, v in d.items()
                              if k.startswith("w.weight.")}, device="cpu")
    absmax = st2.absmax
    if st2.nested:
        absmax = F.dequantize_blockwise(st2.absmax, st2.state2) + st2.offset
    for tag, dt in (("bf16", torch.bfloat16), ("f16", torch.float16), ("f32", torch.float32)):
        # The reference is bnb's torch "default" kernel (flat blocks, f32 product, one rounding:
        # the CUDA semantics).  The native CPU kernel is compared and any difference reported:
        # in bnb 0.50.2 it indexes blocks per row and goes wrong when a block straddles rows.
        ref = default_dequantize_4bit(packed, absmax, bs, qt, st2.shape, dt)
        st2.dtype = dt
        native = F.dequantize_4bit(packed, st2)
        if not torch.equal(native.view(-1).float(), ref.view(-1).float()):
            n = int((native.view(-1).float() != ref.view(-1).float()).sum())
            print(f"  {name} {tag}: bnb native CPU dequant differs from the default kernel in "
                  f"{n} elements", file=sys.stderr)
        d["ref.dq." + tag] = ref.contiguous()
    _, plain = F.quantize_4bit(src, blocksize=bs, compress_statistics=False, quant_type=qt)
    d["ref.absmax"] = plain.absmax
    if nested:
        q, nab = default_quantize_blockwise(plain.absmax - st.offset, st.state2.code, 256)
        d["ref.nested.q"] = q
        d["ref.nested.absmax"] = nab
        d["ref.offset"] = st.offset.reshape(1).float()
    if qt == "fp4":
        d["ref.fp4.gap"] = fp4_gap(src, plain.absmax, bs)
    save_file({k: v.contiguous() for k, v in d.items()}, OUT / f"case-{name}.safetensors",
              metadata={"quant_type": qt, "blocksize": str(bs), "nested": str(int(nested))})
    return d


def midpoints_f32(qt):
    """A float32 tensor whose blocks hit every threshold exactly, one ulp below and above."""
    code = F.get_4bit_type(qt, device="cpu").numpy().astype(np.float32)
    if qt == "nf4":
        t = ((code[:-1] + code[1:]) * np.float32(0.5)).astype(np.float32)
    else:
        t = np.concatenate([FP4_CUDA_PIVOTS, np.sort(np.abs(code[:8]))[:-1] / 2 +
                            np.sort(np.abs(code[:8]))[1:] / 2]).astype(np.float32)
        t = np.concatenate([t, -t])
    vals = np.concatenate([t, np.nextafter(t, np.float32(2)), np.nextafter(t, np.float32(-2))])
    blocks = []
    for i in range(0, vals.size, 63):
        blk = np.zeros(64, dtype=np.float32)
        chunk = vals[i:i + 63]
        blk[: chunk.size] = chunk
        blk[63] = 1.0  # absmax 1: the scale is exact, x * (1/1) = x
        blocks.append(blk)
    blocks.append(np.zeros(64, dtype=np.float32))  # an all-zero block
    return torch.from_numpy(np.concatenate(blocks))


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(1234)

    def randn(*shape, dtype=torch.bfloat16, scale=0.02):
        x = torch.randn(*shape, generator=g) * scale
        # heavy-ish tails like real weights
        x = x * (1 + 3 * (torch.rand(*shape, generator=g) > 0.98))
        return x.to(dtype)

    # an all-zero 64-block and a partial last block inside a BF16 tensor
    z = randn(9, 71)            # 639 elements: 10 blocks of 64, the last one 63 long; odd n
    z.view(-1)[128:192] = 0
    cases = [
        ("nf4-bs64-bf16", randn(16, 96), "nf4", 64, False),
        ("nf4-bs64-dq-bf16", randn(130, 200), "nf4", 64, True),     # 407 blocks, 2 nested runs
        ("nf4-bs128-bf16-odd", z, "nf4", 128, False),
        ("nf4-bs64-bf16-odd-zero", z, "nf4", 64, False),
        ("nf4-bs128-dq-f16", randn(48, 200, dtype=torch.float16), "nf4", 128, True),
        ("fp4-bs64-bf16", randn(24, 64), "fp4", 64, False),
        ("fp4-bs128-dq-bf16-odd", randn(101, 333), "fp4", 128, True),
        ("fp4-bs64-bf16-odd-zero", z, "fp4", 64, False),
        ("nf4-bs64-f32-mid", midpoints_f32("nf4"), "nf4", 64, False),
        ("fp4-bs64-f32-mid", midpoints_f32("fp4"), "fp4", 64, False),
        ("nf4-bs256-dq-f32", randn(17, 999, dtype=torch.float32), "nf4", 256, True),
    ]
    for name, src, qt, bs, nested in cases:
        make_case(name, src, qt, bs, nested)
        print("wrote", name)


TINY = OUT.parent / "tiny-gpt-oss"


def copy_aux(dst):
    import shutil
    for f in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(TINY / f, dst / f)


def make_tiny_standard():
    """transformers + bitsandbytes' own 4-bit save of the tiny gpt-oss (NF4, double quant)."""
    import shutil
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig
    dst = OUT / "tiny-gpt-oss-bnb-nf4"
    shutil.rmtree(dst, ignore_errors=True)
    cfg = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                             bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.bfloat16)
    m = AutoModelForCausalLM.from_pretrained(TINY, quantization_config=cfg, dtype=torch.bfloat16,
                                             device_map="cpu")
    m.save_pretrained(dst)
    copy_aux(dst)


def make_tiny_unsloth():
    """Unsloth's gpt-oss bnb-4bit layout (spec 5) of the tiny gpt-oss, quantized by bitsandbytes:
    per-expert NF4 Linears gate_up_projs.E [2I, H] / down_projs.E [H, I] (double quant,
    blocksize 64), BF16 per-expert biases, NF4 q/k/v/o, router as mlp.router.linear (BF16).
    The reference (tiny-gpt-oss-unsloth-ref.safetensors) is bnb's dequantize_4bit of every
    group, in transformers' fused layout: gate_up_proj[E] = dequant(gate_up_projs.E).T."""
    import shutil
    from safetensors import safe_open
    src = {}
    for f in sorted(TINY.glob("*.safetensors")):
        with safe_open(str(f), "pt") as h:
            for k in h.keys():
                src[k] = h.get_tensor(k)
    dst = OUT / "tiny-gpt-oss-unsloth-bnb4"
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir()
    out, ref = {}, {}

    def quant(module, w):
        packed, st = F.quantize_4bit(w.contiguous(), blocksize=64, compress_statistics=True,
                                     quant_type="nf4")
        out[module + ".weight"] = packed
        for k, v in st.as_dict(packed=True).items():
            out[module + ".weight." + k] = v
        return F.dequantize_4bit(packed, st)            # bnb's own dequant, dtype bf16

    for k, v in src.items():
        if k.endswith("mlp.experts.gate_up_proj") or k.endswith("mlp.experts.down_proj"):
            pre, proj = k.rsplit(".", 1)
            dq = []
            for e in range(v.shape[0]):
                dq.append(quant(f"{pre}.{proj}s.{e}", v[e].t()).t())
            ref[k] = torch.stack(dq).contiguous()
        elif k.endswith("_bias") and ".mlp.experts." in k:
            pre, proj = k.rsplit(".", 1)
            for e in range(v.shape[0]):
                out[f"{pre}.{proj[:-5]}s.{e}.bias"] = v[e].clone()
            ref[k] = v
        elif ".mlp.router." in k:
            out[k.replace(".mlp.router.", ".mlp.router.linear.")] = v
            ref[k] = v
        elif k.endswith("_proj.weight") and ".self_attn." in k:
            ref[k] = quant(k[: -len(".weight")], v)
        else:
            out[k] = v
            ref[k] = v
    save_file({k: v.contiguous() for k, v in out.items()}, dst / "model.safetensors",
              metadata={"format": "pt"})
    cfg = json.loads((TINY / "config.json").read_text())
    cfg["quantization_config"] = {
        "bnb_4bit_compute_dtype": "bfloat16", "bnb_4bit_quant_type": "nf4",
        "bnb_4bit_use_double_quant": True, "llm_int8_enable_fp32_cpu_offload": False,
        "llm_int8_has_fp16_weight": False, "llm_int8_skip_modules": None,
        "llm_int8_threshold": 6.0, "load_in_4bit": True, "load_in_8bit": False,
        "quant_method": "bitsandbytes"}
    (dst / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    copy_aux(dst)
    save_file({k: v.contiguous() for k, v in ref.items()},
              OUT / "tiny-gpt-oss-unsloth-ref.safetensors", metadata={"format": "pt"})



def make_bad():
    """Hostile variants of one fixture group for tests/bad/bnb.tsv (numpy + safetensors only)."""
    from safetensors import safe_open
    from safetensors.numpy import save_file as np_save
    bad = OUT.parent.parent / "bad"
    bad.mkdir(exist_ok=True)
    with safe_open(str(OUT / "case-nf4-bs64-dq-bf16.safetensors"), "numpy") as f:
        base = {k: f.get_tensor(k) for k in f.keys() if k.startswith("w.")}
    key = "w.weight.quant_state.bitsandbytes__nf4"
    js = json.loads(bytes(base[key]).decode())

    def with_state(d, obj=None, raw=None):
        d = dict(d)
        b = raw if raw is not None else json.dumps(obj).encode()
        d[key] = np.frombuffer(b, dtype=np.uint8).copy()
        return d

    def drop(d, *names):
        return {k: v for k, v in d.items() if k not in names}

    variants = {
        "absmax-count": dict(base, **{"w.weight.absmax": base["w.weight.absmax"][:-1].copy()}),
        "state-missing-shape": with_state(base, {k: v for k, v in js.items() if k != "shape"}),
        "state-malformed": with_state(base, raw=json.dumps(js).encode()[:-7]),
        "state-not-object": with_state(base, raw=b"[1, 2, 3]"),
        "blocksize": with_state(base, dict(js, blocksize=48)),
        "blocksize-huge": with_state(base, dict(js, blocksize=1 << 40)),
        "shape-bytes": with_state(base, dict(js, shape=[130, 201])),
        "shape-overflow": with_state(base, dict(js, shape=[1 << 40, 1 << 40])),
        "shape-negative": with_state(base, dict(js, shape=[-130, 200])),
        "nested-missing": drop(base, "w.weight.nested_absmax"),
        "nested-offset": with_state(base, {k: v for k, v in js.items() if k != "nested_offset"}),
        "nested-absmax-count": dict(base, **{"w.weight.nested_absmax":
                                             base["w.weight.nested_absmax"][:1].copy()}),
        "quant-type": with_state(base, dict(js, quant_type="fp4")),
        "dtype": with_state(base, dict(js, dtype="int8")),
        "quant-map": dict(base, **{"w.weight.quant_map": base["w.weight.quant_map"][:8].copy()}),
        "no-absmax": drop(base, "w.weight.absmax"),
    }
    for name, d in variants.items():
        np_save(d, str(bad / f"bnb-{name}.safetensors"))
    # per-expert (Unsloth) groups that cannot be fused: a missing expert, a bias of another size
    from safetensors.torch import load_file as pt_load
    u = pt_load(str(OUT / "tiny-gpt-oss-unsloth-bnb4" / "model.safetensors"))
    gone = {k: v for k, v in u.items() if ".gate_up_projs.2." not in k and "layers.0.mlp" in k}
    save_file(gone, str(bad / "bnb-experts-missing.safetensors"))
    odd = {k: v for k, v in u.items() if "layers.1.mlp" in k}
    odd["model.layers.1.mlp.experts.down_projs.3.bias"] = u["model.layers.1.mlp.experts.down_projs.3.bias"][:-1].clone()
    save_file(odd, str(bad / "bnb-experts-bias-size.safetensors"))


if __name__ == "__main__":
    if "--bad-only" in sys.argv:
        make_bad()
    else:
        if "--tiny-only" not in sys.argv:
            main()
            make_bad()
        make_tiny_standard()
        make_tiny_unsloth()
        import safetensors
        import transformers
        with open(OUT / "VERSIONS.txt", "a") as f:
            f.write(f"make-fixtures-bnb.py: torch {torch.__version__}, bitsandbytes {bnb.__version__}, "
                    f"transformers {transformers.__version__}, safetensors {safetensors.__version__}, "
                    f"numpy {np.__version__}, cpu {torch.backends.cpu.get_cpu_capability()}\n")
