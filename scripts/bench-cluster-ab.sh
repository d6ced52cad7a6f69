#!/usr/bin/env bash
# A/B of the request path on a real cluster: `cluster local --nodes 3` of binary A, then of
# binary B, alternating ROUNDS times, each measured with the same load generator (B's
# `scoregrid bench`, 32 connections, 10 s after a 2 s warm-up) on the 1M-customer model.
# Usage: scripts/bench-cluster-ab.sh A_BINARY B_BINARY [MODEL_DIR] [ROUNDS]
# Prints one JSON-derived line per run, then the median rps and p99 of each binary.
set -euo pipefail
a=$1
b=$2
model=${3:-/tmp/scoregrid-bench-1m}
rounds=${4:-3}
addr=127.0.0.1:18100
if [ ! -f "$model/manifest.json" ]; then
    "$b" gen --out "$model" --customers 1000000 --products 50000 --containers 500 \
        --pool-products 1000 --dim 64 --format parquet --seed 42
fi
results=$(mktemp)
run() {
    local label=$1 bin=$2 dir out pid
    dir=$(mktemp -d)
    out="$dir/cluster.out"
    "$bin" cluster local --nodes 3 --model "$model" --http "$addr" --dir "$dir/work" >"$out" 2>/dev/null &
    pid=$!
    for _ in $(seq 1 240); do grep -q '^ready:' "$out" && break; sleep 0.5; done
    grep -q '^ready:' "$out" || { echo "$label: the cluster did not start"; kill "$pid"; exit 1; }
    "$b" bench --url "http://$addr" --model "$model" --connections 32 --duration 10 --warmup 2 --json |
        python3 -c '
import json, sys
d = json.load(sys.stdin); l = d["latency_us"]
print("%s rps=%.0f p50=%.2fms p99=%.2fms non-200=%d transport=%d" % (sys.argv[1], d["rps"], l["p50"] / 1000,
      l["p99"] / 1000, sum(d["errors_by_status"].values()), d["transport_errors"]))' "$label" | tee -a "$results"
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    rm -rf "$dir"
}
for _ in $(seq 1 "$rounds"); do
    run A "$a"
    run B "$b"
done
python3 - "$results" <<'EOF'
import re, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    label, rps, p99 = re.match(r"(\w) rps=(\d+) p50=\S+ p99=([\d.]+)ms", line).groups()
    runs.setdefault(label, []).append((float(rps), float(p99)))
for label, values in sorted(runs.items()):
    print("%s: median rps %.0f, median p99 %.2f ms over %d runs" % (
        label, statistics.median(v[0] for v in values), statistics.median(v[1] for v in values), len(values)))
if "A" in runs and "B" in runs:
    ratio = statistics.median(v[0] for v in runs["B"]) / statistics.median(v[0] for v in runs["A"])
    print("B/A rps: %.3f" % ratio)
EOF
rm -f "$results"
