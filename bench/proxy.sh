#!/usr/bin/env bash
# svcplane-proxy against kube-proxy (nftables mode, v1.37.2 built from the pinned Kubernetes
# module) on one kube-apiserver holding SERVICES ClusterIP Services, one TCP port and one
# EndpointSlice of 2 ready endpoints each. Each proxy runs alone, pinned to CPU 1, in a fresh
# node network namespace that reaches the API server through a unix-socket relay, with
# min-sync-period 0 (kube-proxy: --iptables-min-sync-period=0s, which is what sets it in
# nftables mode; it has no --min-sync-period flag). Measured per proxy
# (proxy/examples/proxy_bench.rs says exactly how):
#   - start to first full sync committed (the last Service's ClusterIP is in the kernel's
#     cluster-ips set; polled every 20 ms), and the proxy's own full-sync metric for it;
#   - ADDS Services added on top, 1.6 s apart, and CHANGES endpoint changes one at a time (one
#     address of a random Service's slice replaced by a fresh one): from the API write's
#     response (and from just before it was sent) to the commit of the first sync after it, by
#     the proxy's own last-sync timestamp, which both set just after the commit (kube-proxy
#     kubeproxy_sync_proxy_rules_last_timestamp_seconds, svcplane-proxy
#     svcplane_proxy_last_sync_timestamp_seconds), read every POLL_MS (5) ms by a thread of
#     the driver inside the node namespace; every add and every CHECK_EVERY-th (50) change is
#     checked in the kernel after the timestamp moved (a sync without it counts as a mismatch
#     and the next is timed); misses after 10 s;
#   - VmRSS / VmHWM after the full sync and at the end; lines of the IPv4 table.
#
#   bench/proxy.sh                                   (10000 Services, 20 adds, 1000 changes)
#   SERVICES=500 ADDS=3 CHANGES=30 bench/proxy.sh    (a quick check that it works)
#   CHECK_EVERY=1 bench/proxy.sh                     (every change checked in the kernel)
#
# Needs root (ip netns, nft). Prints Markdown rows for docs/benchmarks.md. Nothing leaves
# loopback and the namespaces made here; they are deleted on exit, also on failure.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
SERVICES=${SERVICES:-10000}
ADDS=${ADDS:-20}
CHANGES=${CHANGES:-1000}
CHECK_EVERY=${CHECK_EVERY:-50}
POLL_MS=${POLL_MS:-5}
work=$(mktemp -d /tmp/svcplane-bench-proxy.XXXXXX)
prefix=svpb$$
driver=
cleanup() {
    local status=$?
    if [ -n "$driver" ] && kill -0 "$driver" 2>/dev/null; then
        kill -TERM "$driver" 2>/dev/null || true
        for _ in $(seq 1 100); do kill -0 "$driver" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$driver" 2>/dev/null || true
    fi
    # Leftovers of a driver that could not clean up: only our namespaces, and what runs in them.
    for ns in $(ip netns list | awk -v p="$prefix-" 'index($1, p) == 1 { print $1 }'); do
        for pid in $(ip netns pids "$ns"); do kill -KILL "$pid" 2>/dev/null || true; done
        ip netns del "$ns" || true
    done
    if [ "$status" -ne 0 ]; then
        for log in "$work"/*.log; do
            [ -f "$log" ] && { echo "--- $log" >&2; tail -20 "$log" >&2; }
        done
    fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cargo build --release -q -p svcplane-proxy --bin svcplane-proxy --example proxy_bench
kube_proxy=$(tests/controlplane/build.sh kube-proxy)/kube-proxy

target/release/examples/proxy_bench --svcplane-proxy target/release/svcplane-proxy \
    --kube-proxy "$kube_proxy" --work "$work" --netns-prefix "$prefix" \
    --services "$SERVICES" --adds "$ADDS" --changes "$CHANGES" --check-every "$CHECK_EVERY" \
    --poll-interval-ms "$POLL_MS" >"$work/results" &
driver=$!
wait "$driver"
driver=
cat "$work/results" >&2

python3 - "$work/results" "$SERVICES" "$ADDS" "$CHANGES" <<'PY'
import math, sys
r = {}
for line in open(sys.argv[1]):
    name, key, value = line.split()
    r.setdefault(name, {})[key] = float(value)
s, k = r["svcplane"], r["kube-proxy"]
services, adds, changes = sys.argv[2:5]
nan = float("nan")
def ratio(key):
    a, b = s.get(key, nan), k.get(key, nan)
    return f"{a / b:.2f}" if b and not math.isnan(a) and not math.isnan(b) else "n/a"
def fig(d, key, unit, digits):
    v = d.get(key)
    return "—" if v is None else f"{v:,.{digits}f} {unit}".strip()
def row(what, key, unit, digits):
    print(f"| {what} | {fig(s, key, unit, digits)} | {fig(k, key, unit, digits)} | {ratio(key)} |")
def syncs(d, phase):
    parts = []
    for kind in ("partial", "full"):
        n = d.get(f"{phase}_{kind}_syncs", 0)
        if n:
            parts.append(f"{kind} {d[f'{phase}_{kind}_ms']:.1f} ms x {n:.0f}")
    return ", ".join(parts) or "none"
print(f"| {int(services):,} Services x 2 endpoints, min-sync-period 0 | svcplane-proxy | kube-proxy (nftables) | svcplane / kube-proxy |")
print("|---|---|---|---|")
row("start to first full sync committed", "full_sync_wall_s", "s", 2)
row("first full sync, the proxy's own metric", "full_sync_metric_s", "s", 3)
row("RSS after the full sync", "rss_sync_mib", "MiB", 0)
row(f"Service created to sync committed, median of {adds}", "add_p50_ms", "ms", 1)
row("Service created to sync committed, max", "add_max_ms", "ms", 1)
row("the same from just before the create, median", "add_start_p50_ms", "ms", 1)
print(f"| own sync metric during the adds (mean x count) | {syncs(s, 'add')} | {syncs(k, 'add')} | |")
row(f"endpoint change written to sync committed, p50 ({changes} changes)", "change_p50_ms", "ms", 1)
row("endpoint change written to sync committed, p99", "change_p99_ms", "ms", 1)
row("endpoint change written to sync committed, max", "change_max_ms", "ms", 1)
row("the same from just before the write, p50", "change_start_p50_ms", "ms", 1)
print(f"| own sync metric during the changes (mean x count) | {syncs(s, 'change')} | {syncs(k, 'change')} | |")
print(f"| adds / changes not synced within 10 s | {s.get('add_misses', 0):.0f} / {s.get('change_misses', 0):.0f} | {k.get('add_misses', 0):.0f} / {k.get('change_misses', 0):.0f} | |")
def checks(d):
    return " / ".join(f"{d.get(f'{p}_mismatches', 0):.0f} of {d.get(f'{p}_checked', 0):.0f}" for p in ("add", "change"))
print(f"| kernel checks: syncs without the add / change, of those checked | {checks(s)} | {checks(k)} | |")
row("RSS at the end", "rss_end_mib", "MiB", 0)
row("peak RSS (VmHWM) at the end", "hwm_end_mib", "MiB", 0)
row("lines of `nft list table ip …`", "ruleset_lines", "", 0)
PY
