#!/usr/bin/env bash
# Builds the pinned etcd and kube-apiserver (and, when asked, kube-controller-manager) from Go
# modules, once, into a cache outside the repository, and prints the directory holding them.
#
#   tests/controlplane/build.sh [kube-controller-manager] [kube-proxy]
#
# The cache key covers the module files, the main packages, this script and the Go version, so a
# change to any of them builds afresh next to the old build. SVCPLANE_CACHE_DIR moves the cache
# (default ~/.cache/svcplane). Concurrent callers wait on a lock instead of building twice.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${SVCPLANE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/svcplane}/controlplane

pinned() { # module path, go.mod: the required version, in a require block or on one line
    # awk alone, reading to the end: an early exit in a pipe would SIGPIPE the writer, which
    # pipefail turns into a failed build now and then.
    awk -v m="$1" '{ sub(/^require[[:space:]]+/, "") } $1 == m && $2 ~ /^v/ && !found { print $2; found = 1 }' "$2"
}
k8s_version=$(pinned k8s.io/kubernetes "$here/go.mod")
etcd_version=$(pinned go.etcd.io/etcd/server/v3 "$here/etcd/go.mod")
[ -n "$k8s_version" ] && [ -n "$etcd_version" ] || { echo "build.sh: cannot read pinned versions" >&2; exit 1; }

key=$(cd "$here" && { cat go.mod go.sum ./*/main.go lifeline/* etcd/go.mod etcd/go.sum build.sh; go version; } | sha256sum | cut -c1-12)
out="$cache/k8s-$k8s_version-etcd-$etcd_version-$key"
mkdir -p "$out"

exec 9>"$cache/.lock"
flock 9
# Builds unused for two weeks (older pins, other checkouts) are pruned; this one is marked used.
touch "$out"
find "$cache" -mindepth 1 -maxdepth 1 -type d -name 'k8s-*' -mtime +14 -exec rm -rf {} +

# kube-apiserver reports this version on /version; without it, clients see v0.0.0-master.
minor=$(echo "$k8s_version" | cut -d. -f2)
ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$k8s_version \
 -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor \
 -X k8s.io/component-base/version.gitTreeState=clean"

build() { # name, module dir, package
    local name=$1 dir=$2 pkg=$3
    [ -x "$out/$name" ] && return 0
    echo "build.sh: building $name (k8s $k8s_version, etcd $etcd_version) into $out" >&2
    local start=$SECONDS
    (cd "$dir" && go build -trimpath -buildvcs=false -ldflags "$ldflags" -o "$out/.$name.tmp" "$pkg")
    mv "$out/.$name.tmp" "$out/$name"
    echo "build.sh: built $name in $((SECONDS - start))s" >&2
}

build etcd "$here/etcd" .
build kube-apiserver "$here" ./kube-apiserver
for extra in "$@"; do
    case "$extra" in
        kube-controller-manager) build kube-controller-manager "$here" ./kube-controller-manager ;;
        kube-proxy) build kube-proxy "$here" ./kube-proxy ;;
        *) echo "build.sh: unknown target $extra" >&2; exit 2 ;;
    esac
done
echo "$out"
