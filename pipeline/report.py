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
.grid{display:flex;flex-wrap:wrap;gap:10px}
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


def _gallery(rows: list[dict]) -> str:
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["sku"], row["market"]), []).append(row)
    parts = []
    for (sku, market), members in sorted(groups.items()):
        title = html.escape(members[0]["title"] or "")
        cards = "".join(_card(r) for r in sorted(members, key=lambda r: (r["gate_status"], r["variant"])))
        parts.append(f"<h3>{html.escape(sku)} · {html.escape(market)} — {title}</h3><div class=grid>{cards}</div>")
    return "".join(parts)


def write_report(path: Path, accepted: pa.Table, rejected: pa.Table, summary, validation: dict) -> Path:
    """Write `report.html` for a run (temporary name, then rename)."""
    e = html.escape
    columns = ["item_id", "sku", "market", "title", "kind", "variant", "format", "prompt", "seed",
               "attempt", "clip_score", "gate_status", "gate_reasons", "image"]
    rows = accepted.select(columns).to_pylist() + rejected.select(columns).to_pylist()
    stats = [("items", summary.items), ("accepted", summary.accepted), ("rejected", summary.rejected),
             ("bad manifest rows", summary.bad_rows), ("images/s", f"{summary.images_per_s:.2f}")]
    stat_html = "".join(f"<div class=stat><b>{e(str(v))}</b>{e(k)}</div>" for k, v in stats)
    reasons = "".join(f"<tr><td>{e(k)}</td><td>{v}</td></tr>" for k, v in sorted(summary.reasons.items()))
    checks = "".join(
        f"<tr><td>{e(str(r.get('expectation')))}</td><td>{e(str(r.get('column') or ''))}</td>"
        f"<td class={'ok' if r.get('success') else 'reason'}>{'pass' if r.get('success') else 'FAIL'}</td></tr>"
        for r in validation.get("results", [])
    )
    timings = "".join(f"<tr><td>{e(k)}</td><td>{v:.2f} s</td></tr>" for k, v in summary.timings.items())
    page = (
        f"<!doctype html><html><head><meta charset=utf-8><title>synthcat run {e(summary.run_id)}</title>"
        f"<style>{_CSS}</style></head><body><h1>synthcat run {e(summary.run_id)}</h1>"
        f"<div class=muted>run_date {e(summary.run_date)} · {e(str(summary.dataset_root))}</div>"
        f"<div class=stats>{stat_html}</div>"
        f"<h2>Rejections by reason</h2><table>{reasons or '<tr><td>none</td></tr>'}</table>"
        f"<h2>Validation (Great Expectations)</h2><table>{checks}</table>"
        f"<h2>Stage timings</h2><table>{timings}</table>"
        f"<h2>Gallery</h2>{_gallery(rows)}</body></html>"
    )
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, path)
    return path
