"""The run report: self-contained, every image inlined, user text escaped."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from helpers import make_output_table
from pipeline.report import write_report
from pipeline.run import RunSummary


def test_report_inlines_images_and_escapes_user_text(tmp_path):
    table = make_output_table(3)
    titles = table.column("title").to_pylist()
    titles[0] = "<script>alert('x')</script> Mug"
    table = table.set_column(table.schema.get_field_index("title"), "title", pa.array(titles))
    rejected = table.slice(2)
    rejected = rejected.set_column(rejected.schema.get_field_index("gate_status"), "gate_status",
                                   pa.array(["rejected"]))
    rejected = rejected.set_column(rejected.schema.get_field_index("gate_reasons"), "gate_reasons",
                                   pa.array([["clip_score: 0.1000 < 0.2000"]]))
    summary = RunSummary("run-x", "2026-11-26", tmp_path, 3, 3, 0, 2, 1, {"clip_score": 1}, 0, 1.0, 2.0,
                         tmp_path / "manifest.json", tmp_path / "report.html", {"generate": 1.0})
    path = write_report(tmp_path / "report.html", table.slice(0, 2), rejected, summary,
                        {"results": [{"expectation": "expect_x", "column": "sku", "success": True}]})
    page = Path(path).read_text(encoding="utf-8")
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert page.count("data:image/png;base64,") == 3  # every image inlined, no external file
    assert "clip_score: 0.1000 &lt; 0.2000" in page
    assert "src='http" not in page and 'src="http' not in page


def test_report_inlines_the_stored_thumbnails_and_makes_the_missing_ones(tmp_path):
    import base64
    import io

    from PIL import Image

    table = make_output_table(2)
    summary = RunSummary("run-x", "2026-11-26", tmp_path, 2, 2, 0, 2, 0, {}, 0, 1.0, 2.0,
                         tmp_path / "manifest.json", tmp_path / "report.html", {"generate": 1.0})
    buffer = io.BytesIO()
    Image.new("RGB", (3, 5), (1, 2, 3)).save(buffer, format="PNG")  # no image of the run looks like it
    first = table.slice(0, 1).to_pylist()[0]
    stored = {(first["item_id"], first["attempt"]): buffer.getvalue()}
    page = Path(write_report(tmp_path / "report.html", table, table.slice(0, 0), summary, {"results": []},
                             thumbnails=stored)).read_text(encoding="utf-8")
    inlined = [base64.b64decode(part.split("'", 1)[0]) for part in page.split(";base64,")[1:]]
    assert len(inlined) == 2 and inlined.count(buffer.getvalue()) == 1
    made = next(data for data in inlined if data != buffer.getvalue())  # the other row's, made from its image
    with Image.open(io.BytesIO(made)) as small, Image.open(io.BytesIO(table.column("image")[1]["bytes"].as_py())) as im:
        assert small.size == im.size  # never enlarged


def test_a_shrunk_thumbnail_is_a_small_jpeg_of_the_shrunk_pixels_and_inlined_as_one(tmp_path):
    """A 512 px creative's thumbnail: a JPEG under half the PNG's bytes, close to the shrunk
    pixels, and the page says image/jpeg for it; an image not shrunk stays a PNG of its pixels."""
    import base64
    import io

    import numpy as np
    from PIL import Image

    from pipeline.thumbnail import report_thumbnail

    rng = np.random.default_rng(0)  # what a creative is made of here: a 64 px image upscaled to the canvas
    big = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).resize((512, 512), Image.BICUBIC)
    for side in (160, 320):
        data, shrunk, png = report_thumbnail(big, side), big.copy(), io.BytesIO()
        shrunk.thumbnail((side, side))
        shrunk.save(png, format="PNG", compress_level=1)
        with Image.open(io.BytesIO(data)) as thumb:
            assert thumb.format == "JPEG" and thumb.size == (side, side)
            error = np.abs(np.asarray(thumb.convert("RGB"), np.int16) - np.asarray(shrunk, np.int16))
        assert len(data) < len(png.getvalue()) / 2 and error.mean() < 5
    small = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    with Image.open(io.BytesIO(report_thumbnail(small, 160))) as same:
        assert same.format == "PNG" and same.convert("RGB").tobytes() == small.tobytes()

    table = make_output_table(2)
    summary = RunSummary("run-x", "2026-11-26", tmp_path, 2, 2, 0, 2, 0, {}, 0, 1.0, 2.0,
                         tmp_path / "manifest.json", tmp_path / "report.html", {"generate": 1.0})
    first = table.slice(0, 1).to_pylist()[0]
    stored = {(first["item_id"], first["attempt"]): report_thumbnail(big, 160)}
    page = Path(write_report(tmp_path / "report.html", table, table.slice(0, 0), summary, {"results": []},
                             thumbnails=stored)).read_text(encoding="utf-8")
    jpegs = [base64.b64decode(part.split("'", 1)[0]) for part in page.split("data:image/jpeg;base64,")[1:]]
    assert jpegs == list(stored.values()) and page.count("data:image/png;base64,") == 1


def test_a_large_run_shows_at_most_max_cards_evenly_spaced_and_reads_only_their_thumbnails(tmp_path):
    table = make_output_table(7)
    summary = RunSummary("run-x", "2026-11-26", tmp_path, 7, 7, 0, 7, 0, {}, 0, 1.0, 2.0,
                         tmp_path / "manifest.json", tmp_path / "report.html", {"generate": 1.0})
    asked = []

    def thumbnails(keys):  # as ShardStore.thumbnails: only the shown rows' are read
        asked.append(set(keys))
        return {}

    page = Path(write_report(tmp_path / "report.html", table, table.slice(0, 0), summary, {"results": []},
                             thumbnails=thumbnails, max_cards=3)).read_text(encoding="utf-8")
    ids = table.column("item_id").to_pylist()
    shown = {ids[0], ids[2], ids[4]}  # 3 of 7, evenly spaced: rows 0, 7 // 3 and 14 // 3
    assert asked == [{(i, 0) for i in shown}]
    assert page.count("data:image/png;base64,") == 3 and "3 of 7 accepted" in page
    assert all(f"alt='{i}'" in page for i in shown)
    full = Path(write_report(tmp_path / "full.html", table, table.slice(0, 0), summary, {"results": []},
                             thumbnails=thumbnails)).read_text(encoding="utf-8")
    assert full.count("data:image/png;base64,") == 7 and " of 7 accepted" not in full
