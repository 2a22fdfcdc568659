"""The run report's "Training dataset" section: counts per class and split, diversity, alignment."""

from __future__ import annotations

import html

import pyarrow as pa

from pipeline.training.diversity import QUANTILES, training_metrics
from pipeline.training.splits import SPLITS


def _fmt(value) -> str:
    return "–" if value is None else f"{value:.3f}"


def metrics_html(metrics: dict) -> str:
    """HTML for `training_metrics(...)`; "" when the run made no training rows."""
    if not metrics:
        return ""
    e = html.escape
    quantiles = [f"p{round(q * 100):02d}" for q in QUANTILES]
    head = ("<tr><th>label</th><th>accepted</th><th>rejected</th>"
            + "".join(f"<th>{s}</th>" for s in SPLITS)
            + "<th>SKUs</th><th>Vendi</th>" + "".join(f"<th>clip {q}</th>" for q in quantiles) + "</tr>")
    rows = []
    for label, c in metrics["classes"].items():
        rows.append(
            f"<tr><td>{e(label)}</td><td>{c['accepted']}</td><td>{c['rejected']}</td>"
            + "".join(f"<td>{c['splits'][s]}</td>" for s in SPLITS)
            + f"<td>{c['skus']}</td><td>{c['vendi']:.2f}</td>"
            + "".join(f"<td>{_fmt(c['clip_score'].get(q))}</td>" for q in quantiles) + "</tr>")
    overall = metrics["clip_score"]
    stats = [("training images", metrics["images"]), ("accepted", metrics["accepted"]),
             ("duplicate rate", f"{100 * metrics['duplicate_rate']:.1f}%"),
             ("SKUs in 2+ splits", metrics["skus_in_several_splits"])]
    stats += [(f"{s} rows", metrics["splits"][s]) for s in SPLITS]
    stat_html = "".join(f"<div class=stat><b>{e(str(v))}</b>{e(k)}</div>" for k, v in stats)
    distribution = "".join(f"<td>{_fmt(overall.get(k))}</td>" for k in ("min", *quantiles, "max", "mean"))
    return (
        "<h2 id=training>Training dataset</h2>"
        f"<div class=stats>{stat_html}</div>"
        "<h3>Per class (accepted rows; Vendi = effective number of distinct images over CLIP embeddings)</h3>"
        f"<table>{head}{''.join(rows)}</table>"
        "<h3>clip_score of accepted training rows</h3><table><tr>"
        + "".join(f"<th>{k}</th>" for k in ("min", *quantiles, "max", "mean"))
        + f"</tr><tr>{distribution}</tr></table>"
    )


def training_section(accepted: pa.Table, rejected: pa.Table) -> str:
    """The report section for a run's tables; "" when they hold no training rows."""
    return metrics_html(training_metrics(accepted, rejected))
