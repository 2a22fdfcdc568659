"""Bad input, generated: manifests and job configs from hypothesis never cause a traceback.

Properties (DESIGN.md "Input"): every file gives exit 0 or 2; a file-level problem (not UTF-8,
not the format, a required column missing, no rows) stops `synthcat run` with exit 2 before any
work; a row-level problem rejects that row, with its exact line, and reading goes on.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.cli import main
from pipeline.config import JobConfig
from pipeline.errors import BadInputError
from pipeline.ingest import read_manifest
from pipeline.ingest_fields import MAX_TEXT_CHARS

# Derandomized and without an example database: CI runs the same examples every time, writes nothing.
PROPERTY = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])

NASTY = st.sampled_from([
    "", " ", "=1+2", "+cmd|' /C calc'!A0", "-2", "@SUM(A1)", "\tTAB", "\rCR", "a,b", 'say "hi"', "two\nlines",
    "crlf\r\nx", "\x00", "a\x00b", "\ufeffbom", "𝔘𝔫𝔦", "Größe", "x" * (MAX_TEXT_CHARS + 1), "\u2028", "NaN",
    "[1,2]", '{"a": {"b": [1]}}', "<script>alert(1)</script>", "[" * 3000 + "]" * 3000,
])
CELL = st.one_of(st.text(max_size=20), NASTY, st.lists(NASTY, max_size=3).map("".join))
DEEP = st.integers(1_100, 3_000).map(lambda n: "[" * n + "]" * n)
JSON_SCALAR = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=10))
JSON_VALUE = st.recursive(JSON_SCALAR, lambda inner: st.lists(inner, max_size=3)
                          | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=12)


@contextlib.contextmanager
def scratch():
    with tempfile.TemporaryDirectory() as folder:
        yield Path(folder)


def synthcat(*args: str) -> tuple[int, str]:
    """The CLI in this process; any exception escaping it (a traceback) fails the test."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(list(args))
    return code, err.getvalue()


def assert_file_refused_before_any_work(path: Path, folder: Path) -> None:
    """`synthcat run` on a bad file: exit 2 naming the file, and nothing written."""
    code, err = synthcat("run", "--manifest", str(path), "--out", str(folder / "out"))
    assert code == 2 and err.startswith(f"synthcat: error: {path}") and "Traceback" not in err
    assert not (folder / "out").exists()


# --- any bytes at all ------------------------------------------------------------------------

@PROPERTY
@given(data=st.one_of(st.binary(max_size=3000), CELL.map(lambda t: t.encode("utf-8", "surrogatepass"))),
       suffix=st.sampled_from([".csv", ".jsonl", ".parquet"]))
def test_any_bytes_give_exit_0_or_2_and_never_a_traceback(data, suffix):
    with scratch() as folder:
        path = folder / f"catalog{suffix}"
        path.write_bytes(data)
        code, err = synthcat("validate", str(path))
        assert code in (0, 2) and "Traceback" not in err
        lines = err.splitlines()
        assert all(line.startswith((f"{path}: ", f"synthcat: error: {path}")) for line in lines), lines[:3]
        if err.startswith("synthcat: error:"):
            assert_file_refused_before_any_work(path, folder)


# --- CSV: exact line numbers for every bad row -----------------------------------------------

def _expected(rows: list[tuple[str, ...]], starts: list[int]) -> tuple[list[str], set[int], int]:
    """What ingest must find: good SKUs in order, the lines of bad rows, and the row count."""
    def text_ok(cell: str, required: bool) -> bool:
        cell = cell.strip()
        return "\x00" not in cell and len(cell) <= MAX_TEXT_CHARS and (bool(cell) or not required)

    good, bad, seen, total = [], set(), set(), 0
    for cells, line in zip(rows, starts):
        if not any(c.strip() for c in cells):
            continue  # a blank row is no row
        total += 1
        sku = cells[0].strip()
        ok = all(text_ok(c, i < 3) for i, c in enumerate(cells)) and sku not in seen
        if text_ok(cells[0], True):
            seen.add(sku)
        (good.append(sku) if ok else bad.add(line))
    return good, bad, total


@PROPERTY
@given(rows=st.lists(st.tuples(CELL, CELL, CELL, CELL), min_size=1, max_size=8),
       bom=st.booleans(), crlf=st.booleans(), encoding=st.sampled_from(["utf-8", "utf-8", "utf-16", "cp1252"]))
def test_csv_rows_are_products_or_rejects_with_their_line(rows, bom, crlf, encoding):
    buffer = io.StringIO(newline="")
    # Excel style (CRLF, quote when needed) or quote-everything with LF: both are valid CSV.
    writer = csv.writer(buffer, lineterminator="\r\n" if crlf else "\n",
                        quoting=csv.QUOTE_MINIMAL if crlf else csv.QUOTE_ALL)
    writer.writerow(["sku", "title", "category", "description"])
    starts = []
    for cells in rows:
        starts.append(1 + len(re.findall(r"\r\n|\r|\n", buffer.getvalue())))
        writer.writerow(cells)
    data = buffer.getvalue().encode(encoding, errors="replace")
    data = (b"\xef\xbb\xbf" if bom and encoding == "utf-8" else b"") + data
    good, bad, total = _expected(rows, starts)
    with scratch() as folder:
        path = folder / "catalog.csv"
        path.write_bytes(data)
        try:
            result = read_manifest(path, JobConfig())
        except BadInputError as exc:  # file-level: only a wrong encoding or no rows at all
            assert "UTF-8" in str(exc) or "required column" in str(exc) or (total == 0 and "no data rows" in str(exc))
            assert encoding != "utf-8" or total == 0
            assert_file_refused_before_any_work(path, folder)
            return
    if encoding != "utf-8":
        return  # bytes that happen to be valid UTF-8 read as whatever text they are
    assert result.products.column("sku").to_pylist() == good
    assert set(result.rejects.column("line").to_pylist()) == bad
    assert result.total_rows == total and all(r["reason"] for r in result.rejects.to_pylist())


# --- JSONL and Parquet: row problems stay row problems ---------------------------------------

JSONL_LINE = st.one_of(
    st.fixed_dictionaries({"sku": CELL, "title": CELL, "category": CELL},
                          optional={"attributes": st.one_of(JSON_VALUE, CELL), "markets": JSON_VALUE,
                                    "price": JSON_VALUE, "image": CELL}).map(json.dumps),
    JSON_VALUE.map(json.dumps), st.text(max_size=30),
    DEEP.map(lambda nested: '{"sku": "D", "title": "T", "category": "c", "attributes": ' + nested + "}"),
    st.integers(4_400, 6_000).map(lambda digits: '{"sku": "N", "title": "T", "category": "c", "price": '
                                  + "7" * digits + "}"),
)


@PROPERTY
@given(first=JSONL_LINE, rest=st.lists(JSONL_LINE, max_size=6))
def test_jsonl_lines_are_products_or_rejects(first, rest):
    good_first = json.dumps({"sku": "FIRST", "title": "T", "category": "mug"})
    for lines in ([good_first, first, *rest], [first, *rest]):
        text = "\n".join(lines) + "\n"
        with scratch() as folder:
            path = folder / "catalog.jsonl"
            path.write_text(text, encoding="utf-8", errors="surrogatepass")
            try:
                result = read_manifest(path, JobConfig())
            except BadInputError as exc:
                assert lines[0] is not good_first or "required column" in str(exc), exc
                continue
        physical = [n for n, line in enumerate(text.split("\n"), 1) if line.strip()]
        assert set(result.rejects.column("line").to_pylist()) <= set(physical)
        assert result.products.num_rows + result.bad_rows == result.total_rows == len(physical)


ARROW_COLUMN = st.sampled_from([
    pa.array(["A-1", "A-2", "A-1"]), pa.array([1, 2, None]), pa.array([b"\x00", b"x", b""]),
    pa.array([["a"], [], None]), pa.array([{"k": "v"}, {"k": None}, None]), pa.array([None, None, None]),
    pa.array(["=1+2", "\x00", "x" * (MAX_TEXT_CHARS + 1)]), pa.array([1.5, float("nan"), float("inf")]),
])


@PROPERTY
@given(sku=ARROW_COLUMN, title=ARROW_COLUMN, category=ARROW_COLUMN, attributes=ARROW_COLUMN, markets=ARROW_COLUMN)
def test_parquet_columns_of_any_type_are_products_or_rejects(sku, title, category, attributes, markets):
    table = pa.table({"sku": sku, "title": title, "category": category, "attributes": attributes,
                      "markets": markets})
    with scratch() as folder:
        path = folder / "catalog.parquet"
        pq.write_table(table, path)
        result = read_manifest(path, JobConfig())
        code, _ = synthcat("validate", str(path))
    assert result.products.num_rows + result.bad_rows == result.total_rows == 3
    assert code == (2 if result.bad_rows else 0)


# --- job configs ---------------------------------------------------------------------------

CONFIG_KEYS = st.sampled_from([*JobConfig.model_fields, "colour", "gates", "images"])


@PROPERTY
@given(config=st.one_of(st.dictionaries(CONFIG_KEYS, JSON_VALUE, max_size=5).map(json.dumps),
                        st.text(max_size=200),
                        st.sampled_from(["markets: " + "[" * 1_100 + "]" * 1_100,  # PyYAML recurses
                                         "!!python/object/apply:os.system ['echo pwned']",
                                         "images: {allowed_hosts: ['http://x']}", "\ufeffvariants: 2",
                                         "variants: 2\r\nmarkets: [en-US]\r\n", "a: &x [*x]"])))
def test_job_configs_load_or_are_refused_naming_the_file(config):
    not_a_manifest = Path(__file__)  # the config is read first: a good one reaches the manifest
    with scratch() as folder:
        path = folder / "job.yaml"
        path.write_text(config, encoding="utf-8", errors="surrogatepass")
        code, err = synthcat("validate", str(not_a_manifest), "--config", str(path))
    assert code == 2 and "Traceback" not in err
    assert err.startswith((f"synthcat: error: {path}: ", f"synthcat: error: {not_a_manifest}: unsupported"))


def test_half_a_character_is_the_rows_problem_and_its_reject_can_be_stored(tmp_path):
    """JSON's lone "\\ud83d" (an emoji cut in half by an exporter) in a JSONL value or in a CSV
    attributes cell: the row is rejected naming the field, and the rejects table holds it escaped."""
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text('{"sku": "A\\ud800", "title": "Mug", "category": "mug"}\n'
                     '{"sku": "B", "title": "Mug \\ud83d", "category": "mug"}\n', encoding="utf-8")
    csv_path = tmp_path / "c.csv"
    csv_path.write_text('sku,title,category,attributes\nC,Mug,mug,"{""colour"": ""red \\ud83d""}"\n'
                        'D,Mug,mug,"{""\\udc00"": 1}"\n', encoding="utf-8")
    for path, expected in ((jsonl, [(1, "sku"), (2, "title")]), (csv_path, [(2, "attributes"), (3, "attributes")])):
        result = read_manifest(path, JobConfig())
        rejects = result.rejects.to_pylist()
        assert [(r["line"], r["field"]) for r in rejects] == expected and result.products.num_rows == 0
        assert all("half a character" in r["reason"] for r in rejects)
        pq.write_table(result.rejects, tmp_path / "rejects.parquet")  # UTF-8 throughout
    assert rejects[0]["raw"].count("\\ud83d") == 1


def test_parquet_values_python_cannot_hold_name_their_column(tmp_path):
    """Bytes that are not UTF-8 in a string column, a timestamp past year 9999: exit 2 naming the
    file and the column, not a traceback."""
    base = {"sku": ["A"], "title": ["Mug"], "category": ["mug"]}
    cases = {"title": pa.array([b"M\xf6g"], pa.binary()).cast(pa.string(), safe=False),  # Latin-1 bytes
             "description": pa.array([2 * 253_402_300_800_000], pa.int64()).cast(pa.timestamp("ms"))}  # > 9999
    for column, array in cases.items():
        path = tmp_path / f"{column}.parquet"
        pq.write_table(pa.table({**base, column: array}), path)
        with pytest.raises(BadInputError, match=rf"{path.name}: column '{column}' cannot be read"):
            read_manifest(path, JobConfig())
