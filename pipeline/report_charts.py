"""Charts of the run report: histograms of the gate evidence, as inline SVG (no script, no fetch).

One card per signal — `clip_score`, `ref_similarity`, `ref_tile_l2`, `dup_similarity`
(semantic cosines; perceptual Hamming distances have another unit and are left out),
`mem_cfg_gap` — with accepted and rejected rows stacked, the gate's threshold as a dashed
line, and the median, 95th percentile and the share past the threshold (the figures
Somepalli et al. 2023 report for replication).
"""

from __future__ import annotations

import html
import math

import numpy as np
import pyarrow as pa

ACCEPTED_COLOUR, REJECTED_COLOUR = "#2f9e44", "#e03131"
W, H, LEFT, RIGHT, TOP, BOTTOM = 340, 150, 34, 12, 12, 26

# column -> (title, what it is, threshold key, the side of the threshold that fails)
SIGNALS = {
    "clip_score": ("clip_score", "cosine of image and prompt; torchmetrics CLIPScore = max(100·cos, 0)",
                   "min_clip_score", "below"),
    "ref_similarity": ("ref_similarity", "copy-descriptor cosine to the nearest reference image",
                       "max_ref_similarity", "above"),
    "ref_tile_l2": ("ref_tile_l2", "tiled pixel L2 to the closest reference (small = near-verbatim copy)",
                    "max_ref_tile_l2", "below"),
    "dup_similarity": ("dup_similarity", "semantic duplicates: CLIP cosine to the kept image",
                       "min_semantic_cosine", "above"),
    "mem_cfg_gap": ("mem_cfg_gap", "‖ε(prompt) − ε(∅)‖ at the first step (Wen et al. 2024)",
                    "max_mem_cfg_gap", "above"),
}


def _values(table: pa.Table, column: str) -> np.ndarray:
    if column not in table.column_names or table.num_rows == 0:
        return np.zeros(0)
    values = table.column(column)
    if column == "dup_similarity" and "dup_reason" in table.column_names:
        keep = [r == "semantic" for r in table.column("dup_reason").to_pylist()]
        values = values.filter(pa.array(keep))
    return np.array([v for v in values.to_pylist() if v is not None and math.isfinite(v)], dtype=float)


def _nice_range(values: np.ndarray, threshold: float | None) -> tuple[float, float, float]:
    """(lo, hi, tick step): a round step (1, 2 or 5 x 10^k) giving 4-7 ticks over the data and threshold."""
    points = np.concatenate([values, [threshold] if threshold is not None else []])
    lo, hi = float(points.min()), float(points.max())
    if hi - lo < 1e-6:
        lo, hi = lo - 0.5, hi + 0.5
    magnitude = 10 ** math.floor(math.log10((hi - lo) / 5))
    step = next(m * magnitude for m in (1, 2, 5, 10) if (hi - lo) / (m * magnitude) <= 6)
    return math.floor(lo / step) * step, math.ceil(hi / step) * step, step


def _x(value: float, lo: float, hi: float) -> float:
    return LEFT + (value - lo) / (hi - lo) * (W - LEFT - RIGHT)


def histogram_svg(accepted: np.ndarray, rejected: np.ndarray, threshold: float | None, bins: int = 24) -> str:
    """Stacked accepted/rejected histogram with axis ticks and a dashed threshold line."""
    lo, hi, step = _nice_range(np.concatenate([accepted, rejected]), threshold)
    edges = np.linspace(lo, hi, bins + 1)
    ok, bad = np.histogram(accepted, edges)[0], np.histogram(rejected, edges)[0]
    peak = max(int((ok + bad).max()), 1)
    plot_h = H - TOP - BOTTOM
    parts = [f"<line x1='{LEFT}' y1='{H - BOTTOM}' x2='{W - RIGHT}' y2='{H - BOTTOM}' class=axis />"]
    for i in range(bins):
        x0, x1 = _x(edges[i], lo, hi), _x(edges[i + 1], lo, hi)
        base = H - BOTTOM
        for count, colour, label in ((ok[i], ACCEPTED_COLOUR, "accepted"), (bad[i], REJECTED_COLOUR, "rejected")):
            if count:
                h = plot_h * count / peak
                parts.append(f"<rect x='{x0 + 0.5:.1f}' y='{base - h:.1f}' width='{max(x1 - x0 - 1, 1):.1f}' "
                             f"height='{h:.1f}' rx='1.5' fill='{colour}'><title>{label}: {count} in "
                             f"[{edges[i]:.3g}, {edges[i + 1]:.3g})</title></rect>")
                base -= h
    for k in range(int(round((hi - lo) / step)) + 1):
        tick = lo + k * step
        x = _x(tick, lo, hi)
        parts.append(f"<line x1='{x:.1f}' y1='{H - BOTTOM}' x2='{x:.1f}' y2='{H - BOTTOM + 4}' class=axis />"
                     f"<text x='{x:.1f}' y='{H - 8}' text-anchor='middle'>{round(tick, 10):g}</text>")
    parts.append(f"<text x='{LEFT - 6}' y='{TOP + 8}' text-anchor='end'>{peak}</text>"
                 f"<text x='{LEFT - 6}' y='{H - BOTTOM}' text-anchor='end'>0</text>")
    if threshold is not None:
        x = _x(threshold, lo, hi)
        # the label sits beside the line, on the side with room for it
        anchor, dx = ("end", -4) if x > W * 0.7 else ("start", 4)
        parts.append(f"<line x1='{x:.1f}' y1='{TOP - 4}' x2='{x:.1f}' y2='{H - BOTTOM}' class=threshold />"
                     f"<text x='{x + dx:.1f}' y='{TOP + 4}' text-anchor='{anchor}' class=threshold-label>"
                     f"gate {threshold:.3g}</text>")
    return (f"<svg viewBox='0 0 {W} {H}' role='img' class=hist>"
            f"{''.join(parts)}</svg>")


def _card(column: str, accepted: pa.Table, rejected: pa.Table, thresholds: dict) -> str:
    title, what, key, side = SIGNALS[column]
    ok, bad = _values(accepted, column), _values(rejected, column)
    threshold = thresholds.get(key)
    head = f"<h3>{html.escape(title)}</h3><div class=muted>{html.escape(what)}</div>"
    both = np.concatenate([ok, bad])
    if both.size == 0:
        return f"<div class='chart empty'>{head}<p class=muted>not measured in this run</p></div>"
    stats = [f"n {both.size}", f"median {np.median(both):.3g}", f"p95 {np.percentile(both, 95):.3g}"]
    if threshold is not None:
        past = (both < threshold) if side == "below" else (both >= threshold)
        stats.append(f"{'below' if side == 'below' else 'at or above'} {threshold:.3g}: {past.mean():.1%}")
    if column == "clip_score":
        stats.append(f"CLIPScore median {max(100 * float(np.median(both)), 0):.1f}")
    return (f"<div class=chart>{head}{histogram_svg(ok, bad, threshold)}"
            f"<div class=chart-stats>{' · '.join(html.escape(s) for s in stats)}</div></div>")


CHART_CSS = """
.charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(360px,1fr));gap:14px;align-items:start}
.chart{background:#fff;border-radius:10px;padding:12px 14px;box-shadow:0 1px 3px #0002}
.chart h3{margin:0;font-size:14px;font-family:ui-monospace,monospace} .chart .muted{font-size:12px;margin:2px 0 6px}
.chart.empty{opacity:.7} .chart-stats{font-size:12px;color:#3b4252;margin-top:4px}
.hist{width:100%;height:auto;display:block} .hist text{font-size:10px;fill:#5c6578} .hist .axis{stroke:#9aa3b2;stroke-width:1}
.hist .threshold{stroke:#1d2433;stroke-width:1.5;stroke-dasharray:4 3} .hist .threshold-label{fill:#1d2433;font-weight:600}
.legend{font-size:12px;margin:0 0 10px} .legend span{display:inline-block;width:10px;height:10px;border-radius:2px;
margin:0 4px 0 12px;vertical-align:-1px}
"""


def gate_charts(accepted: pa.Table, rejected: pa.Table, thresholds: dict | None = None) -> str:
    """The report section: a legend and one histogram card per gate signal."""
    cards = "".join(_card(c, accepted, rejected, thresholds or {}) for c in SIGNALS)
    legend = (f"<div class=legend><span style='background:{ACCEPTED_COLOUR}'></span>accepted"
              f"<span style='background:{REJECTED_COLOUR}'></span>rejected"
              "<span style='background:none;border-top:2px dashed #1d2433;height:0'></span>gate threshold</div>")
    return f"{legend}<div class=charts>{cards}</div>"
