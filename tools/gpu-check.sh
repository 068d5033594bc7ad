#!/bin/bash
# tools/gpu-check.sh - the GPU checks in one go, for a machine that has a GPU
# and CUDA but no compiler toolchain for this project, no Debian packages and
# no network (the lent GPU machines): it runs binaries built elsewhere.
#
#   tools/gpu-check.sh pack [BUILD]
#       On the build machine, after `make O=BUILD CUDA_ARCHS=90 tests`
#       with CUDA found (default BUILD=build). Copies into BUILD/gpu-pack what the GPU
#       machine needs: moestream, moestreamd (the GPU tier test starts one),
#       tests/t_gpu* and tests/t_kernel_cli; in lib/ the shared libraries
#       of Debian packages it lacks, found with ldd (liburing, libnuma,
#       libinih, libcjson, PCRE2, libmicrohttpd and its GnuTLS chain;
#       glibc, libstdc++ and CUDA's own libraries are the GPU machine's);
#       in ggml/ ggml's reference library for t_kernel_cli. Debug info is
#       stripped. Says how big the pack and the working tree are: the device
#       tool carries both, 64 MiB in all.
#
#   tools/gpu-check.sh run [PACK]
#       On the GPU machine, from the repository root (tests/run.sh is used),
#       default PACK=build/gpu-pack. Checks that the binaries load (looks for
#       cuBLAS if /usr/local/cuda/lib64 lacks it), lists the GPU, then:
#         1. the tests, each under tests/run.sh: t_gpu (discovery),
#            t_gpu_kernels (every kernel against the C reference, ffn
#            --device gpu against --device cpu), t_gpu_tier (the GPU expert
#            tier on a private moestreamd; any tests/t_gpu*.c is picked up),
#            t_kernel_cli (the commands, now with a GPU: ffn --device gpu
#            against float64, bench kernels' GPU column);
#         2. `moestream bench gpu`: per type, the fused matvec's GB/s of
#            quantized weights and its ratio to the device-to-device copy
#            bandwidth measured in the same run, for the exact kernel and the
#            8-bit-activation one (q8 rows; t_gpu_kernels --bench is the
#            same code: not run again), and the 8-bit one at 32 experts
#            with chunks of 5, 10 and 20 KB (--chunks);
#         3. `moestream bench gpu-decode` on the GLM-4.7 preset cut to 4 MoE
#            layers (written to $TMPDIR, removed after): the GPU decoder's
#            tok/s with every expert in VRAM (routing on the GPU, steps
#            replayed from a CUDA graph, its node count; and the same
#            launched one by one, without PDL, and with the router through
#            cuBLAS) against the device's
#            copy rate over a
#            token's bytes, where that time goes (--profile: per part of a
#            block, GPU events between them: us, MB and GB/s a token), and with
#            experts streaming through a private moestreamd and through the
#            engine's own expert cache (`run` without --socket) against
#            max(copy, compute);
#         4. the GPU tier's transfer benchmark (`moestream bench gpu-tier`,
#            where the pack has it; t_gpu_tier --bench is the same code):
#            host->device GB/s from moestreamd's cache against pinned
#            memory, copy/compute overlap;
#         5. the 8-bit matvec under Nsight Compute (ncu, where the
#            machine has it and it can read the counters; not a failure
#            where it cannot): bench gpu --calls 3 per issue type, the last
#            call's pair and down launches: duration, DRAM and SM
#            throughput, issue slots, occupancy, warp states
#            (GPU_CHECK_PROFILE: auto, the default, runs it last when 60 s
#            of the deadline are left; early, before the decode benchmark;
#            off; GPU_CHECK_PROFILE_TYPES, default q3_K q6_K q2_K q4_K);
#       and ends with a short table. Every command is printed before it
#       runs. Logs and the benchmarks' JSON go to PACK/results; when $OUT is
#       set (the device tool's output folder) gpu-check.log, bench.json,
#       bench-tier.json and results.tgz (everything) are copied there (the
#       tool brings back at most 8 files).
#
# Exit: 0 when every test passed and every benchmark ran; 1 when a test
# failed or skipped (a skip on a GPU machine is a failure) or a benchmark
# failed; 2 when the pack cannot run here (missing, no GPU, libraries not
# found). The benchmarks' targets (K-quants' matvec >= 0.8 of the copy
# bandwidth; the tier's >= 0.9 of pinned memory) are reported, not enforced:
# benchmarks are not tests.
#
# Time: about 1.5 minutes on an H100 before the GPU decoder's test and
# benchmark came (tests ~40 s, benchmarks ~40 s); those add an estimated
# 1.5-2 minutes, and streaming from the engine's own cache in the decode
# benchmark (150 s at most) perhaps 20 s more (none of it measured on a GPU
# yet). Each step has a timeout and
# the whole run a deadline (GPU_CHECK_DEADLINE, 300 s): a step starts with
# whatever is left, so the script ends within about 5 minutes whatever
# hangs. Give the device tool timeout_s=360.
#
# With the device tool (the pack is in an ignored folder, so it is carried):
#   make -j2 O=build/gpu CUDA_ARCHS=90 tests && tools/gpu-check.sh pack build/gpu
# (CUDA_ARCHS=90: the lent H100 and H200 are sm_90; with the default five
# architectures each test binary carries five copies of the CUDA code and
# the pack is ~104 MiB, over the tool's 64)
#   run(command="tools/gpu-check.sh run build/gpu/gpu-pack",
#       carry=["build/gpu/gpu-pack"], timeout_s=360)
#
# Knobs: GPU_CHECK_BENCH_TIME (seconds per type, 1), GPU_CHECK_CHUNKS (the
# matvec chunk sizes bench gpu sweeps, 5K,10K,20K), GPU_CHECK_BENCH_ARGS,
# GPU_CHECK_DECODE_ARGS and GPU_CHECK_TIER_ARGS (more options for the
# benchmarks),
# GPU_CHECK_TESTS (test names instead of all packed ones).
set -u

die() {
	echo "gpu-check: $*" >&2
	exit 2
}

# Libraries the GPU machine has itself (or must: CUDA's come from its
# driver and toolkit); everything else a binary needs is packed.
system_lib() {
	case $1 in
	linux-vdso* | ld-linux* | libc.so* | libm.so* | libdl.so* | librt.so* | \
		libpthread.so* | libstdc++.so* | libgcc_s.so* | libcuda.so* | \
		libcublas* | libcudart* | libnvidia*) return 0 ;;
	esac
	return 1
}

mib() { # bytes -> "12.3 MiB"
	awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'
}

pack() {
	local build=${1:-build}
	[ -x "$build/moestream" ] || die "no $build/moestream: run 'make O=$build tests' first"
	ls "$build"/tests/t_gpu* >/dev/null 2>&1 ||
		die "no $build/tests/t_gpu*: run 'make O=$build tests' first"
	if "$build/moestream" gpu 2>&1 | grep -q "built without CUDA"; then
		die "$build was built without CUDA: nothing to check on a GPU"
	fi
	local out=$build/gpu-pack
	rm -rf "$out"
	mkdir -p "$out/tests" "$out/lib" "$out/ggml" || die "cannot create $out"
	local f bins=() names=(moestream moestreamd)
	for f in $(cd "$build" && ls tests/t_gpu* tests/t_kernel_cli 2>/dev/null); do
		case $f in *.d | *.o | *.log) continue ;; esac
		names+=("$f")
	done
	for f in "${names[@]}"; do
		[ -x "$build/$f" ] || die "no $build/$f"
		if command -v strip >/dev/null; then
			strip -g -o "$out/$f" "$build/$f" || die "strip $build/$f"
		else
			cp "$build/$f" "$out/$f" || die "cp $build/$f"
		fi
		bins+=("$out/$f")
	done
	local name path
	for f in "${bins[@]}"; do
		ldd "$f" | awk '$2 == "=>" && $3 ~ /^\// { print $1, $3 }'
	done | sort -u | while read -r name path; do
		system_lib "$name" && continue
		cp -L "$path" "$out/lib/$name" || die "cp $path"
	done
	# ggml's reference library (tests/fetch-ggml.sh's cache): t_kernel_cli
	# writes its models with it, and the GPU machine cannot fetch it
	local ggml=${MS_GGML_LIB:-${MS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/moestream}/ggml-3.22.1/libggml-base.so}
	[ -f "$ggml" ] || tests/fetch-ggml.sh >/dev/null 2>&1 || true
	if [ -f "$ggml" ]; then
		cp -L "$ggml" "$out/ggml/libggml-base.so" || die "cp $ggml"
	else
		echo "gpu-check: no ggml reference library ($ggml): t_kernel_cli left out" >&2
		rm -f "$out/tests/t_kernel_cli"
	fi
	{
		echo "moestream gpu-pack, $(date -u '+%Y-%m-%d %H:%M UTC'), git $(git describe --always --dirty 2>/dev/null || echo '?')"
		echo "built on $(uname -n): $(. /etc/os-release 2>/dev/null && echo "$PRETTY_NAME"), $(ldd --version | head -n 1)"
		"$build/moestream" gpu 2>&1 | head -n 1
		(cd "$out" && ls -l moestream moestreamd tests lib ggml)
	} >"$out/MANIFEST"
	echo "gpu-check: packed moestream moestreamd $(cd "$out" && ls tests | tr '\n' ' ')and lib/: $(ls "$out/lib" | tr '\n' ' ')"
	# what the device tool carries: the pack and the working tree (tracked
	# and untracked files git does not ignore), 64 MiB together
	local pb tb
	pb=$(du -sb "$out" | cut -f1)
	tb=$(git ls-files -z -co --exclude-standard 2>/dev/null |
		xargs -0 stat -c %s 2>/dev/null | awk '{ s += $1 } END { print s + 0 }')
	echo "gpu-check: $out is $(mib "$pb"); with the working tree ($(mib "$tb")) the device tool carries $(mib $((pb + tb))) of its 64 MiB"
	[ $((pb + tb)) -lt $((56 << 20)) ] ||
		die "that leaves under 8 MiB to spare: the device tool may refuse it (each test carries the CUDA code for every architecture built: build BUILD for the lent GPUs' alone, make O=$build CUDA_ARCHS=90 tests, the H100 and H200 being sm_90)"
	echo "gpu-check: on the GPU machine: tools/gpu-check.sh run $out"
}

# Adds a folder holding libcublas.so.13 to LD_LIBRARY_PATH when the loader
# cannot find it through the binaries' RUNPATH (/usr/local/cuda/lib64).
find_cublas() {
	local need=$1 d py
	for d in /usr/local/cuda/lib64 /usr/local/cuda-*/lib64 \
		/usr/local/cuda*/targets/x86_64-linux/lib /usr/lib/x86_64-linux-gnu \
		/usr/local/lib; do
		[ -e "$d/$need" ] && { echo "$d"; return 0; }
	done
	for py in python3 /opt/*/.venv/bin/python3; do
		command -v "$py" >/dev/null 2>&1 || continue
		d=$("$py" - "$need" <<'EOF' 2>/dev/null
import os, sys, glob
try:
    import nvidia
except Exception:
    sys.exit(1)
for base in nvidia.__path__:
    for p in glob.glob(os.path.join(base, '**', sys.argv[1]), recursive=True):
        print(os.path.dirname(p)); sys.exit(0)
sys.exit(1)
EOF
		) && { echo "$d"; return 0; }
	done
	return 1
}

deadline=${GPU_CHECK_DEADLINE:-300}

# run_step NAME MAX_SECONDS COMMAND...: the command under a timeout of
# MAX_SECONDS or what is left before the deadline, whichever is less.
run_step() {
	local name=$1 t=$2 left=$((deadline - SECONDS))
	shift 2
	[ "$left" -lt "$t" ] && t=$left
	echo
	echo "+ $*"
	if [ "$t" -lt 5 ]; then
		echo "gpu-check: $name not run: the ${deadline}s deadline is reached"
		return 124
	fi
	timeout -k 10 "$t" "$@"
	local rc=$?
	[ $rc -eq 124 ] && echo "gpu-check: $name timed out after ${t}s"
	return $rc
}

# 5. where the 8-bit matvec's time goes, from the GPU's own counters: ncu
# (Nsight Compute), where the machine has it and lets it read them (not
# under gVisor, KINDS.md says), on `bench gpu --calls 3` per type, the
# last call's two matvec launches (gate/up pair, then down), the clocks
# left as they are (--clock-control none). Informational: no profiler, or
# one that cannot read the counters, is said and is not a failure.
# Sets prc (none: not run; 0: every type profiled).
profile_step() {
	local pack=$1 ptxt=$2 ncu t
	prc=none
	case ${GPU_CHECK_PROFILE:-auto} in off) return 0 ;; esac
	ncu=$(command -v ncu 2>/dev/null ||
		ls -d /usr/local/cuda/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -n 1)
	if [ -z "$ncu" ]; then
		echo
		echo "gpu-check: no ncu here (PATH, /usr/local/cuda/bin, /opt/nvidia/nsight-compute): no profile"
		return 0
	fi
	if [ $((deadline - SECONDS)) -lt 60 ]; then
		echo
		echo "gpu-check: profile not run: under 60 s left before the ${deadline}s deadline (GPU_CHECK_PROFILE=early runs it before the decode benchmark)"
		return 0
	fi
	: >"$ptxt"
	prc=0
	for t in ${GPU_CHECK_PROFILE_TYPES:-q3_K q6_K q2_K q4_K}; do
		echo
		echo "gpu-check: profiling $t (ncu on bench gpu --calls 3; into $ptxt)"
		run_step "profile $t" 60 "$ncu" --clock-control none \
			--kernel-name-base mangled \
			--kernel-name 'regex:mv_kernelILi[0-9]+ELi1ELb[01]ELi1E' \
			--launch-skip 4 --launch-count 2 \
			--section SpeedOfLight --section Occupancy \
			--section LaunchStats --section SchedulerStats \
			--section WarpStateStats --section ComputeWorkloadAnalysis \
			"$pack/moestream" bench gpu --calls 3 --types "$t" >>"$ptxt" 2>&1 || prc=$?
	done
	echo "gpu-check: the profile ($ncu) is in $ptxt"
	grep -v '^+ ' "$ptxt" | grep -E '^ +(Duration|DRAM Throughput|Memory Throughput|Compute \(SM\) Throughput|Issue Slots Busy|Issued Warp Per Scheduler|No Eligible|Warp Cycles Per Issued Instruction|Achieved Occupancy|Registers Per Thread|Grid Size)|mv_kernel|==ERROR|==PROF==' | head -n 120
}

run() {
	local pack=${1:-build/gpu-pack}
	[ -x "$pack/tests/t_gpu_kernels" ] || die "no $pack/tests/t_gpu_kernels: make the pack with 'tools/gpu-check.sh pack BUILD' and carry it"
	[ -x tests/run.sh ] || die "run me from the repository root (tests/run.sh)"
	local res=$pack/results
	rm -rf "$res"
	mkdir -p "$res" || die "cannot create $res"
	# everything to the log too; at exit, wait for tee to write it all,
	# then hand the log to $OUT
	exec 3>&1 4>&2
	exec > >(tee "$res/gpu-check.log") 2>&1
	run_tee=$! run_res=$res
	trap finish EXIT
	local status=0

	echo "== gpu-check run, $(date -u '+%Y-%m-%d %H:%M:%S UTC') on $(uname -n)"
	sed -n 1,3p "$pack/MANIFEST" 2>/dev/null | sed 's/^/   pack: /'
	export LD_LIBRARY_PATH="$(cd "$pack/lib" && pwd)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
	[ -f "$pack/ggml/libggml-base.so" ] && export MS_GGML_LIB="$(cd "$pack/ggml" && pwd)/libggml-base.so"
	local bins=("$pack/moestream" "$pack/moestreamd" "$pack"/tests/t_*) missing lib
	missing=$(for b in "${bins[@]}"; do ldd "$b"; done | awk '/not found/ { print $1 }' | sort -u)
	for lib in $missing; do
		case $lib in
		libcublas*)
			local d
			d=$(find_cublas "$lib") || die "$lib not found (not in /usr/local/cuda*/lib64 nor in python's nvidia wheels)"
			echo "   $lib from $d"
			export LD_LIBRARY_PATH="$d:$LD_LIBRARY_PATH"
			;;
		esac
	done
	missing=$(for b in "${bins[@]}"; do ldd "$b"; done | awk '/not found/ { print $1 }' | sort -u)
	[ -z "$missing" ] || die "libraries not found: $(echo $missing)"
	echo "   LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
	if command -v nvidia-smi >/dev/null; then
		echo "+ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv"
		nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv 2>&1
	fi

	run_step gpu 30 "$pack/moestream" gpu || die "no usable GPU here (moestream gpu failed, above): nothing to check"

	# 1. the tests, each under the runner's timeout; a skip is a failure
	# here. t_gpu_tier (and any later tests/t_gpu*) come with the pack.
	local tests=() log t
	if [ -n "${GPU_CHECK_TESTS:-}" ]; then
		for t in $GPU_CHECK_TESTS; do tests+=("$pack/tests/$t"); done
	else
		for t in "$pack"/tests/t_gpu "$pack"/tests/t_gpu_kernels "$pack"/tests/t_gpu_* "$pack"/tests/t_kernel_cli; do
			[ -x "$t" ] || continue
			case " ${tests[*]} " in *" $t "*) continue ;; esac
			tests+=("$t")
		done
	fi
	log=$res/tests.txt
	run_step tests 170 env MS_BUILD="$pack" tests/run.sh --timeout 150 "${tests[@]}" | tee "$log"
	local trc=${PIPESTATUS[0]} summary
	summary=$(grep -E '^[0-9]+ passed, [0-9]+ failed, [0-9]+ skipped' "$log" | tail -n 1)
	if [ "$trc" -ne 0 ] || [ -z "$summary" ]; then
		echo "gpu-check: GPU TESTS FAILED (runner exit $trc)"
		status=1
	elif ! echo "$summary" | grep -q ' 0 skipped'; then
		echo "gpu-check: a test SKIPPED on a GPU machine: that is a failure here"
		status=1
	fi
	cp "$pack"/test-logs/*.log "$res/" 2>/dev/null

	# 2. the kernel benchmark, through the command users run
	local btxt=$res/bench.txt
	# --chunks: the 8-bit kernel at three chunk sizes (the same bits at
	# each), so one run says which the default should be
	run_step bench 60 "$pack/moestream" bench gpu --time "${GPU_CHECK_BENCH_TIME:-1}" \
		--chunks "${GPU_CHECK_CHUNKS:-5K,10K,20K}" \
		--json-out "$res/bench.json" ${GPU_CHECK_BENCH_ARGS:-} | tee "$btxt"
	local brc=${PIPESTATUS[0]}
	if [ "$brc" -ne 0 ]; then
		echo "gpu-check: BENCHMARK FAILED (exit $brc)"
		status=1
	fi

	local ptxt=$res/profile.txt prc=none
	[ "${GPU_CHECK_PROFILE:-auto}" = early ] && profile_step "$pack" "$ptxt"

	# 3. the GPU decoder end to end (tools/bench_gpu_decode.c): the
	# GLM-4.7 preset cut to 4 MoE layers, written outside the results
	local dtxt=$res/bench-decode.txt drc=none model=${TMPDIR:-/tmp}/gpu-check-glm4.gguf
	if "$pack/moestream" bench gpu-decode --help >/dev/null 2>&1; then
		run_step mkmodel 60 "$pack/moestream" mkmodel --preset glm4.7-ud-q2_k_xl \
			--moe-layers 4 -o "$model" --force >/dev/null
		if [ $? -eq 0 ]; then
			run_step decode-bench 150 env MOESTREAMD="$pack/moestreamd" \
				"$pack/moestream" bench gpu-decode --model "$model" \
				${GPU_CHECK_DECODE_ARGS:---stream-from both --profile} | tee "$dtxt"
			drc=${PIPESTATUS[0]}
		else
			drc=1
		fi
		rm -f "$model"
		if [ "$drc" != 0 ]; then
			echo "gpu-check: GPU DECODE BENCHMARK FAILED (exit $drc)"
			status=1
		fi
	fi

	# 4. the GPU tier's transfer benchmark (tools/bench_gpu_tier.c), where
	# the pack has it: it writes its own model and starts its own
	# moestreamd (the packed one, found beside the binary)
	local ttxt=$res/bench-tier.txt trc2=none tier=()
	if "$pack/moestream" bench gpu-tier --help >/dev/null 2>&1; then
		tier=("$pack/moestream" bench gpu-tier)
	elif [ -x "$pack/tests/t_gpu_tier" ]; then
		tier=("$pack/tests/t_gpu_tier" --bench)
	fi
	if [ ${#tier[@]} -gt 0 ]; then
		run_step tier-bench 90 "${tier[@]}" \
			--json-out "$res/bench-tier.json" ${GPU_CHECK_TIER_ARGS:-} | tee "$ttxt"
		trc2=${PIPESTATUS[0]}
		if [ "$trc2" -ne 0 ]; then
			echo "gpu-check: GPU TIER BENCHMARK FAILED (exit $trc2)"
			status=1
		fi
	fi

	[ "${GPU_CHECK_PROFILE:-auto}" = auto ] && profile_step "$pack" "$ptxt"

	echo
	echo "== gpu-check summary ($SECONDS s)"
	grep -E '^(PASS|FAIL|SKIP) ' "$log" | sed 's/^/   /'
	echo "   tests: ${summary:-no summary line}"
	if [ "$brc" -eq 0 ]; then
		echo "   -- moestream bench gpu"
		sed -n '/^type /,/^$/p' "$btxt" | sed 's/^/   /'
		sed -n '/^chunk sweep/,/^(the default/p' "$btxt" | sed 's/^/   /'
		grep -E '^(note|gpu|target|prefill) ' "$btxt" | sed 's/^/   /'
	fi
	if [ "$drc" = 0 ]; then
		echo "   -- moestream bench gpu-decode"
		grep -E '^(per token|resident|profile|streaming) ' "$dtxt" | sed 's/^/   /'
	fi
	if [ "$trc2" = 0 ]; then
		echo "   -- ${tier[*]##*/}"
		grep -E 'GB/s|target|overlap|ratio' "$ttxt" | head -n 16 | sed 's/^/   /'
	fi
	if [ "$prc" = 0 ]; then
		echo "   -- ncu on bench gpu --calls 3 (the last call's pair and down launches; whole in profile.txt)"
		grep -v '^+ ' "$ptxt" | grep -E '^ +(Duration|DRAM Throughput|Compute \(SM\) Throughput|Issue Slots Busy|Achieved Occupancy)|mv_kernel' |
			sed -e 's/^ *//' -e 's/(anonymous namespace)::mv_kernel/mv_kernel/' | head -n 60 | sed 's/^/   /'
	elif [ "$prc" != none ]; then
		echo "   -- ncu: exit $prc (see profile.txt; not a failure)"
	fi
	if [ -n "${OUT:-}" ] && [ -d "$OUT" ]; then
		tar -czf "$OUT/results.tgz" -C "$res/.." "$(basename "$res")" 2>/dev/null
		cp "$res"/bench.json "$res"/bench-tier.json "$OUT/" 2>/dev/null
	fi
	if [ $status -eq 0 ]; then
		echo "   result: OK (logs in $res${OUT:+ and \$OUT})"
	else
		echo "   result: FAILED (logs in $res${OUT:+ and \$OUT})"
	fi
	return $status
}

run_tee= run_res=
finish() {
	exec 1>&3 2>&4
	[ -n "$run_tee" ] && wait "$run_tee" 2>/dev/null
	if [ -n "${OUT:-}" ] && [ -d "$OUT" ] && [ -n "$run_res" ]; then
		cp "$run_res/gpu-check.log" "$OUT/" 2>/dev/null
	fi
}

case ${1:-} in
pack) shift; pack "$@" ;;
run) shift; run "$@"; exit $? ;;
*)
	sed -n '2,/^set -u/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
	exit 2
	;;
esac
