#!/usr/bin/env python3
"""Write a synthetic gpt-oss-20b-shaped checkpoint for the benchmarks.

Same tensor names, dtypes and shapes as openai/gpt-oss-20b (HF flavor) for the first
--layers layers, plus the full embedding and lm_head, sharded like the release, with the
release's config.json (num_hidden_layers set to --layers) and, when ../shared has it, the
real tokenizer.  --flavor mxfp4 writes the experts as OpenAI stores them (U8 blocks and
scales); --flavor bf16 writes the dequantized HF layout (gate_up_proj [E, H, 2I]).
Values are random but valid: BF16 from a normal distribution, MXFP4 scales in a narrow
range (never 255).  Streams chunk by chunk; needs little memory.

usage: make-synthetic.py OUT_DIR [--layers 4] [--flavor mxfp4|bf16] [--seed 0]
"""
import argparse
import json
import os
import shutil
import struct

import numpy as np

H, I, E, V = 2880, 2880, 32, 201088
NQ, NKV, HD = 64, 8, 64
SHARD = 4_000_000_000


def tensors(layers, flavor):
    out = [("model.embed_tokens.weight", "BF16", [V, H])]
    for l in range(layers):
        p = f"model.layers.{l}."
        out += [
            (p + "input_layernorm.weight", "BF16", [H]),
            (p + "post_attention_layernorm.weight", "BF16", [H]),
            (p + "self_attn.q_proj.weight", "BF16", [NQ * HD, H]),
            (p + "self_attn.q_proj.bias", "BF16", [NQ * HD]),
            (p + "self_attn.k_proj.weight", "BF16", [NKV * HD, H]),
            (p + "self_attn.k_proj.bias", "BF16", [NKV * HD]),
            (p + "self_attn.v_proj.weight", "BF16", [NKV * HD, H]),
            (p + "self_attn.v_proj.bias", "BF16", [NKV * HD]),
            (p + "self_attn.o_proj.weight", "BF16", [H, NQ * HD]),
            (p + "self_attn.o_proj.bias", "BF16", [H]),
            (p + "self_attn.sinks", "BF16", [NQ]),
            (p + "mlp.router.weight", "BF16", [E, H]),
            (p + "mlp.router.bias", "BF16", [E]),
            (p + "mlp.experts.gate_up_proj_bias", "BF16", [E, 2 * I]),
            (p + "mlp.experts.down_proj_bias", "BF16", [E, H]),
        ]
        if flavor == "mxfp4":
            out += [
                (p + "mlp.experts.gate_up_proj_blocks", "U8", [E, 2 * I, H // 32, 16]),
                (p + "mlp.experts.gate_up_proj_scales", "U8", [E, 2 * I, H // 32]),
                (p + "mlp.experts.down_proj_blocks", "U8", [E, H, I // 32, 16]),
                (p + "mlp.experts.down_proj_scales", "U8", [E, H, I // 32]),
            ]
        else:
            out += [
                (p + "mlp.experts.gate_up_proj", "BF16", [E, H, 2 * I]),
                (p + "mlp.experts.down_proj", "BF16", [E, I, H]),
            ]
    out += [("model.norm.weight", "BF16", [H]), ("lm_head.weight", "BF16", [V, H])]
    return out


def nbytes(dtype, shape):
    return int(np.prod(shape, dtype=np.int64)) * (2 if dtype == "BF16" else 1)


def fill(f, name, dtype, shape, rng):
    n = nbytes(dtype, shape)
    chunk = 1 << 26
    done = 0
    while done < n:
        k = min(chunk, n - done)
        if dtype == "BF16":
            x = (rng.standard_normal(k // 2, dtype=np.float32) * 0.02)
            f.write((x.view(np.uint32) >> 16).astype(np.uint16).tobytes())
        elif name.endswith("_scales"):
            f.write(rng.integers(117, 125, k, dtype=np.uint8).tobytes())
        else:
            f.write(rng.integers(0, 256, k, dtype=np.uint8).tobytes())
        done += k


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--flavor", choices=["mxfp4", "bf16"], default="mxfp4")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    ts = tensors(a.layers, a.flavor)
    shards, cur, size = [], [], 0
    for t in ts:
        b = nbytes(t[1], t[2])
        if cur and size + b > SHARD:
            shards.append(cur)
            cur, size = [], 0
        cur.append(t)
        size += b
    shards.append(cur)
    os.makedirs(a.out, exist_ok=True)
    weight_map, total = {}, 0
    for k, group in enumerate(shards):
        # gpt-oss numbers its shards from 00000
        fn = f"model-{k:05d}-of-{len(shards) - 1:05d}.safetensors"
        hdr, off = {"__metadata__": {"format": "pt"}}, 0
        for name, dt, shape in group:
            b = nbytes(dt, shape)
            hdr[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + b]}
            off += b
            weight_map[name] = fn
        hj = json.dumps(hdr, separators=(",", ":")).encode()
        hj += b" " * (-len(hj) % 8)
        with open(os.path.join(a.out, fn), "wb") as f:
            f.write(struct.pack("<Q", len(hj)) + hj)
            for name, dt, shape in group:
                fill(f, name, dt, shape, rng)
        total += off
    with open(os.path.join(a.out, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2, sort_keys=True)
    cfg = {
        "architectures": ["GptOssForCausalLM"], "model_type": "gpt_oss", "hidden_size": H,
        "intermediate_size": I, "num_hidden_layers": a.layers, "num_local_experts": E,
        "num_experts_per_tok": 4, "experts_per_token": 4, "num_attention_heads": NQ,
        "num_key_value_heads": NKV, "head_dim": HD, "vocab_size": V, "rms_norm_eps": 1e-05,
        "sliding_window": 128, "max_position_embeddings": 131072, "initial_context_length": 4096,
        "rope_theta": 150000, "rope_scaling": {"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0,
                                               "beta_slow": 1.0, "truncate": False,
                                               "original_max_position_embeddings": 4096},
        "layer_types": ["sliding_attention" if l % 2 == 0 else "full_attention" for l in range(a.layers)],
        "attention_bias": True, "attention_dropout": 0.0, "hidden_act": "silu", "swiglu_limit": 7.0,
        "tie_word_embeddings": False, "torch_dtype": "bfloat16", "eos_token_id": 200002,
        "pad_token_id": 199999, "router_aux_loss_coef": 0.9, "output_router_logits": False,
        "use_cache": True,
    }
    if a.flavor == "mxfp4":
        cfg["quantization_config"] = {"quant_method": "mxfp4", "modules_to_not_convert": [
            "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]}
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    tok = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "gpt-oss-tokenizer")
    for fn in ("tokenizer.json", "tokenizer_config.json"):
        if os.path.exists(os.path.join(tok, fn)):
            shutil.copy(os.path.join(tok, fn), os.path.join(a.out, fn))
    print(f"{a.out}: {len(ts)} tensors, {total / 1e9:.2f} GB in {len(shards)} shards")


if __name__ == "__main__":
    main()
