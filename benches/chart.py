#!/usr/bin/env python3
"""Draws docs/memory.svg from the results of `cargo bench`.

The chart shows server RSS per idle connection at 1,000 / 5,000 / 10,000
connections for a thread per connection, the hand-written tokio loops and
switchboard: the median of the rounds as a bar, min and max as a whisker.

    python3 benches/chart.py [RESULTS_JSON [OUTPUT_SVG]]

RESULTS_JSON defaults to $CARGO_TARGET_DIR/bench/results.json, else
target/bench/results.json; OUTPUT_SVG to docs/memory.svg. Plain python3,
no third-party packages.
"""

import json
import os
import sys
import time
from xml.sax.saxutils import escape

# (server in results.json, legend label, colour), in the order drawn.
SERIES = [
    ("thread-echo", "thread per connection (std, 8 KiB stack buffer)", "#9e9e9e"),
    ("tokio-echo", "hand-written tokio loop (8 KiB buffer in the future)", "#e08a3c"),
    ("lean-echo", "lean tokio loop (buffer allocated once readable)", "#5b8fd6"),
    ("switchboard-echo", "switchboard echo example", "#2e9e5b"),
]
SCENARIO, METRIC = "idle-memory", "RSS/conn"

WIDTH, HEIGHT = 760, 440
LEFT, RIGHT, TOP, BOTTOM = 70, 20, 60, 110


def default_input():
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "target"
    )
    return os.path.join(target, "bench", "results.json")


def default_output():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return os.path.join(root, "docs", "memory.svg")


def load(path):
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    rows = {}
    for r in data.get("results", []):
        if r.get("scenario") == SCENARIO and r.get("metric") == METRIC:
            if r.get("median") is not None:
                rows[(r["server"], r["param"])] = (r["median"], r["min"], r["max"])
    return data.get("meta", {}), rows


def nice_step(top):
    """A tick step of 1, 2 or 5 times a power of ten giving at most 8 ticks."""
    step = 1.0
    while top / step > 8:
        for mult in (2, 2.5, 2):
            step *= mult
            if top / step <= 8:
                break
    return step


def kib_label(kib):
    return f"{kib:g} KiB" if kib else "0"


def draw(meta, rows):
    counts = sorted({param for (_, param) in rows})
    series = [s for s in SERIES if any((s[0], n) in rows for n in counts)]
    if not counts or not series:
        raise SystemExit("no idle-memory results to draw: run `cargo bench` first")
    # Ticks in KiB at round numbers; values stay in bytes.
    top_kib = max(v[2] for v in rows.values()) * 1.1 / 1024
    step_kib = nice_step(top_kib)
    top_kib = step_kib * (int(top_kib / step_kib) + 1)
    top, step = top_kib * 1024, step_kib * 1024
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def y(v):
        return TOP + plot_h * (1 - v / top)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">',
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
        f'<text x="{WIDTH / 2}" y="24" text-anchor="middle" font-size="16" font-weight="bold">'
        "Server memory (RSS) per idle connection</text>",
        f'<text x="{WIDTH / 2}" y="42" text-anchor="middle" fill="#555">'
        "each connection did one 64-byte echo round trip, then waits; lower is better "
        "(a thread also has a kernel stack, not in RSS)</text>",
    ]
    # Grid and y axis.
    tick = 0.0
    while tick <= top + 1e-9:
        ty = y(tick)
        out.append(f'<line x1="{LEFT}" y1="{ty:.1f}" x2="{WIDTH - RIGHT}" y2="{ty:.1f}" stroke="#e4e4e4"/>')
        out.append(f'<text x="{LEFT - 6}" y="{ty + 4:.1f}" text-anchor="end">{kib_label(tick / 1024)}</text>')
        tick += step
    out.append(f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{TOP + plot_h}" stroke="#333"/>')
    out.append(f'<line x1="{LEFT}" y1="{TOP + plot_h}" x2="{WIDTH - RIGHT}" y2="{TOP + plot_h}" stroke="#333"/>')
    # Bars.
    group_w = plot_w / len(counts)
    bar_w = group_w * 0.8 / len(series)
    for gi, n in enumerate(counts):
        gx = LEFT + gi * group_w + group_w * 0.1
        for si, (server, _, colour) in enumerate(series):
            if (server, n) not in rows:
                continue
            med, lo, hi = rows[(server, n)]
            x = gx + si * bar_w
            out.append(
                f'<rect x="{x + 2:.1f}" y="{y(med):.1f}" width="{bar_w - 4:.1f}" '
                f'height="{max(y(0) - y(med), 0.5):.1f}" fill="{colour}">'
                f"<title>{escape(server)} at {n}: median {med:.0f} B (min {lo:.0f}, max {hi:.0f})</title></rect>"
            )
            cx = x + bar_w / 2
            out.append(f'<line x1="{cx:.1f}" y1="{y(hi):.1f}" x2="{cx:.1f}" y2="{y(lo):.1f}" stroke="#222"/>')
            out.append(
                f'<text x="{cx:.1f}" y="{y(hi) - 4:.1f}" text-anchor="middle" font-size="10">'
                f"{med:,.0f}</text>"
            )
        out.append(
            f'<text x="{LEFT + gi * group_w + group_w / 2:.1f}" y="{TOP + plot_h + 18}" '
            f'text-anchor="middle">{n:,} connections</text>'
        )
    # Legend.
    ly = TOP + plot_h + 40
    for i, (_, label, colour) in enumerate(series):
        lx = LEFT + (i % 2) * (plot_w / 2)
        row_y = ly + (i // 2) * 20
        out.append(f'<rect x="{lx:.1f}" y="{row_y - 10}" width="12" height="12" fill="{colour}"/>')
        out.append(f'<text x="{lx + 18:.1f}" y="{row_y}">{escape(label)}</text>')
    # Provenance.
    when = meta.get("unix_time")
    when = time.strftime("%Y-%m-%d", time.gmtime(int(when))) if when and when.isdigit() else "?"
    note = (
        f"cargo bench, {when}: bytes per connection, median of {meta.get('rounds', '?')} rounds "
        f"(whiskers: min-max); {meta.get('cpus', '?')} CPUs, {meta.get('cpu', '')}"
    )
    out.append(
        f'<text x="{LEFT}" y="{HEIGHT - 12}" font-size="10" fill="#555">{escape(note)}</text>'
    )
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main(argv):
    src = argv[1] if len(argv) > 1 else default_input()
    dst = argv[2] if len(argv) > 2 else default_output()
    meta, rows = load(src)
    svg = draw(meta, rows)
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    with open(dst, "w", encoding="utf-8") as f:
        f.write(svg)
    print(f"wrote {dst} from {src}")


if __name__ == "__main__":
    main(sys.argv)
