"""The run report in a real browser: headless Chromium renders it, and the screenshot shows it."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from helpers import make_output_table
from pipeline.report import write_report
from pipeline.report_charts import ACCEPTED_COLOUR, REJECTED_COLOUR
from pipeline.run import RunSummary

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
WIDTH, HEIGHT = 1280, 2000


def _with(table: pa.Table, **columns) -> pa.Table:
    for name, values in columns.items():
        index = table.schema.get_field_index(name)
        table = table.set_column(index, table.schema.field(index), pa.array(values, table.schema.field(index).type))
    return table


def _report(tmp_path):
    """A report with every chart filled: 12 accepted rows and 4 rejected ones, seeded evidence."""
    rng = np.random.default_rng(3)
    table = make_output_table(16, seed=3)
    n = table.num_rows
    table = _with(table, clip_score=rng.normal(0.35, 0.12, n), ref_similarity=rng.normal(0.6, 0.1, n),
                  ref_tile_l2=rng.uniform(0.15, 0.4, n), mem_cfg_gap=rng.normal(8, 1, n),
                  dup_similarity=[None] * 14 + [0.97, 0.99], dup_reason=[None] * 14 + ["semantic"] * 2)
    accepted, rejected = table.slice(0, 12), table.slice(12)
    rejected = _with(rejected, gate_status=["rejected"] * 4, clip_score=[0.02, 0.05, 0.3, 0.31],
                     gate_reasons=[["clip_score: 0.0200 < 0.1100"], ["clip_score: 0.0500 < 0.1100"],
                                   ["duplicate: semantic copy of x"], ["memorization: cfg gap 12.1 > 10.5"]])
    summary = RunSummary("run-browser", "2026-11-26", tmp_path, 16, 16, 0, 12, 4,
                         {"clip_score": 2, "duplicate": 1, "memorization": 1}, 0, 1.2, 30.0,
                         tmp_path / "manifest.json", tmp_path / "report.html", {"generate": 12.0, "gate": 0.4})
    thresholds = {"min_clip_score": 0.11, "max_ref_similarity": 0.9, "max_ref_tile_l2": 0.1,
                  "min_semantic_cosine": 0.95, "max_mem_cfg_gap": 10.5}
    return write_report(tmp_path / "report.html", accepted, rejected, summary,
                        {"results": [{"expectation": "expect_x", "column": "sku", "success": True}]}, thresholds)


def screenshot(page, png, profile, timeout: int = 90) -> None:
    """Render `page` in headless Chromium (no network, no GPU, throwaway profile) into `png`."""
    subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
         f"--screenshot={png}", f"--window-size={WIDTH},{HEIGHT}", "--hide-scrollbars", page.as_uri()],
        check=True, capture_output=True, timeout=timeout)


def _near(pixels: np.ndarray, hex_colour: str, tolerance: int) -> int:
    rgb = np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(pixels.astype(int) - rgb).max(axis=-1) <= tolerance).sum())


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (make setup installs it)")
def test_report_renders_in_headless_chromium(tmp_path):
    page = _report(tmp_path)
    png = tmp_path / "report.png"
    screenshot(page, png, tmp_path / "profile")
    with Image.open(png) as shot:
        assert shot.size == (WIDTH, HEIGHT)
        pixels = np.asarray(shot.convert("RGB"))
    # not a blank or error page: many colours (the thumbnails), and the histograms' solid bars
    # drawn in their exact colours (noise thumbnails hit a colour within ±3 for ~10 pixels at most)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 2000
    assert _near(pixels, ACCEPTED_COLOUR, 3) > 1000 and _near(pixels, REJECTED_COLOUR, 3) > 200
    assert pixels.std() > 20
