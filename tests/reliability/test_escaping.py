"""Everything written from user text is escaped: CSV exports hold no formulas, the run report no HTML.

The report is checked on the suite's clean run (reliability_support.py), whose catalog carries
a hostile title next to a bad row that is rejected without stopping the run.
"""

from __future__ import annotations

import csv
import html
import io
import json
import re

import pyarrow.parquet as pq
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.cli import main
from pipeline.csvsafe import FORMULA_STARTS, escape_cell, to_csv
from reliability_support import DATASET, HOSTILE_TITLE, clean_run
FORMULA = st.sampled_from(["=1+2", "+SUM(A1)", "-2+3", "@cmd", "\t=1", "\r=1", "=HYPERLINK(\"http://x\")"])


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(rows=st.lists(st.lists(st.one_of(st.text(max_size=15), FORMULA, st.none()), min_size=3, max_size=3),
                     max_size=5))
def test_csv_export_round_trips_with_every_formula_defused(rows):
    columns = ["a", "b", "c"]
    text = to_csv([dict(zip(columns, row)) for row in rows], columns)
    back = list(csv.reader(io.StringIO(text, newline="")))
    assert back[0] == columns and len(back) == len(rows) + 1
    for original, cells in zip(rows, back[1:]):
        assert cells == [escape_cell(value) for value in original]
        assert not any(cell.startswith(FORMULA_STARTS) for cell in cells)
        # the operator still sees what the catalog said, behind one quote
        assert [c[1:] if (v or "").startswith(FORMULA_STARTS) else c for c, v in zip(cells, original)] == \
               ["" if v is None else v for v in original]


def test_validate_exports_rejects_as_a_csv_without_formulas(tmp_path, capsys):
    manifest = tmp_path / "catalog.csv"
    manifest.write_text('sku,title,category,price\n'
                        'OK-1,Mug,mug,3\n'
                        '=cmd|\' /C calc\'!A0,+HYPERLINK("http://evil"),,-1\n'
                        '@SUM(A1),"=1+2",mug,abc\n', encoding="utf-8")
    export = tmp_path / "rejects.csv"
    assert main(["validate", str(manifest), "--rejects-csv", str(export)]) == 2
    assert "2 of 3 rows are bad" in capsys.readouterr().err
    data = export.read_bytes()
    assert data.startswith(b"\xef\xbb\xbf")  # Excel reads the UTF-8 right
    rows = list(csv.DictReader(io.StringIO(data[3:].decode("utf-8"), newline="")))
    assert {row["line"] for row in rows} == {"3", "4"}
    assert all(not cell.startswith(FORMULA_STARTS) for row in rows for cell in row.values())
    assert "'=cmd|' /C calc'!A0" in {row["sku"] for row in rows}
    assert any("'-1' is negative" in row["reason"] for row in rows)


def test_a_hostile_title_is_escaped_in_the_report_and_a_bad_row_does_not_stop_the_run(tmp_path_factory):
    clean = clean_run(tmp_path_factory.getbasetemp())  # its catalog: a hostile title and a bad row
    run_dir = clean.out / DATASET / "_runs" / "clean"
    assert json.loads((run_dir / "manifest.json").read_text())["input"]["bad_rows"] == 1
    rejects = pq.read_table(run_dir / "input_rejects.parquet").to_pylist()
    assert [(r["line"], r["field"]) for r in rejects] == [(3, "category")]

    page = (run_dir / "report.html").read_text(encoding="utf-8")
    assert html.escape(HOSTILE_TITLE) in page  # shown, as text
    assert "<script" not in page.lower() and "<img src=x" not in page
    assert all("src='data:image/" in tag for tag in re.findall(r"<img\b[^>]*>", page))  # only our thumbnails
