"""The run report: one self-contained HTML page (thumbnails inlined) to look at a run's images.

Every piece of user text (titles, prompts, reasons) is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import io
import os
from pathlib import Path

import pyarrow as pa

THUMB = 160

_CSS = """
body{font-family:system-ui,sans-serif;margin:24px;background:#f6f7f9;color:#1d2433}
h1{margin:0 0 4px} .muted{color:#5c6578} .stats{display:flex;gap:12px;flex-wrap:wrap;margin:16px 0}
.stat{background:#fff;border-radius:8px;padding:10px 16px;box-shadow:0 1px 2px #0001}
.stat b{display:block;font-size:22px} h2{margin-top:28px} h3{margin:18px 0 6px;font-size:15px}
.grid{display:flex;flex-wrap:wrap;gap:10px} .groups{display:flex;flex-wrap:wrap;gap:14px 22px}
.group h3{margin:6px 0 0} .group .muted{font-size:12px;margin-bottom:6px;max-width:380px}
.card{background:#fff;border-radius:8px;width:180px;padding:8px;box-shadow:0 1px 2px #0002;font-size:11px}
.card img{width:160px;height:160px;object-fit:contain;background:#eee;border-radius:4px;image-rendering:pixelated}
.card.rejected{outline:2px solid #d9534f} .reason{color:#b52b27} .ok{color:#23813a}
table{border-collapse:collapse;background:#fff} td,th{padding:4px 10px;border-bottom:1px solid #e3e6ea;text-align:left}
"""


def _thumbnail(image: dict) -> str:
    from PIL import Image

    with Image.open(io.BytesIO(image["bytes"])) as im:
        im.thumbnail((THUMB, THUMB))
        buffer = io.BytesIO()
        im.convert("RGB").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _card(row: dict) -> str:
    e = html.escape
    reasons = "".join(f"<div class=reason>{e(r)}</div>" for r in row["gate_reasons"] or [])
    status = row["gate_status"]
    return (
        f"<div class='card {e(status)}'><img alt='{e(row['item_id'])}' src='{_thumbnail(row['image'])}'>"
        f"<div><b>{e(row['kind'])} · v{row['variant']} · {e(row['format'])}</b></div>"
        f"<div class=muted>{e(row['prompt'])}</div>"
        f"<div>seed {row['seed']} · attempt {row['attempt']}</div>"
        f"<div>clip_score {row['clip_score']:.3f}</div>"
        f"<div class={'ok' if status == 'accepted' else 'reason'}>{e(status)}</div>{reasons}</div>"
    )


def _histogram(values_by_label: dict[str, list[float]], lo: float, hi: float, bins: int = 24) -> str:
    """An inline SVG histogram, one colour per label (accepted / rejected)."""
    colours = {"accepted": "#2f9e44", "rejected": "#d9534f"}
    width, height, pad = 520, 140, 20
    counts = {}
    for label, values in values_by_label.items():
        row = [0] * bins
        for v in values:
            if v is not None:
                row[min(bins - 1, max(0, int((v - lo) / (hi - lo) * bins)))] += 1
        counts[label] = row
    peak = max([max(r) for r in counts.values()] + [1])
    bar = (width - 2 * pad) / bins
    rects = []
    for k, (label, row) in enumerate(counts.items()):
        for i, c in enumerate(row):
            if c:
                h = (height - 2 * pad) * c / peak
                x = pad + i * bar + k * bar / len(counts)
                rects.append(f"<rect x='{x:.1f}' y='{height - pad - h:.1f}' width='{bar / len(counts) - 1:.1f}' "
                             f"height='{h:.1f}' fill='{colours.get(label, '#888')}'><title>{html.escape(label)}: {c}"
                             f"</title></rect>")
    axis = (f"<text x='{pad}' y='{height - 4}' font-size='10'>{lo:g}</text>"
            f"<text x='{width - pad - 20}' y='{height - 4}' font-size='10'>{hi:g}</text>")
    legend = " ".join(f"<span style='color:{colours.get(k, '#888')}'>■ {html.escape(k)}</span>" for k in counts)
    return (f"<svg width='{width}' height='{height}' style='background:#fff;border-radius:8px'>"
            f"{''.join(rects)}{axis}</svg><div class=muted>{legend}</div>")


def _duplicate_groups(rows: list[dict]) -> str:
    groups: dict[str, list[dict]] = {}
    for row in rows:
        if row["dup_group"]:
            groups.setdefault(row["dup_group"], []).append(row)
    parts = [f"<div class=grid>{''.join(_card(r) for r in sorted(m, key=lambda r: r['gate_status']))}</div>"
             for m in groups.values() if len(m) > 1]
    return "".join(parts) or "<p class=muted>none within this run</p>"


def _gallery(rows: list[dict]) -> str:
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["sku"], row["market"]), []).append(row)
    parts = []
    for (sku, market), members in sorted(groups.items()):
        title = html.escape(members[0]["title"] or "")
        cards = "".join(_card(r) for r in sorted(members, key=lambda r: (r["gate_status"], r["variant"])))
        parts.append(f"<div class=group><h3>{html.escape(sku)} · {html.escape(market)}</h3>"
                     f"<div class=muted>{title}</div><div class=grid>{cards}</div></div>")
    return f"<div class=groups>{''.join(parts)}</div>"


def write_report(path: Path, accepted: pa.Table, rejected: pa.Table, summary, validation: dict) -> Path:
    """Write `report.html` for a run (temporary name, then rename)."""
    e = html.escape
    columns = ["item_id", "sku", "market", "title", "kind", "variant", "format", "prompt", "seed",
               "attempt", "clip_score", "dup_group", "gate_status", "gate_reasons", "image"]
    rows = accepted.select(columns).to_pylist() + rejected.select(columns).to_pylist()
    stats = [("items", summary.items), ("accepted", summary.accepted), ("rejected", summary.rejected),
             ("regenerated", summary.regenerated), ("bad manifest rows", summary.bad_rows),
             ("images/s", f"{summary.images_per_s:.2f}")]
    scores = {"accepted": accepted.column("clip_score").to_pylist(),
              "rejected": rejected.column("clip_score").to_pylist()}
    stat_html = "".join(f"<div class=stat><b>{e(str(v))}</b>{e(k)}</div>" for k, v in stats)
    reasons = "".join(f"<tr><td>{e(k)}</td><td>{v}</td></tr>" for k, v in sorted(summary.reasons.items()))
    checks = "".join(
        f"<tr><td>{e(str(r.get('expectation')))}</td><td>{e(str(r.get('column') or ''))}</td>"
        f"<td class={'ok' if r.get('success') else 'reason'}>{'pass' if r.get('success') else 'FAIL'}</td></tr>"
        for r in validation.get("results", [])
    )
    total = len(validation.get("results", []))
    passed = sum(1 for r in validation.get("results", []) if r.get("success"))
    timings = "".join(f"<tr><td>{e(k)}</td><td>{v:.2f} s</td></tr>" for k, v in summary.timings.items())
    page = (
        f"<!doctype html><html><head><meta charset=utf-8><title>synthcat run {e(summary.run_id)}</title>"
        f"<style>{_CSS}</style></head><body><h1>synthcat run {e(summary.run_id)}</h1>"
        f"<div class=muted>run_date {e(summary.run_date)} · {e(str(summary.dataset_root))}</div>"
        f"<div class=stats>{stat_html}</div>"
        f"<h2>Gallery</h2>{_gallery(rows)}"
        f"<h2>clip_score</h2>{_histogram(scores, -1.0, 1.0)}"
        f"<h2>Duplicate groups</h2>{_duplicate_groups(rows)}"
        f"<h2>Rejections by reason</h2><table>{reasons or '<tr><td>none</td></tr>'}</table>"
        f"<h2>Validation (Great Expectations)</h2><details><summary>{passed} of {total} expectations "
        f"passed</summary><table>{checks}</table></details>"
        f"<h2>Stage timings</h2><table>{timings}</table>"
        "</body></html>"
    )
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, path)
    return path


def report_from_run_dir(run_dir: Path, target: Path | None = None) -> Path:
    """Rebuild `report.html` of a published run from its manifest and its files."""
    import json

    import pyarrow.parquet as pq

    from pipeline.errors import BadInputError
    from pipeline.run import RunSummary
    from pipeline.schema import OUTPUT_SCHEMA

    manifest_path = Path(run_dir) / "manifest.json"
    if not manifest_path.is_file():
        raise BadInputError(f"{run_dir}: no manifest.json (not a published run folder)")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    root = manifest_path.parent.parent.parent
    tables = {"data": [], "rejects": []}
    for record in manifest["files"]:
        path = root / record["path"]
        if not path.is_file():
            raise BadInputError(f"{run_dir}: {record['path']} is gone (a later run replaced that run_date)")
        tables[record["path"].split("/", 1)[0]].append(pq.read_table(path).select(OUTPUT_SCHEMA.names))
    accepted, rejected = (pa.concat_tables(t) if t else OUTPUT_SCHEMA.empty_table() for t in tables.values())
    summary = RunSummary(
        run_id=manifest["run_id"], run_date=manifest["run_date"], dataset_root=root, items=manifest["items"],
        generated=manifest["items"], resumed_shards=0, accepted=accepted.num_rows, rejected=rejected.num_rows,
        reasons=manifest["reasons"], bad_rows=manifest["input"]["bad_rows"],
        images_per_s=manifest.get("images_per_s", 0.0), seconds=0.0, manifest_path=manifest_path,
        report_path=target or manifest_path.with_name("report.html"), timings=manifest.get("timings_s", {}),
        regenerated=manifest.get("regenerated", 0),
    )
    return write_report(summary.report_path, accepted, rejected, summary, manifest["validation"])
