#!/usr/bin/env bash
# Network-programming latency end to end on the local cluster (svcplane-cluster, release build):
# Service created -> first DNS answer and first HTTP request through its ClusterIP from a pod;
# pod Ready -> first request it serves. ROUNDS rounds of each (default 30), PAUSE apart (default
# 2s, longer than the proxy's 1 s --min-sync-period, so each round starts from a quiet proxy);
# then the same again with svcplane-proxy's --sync-settle at 0 (kube-proxy's timing), in the same
# run on the same machine.
#
#   bench/cluster.sh               (about 9 minutes)
#   ROUNDS=10 bench/cluster.sh     (a quicker run)
#
# Needs root (network namespaces). Prints p50/p90/p99/max per measure; everything stays inside
# the namespaces the run makes, which it removes.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo build --release -q --workspace --bins
cargo build --release -q -p svcplane-cluster --examples
exec target/release/examples/cluster_latency --rounds "${ROUNDS:-30}" --pause "${PAUSE:-2s}" \
    --bin-dir target/release --compare-settle-zero
