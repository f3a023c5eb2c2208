#!/usr/bin/env python3
"""Make the LoRA fixtures of `ckpt merge-lora` with real PEFT + transformers.

    $FIXTURE_VENV/bin/python scripts/make-fixtures-lora.py          # write tests/fixtures/lora/
    $FIXTURE_VENV/bin/python scripts/make-fixtures-lora.py --check CASE OUT
                                 # load a ckpt merge-lora output OUT with transformers and
                                 # compare its logits with the PEFT-merged model's

Run by hand (CI has no torch).  Needs tests/fixtures/tiny-gpt-oss and
tiny-llama (scripts/make-fixtures-tiny.py).  For every case it writes
  tests/fixtures/lora/<case>/            the adapter as PEFT saves it (save_pretrained),
                                         with tokenizer files where a trainer would save them
  tests/fixtures/lora/ref/<case>.safetensors
                                         every tensor merge_and_unload changed: its BF16
                                         bits as U16 (so tests compare bits with numpy alone),
                                         plus "__logits__": the merged model's logits (F32,
                                         eager, CPU) at the last positions of the prompt
The adapters get random A and B (B is zero at PEFT's init, which would merge
nothing) with a fixed seed.
"""
import json
import pathlib
import shutil
import sys

import numpy as np
import torch

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures"
OUT = FIX / "lora"
BASES = {"oss": FIX / "tiny-gpt-oss", "llama": FIX / "tiny-llama", "gpt2": OUT / "tiny-gpt2"}
SEED = 6
NLOGITS = 6	# positions of the prompt kept in the reference logits

ATTN = ["q_proj", "k_proj", "v_proj", "o_proj"]

# name: (base, LoraConfig kwargs, tokenizer files: None | "same" | "pad" | "vocab")
CASES = {
	"llama-attn": ("llama", dict(r=4, lora_alpha=8, target_modules=ATTN), "same"),
	"llama-rslora-patterns": ("llama", dict(
		r=4, lora_alpha=8, use_rslora=True, target_modules="all-linear",
		rank_pattern={"down_proj": 2, "model.layers.1.self_attn.q_proj": 6},
		alpha_pattern={"v_proj": 3, "layers.0.mlp.up_proj": 5.5}), None),
	"llama-dora": ("llama", dict(r=4, lora_alpha=8, use_dora=True,
	                             target_modules=["q_proj", "v_proj", "down_proj"]), None),
	"llama-mts": ("llama", dict(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"],
	                            modules_to_save=["lm_head"]), None),
	"llama-embed": ("llama", dict(r=4, lora_alpha=4, target_modules=["embed_tokens", "o_proj"]), None),
	"oss-attn": ("oss", dict(r=4, lora_alpha=8, target_modules="all-linear"), "same"),
	"oss-attn-bias": ("oss", dict(r=2, lora_alpha=4, target_modules=["q_proj", "o_proj"], lora_bias=True), None),
	"oss-experts": ("oss", dict(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"],
	                            target_parameters=["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]),
	                "same"),
	"oss-experts-gateup": ("oss", dict(r=2, lora_alpha=8, target_modules=[],
	                                   target_parameters=["0.mlp.experts.gate_up_proj"]), None),
	"oss-experts-down": ("oss", dict(r=2, lora_alpha=3, use_rslora=True, target_modules=[],
	                                 target_parameters=["mlp.experts.down_proj"]), None),
	"oss-tok-pad": ("oss", dict(r=4, lora_alpha=8, target_modules=["q_proj"]), "pad"),
	"oss-tok-vocab": ("oss", dict(r=4, lora_alpha=8, target_modules=["q_proj"]), "vocab"),
	"llama-tokens": ("llama", dict(r=4, lora_alpha=8, target_modules=["q_proj"],
	                               trainable_token_indices=[3, 5, 360]), None),
	"gpt2-fifo": ("gpt2", dict(r=4, lora_alpha=8, target_modules=["c_attn", "c_proj"], fan_in_fan_out=True),
	              None),
}

# On an MXFP4 base: the expert LoRA PEFT drops (with only a warning) when the
# experts stay quantized (GPU + kernels); the reference dequantizes the base
# with transformers (Mxfp4Config(dequantize=True)), then merges.
MXFP4_CASES = {"oss-mxfp4-experts": "oss-experts"}
MXFP4_BASE = OUT / "tiny-gpt-oss-mxfp4"
FP4 = np.array([0, .5, 1, 1.5, 2, 3, 4, 6], np.float32)


def mxfp4_quant(w):
	"""[E, in, out] float -> blocks [E, out, in/32, 16], scales [E, out, in/32] (low nibble first).
	Any valid encoding will do: this only makes the base; transformers decodes it for the reference."""
	w = w.transpose(0, 2, 1)
	E, O, I = w.shape
	b = w.reshape(E, O, I // 32, 32)
	amax = np.abs(b).max(-1)
	s = np.clip(np.where(amax > 0, np.ceil(np.log2(np.maximum(amax, 1e-30) / 6)), -127), -127, 127)
	x = b / np.exp2(s)[..., None]
	idx = np.abs(np.abs(x)[..., None] - FP4).argmin(-1)
	code = (idx | (np.signbit(x) & (idx > 0)) * 8).astype(np.uint8)
	return (np.ascontiguousarray(code[..., 0::2] | (code[..., 1::2] << 4)),
	        np.ascontiguousarray((s + 127).astype(np.uint8)))


def make_mxfp4_base():
	from safetensors.torch import load_file as tload, save_file as tsave
	src, dst = BASES["oss"], MXFP4_BASE
	dst.mkdir(parents=True)
	sd = {}
	for f in sorted(src.glob("*.safetensors")):
		sd.update(tload(str(f)))
	out = {}
	for k, v in sd.items():
		if k.endswith("experts.gate_up_proj") or k.endswith("experts.down_proj"):
			bl, sc = mxfp4_quant(v.float().numpy())
			out[k + "_blocks"], out[k + "_scales"] = torch.from_numpy(bl), torch.from_numpy(sc)
		else:
			out[k] = v
	tsave(out, str(dst / "model.safetensors"), metadata={"format": "pt"})
	cfg = json.loads((src / "config.json").read_text())
	cfg["quantization_config"] = {"modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router",
	                                                         "model.embed_tokens", "lm_head"],
	                              "quant_method": "mxfp4"}
	(dst / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
	for f in ("generation_config.json", "tokenizer.json", "tokenizer_config.json"):
		shutil.copyfile(src / f, dst / f)


# On a bitsandbytes NF4 base (tests/fixtures/bnb, made by scripts/make-fixtures-bnb.py):
# the reference is transformers' dequantize() (to the model dtype) followed by PEFT,
# the "merge into dequant(W4)" recipe; PEFT's own Linear4bit merge re-quantizes.
BNB_BASE = FIX / "bnb" / "tiny-gpt-oss-bnb-nf4"
BNB_CASES = {"oss-bnb-attn": "oss-attn", "oss-bnb-experts": "oss-experts"}


def load_bnb_dequantized():
	from transformers import AutoModelForCausalLM
	m = AutoModelForCausalLM.from_pretrained(BNB_BASE, dtype=torch.bfloat16, attn_implementation="eager")
	return m.dequantize().to(torch.bfloat16)


def load_mxfp4_dequantized():
	from transformers import AutoModelForCausalLM, Mxfp4Config
	m = AutoModelForCausalLM.from_pretrained(MXFP4_BASE, quantization_config=Mxfp4Config(dequantize=True),
	                                         dtype=torch.bfloat16, attn_implementation="eager")
	return m.to(torch.bfloat16)


def prompt_ids():
	from safetensors.numpy import load_file
	return load_file(str(FIX / "tiny-gpt-oss-ref" / "logits.safetensors"))["input_ids"].tolist()


def load_base(kind):
	from transformers import AutoModelForCausalLM
	m = AutoModelForCausalLM.from_pretrained(BASES[kind], dtype=torch.bfloat16, attn_implementation="eager")
	return m.to(torch.bfloat16)	# also the norms transformers keeps in fp32


def randomize(model, gen):
	with torch.no_grad():
		for name, p in model.named_parameters():
			if "lora_" in name and "magnitude" not in name:
				p.copy_(0.3 * torch.randn(p.shape, generator=gen))
			elif "lora_magnitude_vector" in name:
				p.mul_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
			elif "trainable_tokens_delta" in name:
				p.add_(0.5 * torch.randn(p.shape, generator=gen))
			elif "modules_to_save" in name:
				p.add_((0.05 * torch.randn(p.shape, generator=gen)).to(p.dtype))


def write_tokenizer(kind, how, dst):
	src = BASES[kind]
	for f in ("tokenizer.json", "tokenizer_config.json"):
		shutil.copyfile(src / f, dst / f)
	if how == "pad":
		cfg = json.loads((dst / "tokenizer_config.json").read_text())
		cfg["pad_token"] = "<|reserved_200017|>"	# what Unsloth ships for gpt-oss
		(dst / "tokenizer_config.json").write_text(json.dumps(cfg, ensure_ascii=False, indent=2) + "\n")
	elif how == "vocab":
		tj = json.loads((dst / "tokenizer.json").read_text())
		vocab = tj["model"]["vocab"]
		victim = max(vocab, key=lambda k: vocab[k])	# the last BPE token gets another string
		vocab["Ġckpt"] = vocab.pop(victim)
		(dst / "tokenizer.json").write_text(json.dumps(tj, ensure_ascii=False, indent=2) + "\n")


def logits_of(model):
	m = model.float().eval()
	with torch.no_grad():
		out = m(torch.tensor([prompt_ids()])).logits[0, -NLOGITS:].float().numpy()
	model.to(torch.bfloat16)
	return np.ascontiguousarray(out)


def make_gpt2_base():
	"""A tiny GPT-2: its Conv1D weights are stored [in, out] (PEFT's fan_in_fan_out)."""
	from transformers import GPT2Config, GPT2LMHeadModel
	torch.manual_seed(SEED)
	m = GPT2LMHeadModel(GPT2Config(vocab_size=384, n_positions=64, n_embd=64, n_layer=1, n_head=4,
	                               tie_word_embeddings=False))
	gen = torch.Generator().manual_seed(SEED)
	with torch.no_grad():
		for p in m.parameters():
			p.copy_(0.2 * torch.randn(p.shape, generator=gen))
	m.to(torch.bfloat16).save_pretrained(BASES["gpt2"])


def make():
	from peft import LoraConfig, PeftModel, get_peft_model
	from safetensors.numpy import save_file
	from safetensors.torch import load_file as tload

	shutil.rmtree(OUT, ignore_errors=True)
	(OUT / "ref").mkdir(parents=True)
	make_gpt2_base()
	gen = torch.Generator().manual_seed(SEED)
	torch.manual_seed(SEED)
	for case, (kind, kw, tok) in CASES.items():
		base = load_base(kind)
		peft_model = get_peft_model(base, LoraConfig(**kw))
		randomize(peft_model, gen)
		d = OUT / case
		peft_model.save_pretrained(d)
		if tok:
			write_tokenizer(kind, tok, d)
		# The reference: a fresh base, the adapter as saved, merge_and_unload.
		base_sd = {k: v.clone() for k, v in load_base(kind).state_dict().items()}
		merged = PeftModel.from_pretrained(load_base(kind), d).merge_and_unload()
		msd = merged.state_dict()
		assert set(msd) == set(base_sd), set(msd) ^ set(base_sd)
		changed = {}
		for k, v in msd.items():
			if not torch.equal(v, base_sd[k]):
				assert v.dtype == torch.bfloat16, (k, v.dtype)
				changed[k] = v.detach().contiguous().view(torch.uint16).numpy()
		assert changed, case
		changed["__logits__"] = logits_of(merged)
		meta = {"case": case, "base": BASES[kind].name, "dtype": "BF16 bit patterns stored as U16",
		        "logits": f"merged model upcast to F32, eager, CPU, last {NLOGITS} positions of the tiny prompt"}
		save_file(changed, str(OUT / "ref" / f"{case}.safetensors"), metadata=meta)
		ad = tload(str(d / "adapter_model.safetensors"))
		print(f"{case}: {len(ad)} adapter tensors, {len(changed) - 1} merged tensors changed")
	make_mxfp4_base()
	from safetensors.torch import load_file as tload2
	raw = tload2(str(MXFP4_BASE / "model.safetensors"))
	for case, adapter in list(MXFP4_CASES.items()) + list(BNB_CASES.items()):
		if case in BNB_CASES:
			raw = tload2(str(BNB_BASE / "model.safetensors"))
		load = load_bnb_dequantized if case in BNB_CASES else load_mxfp4_dequantized
		merged = PeftModel.from_pretrained(load(), OUT / adapter).merge_and_unload()
		ref = {}
		for k, v in merged.state_dict().items():
			if k not in raw or not torch.equal(v, raw[k]):
				ref[k] = v.detach().contiguous().view(torch.uint16).numpy()
		ref["__logits__"] = logits_of(merged)
		save_file(ref, str(OUT / "ref" / f"{case}.safetensors"),
		          metadata={"case": case, "base": (BNB_BASE if case in BNB_CASES else MXFP4_BASE).name,
		                    "adapter": adapter,
		                    "dtype": "BF16 bit patterns stored as U16"})
		print(f"{case}: {len(ref) - 1} tensors differ from the quantized base")
	import importlib.metadata as md
	(OUT / "VERSIONS.txt").write_text("# scripts/make-fixtures-lora.py\n" + "".join(
		f"{n}=={md.version(n)}\n" for n in ("torch", "transformers", "peft", "safetensors", "numpy")))
	total = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
	print(f"fixtures/lora: {total} bytes")


def check(case, out):
	"""transformers loads a merge-lora output; its logits equal the PEFT-merged model's."""
	from safetensors.numpy import load_file
	from transformers import AutoModelForCausalLM
	ref = load_file(str(OUT / "ref" / f"{case}.safetensors"))["__logits__"]
	m = AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16, attn_implementation="eager")
	got = logits_of(m.to(torch.bfloat16))
	diff = float(np.abs(got - ref).max())
	print(f"{case}: max |logits - PEFT merged| = {diff:.3g} (logits std {float(ref.std()):.3g})")
	return diff


if __name__ == "__main__":
	if len(sys.argv) == 4 and sys.argv[1] == "--check":
		sys.exit(0 if check(sys.argv[2], sys.argv[3]) < 1e-3 else 1)
	make()
