#!/usr/bin/env bash
# Runs `scoregrid chaos run` once per seed and prints one Markdown row per run (the table of
# CHAOS.md "Results"): faults, reads, violations, availability overall and under the faults
# that take a replica or a link away, delay a link, or move data (loads, removals), the loads
# during the faults by outcome, and the time to converge after the final heal.
# Usage (root): [NODES=4] scripts/chaos-runs.sh [BIN] [DURATION] SEED...
set -euo pipefail
bin=${1:-target/release/scoregrid}
duration=${2:-300s}
shift 2 || true
root=${CHAOS_OUT:-/tmp/scoregrid-chaos-runs}
nodes=${NODES:-4}
mkdir -p "$root"
echo "| seed | faults | reads | violations | answered 200 | complete | kill | pause | partition-router | loss | delay | membership | load | loads: ok / refused / unknown | converged after heal |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
for seed in "$@"; do
    out="$root/$seed"
    rm -rf "$out"
    "$bin" chaos run --nodes "$nodes" --duration "$duration" --seed "$seed" --out "$out" >"$out.log" 2>&1 || true
    python3 - "$out/report.json" "$seed" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
def pct(a, complete=False):
    if not a or a["requests"] == 0:
        return "-"
    ok = a["full"] + a["stale"] + (0 if complete else a["partial"])
    return "%.2f%%" % (100.0 * ok / a["requests"])
f = r["by_fault"]
conv = r.get("converge_ms")
loads = r.get("loads", {})
print("| %s | %d | %d | %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %d / %d / %d | %s |" % (
    sys.argv[2], r["faults"], r["requests"], len(r["violations"]),
    pct(r["availability"]), pct(r["availability"], True),
    pct(f.get("kill")), pct(f.get("pause")), pct(f.get("partition-router")), pct(f.get("loss")),
    pct(f.get("delay")),
    pct(f.get("membership")), pct(f.get("load")),
    loads.get("acknowledged", 0), loads.get("refused", 0), loads.get("unknown", 0),
    "%.1f s" % (conv / 1000) if conv is not None else "no"))
PY
    # Keep the report and logs; the history is large (about 1 MB per second of run).
    rm -f "$out/history.jsonl"
done
