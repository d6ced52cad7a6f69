#!/usr/bin/env bash
# The router under overload (BENCHMARKS.md section 3d): a 3-node `cluster local` on the 1M-customer
# bench model, its capacity (closed loop, 32 connections), then an open-loop generator at 0.5x,
# 2x and 4x of it over CONNS connections; the router's RSS and its circuit, shedding, partial and
# hedging counters at the end. SLOTS sets `http.requests_in_flight_max`.
# PIN=1 runs the cluster on CPU 0 and the generator on CPU 1 (taskset), so that the generator's
# own queue does not stand in for the router's.
# Usage: [SLOTS=N] [CONNS=N] [PIN=1] scripts/bench-overload.sh   (from the repository root)
set -u
cluster_cpu=""; load_cpu=""
if [ "${PIN:-0}" = 1 ]; then cluster_cpu="taskset -c 0"; load_cpu="taskset -c 1"; fi
bin=target/release/scoregrid
work=$(mktemp -d)
SCOREGRID_HTTP_REQUESTS_IN_FLIGHT_MAX=${SLOTS:-4096} $cluster_cpu $bin cluster local --nodes 3 --model /tmp/scoregrid-bench-1m --http 127.0.0.1:18300 --dir "$work/cluster" >"$work/out" 2>"$work/err" &
cl=$!
for _ in $(seq 1 240); do grep -q '^ready:' "$work/out" && break; sleep 0.5; done
router=$(awk '$2 == "pid" && $1 ~ /^router/ {print $3}' "$work/out")
summ() { python3 -c 'import json,sys; d=json.load(sys.stdin); print("rps %.0f p50 %.1f p99 %.1f ms errors %s transport %d timeouts %d partial %s" % (d["rps"], d["latency_us"]["p50"]/1000, d["latency_us"]["p99"]/1000, d["errors_by_status"], d["transport_errors"], d["timeouts"], d.get("partial", "?")))'; }
cap=$($load_cpu $bin bench --url http://127.0.0.1:18300 --model /tmp/scoregrid-bench-1m --connections 32 --duration 8 --warmup 2 --json)
echo "capacity: $(echo "$cap" | summ)"
rate=$(echo "$cap" | python3 -c 'import json,sys; print(int(json.load(sys.stdin)["rps"]))')
for m in 0.5 2 4; do
  r=$(python3 -c "print(int($rate*$m))")
  echo "x$m ($r/s): $($load_cpu $bin bench --url http://127.0.0.1:18300 --model /tmp/scoregrid-bench-1m --connections ${CONNS:-1000} --rate $r --duration 8 --warmup 1 --timeout-ms 2000 --json | summ)"
done
echo "router RSS: $(awk '/VmRSS/ {print $2/1024 " MiB"}' /proc/$router/status), HWM $(awk '/VmHWM/ {print $2/1024 " MiB"}' /proc/$router/status)"
curl -s http://127.0.0.1:18300/metrics | grep -E "^scoregrid_router_circuit_opened|^scoregrid_http_requests_shed|^scoregrid_recommend_partial|^scoregrid_router_hedges_(total|skipped)" | head -20
kill $cl; wait $cl 2>/dev/null; rm -rf "$work"
