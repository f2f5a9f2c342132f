#!/usr/bin/env bash
# svcplane-endpoints against kube-controller-manager (endpoints + endpointslice controllers,
# default flags, built from the pinned Kubernetes module) on one kube-apiserver holding
# SERVICES Services x PODS ready pods on NODES Nodes. Each controller runs alone, pinned to
# CPU 1, from an empty start (no Endpoints, none of its own slices):
#   - converged_seconds: from its start until every Service's Endpoints and slices list all pods
#     as ready (the pods were Ready before it started);
#   - writes: endpoints/endpointslices writes the API server counted meanwhile;
#   - peak RSS (VmHWM) over the whole run;
#   - then FLIPS single-pod readiness flips, one at a time: time until the slice shows it.
#
#   bench/endpoints.sh                                  (5000 x 10 on 500 Nodes, default flags)
#   SERVICES=500 NODES=50 FLIPS=50 bench/endpoints.sh   (a quicker run)
#   QPS=1000 bench/endpoints.sh                         (both with client rate limits lifted)
#
# Prints Markdown rows for docs/benchmarks.md. Everything stays on loopback.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
SERVICES=${SERVICES:-5000}
PODS=${PODS:-10}
NODES=${NODES:-500}
FLIPS=${FLIPS:-200}
# Client-side rate limit for both controllers; empty means each one's default (20 qps, burst 30
# per controller in both).
QPS=${QPS:-}
limits=()
[ -n "$QPS" ] && limits=(--kube-api-qps="$QPS" --kube-api-burst="$QPS")
work=$(mktemp -d /tmp/svcplane-bench-endpoints.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

cargo build --release -q -p svcplane-endpoints -p svcplane-testenv --bins --examples
kcm=$(tests/controlplane/build.sh kube-controller-manager)/kube-controller-manager
bench=target/release/examples/bench

target/release/svcplane-testenv >"$work/cp.out" 2>"$work/cp.err" &
pids+=($!)
for _ in $(seq 1 600); do grep -q '^#' "$work/cp.out" && break; sleep 0.1; done
kubeconfig=$(sed -n 's/^kubeconfig=//p' "$work/cp.out")
[ -n "$kubeconfig" ] || { cat "$work/cp.err" >&2; exit 1; }
$bench --kubeconfig "$kubeconfig" populate --services "$SERVICES" --pods "$PODS" --nodes "$NODES" >&2

hwm() { awk '/^VmHWM/ { printf "%.0f", $2 / 1024 }' "/proc/$1/status"; }
writes() { $bench --kubeconfig "$kubeconfig" writes | awk '/^writes_total/ { print $2 }'; }

run() { # name manager command...
    local name=$1 manager=$2; shift 2
    $bench --kubeconfig "$kubeconfig" clean >&2
    local before; before=$(writes)
    $bench --kubeconfig "$kubeconfig" converge --manager "$manager" --services "$SERVICES" --pods "$PODS" \
        >"$work/$name.converge" 2>"$work/$name.converge.err" &
    local watcher=$!
    sleep 1
    taskset -c 1 "$@" >"$work/$name.log" 2>&1 &
    local pid=$!
    pids+=("$pid")
    wait "$watcher" || { tail -5 "$work/$name.converge.err" "$work/$name.log" >&2; exit 1; }
    echo "$name converged_seconds $(awk '{ print $2 }' "$work/$name.converge")"
    sleep 5 # let retries and late no-op syncs finish before counting
    echo "$name writes $(( $(writes) - before ))"
    $bench --kubeconfig "$kubeconfig" flips --manager "$manager" --count "$FLIPS" --services "$SERVICES" --pods "$PODS" \
        | sed "s/^/$name /"
    echo "$name rss_peak_mib $(hwm "$pid")"
    # svcplane's own view of its syncs (stale and failed ones retry with backoff): a diagnostic.
    if [ "$name" = svcplane ]; then
        python3 -c 'import sys, urllib.request
for l in urllib.request.urlopen("http://127.0.0.1:19092/metrics", timeout=5).read().decode().splitlines():
    if l.startswith("svcplane_endpoints_syncs_total"): print(l, file=sys.stderr)' || true
    fi
    kill "$pid"; wait "$pid" 2>/dev/null || true
}

{
    run svcplane endpointslice.svcplane.dev target/release/svcplane-endpoints --kubeconfig "$kubeconfig" \
        --admin-addr 127.0.0.1:19092 "${limits[@]}"
    run kcm endpointslice-controller.k8s.io "$kcm" --kubeconfig="$kubeconfig" \
        --controllers=endpoints-controller,endpointslice-controller --leader-elect=false --secure-port=0 \
        "${limits[@]}"
} | tee "$work/results" >&2

python3 - "$work/results" "$SERVICES" "$PODS" "$NODES" "$FLIPS" "$QPS" <<'PY'
import sys
r = {}
for line in open(sys.argv[1]):
    name, key, value = line.split()
    r.setdefault(name, {})[key] = float(value)
s, k = r["svcplane"], r["kcm"]
services, pods, nodes, flips = sys.argv[2:6]
ratio = lambda a, b: f"{a / b:.2f}" if b else "n/a"
print(f"| {services} Services x {pods} pods, {nodes} Nodes{', QPS ' + sys.argv[6] if sys.argv[6] else ''} | svcplane-endpoints | kube-controller-manager | svcplane / KCM |")
print("|---|---|---|---|")
print(f"| all pods Ready to converged | {s['converged_seconds']:.1f} s | {k['converged_seconds']:.1f} s | {ratio(s['converged_seconds'], k['converged_seconds'])} |")
print(f"| API writes to converge | {s['writes']:.0f} | {k['writes']:.0f} | {ratio(s['writes'], k['writes'])} |")
print(f"| peak RSS | {s['rss_peak_mib']:.0f} MiB | {k['rss_peak_mib']:.0f} MiB | {ratio(s['rss_peak_mib'], k['rss_peak_mib'])} |")
print(f"| readiness flip to slice, p50 ({flips} flips) | {s['flip_p50_ms']:.1f} ms | {k['flip_p50_ms']:.1f} ms | {ratio(s['flip_p50_ms'], k['flip_p50_ms'])} |")
print(f"| readiness flip to slice, p99 | {s['flip_p99_ms']:.1f} ms | {k['flip_p99_ms']:.1f} ms | {ratio(s['flip_p99_ms'], k['flip_p99_ms'])} |")
PY
