#!/usr/bin/env bash
# svcplane-allocator's webhook against the API server allocating alone, in one run on one
# dual-stack control plane: Service creates alternate in batches between a namespace the webhook
# handles and one it skips, so both see the same API server and the same machine. Reports create
# latency and throughput with and without the webhook, the handler's own latency (from its
# histogram), and the allocator's memory at SERVICES x 2 Services and OBJECTS IPAddress objects.
#
#   bench/allocator.sh                              (10,000 creates each way, 50,000 objects)
#   SERVICES=2000 OBJECTS=10000 bench/allocator.sh  (a quicker run)
#
# Prints Markdown rows for docs/benchmarks.md. Everything stays on loopback.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo build --release -q -p svcplane-allocator --bins --examples
exec target/release/examples/allocator_bench
