#!/bin/bash
# tests/run.sh - run test programs, each under a timeout; exit 0 pass, 1 fail,
# 77 skip. Ends with the line "N passed, N failed, N skipped"; exits 1 if any
# test failed. Each test's output is kept in $MS_BUILD/test-logs/NAME.log (or
# --logs DIR/NAME.log) and the tail of a failure is printed.
#
#   tests/run.sh [--timeout SECONDS] [--jobs N] [--logs DIR] PROGRAM...
#
# --jobs N (or MS_TEST_JOBS=N) runs up to N tests at a time, the lines
# printed as they end; the tests named in ALONE below first, one at a time
# with nothing beside them: they hold memory limits (cgroups), fill most of
# the RAM, or load the machine on purpose. The default is 1.
#
# Tests find the build through MS_BUILD (default build), ggml's reference
# library through MS_GGML_LIB, llama.cpp's libraries through MS_LLAMA_DIR,
# the real tokenizers through MS_TOKENIZERS (NAME/tokenizer.json) and the
# official OpenAI node client through MS_OPENAI (its package folder,
# node_modules/openai, for t_serve), all set here from tests/fetch-ggml.sh's
# cache; the *_FETCH_FAILED files (and $MS_TOKENIZERS/NAME/FETCH_FAILED) say
# why one could not be had.
set -u
timeout_s=300
jobs=${MS_TEST_JOBS:-1}
logs=
while [ $# -gt 0 ]; do
	case $1 in
	--timeout) timeout_s=$2; shift 2 ;;
	--jobs) jobs=$2; shift 2 ;;
	--logs) logs=$2; shift 2 ;;
	*) break ;;
	esac
done
[ $# -gt 0 ] || { echo "usage: tests/run.sh [--timeout SECONDS] [--jobs N] [--logs DIR] PROGRAM..." >&2; exit 2; }
case $jobs in ''|*[!0-9]*|0) echo "tests/run.sh: --jobs $jobs: expected a count >= 1" >&2; exit 2 ;; esac

# With --jobs > 1: run alone, before the others, the tests that hold memory
# limits (cgroups) or load the machine on purpose; then the rest, the
# longest first (fewer seconds with one job slot idle at the end), and the
# two that load a 4.6 GB model into llama.cpp far apart (FIRST, LAST).
ALONE=" t_oom t_memlimit t_bench_e2e t_bench_serve t_daemon_stress "
FIRST=" t_forward_ref t_serve t_kernel_cli t_cache_stress t_dump t_io_integrity "
LAST=" t_llama_ref "

export MS_BUILD=${MS_BUILD:-build}
root=${MS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/moestream}
cache=$root/ggml-3.22.1
export MS_GGML_LIB=${MS_GGML_LIB:-$cache/libggml-base.so}
export MS_GGML_FETCH_FAILED=$cache/FETCH_FAILED
export MS_LLAMA_DIR=${MS_LLAMA_DIR:-$root/llama-3.22.1}
export MS_LLAMA_FETCH_FAILED=$root/llama-3.22.1/FETCH_FAILED
export MS_TOKENIZERS=${MS_TOKENIZERS:-$root/tokenizers}
export MS_OPENAI=${MS_OPENAI:-$root/openai-5.23.2/node_modules/openai}
export MS_OPENAI_FETCH_FAILED=$root/openai-5.23.2/FETCH_FAILED
logs=${logs:-$MS_BUILD/test-logs}
mkdir -p "$logs"

pass=0 fail=0 skip=0 failed=
t0=$(date +%s)

# One test: its log, then its result in $logs/NAME.rc and the seconds it
# took in $logs/NAME.dt.
run_one() {
	local t=$1 name log s
	name=$(basename "$t")
	log=$logs/$name.log
	s=$(date +%s.%N)
	timeout -k 5 "$timeout_s" "$t" >"$log" 2>&1
	echo $? >"$logs/$name.rc"
	awk -v a="$s" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }' >"$logs/$name.dt"
}

# Its line, and the counts.
report() {
	local name log rc dt
	name=$(basename "$1")
	log=$logs/$name.log
	rc=$(cat "$logs/$name.rc")
	dt=$(cat "$logs/$name.dt")
	rm -f "$logs/$name.rc" "$logs/$name.dt"
	case $rc in
	0) pass=$((pass + 1)); printf 'PASS  %-28s %6ss\n' "$name" "$dt" ;;
	77) skip=$((skip + 1))
	    printf 'SKIP  %-28s %6ss  %s\n' "$name" "$dt" "$(tail -n 1 "$log")" ;;
	124|137) fail=$((fail + 1)); failed="$failed $name"
	    printf 'FAIL  %-28s %6ss  timed out after %ss\n' "$name" "$dt" "$timeout_s"
	    tail -n 20 "$log" | sed 's/^/      | /' ;;
	*) fail=$((fail + 1)); failed="$failed $name"
	    printf 'FAIL  %-28s %6ss  exit %d\n' "$name" "$dt" "$rc"
	    tail -n 20 "$log" | sed 's/^/      | /' ;;
	esac
}

alone=() first=() rest=() last=()
for t in "$@"; do
	n=" $(basename "$t") "
	if [ "$jobs" -eq 1 ]; then rest+=("$t")
	elif [[ $ALONE == *"$n"* ]]; then alone+=("$t")
	elif [[ $FIRST == *"$n"* ]]; then first+=("$t")
	elif [[ $LAST == *"$n"* ]]; then last+=("$t")
	else rest+=("$t")
	fi
done
rest=("${first[@]}" "${rest[@]}" "${last[@]}")
for t in "${alone[@]}"; do
	run_one "$t"
	report "$t"
done
# the rest, up to $jobs at a time: pid -> test; each reported as it ends
declare -A running=()
reap() {
	local pid
	wait -n -p pid
	report "${running[$pid]}"
	unset "running[$pid]"
}
for t in "${rest[@]}"; do
	while [ "${#running[@]}" -ge "$jobs" ]; do reap; done
	run_one "$t" &
	running[$!]=$t
done
while [ "${#running[@]}" -gt 0 ]; do reap; done
echo "(logs in $logs; $(( $(date +%s) - t0 ))s in all)${failed:+ failed:$failed}"
echo "$pass passed, $fail failed, $skip skipped"
[ "$fail" -eq 0 ]
