#!/usr/bin/env bash
# docs/reliability.md's figures. First the load counts of tests/cluster/tests/faults.rs (DNS
# queries failed during a rolling restart, connections broken by proxy restarts); then the fault
# suite (fault_suite.rs): time to converge after each fault, what each fault did, and the memory
# of every svcplane process before and after MEMORY_OPS churn operations with no fault (default
# 1,200: an hour of one change every 3 s; CI runs 300). SEED picks another workload (1127).
#
#   bench/faults.sh                 (about 15 minutes)
#   MEMORY_OPS=300 bench/faults.sh  (as in CI)
#
# Release build, as shipped. Needs root (network namespaces); everything stays inside the
# namespaces the run makes.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bins=$(tests/controlplane/build.sh kube-controller-manager kube-proxy)
export SVCPLANE_CONTROLPLANE_BIN_DIR="$bins"
cargo build -q --release --workspace --bins --locked
SVCPLANE_MEMORY_OPS="${MEMORY_OPS:-1200}" SVCPLANE_FAULT_SEED="${SEED:-1127}" \
    cargo test -q --release --locked -p svcplane-cluster --test faults --test fault_suite \
        -- --nocapture --test-threads 1 2>&1 |
    grep -E '^(fault suite|dns rolling restart|proxy restarts|  |test result)'
