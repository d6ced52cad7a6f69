#!/usr/bin/env bash
# The nightly-load benchmark (BENCHMARKS.md section 4): a 3-node RF 2 `cluster local` serving V1
# (the 1M-customer bench model), then `scoregrid load` of V2 (CUSTOMERS customers, dim 64,
# Parquet) while an open-loop reader runs at half the cluster's measured capacity. Reports, from
# one run: the capacity, the reader's p99 idle and during the staging, the load's summary (rate
# per node), and the peak RSS of the loader and of each node.
# Usage: scripts/bench-load.sh [BIN] [V1_DIR] [V2_DIR] [CUSTOMERS] [READ_SECONDS] [BYTES_PER_S]
# BYTES_PER_S (default 0: unbounded) is the load's `load.bytes_per_second`. LOADER_NICE (default
# 0) runs the loader at that nice value: a stand-in for a loader on another machine, which is
# where it runs in production. SCOREGRID_NODE_STAGING_NICE sets the nodes' `node.staging_nice`.
set -euo pipefail
bin=${1:-target/release/scoregrid}
v1=${2:-/tmp/scoregrid-bench-1m}
v2=${3:-/tmp/scoregrid-bench-10m}
customers=${4:-10000000}
read_seconds=${5:-15}
bytes_per_second=${6:-0}
addr=127.0.0.1:18200
if [ ! -f "$v1/manifest.json" ]; then
    "$bin" gen --out "$v1" --customers 1000000 --products 50000 --containers 500 \
        --pool-products 1000 --dim 64 --format parquet --seed 42
fi
if [ ! -f "$v2/manifest.json" ]; then
    "$bin" gen --out "$v2" --customers "$customers" --products 50000 --containers 500 \
        --pool-products 1000 --dim 64 --format parquet --seed 43 --version load-v2
fi
work=$(mktemp -d)
out="$work/cluster.out"
"$bin" cluster local --nodes 3 --model "$v1" --http "$addr" --dir "$work/cluster" >"$out" 2>"$work/cluster.err" &
cluster=$!
cleanup() { kill "$cluster" 2>/dev/null || true; wait "$cluster" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
for _ in $(seq 1 480); do grep -q '^ready:' "$out" && break; sleep 0.5; done
grep -q '^ready:' "$out" || { echo "the cluster did not start"; cat "$work/cluster.err"; exit 1; }
nodes=$(awk '$2 == "pid" && $1 ~ /^node-/ {print $3}' "$out")

p99() { python3 -c 'import json,sys; d=json.load(sys.stdin); print("%.2f %.0f %d" % (d["latency_us"]["p99"]/1000, d["rps"], sum(d["errors_by_status"].values()) + d["transport_errors"] + d["timeouts"]))'; }
capacity=$("$bin" bench --url "http://$addr" --model "$v1" --connections 32 --duration 10 --warmup 2 --json | p99)
rate=$(echo "$capacity" | awk '{printf "%d", $2 / 2}')
echo "capacity (closed loop, 32 connections): p99 ms, rps, errors = $capacity; open-loop rate $rate/s"
idle=$("$bin" bench --url "http://$addr" --model "$v1" --connections 32 --rate "$rate" --duration "$read_seconds" --warmup 2 --json | p99)
echo "idle reader: p99 ms, rps, errors = $idle"

SCOREGRID_LOAD_BYTES_PER_SECOND=$bytes_per_second /usr/bin/time -v nice -n "${LOADER_NICE:-0}" "$bin" --config "$work/cluster/client.toml" load --model "$v2" >"$work/load.out" 2>"$work/load.err" &
loader=$!
for _ in $(seq 1 1200); do grep -q 'staging round' "$work/load.err" && break; sleep 0.1; done
started=$(date +%s.%N)
during=$("$bin" bench --url "http://$addr" --model "$v1" --connections 32 --rate "$rate" --duration "$read_seconds" --warmup 0 --json | p99)
wait "$loader"
ended=$(date +%s.%N)
echo "reader during the staging: p99 ms, rps, errors = $during"
echo "ratio p99 during / idle: $(echo "$during $idle" | awk '{printf "%.2f", $1 / $4}')"
echo "the staging ran $(echo "$ended $started" | awk '{printf "%.1f", $1 - $2}') s after the reader started (reader: $read_seconds s)"
cat "$work/load.out"
grep -E "Maximum resident set size|Elapsed \(wall" "$work/load.err" | sed 's/^\s*/loader: /'
for pid in $nodes; do
    echo "node pid $pid: peak RSS $(awk '/VmHWM/ {printf "%.0f MiB", $2 / 1024}' /proc/"$pid"/status)"
done
