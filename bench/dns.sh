#!/usr/bin/env bash
# svcplane-dns against CoreDNS (v1.15.0, built from its Go module, `kubernetes` plugin) on the
# same kube-apiserver holding SERVICES Services with ENDPOINTS endpoints each. Each server runs
# alone, pinned to CPU 1; dnsperf runs on CPU 0. Everything stays on loopback.
#
#   bench/dns.sh                       (10000 Services x 10 endpoints)
#   SERVICES=1000 bench/dns.sh         (a quicker run)
#   SVCPLANE_DNS_BASELINE=/path/to/an/older/svcplane-dns ROUNDS=3 bench/dns.sh
#                                      (also measures that binary, with the same flags; each
#                                      svcplane-dns variant ROUNDS times in rotated order, medians)
#
# svcplane-dns is measured twice: with its flags, and from kubeadm's default Corefile, the very
# file CoreDNS runs from (ports and kubeconfig come from the environment).
#
# Prints Markdown rows for docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
SERVICES=${SERVICES:-10000}
ENDPOINTS=${ENDPOINTS:-10}
SATURATION_SECONDS=${SATURATION_SECONDS:-15}
FIXED_QPS=${FIXED_QPS:-5000}
ROUNDS=${ROUNDS:-1}
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

# kubeadm's Corefile, for svcplane-dns and CoreDNS alike, forwarding to a silent loopback port.
cat >"$work/Corefile" <<'CF'
.:{$DNS_PORT} {
    bind 127.0.0.1
    errors
    health 127.0.0.1:{$HEALTH_PORT} {
       lameduck 5s
    }
    ready 127.0.0.1:{$READY_PORT}
    kubernetes cluster.local in-addr.arpa ip6.arpa {
       kubeconfig {$KUBECONFIG}
       pods insecure
       fallthrough in-addr.arpa ip6.arpa
       ttl 30
    }
    prometheus 127.0.0.1:{$METRICS_PORT}
    forward . 127.0.0.1:9 {
       max_concurrent 1000
    }
    cache 30 {
       disable success cluster.local
       disable denial cluster.local
    }
    loop
    reload
    loadbalance
}
CF
export KUBECONFIG=$kubeconfig

flags_server() { # binary -> svcplane-dns from flags on 10053, admin 19090, alone on CPU 1
    taskset -c 1 "$1" --kubeconfig "$kubeconfig" --listen 127.0.0.1:10053 \
        --admin-addr 127.0.0.1:19090 --upstream 127.0.0.1:9 --lameduck 0s >>"$work/svcplane.log" 2>&1 &
}

: >"$work/results"
run_svcplane() { # name: baseline (SVCPLANE_DNS_BASELINE, flags), svcplane (flags) or corefile
    local name=$1 start pid ready port
    start=$(date +%s.%N)
    case $name in
        baseline) flags_server "$SVCPLANE_DNS_BASELINE"; pid=$!; ready=19090; port=10053 ;;
        svcplane) flags_server target/release/svcplane-dns; pid=$!; ready=19090; port=10053 ;;
        corefile)
            DNS_PORT=10055 HEALTH_PORT=18080 READY_PORT=18182 METRICS_PORT=19153 \
                taskset -c 1 target/release/svcplane-dns --corefile "$work/Corefile" \
                >>"$work/svcplane-corefile.log" 2>&1 &
            pid=$!; ready=18182; port=10055 ;;
    esac
    pids+=("$pid")
    wait_ready "http://127.0.0.1:$ready/ready"
    echo "$name sync_s $(echo "$(date +%s.%N) - $start" | bc)" >>"$work/results"
    measure "$name" "$port" "$pid" >>"$work/results"
    kill "$pid"; wait "$pid" 2>/dev/null || true
}

# svcplane-dns alone on CPU 1: from its flags, from kubeadm's Corefile, and the baseline if
# given; ROUNDS rounds, the order rotated each round, medians reported.
variants=(svcplane corefile)
[ -n "${SVCPLANE_DNS_BASELINE:-}" ] && variants=(baseline svcplane corefile)
for round in $(seq 0 $((ROUNDS - 1))); do
    n=${#variants[@]}
    for k in $(seq 0 $((n - 1))); do
        run_svcplane "${variants[$(((k + round) % n))]}"
    done
done

# CoreDNS alone on CPU 1, from the same Corefile.
start=$(date +%s.%N)
DNS_PORT=10054 HEALTH_PORT=18081 READY_PORT=18181 METRICS_PORT=19154 \
    GOMAXPROCS=1 taskset -c 1 "$coredns" -conf "$work/Corefile" >"$work/coredns.log" 2>&1 &
pids+=($!); cd_pid=$!
wait_ready http://127.0.0.1:18181/ready
echo "coredns sync_s $(echo "$(date +%s.%N) - $start" | bc)" >>"$work/results"
measure coredns 10054 "$cd_pid" >>"$work/results"

# Programming latency: a new Service until each server answers it (both running now).
flags_server target/release/svcplane-dns
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
import statistics
runs = {}
for line in open(sys.argv[1]):
    name, key, value = line.split()
    runs.setdefault(name, {}).setdefault(key, []).append(value)
def median(values):
    try:
        return f"{statistics.median(float(v) for v in values):.3f}"
    except ValueError:
        return values[0]
r = {name: {key: median(v) for key, v in keys.items()} for name, keys in runs.items()}
s, f, c = r["svcplane"], r["corefile"], r["coredns"]
b = r.get("baseline")
def ratio(a, b, invert=False):
    try:
        a, b = float(a), float(b)
        return f"{(b / a if invert else a / b):.2f}"
    except (ValueError, ZeroDivisionError, TypeError):
        return "n/a"
head = f"| {sys.argv[2]} Services x {sys.argv[3]} endpoints | svcplane-dns (flags) | svcplane-dns (Corefile) | CoreDNS (Corefile) | svcplane / CoreDNS | Corefile / flags |"
if b:
    head += " baseline (flags) | Corefile / baseline |"
print(head)
print("|---" * (head.count("|") - 1) + "|")
rows = [("QPS at saturation (1 core)", "qps", ""), ("p50 latency at a fixed rate", "p50_us", " µs"),
        ("p99 latency at a fixed rate", "p99_us", " µs"), ("RSS after sync", "rss_ready", " MiB"),
        ("RSS after the load", "rss_after", " MiB"), ("start to ready (initial sync)", "sync_s", " s")]
for label, key, unit in rows:
    fmt = (lambda v: f"{float(v):.1f}") if key == "sync_s" else (lambda v: f"{float(v):,.0f}")
    line = f"| {label} | {fmt(s[key])}{unit} | {fmt(f[key])}{unit} | {fmt(c[key])}{unit} | {ratio(s[key], c[key])} | {ratio(f[key], s[key])} |"
    if b:
        line += f" {fmt(b[key])}{unit} | {ratio(f[key], b[key])} |"
    print(line)
def whole(v):
    try:
        return f"{float(v):,.0f}"
    except (TypeError, ValueError):
        return "n/a"
print(f"| Service created to first NOERROR (median of 10) | {whole(s.get('programming_ms_median'))} ms | | {whole(c.get('programming_ms_median'))} ms | {ratio(s.get('programming_ms_median'), c.get('programming_ms_median'))} | |" + (" | |" if b else ""))
print(f"| queries lost at saturation | {whole(s['lost'])} | {whole(f['lost'])} | {whole(c['lost'])} | | |" + (f" {whole(b['lost'])} | |" if b else ""))
PY
