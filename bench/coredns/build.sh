#!/usr/bin/env bash
# Builds CoreDNS from the module pinned here (go.mod: github.com/coredns/coredns), once, into a
# cache outside the repository, and prints the binary's path. Used by bench/dns.sh and by the
# differential test dns/tests/coredns.rs (through svcplane_testenv::ensure_coredns).
#
#   bench/coredns/build.sh        -> ~/.cache/svcplane/bench/coredns-v1.15.0
#
# The binary is named after the pinned version: changing the pin builds afresh next to the old
# one. SVCPLANE_CACHE_DIR moves the cache (default ~/.cache/svcplane). Concurrent callers wait
# on a lock instead of building twice. A cold build (empty Go build cache) takes about 4 minutes
# on two cores.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${SVCPLANE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/svcplane}/bench

# awk alone, reading to the end: an early exit in a pipe would SIGPIPE the writer under pipefail.
version=$(awk '{ sub(/^require[[:space:]]+/, "") } $1 == "github.com/coredns/coredns" && $2 ~ /^v/ && !found { print $2; found = 1 }' "$here/go.mod")
[ -n "$version" ] || { echo "coredns/build.sh: cannot read the pinned version" >&2; exit 1; }
out="$cache/coredns-$version"
mkdir -p "$cache"

exec 9>"$cache/.coredns.lock"
flock 9
if [ ! -x "$out" ]; then
    echo "coredns/build.sh: building CoreDNS $version into $out" >&2
    start=$SECONDS
    (cd "$here" && go build -trimpath -buildvcs=false -o "$out.tmp" .)
    mv "$out.tmp" "$out"
    echo "coredns/build.sh: built CoreDNS in $((SECONDS - start))s" >&2
fi
echo "$out"
