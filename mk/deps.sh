#!/bin/sh
# mk/deps.sh - find the Debian packages moestream builds and tests with.
#
#   mk/deps.sh check          build deps: one line per missing package, exit 1
#   mk/deps.sh install        build deps: apt-get install what is missing (root)
#   mk/deps.sh install-test   the same, plus what the tests need (npm, timeout)
#   mk/deps.sh install-ci     the same, plus what .ci/run's other steps need
#                             (clang for libFuzzer, g++ for the CUDA emulator)
#   mk/deps.sh install-bench  build deps, plus gnuplot for the sweep's PNG
#                             (make bench)
#
# A header (or a command) stands for its package; the check looks at files, not
# at pkg-config, so that a machine without pkg-config gets the same answer.
set -u
mode=${1:-check}

# header-or-command  package
build_deps='
cmd:cc build-essential
/usr/include/liburing.h liburing-dev
/usr/include/numa.h libnuma-dev
/usr/include/ini.h libinih-dev
/usr/include/cjson/cJSON.h libcjson-dev
/usr/include/pcre2.h libpcre2-dev
/usr/include/microhttpd.h libmicrohttpd-dev
'
test_deps='
cmd:npm npm
cmd:timeout coreutils
/usr/share/unicode/UnicodeData.txt unicode-data
'
ci_deps='
cmd:clang clang
cmd:g++ g++
'
bench_deps='
cmd:gnuplot gnuplot-nox
'

list=$build_deps
[ "$mode" = install-test ] && list="$build_deps$test_deps"
[ "$mode" = install-ci ] && list="$build_deps$test_deps$ci_deps"
[ "$mode" = install-bench ] && list="$build_deps$bench_deps"

missing=
set -- $list
while [ $# -ge 2 ]; do
	what=$1 pkg=$2
	shift 2
	case $what in
	cmd:*) command -v "${what#cmd:}" >/dev/null 2>&1 && continue ;;
	*) [ -e "$what" ] && continue ;;
	esac
	missing="${missing:+$missing }$pkg"
done

[ -z "$missing" ] && exit 0

if [ "$mode" = check ]; then
	echo "moestream: missing Debian package(s): $missing — run: sudo apt-get install -y $missing (or 'make deps' as root)" >&2
	exit 1
fi

if [ "$(id -u)" != 0 ]; then
	echo "moestream: missing Debian package(s): $missing — not root, so not installing; run: sudo apt-get install -y $missing" >&2
	exit 1
fi

echo "moestream: installing missing Debian package(s): $missing" >&2
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y --no-install-recommends $missing >/dev/null 2>&1; then
	apt-get update -qq >/dev/null 2>&1
	if ! apt-get install -y --no-install-recommends $missing; then
		echo "moestream: apt-get install -y $missing failed (see above); install them and run make again" >&2
		exit 1
	fi
fi
exit 0
