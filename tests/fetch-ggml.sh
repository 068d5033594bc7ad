#!/bin/sh
# tests/fetch-ggml.sh - fetch ggml's reference library once, for the tests.
#
# The reference for GGUF and the quant formats is ggml itself: the npm package
# @node-llama-cpp/linux-x64 (pinned below) ships libggml-base.so with ggml's
# GGUF reader/writer, quantizers and dequantizers. It is unpacked into a cache
# folder outside the repository and never linked into moestream.
#
# Prints the library's path on success. On failure it writes the reason to
# $CACHE/FETCH_FAILED so that every test needing ggml fails saying why.
set -u
PKG=@node-llama-cpp/linux-x64
VER=3.22.1
SHA256=6c342c8aeb20cb31a18099d6f79de4de6703814d1cfd5c4d754a8643087e486e  # libggml-base.so
CACHE=${MS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/moestream}/ggml-$VER
LIB=$CACHE/libggml-base.so

mkdir -p "$CACHE" || { echo "fetch-ggml: cannot create $CACHE" >&2; exit 1; }
if [ -f "$LIB" ] && echo "$SHA256  $LIB" | sha256sum -c --status 2>/dev/null; then
	rm -f "$CACHE/FETCH_FAILED"
	echo "$LIB"
	exit 0
fi

fail() {
	echo "$*" > "$CACHE/FETCH_FAILED"
	echo "fetch-ggml: $*" >&2
	exit 1
}

command -v npm >/dev/null 2>&1 || fail "npm is not installed (apt-get install -y npm), so ggml's reference library $PKG@$VER cannot be fetched"
tmp=$(mktemp -d) || fail "mktemp failed"
trap 'rm -rf "$tmp"' EXIT
echo "fetch-ggml: npm pack $PKG@$VER into $CACHE (once)" >&2
if ! (cd "$tmp" && timeout 300 npm pack --silent "$PKG@$VER" >npm.out 2>npm.err); then
	fail "npm pack $PKG@$VER failed or took over 300 s (is the npm registry reachable? npm config get registry says $(npm config get registry 2>/dev/null)): $(tail -n 3 "$tmp/npm.err" | tr '\n' ' ')"
fi
tgz=$(ls "$tmp"/*.tgz 2>/dev/null | head -n 1)
[ -n "$tgz" ] || fail "npm pack $PKG@$VER produced no tarball"
tar -xzf "$tgz" -C "$tmp" package/bins/linux-x64/libggml-base.so || fail "tarball of $PKG@$VER has no bins/linux-x64/libggml-base.so"
echo "$SHA256  $tmp/package/bins/linux-x64/libggml-base.so" | sha256sum -c --status ||
	fail "libggml-base.so from $PKG@$VER does not match the pinned sha256 $SHA256"
cp "$tmp/package/bins/linux-x64/libggml-base.so" "$LIB.tmp" && mv "$LIB.tmp" "$LIB" || fail "cannot write $LIB"
rm -f "$CACHE/FETCH_FAILED"
echo "$LIB"
