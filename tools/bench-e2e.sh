#!/bin/sh
# tools/bench-e2e.sh - what `make bench` runs (issue 7): `moestream bench e2e`
# on the GLM-4.7 preset (UD-Q2_K_XL shape) cut to 8 MoE layers, with the
# expert cache at 25% of the expert bytes and the memory limit just above it
# (cache + 64 MiB + what the processes need: the command's defaults), the
# number of tokens the command's default for that size (40), so that the
# four methods take a few minutes in all (mmap is the slow one).
#
#   MS_BUILD=build tools/bench-e2e.sh [more bench e2e options]
#
# The model (13.4 GB) is written once into $BENCH_DIR (default build/bench,
# git-ignored) and reused while `moestream inspect` accepts it; a partial one
# (an interrupted write) is never taken for it. Needs root for the memory
# limit and for dropping the page cache; without root the command runs
# unlimited and says so.
set -eu

build=${MS_BUILD:-build}
ms=${MOESTREAM:-$build/moestream}
dir=${BENCH_DIR:-build/bench}
model=$dir/glm8.gguf
partial=$dir/glm8.partial.gguf
need=$((13400000000 + 2000000000))   # the model, and 2 GB to spare

say() { echo "bench: $*" >&2; }

[ -x "$ms" ] || { say "$ms is not built (make first)"; exit 1; }
mkdir -p "$dir"
if ! "$ms" inspect "$model" 2>/dev/null | grep -q '8 MoE layers run'; then
	rm -f "$model" "$partial"
	avail=$(df -B1 --output=avail "$dir" | tail -n 1)
	if [ "$avail" -lt "$need" ]; then
		say "$dir has $((avail / 1000000000)) GB free; the GLM-4.7 8-layer model" \
		    "needs 13.4 GB (and 2 GB to spare)"
		exit 1
	fi
	say "writing $model (13.4 GB, once) ..."
	"$ms" mkmodel --preset glm4.7-ud-q2_k_xl --moe-layers 8 -o "$partial" >&2
	mv "$partial" "$model"
fi
if [ "$(id -u)" != 0 ]; then
	say "not root: no memory limit and the page cache not dropped (sudo make bench)"
fi
say "$ms bench e2e --model $model --cache-size 25% $*"
exec "$ms" bench e2e --model "$model" --cache-size 25% "$@"
