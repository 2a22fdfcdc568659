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
