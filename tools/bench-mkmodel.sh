#!/bin/sh
# tools/bench-mkmodel.sh - how fast `moestream mkmodel` writes, against the
# disk's own sequential write bandwidth measured in the same run.
#
#   tools/bench-mkmodel.sh [DIR] [MOE_LAYERS]     (default: build/bench, 8)
#
# Baseline: dd of 8 GiB from /dev/zero with O_DIRECT in 64 MiB writes, the
# page cache dropped first (root). Then mkmodel writes the GLM-4.7 preset
# with MOE_LAYERS MoE layers (13.4 GB for 8). Prints both rates and the ratio
# (target >= 0.8). Needs about 14 GB free in DIR; removes what it wrote.
set -eu
dir=${1:-build/bench}
layers=${2:-8}
bin=${MS_BUILD:-build}/moestream
mkdir -p "$dir"
drop() { [ "$(id -u)" = 0 ] && sync && echo 3 > /proc/sys/vm/drop_caches || true; }

drop
t0=$(date +%s.%N)
dd if=/dev/zero of="$dir/dd.bin" bs=64M count=128 oflag=direct status=none
t1=$(date +%s.%N)
rm -f "$dir/dd.bin"
dd_rate=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", 8589934592 / (b - a) / 1e9 }')

drop
t0=$(date +%s.%N)
"$bin" mkmodel --preset glm4.7-ud-q2_k_xl --moe-layers "$layers" --force \
	-o "$dir/glm.gguf" >/dev/null
t1=$(date +%s.%N)
size=$(stat -c %s "$dir/glm.gguf")
rm -f "$dir/glm.gguf"
mk_rate=$(awk -v s="$size" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", s / (b - a) / 1e9 }')

echo "disk sequential write (dd, O_DIRECT, 64 MiB): $dd_rate GB/s"
echo "mkmodel glm4.7-ud-q2_k_xl --moe-layers $layers ($(awk -v s="$size" 'BEGIN { printf "%.1f", s / 1e9 }') GB): $mk_rate GB/s"
awk -v a="$mk_rate" -v b="$dd_rate" 'BEGIN { printf "ratio mkmodel / disk: %.2f (target >= 0.80)\n", a / b }'
