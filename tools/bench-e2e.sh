#!/bin/sh
# tools/bench-e2e.sh - what `make bench` runs (issue 15): `moestream bench
# e2e`, the real engines (llama.cpp, moestream run embedded and through
# moestreamd) on the GLM-4.7 preset (UD-Q2_K_XL shape) cut to 8 MoE layers,
# written with the Qwen3 tokenizer: the default prompt (~64 tokens), 16
# greedy decode steps, under a limit of resident + 25% of the expert bytes +
# KV + 64 MiB (the command's defaults), each engine three times interleaved
# (the medians); then `moestream bench serve` on the
# same model (the server against run under that limit, --parallel 4's
# aggregate decode rate against one request's). A few minutes each.
#
#   MS_BUILD=build tools/bench-e2e.sh [more bench e2e options]
#   MS_BUILD=build tools/bench-e2e.sh --sweep      # 10%..100%, both engines:
#                                                  # build/bench/sweep.{dat,gp,png}
#   MS_BUILD=build tools/bench-e2e.sh --synthetic  # the trace replays (issue 7)
#
# The model (13.4 GB) is written once into $BENCH_DIR (default build/bench,
# git-ignored) and reused while `moestream inspect` accepts it and it has a
# tokenizer; a partial one (an interrupted write) is never taken for it. The
# tokenizer is the one tests/fetch-ggml.sh fetches (run it when missing). Needs root for the memory
# limit and for dropping the page cache; without root the command runs
# unlimited and says so.
set -eu

build=${MS_BUILD:-build}
ms=${MOESTREAM:-$build/moestream}
dir=${BENCH_DIR:-build/bench}
model=$dir/glm8.gguf
partial=$dir/glm8.partial.gguf
need=$((13400000000 + 2000000000))   # the model, and 2 GB to spare
tok=${MS_QWEN3_TOKENIZER:-${MS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/moestream}/tokenizers/qwen3/tokenizer.json}

say() { echo "bench: $*" >&2; }

[ -x "$ms" ] || { say "$ms is not built (make first)"; exit 1; }
mkdir -p "$dir"
if ! "$ms" inspect "$model" 2>/dev/null | grep -q '8 MoE layers run' ||
   ! "$ms" tokenize "$model" "x" >/dev/null 2>&1; then
	[ -f "$tok" ] || { say "the Qwen3 tokenizer $tok is missing: run tests/fetch-ggml.sh"; exit 1; }
	rm -f "$model" "$partial"
	avail=$(df -B1 --output=avail "$dir" | tail -n 1)
	if [ "$avail" -lt "$need" ]; then
		say "$dir has $((avail / 1000000000)) GB free; the GLM-4.7 8-layer model" \
		    "needs 13.4 GB (and 2 GB to spare)"
		exit 1
	fi
	say "writing $model (13.4 GB, once) ..."
	"$ms" mkmodel --preset glm4.7-ud-q2_k_xl --moe-layers 8 --tokenizer "$tok" \
		-o "$partial" >&2
	mv "$partial" "$model"
fi
if [ "$(id -u)" != 0 ]; then
	say "not root: no memory limit and the page cache not dropped (sudo make bench)"
fi
for a in "$@"; do
	case $a in
	--synthetic) synthetic=1 ;;
	--sweep|--sweep=*) sweep=1 ;;
	--repeat|--repeat=*) repeat=1 ;;
	esac
done
if [ -n "${synthetic:-}" ]; then
	say "$ms bench e2e --model $model --cache-size 25% $*"
	exec "$ms" bench e2e --model "$model" --cache-size 25% "$@"
fi
out=
[ -n "${sweep:-}" ] && out="--sweep-out $dir/sweep"
# three interleaved runs of each engine, medians: one run of each can land
# in a slow minute of a shared machine that the other's misses
[ -z "${sweep:-}" ] && [ -z "${repeat:-}" ] && out="--repeat 3"
say "$ms bench e2e --model $model $out $*"
"$ms" bench e2e --model "$model" $out "$@"
[ -n "${sweep:-}" ] && exit 0
# moestream serve against run under the same limit, and --parallel 4 (issue 17)
say "$ms bench serve --model $model"
exec "$ms" bench serve --model "$model"
