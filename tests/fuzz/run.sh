#!/bin/sh
# tests/fuzz/run.sh - one libFuzzer run, as `make fuzz` does it for each
# target (make -jN runs N of them at once).
#
#   tests/fuzz/run.sh NAME SECONDS [LIBFUZZER_OPTION...]
#
# Runs build/fuzz/fuzz_NAME for SECONDS from the committed seeds in
# tests/fuzz/corpus/NAME (only read) and what earlier runs found in
# build/fuzz/work-fuzz_NAME (new inputs go there). The whole output goes to
# build/fuzz/fuzz_NAME.log; printed, in one piece: the final line (runs,
# cov, corpus), executions and peak RSS, and on failure the log's tail and
# where libFuzzer saved the input (build/fuzz/crash-NAME-*). Exit 0 when
# the run ended clean.
#
# fuzz_tokenize needs a vocabulary: the first run writes
# build/fuzz/qwen3-vocab.gguf from the Qwen3 tokenizer.json that
# tests/fetch-ggml.sh fetched (MS_FUZZ_TOKENIZER names another) with
# build/moestream (`make` builds it), metadata only, and passes it in
# MS_FUZZ_VOCAB; a later run writes it again only when the tokenizer or
# build/moestream is newer.
set -u
[ $# -ge 2 ] || { echo "usage: tests/fuzz/run.sh NAME SECONDS [OPTION...]" >&2; exit 2; }
name=$1 secs=$2
shift 2
bin=build/fuzz/fuzz_$name
corpus=tests/fuzz/corpus/$name
work=build/fuzz/work-fuzz_$name
log=build/fuzz/fuzz_$name.log
mkdir -p "$work"
if [ "$name" = tokenize ] && [ -z "${MS_FUZZ_VOCAB:-}" ]; then
	vocab=build/fuzz/qwen3-vocab.gguf
	root=${MS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/moestream}
	tok=${MS_FUZZ_TOKENIZER:-$root/tokenizers/qwen3/tokenizer.json}
	if [ ! -s "$vocab" ] || [ "$tok" -nt "$vocab" ] ||
	   [ build/moestream -nt "$vocab" ]; then
		[ -x build/moestream ] || {
			echo "fuzz: fuzz_tokenize needs build/moestream to write its vocabulary: run make" >&2
			exit 1; }
		[ -r "$tok" ] || {
			echo "fuzz: fuzz_tokenize needs the Qwen3 tokenizer.json ($tok): run tests/fetch-ggml.sh" >&2
			exit 1; }
		build/moestream mkmodel --preset tiny --sparse --force \
			--tokenizer "$tok" -o "$vocab" >"$vocab.log" 2>&1 || {
			echo "fuzz: writing $vocab failed:" >&2
			sed 's/^/  | /' "$vocab.log" >&2
			rm -f "$vocab"
			exit 1; }
	fi
	MS_FUZZ_VOCAB=$vocab
	export MS_FUZZ_VOCAB
fi
echo "fuzz: fuzz_$name for ${secs}s (seeds: $corpus)"
"$bin" -max_total_time="$secs" -print_final_stats=1 "$@" \
	-artifact_prefix="build/fuzz/crash-$name-" "$work" "$corpus" >"$log" 2>&1
rc=$?
out=$(printf 'fuzz: fuzz_%s: ' "$name"
	grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -n 1 | tr -s ' \t' ' '
	grep -E '^stat::(number_of_executed_units|peak_rss_mb)' "$log" |
		sed 's/^/  /')
if [ $rc -ne 0 ]; then
	out="$out
$(tail -n 60 "$log" | sed 's/^/  | /')
fuzz: fuzz_$name FAILED (exit $rc; log $log): once fixed, commit the input
      it saved (build/fuzz/crash-$name-*) to $corpus/ as a regression test"
fi
printf '%s\n' "$out"
exit $rc
