"""The run report: one self-contained HTML page (thumbnails inlined) to look at a run's images.

Every piece of user text (titles, prompts, reasons) is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.fsops import replacing
from pipeline.report_charts import CHART_CSS, gate_charts
from pipeline.thumbnail import THUMB, report_thumbnail, thumbnail_mime, thumbnail_side
from pipeline.training.report import training_section

# Cards the gallery and the duplicate groups show, each, per status: a page of more is slow to
# write and to open. A larger run shows this many rows evenly spaced (charts count every row).
MAX_CARDS = 1000

# timing keys that are not steps of their own
TIMING_LABELS = {"generate_first_batch": "generate: until the first batch was written (start-up; part of generate)"}

_CSS = """
body{font-family:system-ui,sans-serif;margin:24px;background:#f6f7f9;color:#1d2433;overflow-wrap:anywhere}
h1{margin:0 0 4px} .muted{color:#5c6578} .stats{display:flex;gap:12px;flex-wrap:wrap;margin:16px 0}
.stat{background:#fff;border-radius:8px;padding:10px 16px;box-shadow:0 1px 2px #0001}
.stat b{display:block;font-size:22px} h2{margin-top:28px} h3{margin:18px 0 6px;font-size:15px}
.grid{display:flex;flex-wrap:wrap;gap:10px} .groups{display:flex;flex-wrap:wrap;gap:14px 22px}
.group h3{margin:6px 0 0} .group .muted{font-size:12px;margin-bottom:6px;max-width:380px}
.card{background:#fff;border-radius:8px;width:180px;padding:8px;box-shadow:0 1px 2px #0002;font-size:11px}
.card img{width:160px;height:160px;object-fit:contain;background:#eee;border-radius:4px;image-rendering:pixelated}
.card.wide{width:340px} .copy{font-size:13px;margin:4px 0}
.card.rejected{outline:2px solid #d9534f} .reason{color:#b52b27} .ok{color:#23813a}
table{border-collapse:collapse;background:#fff} td,th{padding:4px 10px;border-bottom:1px solid #e3e6ea;text-align:left}
"""


def _thumbnail(image: dict, side: int = THUMB) -> bytes:
    from PIL import Image

    with Image.open(io.BytesIO(image["bytes"])) as im:
        return report_thumbnail(im, side)


def _attach_thumbnails(rows: list[dict], stored: dict[tuple[str, int], bytes] | None = None) -> None:
    """Every row's thumbnail, image bytes (`row["thumbnail"]`): the one the encode stage stored,
    keyed by (item_id, attempt), or else made here from the image, on every core (PIL releases
    the GIL while it decodes, resizes and encodes)."""
    from concurrent.futures import ThreadPoolExecutor

    stored = stored or {}
    missing = [row for row in rows if stored.get((row["item_id"], row["attempt"])) is None]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        made = dict(zip(map(id, missing), pool.map(
            _thumbnail, [row.get("image") for row in missing],
            [thumbnail_side(bool(row.get("overlay_text"))) for row in missing])))
    for row in rows:
        row["thumbnail"] = made.get(id(row)) or stored[(row["item_id"], row["attempt"])]


def _campaign(row: dict) -> str:
    """Campaign rows: the copy drawn (dir=auto: Arabic reads right to left), its font and checks."""
    if not row.get("overlay_text") and row.get("product_diff") is None and row.get("palette_distance") is None:
        return ""
    e = html.escape
    parts = []
    if row.get("overlay_text"):
        text = "<br>".join(e(line) for line in row["overlay_text"].split("\n"))
        parts.append(f"<div class=copy dir=auto lang='{e(row['market'] or '')}'>{text}</div>"
                     f"<div class=muted>{e(row['overlay_font'] or '')} · contrast {row['overlay_contrast']:.2f}</div>")
    if row.get("product_diff") is not None:
        parts.append(f"<div>product pixels changed {row['product_diff'] * 100:.2f}%</div>")
    if row.get("palette_distance") is not None:
        parts.append(f"<div>palette ΔE2000 {row['palette_distance']:.1f}</div>")
    return "".join(parts)


def _card(row: dict) -> str:
    e = html.escape
    reasons = "".join(f"<div class=reason>{e(r)}</div>" for r in row["gate_reasons"] or [])
    status = row["gate_status"]
    wide = bool(row.get("overlay_text"))  # creative with copy: big enough to read it
    side = thumbnail_side(wide)
    thumbnail = base64.b64encode(row["thumbnail"]).decode()  # inlined: the page is self-contained
    mime = thumbnail_mime(row["thumbnail"])
    return (
        f"<div class='card {e(status)}{' wide' if wide else ''}'><img alt='{e(row['item_id'])}' "
        f"style='width:{side}px;height:{side}px' src='data:{mime};base64,{thumbnail}'>"
        f"<div><b>{e(row['kind'])} · v{row['variant']} · {e(row['format'])}</b></div>"
        f"{_campaign(row)}<div class=muted>{e(row['prompt'])}</div>"
        f"<div>seed {row['seed']} · attempt {row['attempt']}</div>"
        f"<div>clip_score {row['clip_score']:.3f}</div>"
        f"<div class={'ok' if status == 'accepted' else 'reason'}>{e(status)}</div>{reasons}</div>"
    )


def _duplicate_groups(rows: list[dict]) -> Iterator[str]:
    """The duplicate groups' HTML, a card at a time (the page is written as it is made)."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        if row["dup_group"]:
            groups.setdefault(row["dup_group"], []).append(row)
    shown = [members for members in groups.values() if len(members) > 1]
    if not shown:
        yield "<p class=muted>none within this run</p>"
    for members in shown:
        yield "<div class=grid>"
        yield from (_card(r) for r in sorted(members, key=lambda r: r["gate_status"]))
        yield "</div>"


def _gallery(rows: list[dict]) -> Iterator[str]:
    """The gallery's HTML by SKU and market, a card at a time."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["sku"], row["market"]), []).append(row)
    yield "<div class=groups>"
    for (sku, market), members in sorted(groups.items()):
        yield (f"<div class=group><h3>{html.escape(sku)} · {html.escape(market)}</h3>"
               f"<div class=muted>{html.escape(members[0]['title'] or '')}</div><div class=grid>")
        yield from (_card(r) for r in sorted(members, key=lambda r: (r["gate_status"], r["variant"])))
        yield "</div></div>"
    yield "</div>"


def _cost_stats(cost: dict | None) -> list[tuple[str, str]]:
    """Device-seconds per accepted image and the price of 1,000 accepted images (pipeline/cost.py)."""
    from pipeline.cost import price

    if not cost or cost.get("device_s_per_accepted") is None:
        return []
    unit = "GPU-s" if cost["device"] == "gpu" else "CPU core-s"
    return [(f"{unit} / accepted image", f"{cost['device_s_per_accepted']:.3g}"),
            (f"USD / 1,000 accepted (at {price(cost['hour_usd'])}/h)", f"{cost['usd_per_1000_accepted']:.4g}")]


def _spread(table: pa.Table, limit: int) -> pa.Table:
    """At most `limit` rows of `table`, evenly spaced in its order (the gate's: SKU, market, ...)."""
    if table.num_rows <= limit:
        return table
    return table.take(pa.array([i * table.num_rows // limit for i in range(limit)], pa.int64()))


def write_report(path: Path, accepted: pa.Table, rejected: pa.Table, summary, validation: dict,
                 thresholds: dict | None = None, thumbnails=None, max_cards: int = MAX_CARDS) -> Path:
    """Write `report.html` for a run (temporary name, then rename).

    `thresholds`: the gate thresholds the run used (min_clip_score, max_ref_similarity, ...),
    drawn on the histograms. `thumbnails`: thumbnails (image bytes) by (item_id, attempt), as the encode
    stage stored them, or a function of the shown rows' keys giving them (`ShardStore.thumbnails`);
    rows without one get theirs made here. The gallery and the duplicate groups show at most
    `max_cards` rows of each status."""
    e = html.escape
    columns = ["item_id", "sku", "market", "title", "kind", "variant", "format", "prompt", "seed",
               "attempt", "clip_score", "dup_group", "gate_status", "gate_reasons", "image",
               "overlay_text", "overlay_font", "overlay_contrast", "product_diff", "palette_distance"]
    columns = [c for c in columns if c != "image" or c in accepted.column_names]  # gated rows leave it out

    def shown(table: pa.Table, duplicates: bool) -> list[dict]:
        if duplicates:
            table = table.filter(pc.is_valid(table.column("dup_group")))
        return _spread(table, max_cards).select(columns).to_pylist()

    rows = shown(accepted, False) + shown(rejected, False)
    duplicate_rows = shown(accepted, True) + shown(rejected, True)
    if callable(thumbnails):
        thumbnails = thumbnails({(row["item_id"], row["attempt"]) for row in rows + duplicate_rows})
    _attach_thumbnails(rows + duplicate_rows, thumbnails)
    capped = accepted.num_rows > max_cards or rejected.num_rows > max_cards
    gallery_note = (f"<p class=muted>{min(accepted.num_rows, max_cards):,} of {accepted.num_rows:,} accepted and "
                    f"{min(rejected.num_rows, max_cards):,} of {rejected.num_rows:,} rejected images, evenly "
                    "spaced in SKU order</p>" if capped else "")
    stats = [("items", summary.items), ("accepted", summary.accepted), ("rejected", summary.rejected),
             ("regenerated", summary.regenerated), ("bad manifest rows", summary.bad_rows),
             ("images/s", f"{summary.images_per_s:.2f}")] + _cost_stats(getattr(summary, "cost", None))
    stat_html = "".join(f"<div class=stat><b>{e(str(v))}</b>{e(k)}</div>" for k, v in stats)
    reasons = "".join(f"<tr><td>{e(k)}</td><td>{v}</td></tr>" for k, v in sorted(summary.reasons.items()))
    checks = "".join(
        f"<tr><td>{e(str(r.get('expectation')))}</td><td>{e(str(r.get('column') or ''))}</td>"
        f"<td class={'ok' if r.get('success') else 'reason'}>{'pass' if r.get('success') else 'FAIL'}</td></tr>"
        for r in validation.get("results", [])
    )
    total = len(validation.get("results", []))
    passed = sum(1 for r in validation.get("results", []) if r.get("success"))
    timings = "".join(f"<tr><td>{e(TIMING_LABELS.get(k, k))}</td><td>{v:.2f} s</td></tr>"
                      for k, v in summary.timings.items())
    page = [  # written piece by piece: the gallery's cards (thumbnails inlined) are most of the page
        f"<!doctype html><html><head><meta charset=utf-8><title>synthcat run {e(summary.run_id)}</title>"
        f"<style>{_CSS}{CHART_CSS}</style></head><body><h1>synthcat run {e(summary.run_id)}</h1>"
        # the dataset by its name: the report is published with it, not the producing machine's path
        f"<div class=muted>run_date {e(summary.run_date)} · dataset {e(summary.dataset_root.name)}</div>"
        f"<div class=stats>{stat_html}</div>"
        f"<h2>Scores and similarities</h2>{gate_charts(accepted, rejected, thresholds)}"
        f"{training_section(accepted, rejected)}"
        f"<h2>Gallery</h2>{gallery_note}", _gallery(rows),
        "<h2>Duplicate groups</h2>", _duplicate_groups(duplicate_rows),
        f"<h2>Rejections by reason</h2><table>{reasons or '<tr><td>none</td></tr>'}</table>"
        f"<h2>Validation (Great Expectations)</h2><details><summary>{passed} of {total} expectations "
        f"passed</summary><table>{checks}</table></details>"
        f"<h2>Stage timings</h2><table>{timings}</table>"
        "</body></html>",
    ]
    with replacing(path) as tmp, open(tmp, "w", encoding="utf-8") as out:
        for piece in page:
            out.writelines([piece] if isinstance(piece, str) else piece)
    return path


def report_from_run_dir(run_dir: Path, target: Path | None = None) -> Path:
    """Rebuild `report.html` of a published run from its manifest and its files.

    The files are read without their images; the shown cards' thumbnails are made from them a
    row group at a time (`_published_thumbnails`), so the rebuild's memory does not grow with the run."""
    import dataclasses
    import json

    import pyarrow.parquet as pq

    from pipeline.errors import BadInputError
    from pipeline.schema import GATED_SCHEMA, conform
    from pipeline.steps.state import RunSummary

    manifest_path = Path(run_dir).resolve() / "manifest.json"  # the dataset is two folders up, even from "."
    if not manifest_path.is_file():
        raise BadInputError(f"{run_dir}: no manifest.json (not a published run folder)")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise BadInputError(f"{manifest_path}: cannot be read as JSON ({error})") from None
    wanted = {"run_id", "run_date", "files", "items", "rows", "reasons", "input", "validation"}
    if not isinstance(manifest, dict) or (missing := sorted(wanted - manifest.keys())):
        raise BadInputError(f"{manifest_path}: not a synthcat run manifest (no {', '.join(missing or wanted)})")
    if not isinstance(manifest["files"], list) or not all(
            isinstance(f, dict) and isinstance(f.get("path"), str) for f in manifest["files"]):
        raise BadInputError(f"{manifest_path}: `files` is not a list of file records (path, rows, bytes, sha256)")
    if target is not None:
        target = Path(target) / "report.html" if Path(target).is_dir() else Path(target)
        if not target.parent.is_dir():
            raise BadInputError(f"--out {target}: the folder {target.parent} does not exist")
        if target.exists() and target.suffix.lower() not in (".html", ".htm"):  # a manifest, a Parquet part
            raise BadInputError(f"--out {target}: an existing file that is not a report (.html); "
                                "it is not overwritten")
    root = manifest_path.parent.parent.parent
    tables, paths = {"data": [], "rejects": []}, []
    for record in manifest["files"]:
        path = root / record["path"]
        if not path.is_file():
            raise BadInputError(f"{run_dir}: {record['path']} is gone (a later run replaced that run_date)")
        try:  # conform: runs published before a column existed (e.g. ref_tile_l2) get it as nulls
            names = [name for name in pq.read_schema(path).names if name != "image"]
            table = conform(pq.read_table(path, columns=names), GATED_SCHEMA)
        except (pa.ArrowException, OSError) as error:
            raise BadInputError(f"{run_dir}: {record['path']} is not a readable Parquet file ({error})") from None
        tables[record["path"].split("/", 1)[0]].append(table)
        paths.append(path)
    accepted, rejected = (pa.concat_tables(t) if t else GATED_SCHEMA.empty_table() for t in tables.values())
    try:  # a manifest damaged by hand: its fields are not what a publish wrote
        summary = dataclasses.replace(RunSummary.of_manifest(manifest_path, manifest), accepted=accepted.num_rows,
                                      rejected=rejected.num_rows,
                                      report_path=target or manifest_path.with_name("report.html"))
        return write_report(summary.report_path, accepted, rejected, summary, manifest["validation"],
                            thresholds=(manifest.get("models") or {}).get("scorer"),
                            thumbnails=lambda keys: _published_thumbnails(paths, keys))
    except (KeyError, TypeError, AttributeError, ValueError) as error:
        raise BadInputError(f"{manifest_path}: a field is not as a synthcat publish writes it "
                            f"({type(error).__name__}: {error})") from None


def _published_thumbnails(paths: list[Path], keys: set[tuple[str, int]]) -> dict[tuple[str, int], bytes]:
    """The thumbnails of the rows of `keys` in the published files at `paths`, made from their
    images a row group at a time."""
    import pyarrow.parquet as pq

    found: dict[tuple[str, int], bytes] = {}
    for path in paths:
        file = pq.ParquetFile(path)
        columns = [c for c in ("item_id", "attempt", "image", "overlay_text") if c in file.schema_arrow.names]
        for group in range(file.metadata.num_row_groups):
            ids = file.read_row_group(group, columns=["item_id", "attempt"])
            wanted = [i for i, key in enumerate(zip(*(ids.column(c).to_pylist() for c in ids.column_names)))
                      if key in keys]
            if wanted:
                rows = file.read_row_group(group, columns=columns)  # overlay_text: older runs lack it
                rows = rows.take(pa.array(wanted, pa.int64())).to_pylist()
                _attach_thumbnails(rows)
                found |= {(row["item_id"], row["attempt"]): row["thumbnail"] for row in rows}
    return found
