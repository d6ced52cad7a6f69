#!/usr/bin/env bash
# End-to-end benchmark of issue 2: `scoregrid bench` against `scoregrid demo` on this machine.
# 1M customers, dim 64, 500 containers of 1,000 products, limit 20; then /healthz as the HTTP
# stack's own ceiling; then the demo's resident memory against the vector bytes it holds.
# Usage: scripts/bench-e2e.sh [model dir, default /tmp/scoregrid-bench-1m] [runs, default 5] [demo flags]
# (pass --in-process as the third argument to measure without the QUIC hop)
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-/tmp/scoregrid-bench-1m}
runs=${2:-5}
demo_flags=${3:-}
addr=127.0.0.1:18080
bin=target/release/scoregrid

cargo build --release --quiet
if [ ! -f "$model/manifest.json" ]; then
    "$bin" gen --out "$model" --customers 1000000 --products 50000 --containers 500 \
        --pool-products 1000 --dim 64 --format parquet --seed 42
fi

log=$(mktemp)
# shellcheck disable=SC2086
"$bin" demo --model "$model" --http "$addr" $demo_flags >"$log" 2>/dev/null &
demo=$!
trap 'kill $demo 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 1 120); do grep -q listening "$log" && break; sleep 0.5; done
grep -q listening "$log" || { echo "demo did not start"; exit 1; }
sed -n 1,3p "$log"

summary() {
    python3 -c '
import json, sys
d = json.load(sys.stdin); l = d["latency_us"]; ms = lambda k: l[k] / 1000
print("%-9s c=%-3d rps=%8.0f p50=%.2fms p90=%.2fms p99=%.2fms p99.9=%.2fms max=%.2fms non-200=%d transport=%d" % (
    d["target"], d["connections"], d["rps"], ms("p50"), ms("p90"), ms("p99"), ms("p999"), ms("max"),
    sum(d["errors_by_status"].values()), d["transport_errors"]))'
}

for c in 8 16 32 64; do
    "$bin" bench --url "http://$addr" --model "$model" --connections "$c" --duration 10 --warmup 2 --json | summary
done
for _ in $(seq 1 "$runs"); do
    "$bin" bench --url "http://$addr" --model "$model" --connections 32 --duration 10 --warmup 2 --json | summary
done
for _ in $(seq 1 "$runs"); do
    "$bin" bench --url "http://$addr" --target healthz --connections 32 --duration 10 --warmup 2 --json | summary
done
rss_kib=$(awk '/VmRSS/ {print $2}' /proc/$demo/status)
vectors=$(curl -s "http://$addr/metrics" | awk '/^scoregrid_demo_vector_bytes/ {print $2}')
python3 -c "print(f'resident after the runs: {$rss_kib/1024:.1f} MiB; vectors held: {$vectors/1048576:.1f} MiB; ratio {$rss_kib*1024/$vectors:.2f}x')"
