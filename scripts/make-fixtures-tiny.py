#!/usr/bin/env python3
"""Make the shared tiny models under tests/fixtures/ with the real libraries.

    FIXTURE_VENV=/path/to/venv sh -c '$FIXTURE_VENV/bin/python scripts/make-fixtures-tiny.py'

(the venv comes from `sh scripts/ensure-venv.sh "$FIXTURE_VENV" scripts/requirements-fixtures.txt`).
Run by hand, never by CI: CI has no torch and only reads what this writes.

Writes
  tests/fixtures/tiny-gpt-oss/      GptOssForCausalLM, BF16, 2 shards, save_pretrained
  tests/fixtures/tiny-llama/        LlamaForCausalLM, BF16, one file, same tokenizer
  tests/fixtures/tiny-gpt-oss-ref/  prompt ids + transformers logits (eager, CPU), VERSIONS.txt

The tiny gpt-oss keeps the traps of the real config: hidden == intermediate
(square expert matrices), sliding + full attention layers, attention sinks and
biases, YaRN rope scaling with the real parameters, interleaved gate/up columns
in gate_up_proj, an embedding with more rows than the tokenizer has tokens, and
the harmony special tokens added at the top ids after the BPE vocabulary.

The tokenizer is a small byte-level BPE trained with `tokenizers` on a fixed
text, wrapped in the real gpt-oss tokenizer.json structure (pre-tokenizer regex,
ByteLevel decoder/post-processor, ignore_merges) so llama.cpp can treat it as
"gpt2" + pre "gpt-4o".
"""
import json
import os
import pathlib
import shutil
import sys

import numpy as np
import torch

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures"
# The real gpt-oss tokenizer files: ../shared/data/gpt-oss-tokenizer beside the
# checkout (or beside the folder of worktrees), or GPT_OSS_TOKENIZER_DIR.
TOKDIR = next((p for p in [pathlib.Path(os.environ.get("GPT_OSS_TOKENIZER_DIR", "/nonexistent"))] +
               [r / "shared" / "data" / "gpt-oss-tokenizer" for r in (ROOT.parent, ROOT.parent.parent)]
               if (p / "tokenizer.json").exists()), None)
SEED = 20260

BPE_VOCAB = 352          # byte alphabet (256) + 96 merges
EMBED_ROWS = 384         # > BPE_VOCAB + 21 special tokens, like 201088 rows for 200019 tokens
PROMPT = "<|start|>user<|message|>Hello World! What is 12+30? Café 東京.<|end|><|start|>assistant"

# A fixed training text: English, harmony role/channel words, digits,
# punctuation, accents and CJK so byte-level merges cover several scripts.
TRAIN_TEXT = [
	"Hello World! The quick brown fox jumps over the lazy dog.",
	"system user assistant developer analysis commentary final functions",
	"Reasoning: low medium high. Knowledge cutoff: 2024-06.",
	"What is 12+30? It is 42. What is 7*6? Also 42.",
	"Café crème brûlée, naïve façade; 東京 大阪 京都; Привет мир.",
	"    indented code:\n\tdef f(x):\n\t\treturn x * 2\n",
	"The model streams tensors shard by shard, expert by expert.",
	"It's, don't, we're, they've, I'm, you'll, he'd.",
] * 8


def versions():
	import importlib.metadata as md
	names = ["torch", "transformers", "tokenizers", "safetensors", "numpy"]
	return "".join(f"{n}=={md.version(n)}\n" for n in names)


# --- tokenizer ---------------------------------------------------------------

def make_tokenizer(out_dirs, tmpl):
	from tokenizers import Tokenizer, trainers, pre_tokenizers

	real = json.loads((TOKDIR / "tokenizer.json").read_text(encoding="utf-8"))
	real_cfg = json.loads((TOKDIR / "tokenizer_config.json").read_text(encoding="utf-8"))

	# Train with the real pre-tokenizer so merges never cross its splits.
	skel = dict(real)
	skel["added_tokens"] = []
	skel["model"] = dict(real["model"], vocab={}, merges=[])
	tok = Tokenizer.from_str(json.dumps(skel))
	trainer = trainers.BpeTrainer(vocab_size=BPE_VOCAB, show_progress=False,
	                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
	                              special_tokens=[])
	tok.train_from_iterator(TRAIN_TEXT, trainer=trainer)
	trained = json.loads(tok.to_str())
	vocab = trained["model"]["vocab"]
	assert len(vocab) == BPE_VOCAB, len(vocab)

	# Special tokens in the real order, renumbered to sit right after the BPE ids.
	base = min(t["id"] for t in real["added_tokens"])
	added = []
	for t in sorted(real["added_tokens"], key=lambda t: t["id"]):
		added.append(dict(t, id=t["id"] - base + BPE_VOCAB))
	ids = {t["content"]: t["id"] for t in added}

	doc = dict(real)
	doc["added_tokens"] = added
	doc["model"] = dict(real["model"], vocab=vocab, merges=trained["model"]["merges"])
	tj = json.dumps(doc, ensure_ascii=False, indent=2)
	Tokenizer.from_str(tj)	# must load

	cfg = dict(real_cfg)
	cfg["added_tokens_decoder"] = {str(t["id"]): {k: t[k] for k in
	                               ("content", "lstrip", "normalized", "rstrip", "single_word", "special")}
	                               for t in added}
	tmpl = real_cfg.get("chat_template", tmpl)
	if tmpl is None:
		sys.exit("make-fixtures-tiny: no gpt-oss chat template found (GPT_OSS_TOKENIZER_DIR/chat_template.jinja)")
	cfg["chat_template"] = tmpl
	for d in out_dirs:
		(d / "tokenizer.json").write_text(tj + "\n", encoding="utf-8")
		(d / "tokenizer_config.json").write_text(json.dumps(cfg, ensure_ascii=False, indent=2) + "\n",
		                                         encoding="utf-8")
	return ids, len(vocab) + len(added)


# --- models ------------------------------------------------------------------

def scale_init(model, gen):
	"""Random weights big enough that the logits are not degenerate."""
	with torch.no_grad():
		for name, p in model.named_parameters():
			if "norm" in name:
				p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
			elif "sinks" in name:
				p.copy_(0.5 * torch.randn(p.shape, generator=gen))
			elif name.endswith("bias"):
				p.copy_(0.05 * torch.randn(p.shape, generator=gen))
			elif "embed_tokens" in name:
				p.copy_(0.5 * torch.randn(p.shape, generator=gen))
			else:
				fan_in = p.shape[-2] if "experts" in name else p.shape[-1]
				p.copy_(torch.randn(p.shape, generator=gen) / fan_in ** 0.5)


def save_model(model, out, ids, shard_parts):
	for p in model.parameters():
		p.data = p.data.to(torch.bfloat16)
	gc = model.generation_config
	gc.bos_token_id = ids["<|startoftext|>"]
	gc.eos_token_id = [ids["<|return|>"], ids["<|endoftext|>"], ids["<|call|>"]]
	gc.pad_token_id = ids["<|endoftext|>"]
	gc.do_sample = True
	total = sum(p.numel() * 2 for p in model.parameters())
	model.save_pretrained(out, max_shard_size=total // shard_parts + 4096 if shard_parts > 1 else "1GB")


def logits(cls, path, dtype, ids):
	m = cls.from_pretrained(path, dtype=dtype, attn_implementation="eager")
	m = m.to(dtype)		# also the norms transformers keeps in fp32
	m.eval()
	with torch.no_grad():
		return m(torch.tensor([ids])).logits[0].float().numpy()


def main():
	from safetensors.numpy import save_file
	from transformers import (AutoTokenizer, GptOssConfig, GptOssForCausalLM, LlamaConfig,
	                          LlamaForCausalLM)

	oss, llama, ref = FIX / "tiny-gpt-oss", FIX / "tiny-llama", FIX / "tiny-gpt-oss-ref"
	if TOKDIR is None:
		sys.exit("make-fixtures-tiny: set GPT_OSS_TOKENIZER_DIR to the real gpt-oss tokenizer folder")
	# The template: GPT_OSS_TOKENIZER_DIR/chat_template.jinja, else the one
	# committed in the fixture (the shared tokenizer_config.json has none).
	tmpl = None
	if (TOKDIR / "chat_template.jinja").exists():
		tmpl = (TOKDIR / "chat_template.jinja").read_text(encoding="utf-8")
	elif (oss / "tokenizer_config.json").exists():
		tmpl = json.loads((oss / "tokenizer_config.json").read_text(encoding="utf-8")).get("chat_template")
	for d in (oss, llama, ref):
		shutil.rmtree(d, ignore_errors=True)
		d.mkdir(parents=True)
	ids, ntok = make_tokenizer([oss, llama], tmpl)
	assert ntok < EMBED_ROWS

	torch.manual_seed(SEED)
	gen = torch.Generator().manual_seed(SEED)
	cfg = GptOssConfig(
		num_hidden_layers=2, num_local_experts=4, num_experts_per_tok=2,
		vocab_size=EMBED_ROWS, hidden_size=64, intermediate_size=64, head_dim=16,
		num_attention_heads=4, num_key_value_heads=2, sliding_window=8,
		layer_types=["sliding_attention", "full_attention"],
		max_position_embeddings=131072,
		rope_parameters={"rope_type": "yarn", "rope_theta": 150000.0, "factor": 32.0,
		                 "beta_fast": 32.0, "beta_slow": 1.0, "truncate": False,
		                 "original_max_position_embeddings": 4096},
		rms_norm_eps=1e-5, swiglu_limit=7.0, attention_bias=True, tie_word_embeddings=False,
		initializer_range=0.02, router_aux_loss_coef=0.9, output_router_logits=False,
		bos_token_id=ids["<|startoftext|>"], eos_token_id=ids["<|return|>"],
		pad_token_id=ids["<|endoftext|>"])
	model = GptOssForCausalLM(cfg)
	scale_init(model, gen)
	save_model(model, oss, ids, 2)

	lcfg = LlamaConfig(
		num_hidden_layers=2, vocab_size=EMBED_ROWS, hidden_size=64, intermediate_size=128,
		num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
		rms_norm_eps=1e-5, tie_word_embeddings=False,
		bos_token_id=ids["<|startoftext|>"], eos_token_id=ids["<|return|>"],
		pad_token_id=ids["<|endoftext|>"])
	lmodel = LlamaForCausalLM(lcfg)
	scale_init(lmodel, gen)
	save_model(lmodel, llama, ids, 1)

	tk = AutoTokenizer.from_pretrained(oss)
	prompt_ids = tk(PROMPT, add_special_tokens=False)["input_ids"]
	assert tk.decode(prompt_ids) == PROMPT, tk.decode(prompt_ids)
	assert len(prompt_ids) > cfg.sliding_window
	# The chat template must render with the renumbered special tokens.
	chat = tk.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
	                              add_generation_prompt=True)
	assert chat.startswith("<|start|>system<|message|>") and chat.endswith("<|start|>assistant"), chat

	meta = {"prompt": PROMPT, "attn_implementation": "eager", "device": "cpu",
	        "logits_f32": "weights upcast BF16->F32, computed in F32",
	        "logits_bf16": "computed in BF16, logits cast to F32"}
	for name, cls, path in (("logits", GptOssForCausalLM, oss), ("tiny-llama-logits", LlamaForCausalLM, llama)):
		lf = logits(cls, path, torch.float32, prompt_ids)
		lb = logits(cls, path, torch.bfloat16, prompt_ids)
		assert lf.shape == (len(prompt_ids), EMBED_ROWS)
		sd = float(lf.std())
		assert 0.5 < sd < 20, sd	# not degenerate
		top = np.argmax(lf, axis=-1)
		assert len(set(top.tolist())) > 1, top
		print(f"{name}: {len(prompt_ids)} tokens, logits std {sd:.3f}, max |f32-bf16| "
		      f"{float(np.abs(lf - lb).max()):.4f}, argmax {top.tolist()}")
		save_file({"input_ids": np.array(prompt_ids, dtype=np.int64),
		           "logits_f32": np.ascontiguousarray(lf, dtype=np.float32),
		           "logits_bf16": np.ascontiguousarray(lb, dtype=np.float32)},
		          str(ref / f"{name}.safetensors"), metadata=meta)
	(ref / "VERSIONS.txt").write_text("# scripts/make-fixtures-tiny.py\n" + versions())
	total = sum(f.stat().st_size for d in (oss, llama, ref) for f in d.iterdir())
	print(f"tokens {ntok}, embedding rows {EMBED_ROWS}, fixtures {total} bytes")


if __name__ == "__main__":
	main()
