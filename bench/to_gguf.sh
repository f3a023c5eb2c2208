#!/bin/sh
# ckpt to-gguf on the synthetic gpt-oss-20b-shaped checkpoint (4 layers + embeddings),
# MXFP4 input and BF16 input, against cp of the same bytes and, when it can be had,
# llama.cpp's convert_hf_to_gguf.py on the same input in the same run.
#
# The converter comes from the llama-cpp-python sdist on PyPI (the version pinned in
# tests/requirements.txt vendors llama.cpp with gpt-oss support); it needs torch and
# transformers, so it runs under $CONVERT_PY (default: the fixture venv).  Set
# LLAMA_CPP_DIR to a llama.cpp checkout to use that instead.
#
# usage: sh bench/to_gguf.sh   (from bench/run.sh, which sets CKPT PY BENCH_DATA OUT ROOT)
set -e
ROOT=${ROOT:-$(cd "$(dirname "$0")/.." && pwd)}
CKPT=${CKPT:-$ROOT/build/ckpt}
PY=${PY:-$ROOT/build/venv/bin/python}
BENCH_DATA=${BENCH_DATA:-$ROOT/bench/out/data}
OUT=${OUT:-$ROOT/bench/out}
CONVERT_PY=${CONVERT_PY:-${FIXTURE_VENV:-$ROOT/build/venv-fixtures}/bin/python}
mkdir -p "$BENCH_DATA" "$OUT"
touch "$OUT/results.tsv"
. "$ROOT/bench/lib.sh"

MX=$BENCH_DATA/mx4
BF=$BENCH_DATA/bf4
[ -f "$MX/config.json" ] || "$PY" "$ROOT/bench/make-synthetic.py" "$MX" --layers 4
[ -f "$BF/config.json" ] || "$PY" "$ROOT/bench/make-synthetic.py" "$BF" --layers 4 --flavor bf16

# llama.cpp's converter, if we can get it
CONV=
if [ -n "$LLAMA_CPP_DIR" ] && [ -f "$LLAMA_CPP_DIR/convert_hf_to_gguf.py" ]; then
	CONV=$LLAMA_CPP_DIR
elif [ -x "$CONVERT_PY" ] && "$CONVERT_PY" -c "import torch, transformers" 2>/dev/null; then
	ver=$(sed -n 's/^llama-cpp-python==//p' "$ROOT/tests/requirements.txt")
	dir=$BENCH_DATA/llama-cpp-python-$ver
	if [ ! -d "$dir" ] && "$PY" -m pip download -q --no-deps --no-binary :all: -d "$BENCH_DATA" \
		"llama-cpp-python==$ver" 2>/dev/null; then
		tar -xzf "$BENCH_DATA/llama_cpp_python-$ver.tar.gz" -C "$BENCH_DATA" \
			"llama_cpp_python-$ver/vendor/llama.cpp" && mv "$BENCH_DATA/llama_cpp_python-$ver" "$dir"
	fi
	[ -f "$dir/vendor/llama.cpp/convert_hf_to_gguf.py" ] && CONV=$dir/vendor/llama.cpp
fi
[ -n "$CONV" ] || echo "# convert_hf_to_gguf.py: not available (needs torch + transformers under CONVERT_PY)" | tee -a "$OUT/results.tsv"

for src in "$MX" "$BF"; do
	name=$(basename "$src")
	echo "# to-gguf input: $src ($(size_gb "$src") GB), $(nproc) cores" | tee -a "$OUT/results.tsv"
	cat "$src"/*.safetensors > /dev/null
	rm -rf "$OUT/cp.out" "$OUT/a.gguf"
	measure "cp -r $name (+sync)" sh -c "cp -r '$src' '$OUT/cp.out' && sync"
	rm -rf "$OUT/cp.out"
	measure "ckpt to-gguf $name (bf16 + mxfp4 experts)" "$CKPT" to-gguf "$src" "$OUT/a.gguf"
	echo "# output $(size_gb "$OUT/a.gguf") GB" | tee -a "$OUT/results.tsv"
	rm -f "$OUT/a.gguf"
	measure "ckpt to-gguf $name --outtype q8_0" "$CKPT" to-gguf --outtype q8_0 "$src" "$OUT/a.gguf"
	rm -f "$OUT/a.gguf"
	if [ "$name" = bf4 ]; then
		measure "ckpt to-gguf $name --experts bf16" "$CKPT" to-gguf --experts bf16 "$src" "$OUT/a.gguf"
		rm -f "$OUT/a.gguf"
	fi
	if [ -n "$CONV" ]; then
		measure "convert_hf_to_gguf.py $name (--outtype bf16)" env PYTHONPATH="$CONV/gguf-py" \
			"$CONVERT_PY" "$CONV/convert_hf_to_gguf.py" --outtype bf16 --outfile "$OUT/a.gguf" "$src" ||
			echo "# convert_hf_to_gguf.py failed on $name" | tee -a "$OUT/results.tsv"
		rm -f "$OUT/a.gguf"
	fi
done
