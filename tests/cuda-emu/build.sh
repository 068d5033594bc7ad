#!/bin/bash
# tests/cuda-emu/build.sh - the GPU tests against a CPU emulation of CUDA, for
# machines without a GPU (`make gpu-emu` builds, runs and reports).
#
#   tests/cuda-emu/build.sh [BUILD [OUT]]      (defaults: build, build/emu)
#
# BUILD is a normal build's folder (`make O=BUILD tests`, with or without
# CUDA: the C objects are the same), OUT where the programs go; both
# relative to the repository root. Every kernels/*.cu but gpu.cu (device
# discovery, which needs a real kernel image; emu_gpu.cpp stands in) and
# every kernels/*.cuh go through transform.py (launches `k<<<g, b, s, st>>>`
# become calls, dynamic shared memory a malloc) and are compiled by g++
# against include/cuda_emu.h (with stand-ins for cuda_runtime.h,
# cuda_fp16.h, cuda_pipeline.h and cublas_v2.h). OUT gets the test programs
# named in TESTS (default t_gpu_kernels), linked with BUILD's C objects, an
# emulated `moestream` (so tests that run the command, with MS_BUILD=OUT,
# reach the emulated GPU too) and a link to BUILD's moestreamd. No nvcc is
# needed: a NO_CUDA=1 build will do.
#
# What the emulation checks: the kernels' exact source, every launch, on a
# device that says what it is (name "emulated GPU", build info "CPU
# emulation of CUDA": tests print it, `bench kernels` shows no GPU column for
# it, `bench gpu` says its figures are not a GPU's). Indexing, tiling and
# partial tiles against the C reference; the threads of a CTA as fibers
# with real barriers (__syncthreads and warp shuffles wait for every thread
# or lane; one that can never complete is reported as a deadlock), run in
# threadIdx order between barriers, or with EMU_ORDER=reverse (make gpu-emu
# runs the kernel tests so too) or random (EMU_SEED): a thread's shared
# memory writes are seen by the threads after it and not by those before,
# so a read with no barrier between it and the write it needs fails in one
# of the two orders, whichever threads they are; CTAs in
# any order on several host threads (EMU_THREADS, default one per CPU);
# cp.async copies deferred until their group is waited for (reading early
# sees stale data or the 0xcd shared memory starts with); launch limits
# (1024 threads, 48 KiB of shared memory, and a kernel's own
# __launch_bounds__: a GPU refuses a launch of more threads, its registers
# allotted for fewer); exact-size device allocations;
# streams that run later, each on a host thread of its own (copies,
# kernels, event records and waits, host functions, GemmEx), so that a
# missing sync or event wait reads stale data here as on a GPU (the race
# t_gpu_tier had, found on an H200, fails here now); programmatic dependent
# launch (cudaLaunchKernelEx, the device a 9.0): one CTA of a PDL launch
# runs up to its cudaGridDependencySynchronize before the kernel ahead of
# it runs at all (that kernel's own early CTA included: it goes past its
# wait only after), so reading that kernel's output (or writing what it
# reads) before the wait gives other bits, while what was complete two
# launches back is there to read, as on a GPU; a thread of a PDL launch
# that never waits is reported.
# cuBLAS's GemmEx is a double-precision host GEMM over the same f16
# operands. With EMU_SAN=1 everything is built with ASan + UBSan, so an
# out-of-bounds access to device or shared memory is a report (use a BUILD
# made with SANITIZER=address,undefined to check the C side too).
#
# What it does not check: the GPU's own float behaviour (FMA contraction,
# fast-math intrinsics, canonical NaNs, FTZ), the real cuBLAS (its
# algorithms, tensor-core accumulation order), memory models weaker than the
# host's (a missing fence between CTAs can pass here; a missing __syncwarp
# between lanes fails in one of the orders), the register and
# occupancy limits of a real compile, a GPU's own interleavings of
# streams (here the host scheduler's), and timing: nothing it measures is a GPU figure. A real GPU run
# (tools/gpu-check.sh) is still the verdict.
#
# Time on 2 cores: ~15 s to compile, t_gpu_kernels ~11 s (EMU_SAN=1: ~30 s
# and ~31 s).
#
# Environment: TESTS="t_gpu_kernels t_gpu_tier" (tests/t_NAME.c each);
# EMU_SAN=1; EMU_CU="gpu_dequant gpu_ffn ..." to choose the .cu files;
# CXX (default g++); JOBS (default: online CPUs). Objects are rebuilt only
# when a source, header or flag changed.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root"
build=${1:-build}
out=${2:-build/emu}
CXX=${CXX:-g++}
jobs=${JOBS:-$(nproc 2>/dev/null || echo 2)}

die() {
	echo "cuda-emu: $*" >&2
	exit 1
}

[ -d "$build/obj" ] || die "no $build/obj: run 'make O=$build tests' first"
command -v "$CXX" >/dev/null || die "no C++ compiler ($CXX): apt-get install -y g++ (Debian package g++), or CXX=another C++20 compiler"

# C objects: those of the current sources only (never stale ones), the
# CUDA-less stub, the commands' and tests' mains left out.
objs=()
for src in model/*.c iouring/*.c cache/*.c kernels/*.c daemon/*.c engine/*.c api/*.c tools/*.c tests/*.c; do
	case $src in
	kernels/gpu_nocuda.c | daemon/moestreamd.c | tools/moestream.c | tests/t_*) continue ;;
	esac
	o=$build/obj/${src%.c}.o
	[ -f "$o" ] || die "no $o: run 'make O=$build tests' first"
	objs+=("$o")
done

san=()
[ "${EMU_SAN:-0}" = 1 ] && san=(-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all)
# a sanitized BUILD needs the sanitizer runtimes at link time in any case
link_san=("${san[@]}")
if [ ${#san[@]} -eq 0 ] && nm "$build/obj/model/gguf.o" 2>/dev/null | grep -q __asan_; then
	link_san=(-fsanitize=address,undefined)
fi
# -ffp-contract=off: no FMA contraction on the host, so a float result is
# the one the source spells (nvcc contracts; the tests' bounds cover both)
CXXFLAGS=(-std=c++20 -O2 -g "${san[@]}" -ffp-contract=off -pthread
	-I"$here/include" -Iinclude -Ikernels -include cuda_emu.h
	-Wall -Wno-unknown-pragmas -Wno-unused-function)

mkdir -p "$out/src" "$out/obj"
flags="${CXXFLAGS[*]}"
if [ "$(cat "$out/obj/flags" 2>/dev/null)" != "$flags" ]; then
	rm -f "$out/obj/"*.o
	echo "$flags" >"$out/obj/flags"
fi

# the headers every emulated object depends on
deps=("$here"/include/*.h include/moestream/*.h kernels/*.cuh "$here/transform.py" "$here/build.sh")
stale() { # OBJ SRC: true when OBJ is missing or older than SRC or a dep
	local d
	[ -f "$1" ] || return 0
	for d in "$2" "${deps[@]}"; do
		[ "$d" -nt "$1" ] && return 0
	done
	return 1
}

for h in kernels/*.cuh; do
	python3 "$here/transform.py" "$h" "$out/src/$(basename "$h")"
done
cu=()
if [ -n "${EMU_CU:-}" ]; then
	for f in $EMU_CU; do cu+=("kernels/$f.cu"); done
else
	for f in kernels/*.cu; do [ "$f" = kernels/gpu.cu ] || cu+=("$f"); done
fi

pids=() names=() t0=$SECONDS
compile() { # NAME OBJ SOURCE
	if [ ${#pids[@]} -ge "$jobs" ]; then
		wait "${pids[0]}" || die "compiling ${names[0]} failed"
		pids=("${pids[@]:1}") names=("${names[@]:1}")
	fi
	echo "  EMU   $1"
	"$CXX" "${CXXFLAGS[@]}" -c "$3" -o "$2" &
	pids+=($!) names+=("$1")
}
for f in "${cu[@]}"; do
	[ -f "$f" ] || die "no $f"
	n=$(basename "$f" .cu)
	stale "$out/obj/$n.o" "$f" || continue
	python3 "$here/transform.py" "$f" "$out/src/$n.cpp"
	compile "$f" "$out/obj/$n.o" "$out/src/$n.cpp"
done
stale "$out/obj/emu_gpu.o" "$here/emu_gpu.cpp" &&
	compile tests/cuda-emu/emu_gpu.cpp "$out/obj/emu_gpu.o" "$here/emu_gpu.cpp"
for i in "${!pids[@]}"; do
	wait "${pids[$i]}" || die "compiling ${names[$i]} failed"
done
emu=("$out"/obj/*.o)

# -lstdc++ etc. come with g++ as the linker driver
LIBS=(-luring -lnuma -linih -lcjson -lpcre2-8 -lpcre2-32 -lmicrohttpd -lpthread -lm -ldl)
echo "  LD    $out/moestream"
"$CXX" "${link_san[@]}" -pthread -o "$out/moestream" "$build/obj/tools/moestream.o" \
	"${objs[@]}" "${emu[@]}" "${LIBS[@]}"
# the daemon knows no CUDA: the tests that start one get BUILD's
[ -x "$build/moestreamd" ] && ln -sf "$(cd "$build" && pwd)/moestreamd" "$out/moestreamd"
for t in ${TESTS:-t_gpu_kernels}; do
	o=$build/obj/tests/$t.o
	[ -f "$o" ] || die "no $o: run 'make O=$build tests' first"
	echo "  LD    $out/$t"
	"$CXX" "${link_san[@]}" -pthread -o "$out/$t" "$o" "${objs[@]}" "${emu[@]}" "${LIBS[@]}"
done
echo "cuda-emu: built $out (${TESTS:-t_gpu_kernels}, moestream) from $build in $((SECONDS - t0)) s${EMU_SAN:+, EMU_SAN=$EMU_SAN}"
