#!/bin/sh
# tests/t_tsan.sh - the threaded tests under ThreadSanitizer.
#
#   tests/t_tsan.sh [BUILD_DIR]      (default build/tsan)
#
# Builds, with SANITIZER=thread into BUILD_DIR (MAKEFLAGS passes through),
# the daemon, the CLI and the tests whose threads share state, then runs
# them:
#
#   the I/O engine        t_io_sched, t_io_fallback, t_io_staging (staging
#                         buffers shared by the rings, copies on their
#                         threads)
#   the cache             t_cache, t_cache_stress (at half its operations),
#                         t_prefetch (the history prefetcher)
#   the daemon            t_daemon_stress (64 clients), t_churn (1,000
#                         clients SIGKILLed at random points), t_vanish (the
#                         model file deleted and truncated while serving),
#                         t_daemon_frames; each starts the real moestreamd,
#                         TSan-built too
#   all in one process    t_daemon_faults: server, cache and engine under
#                         injected I/O faults, 8 client threads, 6 s per
#                         engine
#
# About 3.5 minutes on 2 cores, the build included. Left out: t_oom (it
# defines malloc itself, which TSan's runtime does not survive); t_memlimit
# (TSan's shadow memory does not fit its cgroup limit of cache + 64 MiB);
# t_io_faults and t_io_integrity for time (6 and 3 minutes under TSan on 2
# cores: run them with MS_TSAN_ALL=1); the single-threaded rest (t_arena
# among them).
#
# Verdict: exit 0 when every test passes AND no ThreadSanitizer report
# appears anywhere - in the tests' logs or in the logs of the daemons they
# started (kept in a private MS_TMP for the scan). A report is printed with
# its first stack. halt_on_error=1: the first race aborts the process, so a
# race in a daemon also fails the test that started it.
set -u
cd "$(dirname "$0")/.."
O=${1:-build/tsan}

tests="t_io_sched t_io_fallback t_io_staging t_cache t_cache_stress t_prefetch t_daemon_stress t_churn t_vanish t_daemon_frames t_daemon_faults t_ffn_pool"
[ -n "${MS_TSAN_ALL:-}" ] && tests="$tests t_io_faults t_io_integrity"
bins= logs=
for t in $tests; do bins="$bins $O/tests/$t"; logs="$logs $O/test-logs/$t.log"; done

# Only what those tests run: the daemon, the CLI and the tests themselves.
# No CUDA (NO_CUDA=0 to build it anyway): none of these tests uses a GPU,
# and nvcc for five architectures would be most of the build time.
make --no-print-directory SANITIZER=thread NO_CUDA="${NO_CUDA:-1}" O="$O" \
	"$O/moestreamd" "$O/moestream" $bins || exit 1

tmp=$(mktemp -d "${TMPDIR:-/tmp}/ms-tsan.XXXXXX") || exit 1
cleanup() {
	# a test may leave a mount behind in its folder (t_io_fallback's ramfs)
	grep -o " $tmp/[^ ]*" /proc/mounts 2>/dev/null | while read -r m; do
		umount -l "$m" 2>/dev/null
	done
	rm -rf "$tmp"
}
trap cleanup EXIT INT TERM
export TSAN_OPTIONS="halt_on_error=1 exitcode=66 second_deadlock_stack=1 ${TSAN_OPTIONS:-}"
# t_daemon_faults: 6 s per engine, as in a plain run. Its daemon reads
# through staging buffers (hugepages = off), so the copies write the arena
# through TSan's shadow, whose first write to each page is a copy-on-write
# fault with a TLB shootdown: about 3 s for the 56 MiB arena on 2 vCPUs,
# after which the run gets its 40 acquires (3 s gave 21-31, 6 s 59-65).
export MS_TMP="$tmp" MS_KEEP_TMP=1 MS_STRESS_OPS=${MS_STRESS_OPS:-0.5} \
       MS_FAULTS_SECONDS=${MS_FAULTS_SECONDS:-6}

MS_BUILD="$O" tests/run.sh --timeout 600 --jobs "${TEST_JOBS:-$(nproc 2>/dev/null || echo 1)}" $bins
rc=$?

reports=$(grep -rl "WARNING: ThreadSanitizer\|ERROR: ThreadSanitizer\|FATAL: ThreadSanitizer" \
	$logs "$tmp" 2>/dev/null)
if [ -n "$reports" ]; then
	for f in $reports; do
		echo "ThreadSanitizer report in $f:"
		grep -m1 -A30 "ThreadSanitizer" "$f" | sed 's/^/      | /'
	done
	echo "tsan: $(echo "$reports" | wc -l) log(s) with a ThreadSanitizer report"
	exit 1
fi
[ $rc -eq 0 ] && echo "tsan: no ThreadSanitizer report"
exit $rc
