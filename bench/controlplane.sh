#!/usr/bin/env bash
# Measures the test control plane: warm start to /readyz (N runs), and etcd and kube-apiserver
# resident memory once ready. Prints Markdown rows for docs/benchmarks.md.
#
#   bench/controlplane.sh [runs]        (default 5)
#
# For the cold build time, point the caches somewhere empty:
#   GOCACHE=$(mktemp -d) GOMODCACHE=$(mktemp -d) SVCPLANE_CACHE_DIR=$(mktemp -d) \
#     bash -c 'time tests/controlplane/build.sh'
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
runs=${1:-5}

cargo build --release -q -p svcplane-testenv
bin=target/release/svcplane-testenv
tests/controlplane/build.sh >/dev/null

out=$(mktemp)
trap 'rm -f "$out" "$out.err"; [ -n "${pid:-}" ] && kill "$pid" 2>/dev/null || true' EXIT
rss_mib() { awk '/^VmRSS/ { printf "%.0f", $2 / 1024 }' "/proc/$1/status"; }

times=()
for i in $(seq 1 "$runs"); do
    "$bin" >"$out" 2>"$out.err" &
    pid=$!
    for _ in $(seq 1 600); do grep -q '^#' "$out" && break; sleep 0.1; done
    grep -q "^#" "$out" || { echo "run $i: control plane did not start:" >&2; cat "$out.err" >&2; exit 1; }
    times+=("$(sed -n 's/^ready-seconds=//p' "$out")")
    if [ "$i" = "$runs" ]; then
        sleep 5 # let both settle after start-up
        etcd_rss=$(rss_mib "$(sed -n 's/^etcd-pid=//p' "$out")")
        api_rss=$(rss_mib "$(sed -n 's/^kube-apiserver-pid=//p' "$out")")
    fi
    kill -TERM "$pid"
    wait "$pid" || true
    pid=
done

sorted=$(printf '%s\n' "${times[@]}" | sort -n)
median=$(echo "$sorted" | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }')
echo "| warm start to /readyz (median of $runs) | ${median} s | runs: $(echo $sorted | tr '\n' ' ')|"
echo "| etcd RSS after start | ${etcd_rss} MiB | |"
echo "| kube-apiserver RSS after start | ${api_rss} MiB | |"
