#!/usr/bin/env python3
"""Draws what scripts/bench-overload.sh measured as one SVG with two panels, against the offered
load (as a multiple of the capacity each series measured): answers 200 per second, and the p99
of those answers (log scale). One line per label ("before", "after", ...). Standard library only.

Usage: scripts/plot-overload.py RESULTS.jsonl OUT.svg
"""
import json
import math
import sys

WIDTH, HEIGHT = 920, 380
PANEL_W, PANEL_H = 360, 260
MARGIN_LEFT, MARGIN_TOP = 80, 50
GAP = 100
COLOURS = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e"]


def load(path):
    """Steps per label, in file order: [(multiplier, answers_200_per_s, p99_ms)], capacity first."""
    series = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            row = json.loads(line)
            if "report" not in row:
                continue
            report = row["report"]
            series.setdefault(row["label"], []).append(
                (row["multiplier"], report["ok_rps"], report["ok_latency_us"]["p99"] / 1000.0)
            )
    return series


def nice_ticks(high, count=5):
    step = 10 ** math.floor(math.log10(max(high, 1e-9) / count))
    for factor in (1, 2, 5, 10):
        if high / (step * factor) <= count:
            step *= factor
            break
    return [step * i for i in range(int(high / step) + 2)]


def panel(x0, title, points_by_label, y_label, log_y):
    """SVG elements of one panel; points_by_label: {label: [(x, y)]}."""
    xs = [x for points in points_by_label.values() for x, _ in points]
    ys = [y for points in points_by_label.values() for _, y in points if y > 0]
    x_high = max(xs + [1.0])
    if log_y:
        y_low = 10 ** math.floor(math.log10(min(ys + [1.0])))
        y_high = 10 ** math.ceil(math.log10(max(ys + [10.0])))
        y_ticks = []
        tick = y_low
        while tick <= y_high * 1.0001:
            y_ticks.append(tick)
            tick *= 10

        def to_y(y):
            y = max(y, y_low)
            return MARGIN_TOP + PANEL_H * (1 - (math.log10(y) - math.log10(y_low)) / (math.log10(y_high) - math.log10(y_low)))
    else:
        y_ticks = nice_ticks(max(ys + [1.0]) * 1.05)
        y_high = y_ticks[-1]

        def to_y(y):
            return MARGIN_TOP + PANEL_H * (1 - y / y_high)

    x_ticks = [0.5 * i for i in range(int(x_high / 0.5) + 1)]
    x_max = x_ticks[-1]

    def to_x(x):
        return x0 + PANEL_W * x / x_max

    out = [f'<text x="{x0 + PANEL_W / 2}" y="{MARGIN_TOP - 20}" text-anchor="middle" font-weight="bold">{title}</text>']
    out.append(f'<rect x="{x0}" y="{MARGIN_TOP}" width="{PANEL_W}" height="{PANEL_H}" fill="none" stroke="#333"/>')
    for tick in y_ticks:
        y = to_y(tick)
        label = f"{tick:g}"
        out.append(f'<line x1="{x0}" x2="{x0 + PANEL_W}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{x0 - 6}" y="{y + 4:.1f}" text-anchor="end">{label}</text>')
    for tick in x_ticks:
        x = to_x(tick)
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{MARGIN_TOP}" y2="{MARGIN_TOP + PANEL_H}" stroke="#eee"/>')
        out.append(f'<text x="{x:.1f}" y="{MARGIN_TOP + PANEL_H + 16}" text-anchor="middle">{tick:g}x</text>')
    out.append(f'<text x="{x0 + PANEL_W / 2}" y="{MARGIN_TOP + PANEL_H + 36}" text-anchor="middle">offered load (multiple of capacity)</text>')
    out.append(f'<text transform="translate({x0 - 52},{MARGIN_TOP + PANEL_H / 2}) rotate(-90)" text-anchor="middle">{y_label}</text>')
    for index, (label, points) in enumerate(points_by_label.items()):
        colour = COLOURS[index % len(COLOURS)]
        path = " ".join(f"{to_x(x):.1f},{to_y(y):.1f}" for x, y in points)
        out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for x, y in points:
            out.append(f'<circle cx="{to_x(x):.1f}" cy="{to_y(y):.1f}" r="3.5" fill="{colour}"/>')
    return out


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    series = load(sys.argv[1])
    if not series:
        sys.exit(f"{sys.argv[1]}: no step rows (run scripts/bench-overload.sh first)")
    # Multiplier 0 is the closed-loop capacity run: a reference line, not an open-loop step.
    steps = {label: [s for s in rows if s[0] > 0] for label, rows in series.items()}
    throughput = {label: [(m, rps) for m, rps, _ in rows] for label, rows in steps.items()}
    p99 = {label: [(m, ms) for m, _, ms in rows] for label, rows in steps.items()}
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT + 20}" font-family="sans-serif" font-size="12">',
           f'<rect width="{WIDTH}" height="{HEIGHT + 20}" fill="white"/>']
    svg += panel(MARGIN_LEFT, "answers 200 per second", throughput, "req/s", False)
    svg += panel(MARGIN_LEFT + PANEL_W + GAP, "p99 of the answers 200 (ms, log)", p99, "ms", True)
    for index, (label, rows) in enumerate(series.items()):
        capacity = next((rps for m, rps, _ in rows if m == 0), None)
        colour = COLOURS[index % len(COLOURS)]
        text = f"{label}" + (f" (capacity {capacity:,.0f} req/s)" if capacity else "")
        y = HEIGHT - 4 + 0 * index
        x = MARGIN_LEFT + index * 300
        svg.append(f'<rect x="{x}" y="{y - 10}" width="14" height="4" fill="{colour}"/>')
        svg.append(f'<text x="{x + 20}" y="{y - 4}">{text}</text>')
    svg.append("</svg>")
    with open(sys.argv[2], "w") as f:
        f.write("\n".join(svg) + "\n")


if __name__ == "__main__":
    main()
