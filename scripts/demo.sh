#!/bin/sh
# make demo: the main jobs on the bundled tiny gpt-oss (tests/fixtures/tiny-gpt-oss, made by
# scripts/make-fixtures-tiny.py with the real transformers).  Writes into a scratch folder
# and removes it at the end.  Tools not built into this ckpt are skipped.
set -e
CKPT=$(readlink -f "${1:-build/ckpt}")
ROOT=$(cd "$(dirname "$0")/.." && pwd)
M=$ROOT/tests/fixtures/tiny-gpt-oss
TMP=$(mktemp -d "${TMPDIR:-/tmp}/ckpt-demo.XXXXXX")
trap 'rm -rf "$TMP"' EXIT INT TERM
has() { "$CKPT" --help | grep -q "^  $1 "; }
step() { printf '\n$ %s\n' "$*"; "$@"; }

[ -d "$M" ] || { echo "demo: $M is missing" >&2; exit 3; }
step "$CKPT" ls --summary "$M"
step "$CKPT" ls "$M"
step "$CKPT" cp --dtype f32 --shard-size 300KB "$M" "$TMP/f32"
step ls "$TMP/f32"
step "$CKPT" ls --summary "$TMP/f32"
if has tokcheck; then step "$CKPT" tokcheck "$M"; step "$CKPT" tokcheck "$M" "$TMP/f32"; fi
if has merge-lora; then
	# a real PEFT adapter (attention + both expert params), then the tokenizer gate refusing one
	step "$CKPT" merge-lora "$M" "$ROOT/tests/fixtures/lora/oss-experts" "$TMP/merged"
	step "$CKPT" ls --filter '*layers.0.mlp.experts.*' "$TMP/merged"
	printf '\n$ %s\n' "$CKPT merge-lora $M .../lora/oss-tok-vocab $TMP/refused   (expected: refused, exit 1)"
	if "$CKPT" merge-lora "$M" "$ROOT/tests/fixtures/lora/oss-tok-vocab" "$TMP/refused"; then
		echo "demo: a tokenizer-mismatched adapter was merged" >&2; exit 1
	fi
fi
if has quant-mxfp4; then
	step "$CKPT" quant-mxfp4 "$M" "$TMP/mxfp4"
	step "$CKPT" ls --filter '*experts*' "$TMP/mxfp4"
	if has dequant-mxfp4; then step "$CKPT" dequant-mxfp4 "$TMP/mxfp4" "$TMP/bf16"; fi
	if has to-gguf; then
		step "$CKPT" to-gguf "$TMP/mxfp4" "$TMP/tiny.gguf"
		step "$CKPT" ls "$TMP/tiny.gguf"
	fi
fi
if has quant-bnb; then
	step "$CKPT" quant-bnb "$M" "$TMP/nf4"
	step "$CKPT" ls --filter 'model.layers.0.self_attn.q_proj*' "$TMP/nf4"
	if has dequant-nf4; then step "$CKPT" dequant-nf4 "$TMP/nf4" "$TMP/dq"; fi
fi
echo
echo "demo: done"
