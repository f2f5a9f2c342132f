#!/usr/bin/env bash
# svcplane-dns against CoreDNS (v1.15.0, built from its Go module, `kubernetes` plugin) on the
# same kube-apiserver holding SERVICES Services with ENDPOINTS endpoints each. Each server runs
# alone, pinned to CPU 1; dnsperf runs on CPU 0. Everything stays on loopback.
#
#   bench/dns.sh                       (10000 Services x 10 endpoints)
#   SERVICES=1000 bench/dns.sh         (a quicker run)
#
# Prints Markdown rows for docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
SERVICES=${SERVICES:-10000}
ENDPOINTS=${ENDPOINTS:-10}
SATURATION_SECONDS=${SATURATION_SECONDS:-15}
FIXED_QPS=${FIXED_QPS:-5000}
work=$(mktemp -d /tmp/svcplane-bench-dns.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

cargo build --release -q -p svcplane-dns -p svcplane-testenv --bins --examples
coredns=$(bench/coredns/build.sh)

target/release/svcplane-testenv >"$work/cp.out" 2>"$work/cp.err" &
pids+=($!)
for _ in $(seq 1 600); do grep -q '^#' "$work/cp.out" && break; sleep 0.1; done
kubeconfig=$(sed -n 's/^kubeconfig=//p' "$work/cp.out")
[ -n "$kubeconfig" ] || { cat "$work/cp.err" >&2; exit 1; }
target/release/examples/populate --kubeconfig "$kubeconfig" --services "$SERVICES" --endpoints "$ENDPOINTS" >&2

# The query mix: A for Services (70%), SRV (20%), AAAA with no data (5%), missing names (5%).
python3 - "$SERVICES" >"$work/queries" <<'PY'
import random, sys
n = int(sys.argv[1]); random.seed(7)
for _ in range(20000):
    i = random.randrange(n); ns = f"ns-{i % 100}"; r = random.random()
    if r < .70: print(f"svc-{i}.{ns}.svc.cluster.local A")
    elif r < .90: print(f"_http._tcp.svc-{i}.{ns}.svc.cluster.local SRV")
    elif r < .95: print(f"svc-{i}.{ns}.svc.cluster.local AAAA")
    else: print(f"missing-{i}.{ns}.svc.cluster.local A")
PY

rss() { awk '/^VmRSS/ { printf "%.0f", $2 / 1024 }' "/proc/$1/status"; }
wait_ready() { # url
    for _ in $(seq 1 1200); do
        curl -fs "$1" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    return 1
}

measure() { # name port pid -> lines "name key value"
    local name=$1 port=$2 pid=$3
    sleep 2
    echo "$name rss_ready $(rss "$pid")"
    taskset -c 0 dnsperf -s 127.0.0.1 -p "$port" -d "$work/queries" -l "$SATURATION_SECONDS" -c 4 -q 500 \
        >"$work/$name.sat" 2>&1 || true
    echo "$name qps $(awk '/Queries per second/ { print $4 }' "$work/$name.sat")"
    echo "$name lost $(awk '/Queries lost/ { print $3 }' "$work/$name.sat")"
    taskset -c 0 dnsperf -s 127.0.0.1 -p "$port" -d "$work/queries" -l 10 -Q "$FIXED_QPS" -v \
        >"$work/$name.fixed" 2>&1 || true
    python3 - "$work/$name.fixed" "$name" <<'PY'
import sys
lat = sorted(float(l.split()[-1]) for l in open(sys.argv[1]) if l.startswith("> "))
q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1e6
print(f"{sys.argv[2]} p50_us {q(.50):.0f}\n{sys.argv[2]} p99_us {q(.99):.0f}\n{sys.argv[2]} answered {len(lat)}")
PY
    echo "$name rss_after $(rss "$pid")"
}

# svcplane-dns alone on CPU 1.
start=$(date +%s.%N)
taskset -c 1 target/release/svcplane-dns --kubeconfig "$kubeconfig" --listen 127.0.0.1:10053 \
    --admin-addr 127.0.0.1:19090 --upstream 127.0.0.1:9 --lameduck 0s >"$work/svcplane.log" 2>&1 &
pids+=($!); sp=$!
wait_ready http://127.0.0.1:19090/ready
echo "svcplane sync_s $(echo "$(date +%s.%N) - $start" | bc)" >"$work/results"
measure svcplane 10053 "$sp" >>"$work/results"
kill "$sp"; wait "$sp" 2>/dev/null || true

# CoreDNS alone on CPU 1, as kubeadm configures it but forwarding to a silent loopback port.
cat >"$work/Corefile" <<CF
.:10054 {
    errors
    ready 127.0.0.1:18181
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig $kubeconfig svcplane-testenv
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 5
    }
    forward . 127.0.0.1:9
    cache 30 {
        disable success cluster.local
        disable denial cluster.local
    }
}
CF
start=$(date +%s.%N)
GOMAXPROCS=1 taskset -c 1 "$coredns" -conf "$work/Corefile" >"$work/coredns.log" 2>&1 &
pids+=($!); cd_pid=$!
wait_ready http://127.0.0.1:18181/ready
echo "coredns sync_s $(echo "$(date +%s.%N) - $start" | bc)" >>"$work/results"
measure coredns 10054 "$cd_pid" >>"$work/results"

# Programming latency: a new Service until each server answers it (both running now).
taskset -c 1 target/release/svcplane-dns --kubeconfig "$kubeconfig" --listen 127.0.0.1:10053 \
    --admin-addr 127.0.0.1:19090 --upstream 127.0.0.1:9 --lameduck 0s >>"$work/svcplane.log" 2>&1 &
pids+=($!)
wait_ready http://127.0.0.1:19090/ready
python3 - "$kubeconfig" >>"$work/results" <<'PY'
import json, ssl, subprocess, sys, time, urllib.request, base64, tempfile, os
kc = json.load(open(sys.argv[1]))
cluster, user = kc["clusters"][0]["cluster"], kc["users"][0]["user"]
d = tempfile.mkdtemp()
def put(n, b64):
    p = os.path.join(d, n); open(p, "wb").write(base64.b64decode(b64)); return p
ctx = ssl.create_default_context(cafile=put("ca", cluster["certificate-authority-data"]))
ctx.load_cert_chain(put("crt", user["client-certificate-data"]), put("key", user["client-key-data"]))
def dig(port, name):
    out = subprocess.run(["dig", "@127.0.0.1", "-p", str(port), "+time=1", "+tries=1", name, "A"], capture_output=True, text=True).stdout
    return "status: NOERROR" in out and "ANSWER: 1" in out
lat = {"svcplane": [], "coredns": []}
for k in range(10):
    body = json.dumps({"apiVersion": "v1", "kind": "Service", "metadata": {"name": f"late-{k}"},
                       "spec": {"ports": [{"name": "http", "port": 80}]}}).encode()
    req = urllib.request.Request(cluster["server"] + "/api/v1/namespaces/ns-0/services", data=body,
                                 headers={"Content-Type": "application/json"}, method="POST")
    t0 = time.time(); urllib.request.urlopen(req, context=ctx).read()
    pending = {"svcplane": 10053, "coredns": 10054}
    while pending and time.time() - t0 < 30:
        for name, port in list(pending.items()):
            if dig(port, f"late-{k}.ns-0.svc.cluster.local"):
                lat[name].append(time.time() - t0); del pending[name]
        time.sleep(0.005)
for name, v in lat.items():
    v.sort()
    print(f"{name} programming_ms_median {v[len(v)//2]*1000:.0f}" if v else f"{name} programming_ms_median n/a")
PY

python3 - "$work/results" "$SERVICES" "$ENDPOINTS" <<'PY'
import sys
r = {}
for line in open(sys.argv[1]):
    name, key, value = line.split()
    r.setdefault(name, {})[key] = value
s, c = r["svcplane"], r["coredns"]
def ratio(a, b, invert=False):
    try:
        a, b = float(a), float(b)
        return f"{(b / a if invert else a / b):.2f}"
    except (ValueError, ZeroDivisionError):
        return "n/a"
print(f"| {sys.argv[2]} Services x {sys.argv[3]} endpoints | svcplane-dns | CoreDNS | svcplane / CoreDNS |")
print("|---|---|---|---|")
print(f"| QPS at saturation (1 core) | {s['qps']} | {c['qps']} | {ratio(s['qps'], c['qps'])} |")
print(f"| p50 latency at a fixed rate | {s['p50_us']} µs | {c['p50_us']} µs | {ratio(s['p50_us'], c['p50_us'])} |")
print(f"| p99 latency at a fixed rate | {s['p99_us']} µs | {c['p99_us']} µs | {ratio(s['p99_us'], c['p99_us'])} |")
print(f"| RSS after sync | {s['rss_ready']} MiB | {c['rss_ready']} MiB | {ratio(s['rss_ready'], c['rss_ready'])} |")
print(f"| RSS after the load | {s['rss_after']} MiB | {c['rss_after']} MiB | {ratio(s['rss_after'], c['rss_after'])} |")
print(f"| start to ready (initial sync) | {float(s['sync_s']):.1f} s | {float(c['sync_s']):.1f} s | {ratio(s['sync_s'], c['sync_s'])} |")
print(f"| Service created to first NOERROR (median of 10) | {s.get('programming_ms_median','n/a')} ms | {c.get('programming_ms_median','n/a')} ms | {ratio(s.get('programming_ms_median'), c.get('programming_ms_median'))} |")
print(f"| queries lost at saturation | {s['lost']} | {c['lost']} | |")
PY
