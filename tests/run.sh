#!/bin/bash
# tests/run.sh - run test programs, each under a timeout; exit 0 pass, 1 fail,
# 77 skip. Ends with the line "N passed, N failed, N skipped"; exits 1 if any
# test failed. Each test's output is kept in $MS_BUILD/test-logs/NAME.log and
# the tail of a failure is printed.
#
#   tests/run.sh [--timeout SECONDS] PROGRAM...
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
if [ "${1:-}" = --timeout ]; then timeout_s=$2; shift 2; fi
[ $# -gt 0 ] || { echo "usage: tests/run.sh [--timeout SECONDS] PROGRAM..." >&2; exit 2; }

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
logs=$MS_BUILD/test-logs
mkdir -p "$logs"

pass=0 fail=0 skip=0 failed=
t0=$(date +%s)
for t in "$@"; do
	name=$(basename "$t")
	log=$logs/$name.log
	s=$(date +%s.%N)
	timeout -k 5 "$timeout_s" "$t" >"$log" 2>&1
	rc=$?
	dt=$(awk -v a="$s" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
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
done
echo "(logs in $logs; $(( $(date +%s) - t0 ))s in all)${failed:+ failed:$failed}"
echo "$pass passed, $fail failed, $skip skipped"
[ "$fail" -eq 0 ]
