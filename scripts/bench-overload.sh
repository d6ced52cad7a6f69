#!/usr/bin/env bash
# The router under overload (BENCHMARKS.md section 3d): a 3-node `cluster local` on the 1M-customer
# bench model; its capacity (closed loop, 32 connections, answers 200 per second); then an open-loop
# generator at each multiple of it in STEPS, up to CONNS connections; the router's RSS idle and
# after, and its circuit, shedding, partial and hedging counters at the end.
#
# One JSON object per line goes to OUT (appended; scripts/plot-overload.py draws them), a summary
# per step to stdout.
#   CLUSTER  the scoregrid binary that runs the cluster (default target/release/scoregrid): an
#            older build gives the "before" rows
#   BENCH    the scoregrid binary that generates the load (default target/release/scoregrid)
#   LABEL    names the series in OUT (default "after")
#   SLOTS    sets http.requests_in_flight_max when given; other SCOREGRID_* variables pass through
#   PIN=1    runs the cluster on CPU 0 and the generator on CPU 1 (taskset), so that the
#            generator's own queue does not stand in for the router's
# Usage: [CLUSTER=..] [BENCH=..] [LABEL=..] [OUT=..] [STEPS="0.5 1 2 3 4"] [SLOTS=N] [CONNS=N] [PIN=1]
#        scripts/bench-overload.sh   (from the repository root; the model is made if missing)
set -u
cluster_bin=${CLUSTER:-target/release/scoregrid}
bench_bin=${BENCH:-target/release/scoregrid}
label=${LABEL:-after}
out=${OUT:-/tmp/scoregrid-overload.jsonl}
model=/tmp/scoregrid-bench-1m
cluster_cpu=""; load_cpu=""
if [ "${PIN:-0}" = 1 ]; then cluster_cpu="taskset -c 0"; load_cpu="taskset -c 1"; fi
if [ -n "${SLOTS:-}" ]; then export SCOREGRID_HTTP_REQUESTS_IN_FLIGHT_MAX=$SLOTS; fi
if [ ! -f "$model/manifest.json" ]; then
    "$bench_bin" gen --out "$model" --customers 1000000 --products 50000 --containers 500 \
        --pool-products 1000 --dim 64 --format parquet --seed 42 >/dev/null
fi
work=$(mktemp -d)
$cluster_cpu "$cluster_bin" cluster local --nodes 3 --model "$model" --http 127.0.0.1:18300 --dir "$work/cluster" >"$work/out" 2>"$work/err" &
cl=$!
trap 'kill $cl 2>/dev/null; wait $cl 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 1 240); do grep -q '^ready:' "$work/out" && break; sleep 0.5; done
if ! grep -q '^ready:' "$work/out"; then echo "the cluster did not start:"; cat "$work/err"; exit 1; fi
router=$(awk '$2 == "pid" && $1 ~ /^router/ {print $3}' "$work/out")
rss() { awk '/VmRSS/ {print $2}' "/proc/$router/status"; }
rss_idle=$(rss)

bench() { $load_cpu "$bench_bin" bench --url http://127.0.0.1:18300 --model "$model" --json "$@"; }
# Prints a summary of the report on stdin and appends it to OUT with the label and the step.
record() {
    python3 -c '
import json, sys
label, multiplier, out = sys.argv[1], float(sys.argv[2]), sys.argv[3]
d = json.load(sys.stdin)
ok = d["ok_latency_us"]
with open(out, "a") as f:
    f.write(json.dumps({"label": label, "multiplier": multiplier, "report": d}) + "\n")
print("sent %.0f/s, 200 %.0f/s (p50 %.1f p99 %.1f ms), not 200 %s, partial %d, transport %d, timeouts %d, unsent %d, connections %d" % (
    d["rps"], d["ok_rps"], ok["p50"] / 1000, ok["p99"] / 1000, d["errors_by_status"],
    d["partial"], d["transport_errors"], d["timeouts"], d["unsent"], d["connections_peak"]))
' "$label" "$1" "$out"
}
echo "capacity: $(bench --connections 32 --duration 8 --warmup 2 | record 0)"
capacity=$(tail -n 1 "$out" | python3 -c 'import json,sys; print(int(json.load(sys.stdin)["report"]["ok_rps"]))')
for m in ${STEPS:-0.5 1 2 3 4}; do
    r=$(python3 -c "print(int($capacity*$m))")
    echo "x$m ($r/s): $(bench --connections "${CONNS:-4000}" --rate "$r" --duration 8 --warmup 1 --timeout-ms 2000 | record "$m")"
done
rss_after=$(rss)
# The router gives its heap back once load has fallen (two upkeep intervals at most).
sleep 12
rss_later=$(rss)
metrics=$(curl -s http://127.0.0.1:18300/metrics | grep -E "^scoregrid_router_circuit_opened|^scoregrid_http_requests_shed|^scoregrid_recommend_partial|^scoregrid_router_hedges_(total|skipped)|^scoregrid_router_breaker")
echo "router RSS: idle $((rss_idle / 1024)) MiB, right after $((rss_after / 1024)) MiB, 12 s later $((rss_later / 1024)) MiB"
echo "$metrics"
python3 -c '
import json, sys
label, idle, after, later, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
with open(out, "a") as f:
    f.write(json.dumps({"label": label, "rss_idle_kib": idle, "rss_after_kib": after, "rss_12s_later_kib": later, "metrics": sys.stdin.read().splitlines()}) + "\n")
' "$label" "$rss_idle" "$rss_after" "$rss_later" "$out" <<<"$metrics"
