"""Contract tests for pipeline.ingest: real manifest files written to tmp_path."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import JobConfig
from pipeline.errors import BadInputError
from pipeline.ingest import IngestResult, check_bad_row_share, read_manifest
from pipeline.schema import INPUT_REJECT_SCHEMA, PRODUCT_SCHEMA

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "catalog.csv"
HEADER = ["sku", "title", "category", "attributes", "description", "markets", "brand", "price", "currency"]
# One catalog, as CSV cells; the other formats below carry the same content in their native types.
ROWS = [
    ["MUG-1", "Diner Mug", "mug", '{"color": "white", "capacity_ml": 350}', "Heavy.\nDishwasher safe.",
     "", "Northwind", "12.50", "usd"],
    ["  TEE-1 ", " Áo thun ", "t-shirt", "", "", "en-us; de_DE", "", "19", "EUR"],
    ["WCH-1", "腕時計", "watch", '{"material": "steel", "waterproof": true}', "Slim.", "ja-JP", "Meridian",
     "", ""],
]


def write_csv(path: Path, header: list[str], rows: list[list[str]], *, bom: bool = False,
              newline: str = "\n") -> Path:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator=newline).writerows([header, *rows])
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + buffer.getvalue().encode("utf-8"))
    return path


def write_jsonl(path: Path, objects: list[object], blank_lines: bool = False) -> Path:
    lines = [json.dumps(o, ensure_ascii=False) for o in objects]
    path.write_text(("\n\n" if blank_lines else "\n").join(lines) + "\n", encoding="utf-8")
    return path


def native_objects() -> list[dict]:
    """ROWS as JSON objects: attributes as objects, markets as lists, prices as numbers."""
    objects = []
    for row in ROWS:
        obj = dict(zip(HEADER, row))
        obj["attributes"] = json.loads(obj["attributes"]) if obj["attributes"] else None
        obj["markets"] = [m for m in obj["markets"].split(";") if m]
        obj["price"] = float(obj["price"]) if obj["price"] else None
        objects.append(obj)
    return objects


def read(path: Path, config: JobConfig | None = None) -> IngestResult:
    return read_manifest(path, config or JobConfig())


def products(result: IngestResult) -> list[dict]:
    """Products without `line`, which legitimately differs between formats."""
    return result.products.drop_columns(["line"]).to_pylist()


EXPECTED = [
    {"sku": "MUG-1", "title": "Diner Mug", "category": "mug",
     "attributes": '{"capacity_ml": 350, "color": "white"}', "description": "Heavy.\nDishwasher safe.",
     "image": None, "markets": [], "brand": "Northwind", "price": 12.5, "currency": "USD"},
    {"sku": "TEE-1", "title": "Áo thun", "category": "t-shirt", "attributes": "{}", "description": None,
     "image": None, "markets": ["en-US", "de-DE"], "brand": None, "price": 19.0, "currency": "EUR"},
    {"sku": "WCH-1", "title": "腕時計", "category": "watch",
     "attributes": '{"material": "steel", "waterproof": true}', "description": "Slim.",
     "image": None, "markets": ["ja-JP"], "brand": "Meridian", "price": None, "currency": None},
]


# --- good files ------------------------------------------------------------------------------


def test_csv_gives_products_and_schemas(tmp_path):
    result = read(write_csv(tmp_path / "catalog.csv", HEADER, ROWS))
    assert result.products.schema == PRODUCT_SCHEMA
    assert result.rejects.schema == INPUT_REJECT_SCHEMA
    assert products(result) == EXPECTED
    assert result.products.column("line").to_pylist() == [2, 4, 5]  # row 1 spans lines 2-3
    assert (result.total_rows, result.bad_rows, result.problems()) == (3, 0, [])
    assert result.source == str(tmp_path / "catalog.csv")


def test_csv_with_bom_crlf_and_quoted_newline(tmp_path):
    result = read(write_csv(tmp_path / "excel.csv", HEADER, ROWS, bom=True, newline="\r\n"))
    assert products(result) == EXPECTED
    assert result.products.column("line").to_pylist() == [2, 4, 5]


@pytest.mark.parametrize("suffix", [".jsonl", ".ndjson"])
def test_jsonl_gives_the_same_products(tmp_path, suffix):
    result = read(write_jsonl(tmp_path / f"catalog{suffix}", native_objects(), blank_lines=True))
    assert products(result) == EXPECTED
    assert result.products.column("line").to_pylist() == [1, 3, 5]  # physical lines, blanks skipped


def test_jsonl_with_csv_style_text_values(tmp_path):
    objects = [dict(zip(HEADER, row)) for row in ROWS]  # attributes as JSON text, markets "a;b"
    assert products(read(write_jsonl(tmp_path / "catalog.jsonl", objects))) == EXPECTED


def test_parquet_gives_the_same_products(tmp_path):
    table = pa.Table.from_pylist(native_objects())  # attributes become a struct, markets a list
    assert pa.types.is_struct(table.schema.field("attributes").type)
    pq.write_table(table, tmp_path / "catalog.parquet")
    result = read(tmp_path / "catalog.parquet")
    assert products(result) == EXPECTED
    assert result.products.column("line").to_pylist() == [1, 2, 3]


def test_parquet_attributes_as_a_map_and_columns_named_twice(tmp_path):
    rows = native_objects()
    attributes = pa.array([[] if r["attributes"] is None else [(k, str(v)) for k, v in r["attributes"].items()]
                           for r in rows], pa.map_(pa.string(), pa.string()))  # an empty map for none
    table = pa.Table.from_pylist(rows).drop_columns(["attributes"]).append_column("attributes", attributes)
    pq.write_table(table, tmp_path / "map.parquet")
    as_text = [{**p, "attributes": json.dumps({k: str(v) for k, v in json.loads(p["attributes"]).items()},
                                                sort_keys=True, ensure_ascii=False)} for p in EXPECTED]
    assert products(read(tmp_path / "map.parquet")) == as_text  # a map reads as an object of its (text) values

    twice = pa.Table.from_arrays([pa.array(["A"]), pa.array(["Mug"]), pa.array(["mug"]), pa.array(["B"])],
                                 names=["sku", "title", "category", "sku"])
    pq.write_table(twice, tmp_path / "twice.parquet")
    with pytest.raises(BadInputError, match="column 'sku' appears twice"):
        read(tmp_path / "twice.parquet")


def test_parquet_with_text_columns(tmp_path):
    pq.write_table(pa.Table.from_pylist([dict(zip(HEADER, row)) for row in ROWS]), tmp_path / "c.parquet")
    assert products(read(tmp_path / "c.parquet")) == EXPECTED


def test_column_mapping_for_a_shopify_export(tmp_path):
    header = ["Handle", "Title", "Body (HTML)", "Vendor", "Type", "Tags", "Variant Price", "sku"]
    rows = [["oak-chair", "Oak Chair", "Solid oak.", "Timberline", "chair", "wood, dining", "189", "IGNORED"],
            ["steel-bottle", "Steel Bottle", "", "Trailhead", "bottle", "", "29.5", ""]]
    config = JobConfig(columns={"sku": "Handle", "title": "Title", "category": "Type", "brand": "Vendor",
                                "description": "Body (HTML)", "price": "Variant Price"})
    result = read(write_csv(tmp_path / "shopify.csv", header, rows), config)
    assert result.problems() == []
    got = result.products.select(["sku", "title", "category", "brand", "description", "price"]).to_pylist()
    assert got == [
        {"sku": "oak-chair", "title": "Oak Chair", "category": "chair", "brand": "Timberline",
         "description": "Solid oak.", "price": 189.0},
        {"sku": "steel-bottle", "title": "Steel Bottle", "category": "bottle", "brand": "Trailhead",
         "description": None, "price": 29.5},
    ]


def test_attr_columns_merge_over_the_json_attributes(tmp_path):
    header = ["sku", "title", "category", "attributes", "attr_color", "attr_Größe", "attr_", "extra"]
    rows = [["A", "Mug", "mug", '{"color": "red", "material": "ceramic"}', " blue ", "L", "x", "ignored"],
            ["B", "Mug", "mug", "", "", "  ", "", ""]]
    result = read(write_csv(tmp_path / "catalog.csv", header, rows))
    assert result.problems() == []
    assert result.products.column("attributes").to_pylist() == [
        '{"Größe": "L", "color": "blue", "material": "ceramic"}', "{}"]


def test_attr_columns_without_an_attributes_column(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"sku": "A", "title": "T", "category": "lamp",
                                              "attr_color": "black", "attr_watts": 40}])
    assert read(path).products.column("attributes").to_pylist() == ['{"color": "black", "watts": 40}']


def test_markets_override_and_separator(tmp_path):
    rows = [["A", "T", "mug", "en-US|vi_vn|en-US"], ["B", "T", "mug", " "]]
    path = write_csv(tmp_path / "c.csv", ["sku", "title", "category", "markets"], rows)
    result = read(path, JobConfig(list_separator="|"))
    assert result.products.column("markets").to_pylist() == [["en-US", "vi-VN"], []]


def test_reading_does_not_import_torch():
    code = ("import sys, pipeline.ingest; "
            "assert not {'torch', 'diffusers'} & set(sys.modules), 'heavy import'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=EXAMPLE.parents[1])


def test_example_catalog_is_valid():
    result = read(EXAMPLE)
    assert result.problems() == []
    assert result.total_rows == result.products.num_rows >= 24
    categories = Counter(result.products.column("category").to_pylist())
    assert set(categories) <= {"mug", "t-shirt", "sneaker", "bottle", "backpack", "lamp", "chair", "watch"}
    assert sum(n >= 3 for n in categories.values()) >= 6
    assert any(m for m in result.products.column("markets").to_pylist())
    assert {"USD", "EUR", "JPY", "THB", "AED", "BRL"} <= set(result.products.column("currency").to_pylist())


# --- bad rows --------------------------------------------------------------------------------

GOOD = ["OK-1", "Good Mug", "mug", "", "", "", "", "", ""]


def row(**changes: str) -> list[str]:
    cells = dict(zip(HEADER, ["BAD-1", "Bad Mug", "mug", "", "", "", "", "", ""]))
    cells.update(changes)
    return [cells[h] for h in HEADER]


@pytest.mark.parametrize("bad, field, reason", [
    (row(title="  "), "title", "missing required value"),
    (row(sku=""), "sku", "missing required value"),
    (row(category=""), "category", "missing required value"),
    (row(sku=" OK-1  "), "sku", "duplicate sku 'OK-1' (first on line 2)"),
    (row(markets="en-US;xx-YY"), "markets", "'xx-YY' is not a locale known to CLDR"),
    (row(markets="english"), "markets", "'english' is not a locale code"),
    (row(attributes='{"color": red}'), "attributes", "not valid JSON"),
    (row(attributes='["red"]'), "attributes", "must be a JSON object"),
    (row(attributes='{"size": {"w": 1}}'), "attributes", "attribute 'size' is an object"),
    (row(attributes='{"colors": ["red"]}'), "attributes", "not nested"),
    (row(price="abc"), "price", "'abc' is not a number"),
    (row(price="12,50"), "price", "'12,50' is not a number"),
    (row(price="nan"), "price", "'nan' is not a number"),
    (row(price="-1"), "price", "'-1' is negative"),
    (row(currency="DOLLAR"), "currency", "'DOLLAR' is not an ISO 4217 currency code"),
    (row(currency="zzz"), "currency", "'zzz' is not an ISO 4217"),
    (row(description="x" * 10_001), "description", "is 10,001 characters long; the limit is 10,000"),
    (row(brand="a\x00b"), "brand", "contains a NUL character"),
    (row() + ["surplus"], None, "has 10 values but the header has 9 columns"),
], ids=lambda v: v if isinstance(v, str) and len(v) < 40 else None)
def test_bad_row_is_rejected_with_line_field_and_reason(tmp_path, bad, field, reason):
    path = write_csv(tmp_path / "catalog.csv", HEADER, [GOOD, bad, ["OK-2", *GOOD[1:]]])
    result = read(path)
    assert result.products.column("sku").to_pylist() == ["OK-1", "OK-2"]  # reading went on
    assert (result.total_rows, result.bad_rows) == (3, 1)
    reject = result.rejects.to_pylist()[0]
    assert (reject["source"], reject["line"], reject["field"]) == (str(path), 3, field)
    assert reason in reject["reason"]
    assert json.loads(reject["raw"])["title"] == bad[1]
    where = f"line 3, field '{field}': " if field else "line 3: "
    assert result.problems()[0].startswith(f"{path}: {where}")


def test_a_row_with_several_problems_counts_once(tmp_path):
    path = write_csv(tmp_path / "c.csv", HEADER, [GOOD, row(title="", price="x", currency="US")])
    result = read(path)
    assert [r["field"] for r in result.rejects.to_pylist()] == ["title", "price", "currency"]
    assert set(result.rejects.column("sku").to_pylist()) == {"BAD-1"}
    assert (result.bad_rows, result.products.num_rows) == (1, 1)


def test_the_first_problem_message(tmp_path):
    path = write_csv(tmp_path / "catalog.csv", HEADER, [GOOD] * 5 + [row(markets="xx-YY")])
    assert read(path).problems()[-1] == (f"{path}: line 7, field 'markets': 'xx-YY' is not a locale "
                                         "known to CLDR")


def test_jsonl_bad_rows(tmp_path):
    path = tmp_path / "c.jsonl"
    good = {"sku": "A", "title": "T", "category": "mug"}
    path.write_text("\n".join([json.dumps(good), "", "{not json", "[1, 2]",
                               json.dumps({**good, "sku": "B", "markets": ["en-US", 7]}),
                               json.dumps({**good, "sku": "C", "title": ["x"]}),
                               json.dumps({"sku": "D", "title": "T"})]), encoding="utf-8")
    result = read(path)
    got = [(r["line"], r["field"], r["reason"]) for r in result.rejects.to_pylist()]
    assert got == [
        (3, None, "line is not valid JSON (Expecting property name enclosed in double quotes at column 2)"),
        (4, None, "line is a list, not a JSON object"),
        (5, "markets", 'a list of markets must hold only text, e.g. ["en-US", "de-DE"]'),
        (6, "title", "expected text, got a list"),
        (7, "category", "missing required value"),
    ]
    assert (result.total_rows, result.bad_rows, result.products.num_rows) == (6, 5, 1)


def test_parquet_problems_say_row(tmp_path):
    table = pa.Table.from_pylist([{"sku": "A", "title": "T", "category": "mug", "price": -2.0}])
    pq.write_table(table, tmp_path / "c.parquet")
    assert read(tmp_path / "c.parquet").problems() == [
        f"{tmp_path / 'c.parquet'}: row 1, field 'price': '-2.0' is negative; a price must be 0 or more"]


def test_duplicate_names_the_first_line_even_if_that_row_was_bad(tmp_path):
    path = write_csv(tmp_path / "c.csv", HEADER, [row(price="x"), row()])
    reasons = [(r["line"], r["reason"]) for r in read(path).rejects.to_pylist()]
    assert reasons[1] == (3, "duplicate sku 'BAD-1' (first on line 2)")


# --- bad files -------------------------------------------------------------------------------


def assert_bad_file(path: Path, *fragments: str, config: JobConfig | None = None) -> None:
    with pytest.raises(BadInputError) as info:
        read(path, config)
    message = str(info.value)
    assert message.startswith(str(path)), message
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


def test_missing_file(tmp_path):
    assert_bad_file(tmp_path / "nope.csv", "not found")


def test_not_utf8(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes(b"\xef\xbb\xbf" + "sku,title,category\nA,Größe,mug\n".encode("cp1252"))
    assert_bad_file(path, "not UTF-8", "byte 0xf6 at byte offset 26")  # BOM 3 + 19 + "A,Gr"


def test_required_column_missing(tmp_path):
    path = write_csv(tmp_path / "c.csv", ["sku", "title", "kind"], [["A", "T", "mug"]])
    assert_bad_file(path, "required column 'category' is missing", "'kind'")
    only_sku = write_csv(tmp_path / "sku.csv", ["sku"], [["A"]])
    assert_bad_file(only_sku, "required column 'title' is missing", "required column 'category' is missing")


def test_required_column_missing_after_mapping(tmp_path):
    path = write_csv(tmp_path / "c.csv", ["sku", "title", "category"], [["A", "T", "mug"]])
    assert_bad_file(path, "'sku'", "'Handle'", "columns", config=JobConfig(columns={"sku": "Handle"}))


def test_semicolon_separated_csv_gets_a_hint(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("sku;title;category\nA;T;mug\n", encoding="utf-8")
    assert_bad_file(path, "required column 'sku' is missing", "separated by ';'")


@pytest.mark.parametrize("name, content", [
    ("header_only.csv", "sku,title,category\r\n\r\n"),
    ("empty.csv", ""),
    ("empty.jsonl", "\n\n"),
])
def test_no_data_rows(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    assert_bad_file(path)


def test_empty_parquet(tmp_path):
    pq.write_table(pa.table({"sku": pa.array([], pa.string()), "title": pa.array([], pa.string()),
                             "category": pa.array([], pa.string())}), tmp_path / "c.parquet")
    assert_bad_file(tmp_path / "c.parquet", "no data rows")


@pytest.mark.parametrize("name, content, fragment", [
    ("photo.csv", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "PNG image"),
    ("book.csv", b"PK\x03\x04\x14\x00\x06\x00", "ZIP archive"),
    ("photo.jsonl", b"\x89PNG\r\n\x1a\n", "PNG image"),
    ("noise.parquet", bytes(range(256)) * 4, "not a Parquet file"),
    ("text.parquet", b"sku,title,category\nA,T,mug\n", "not a Parquet file"),
    ("array.jsonl", b'[{"sku": "A", "title": "T", "category": "mug"}]\n', "line 1 is a list"),
    ("csv.jsonl", b"sku,title,category\nA,T,mug\n", "line 1 is not valid JSON"),
    ("catalog.xlsx", b"PK\x03\x04", "unsupported manifest type '.xlsx'"),
    ("catalog", b"sku,title,category\n", "unsupported manifest type"),
])
def test_not_a_manifest(tmp_path, name, content, fragment):
    path = tmp_path / name
    path.write_bytes(content)
    assert_bad_file(path, fragment)


def test_directory_is_unreadable(tmp_path):
    (tmp_path / "dir.csv").mkdir()
    assert_bad_file(tmp_path / "dir.csv", "cannot read")


# --- bad row share ---------------------------------------------------------------------------


def share_result(tmp_path: Path, bad: int, total: int) -> IngestResult:
    rows = [row(sku=f"S{i}", price="x" if i < bad else "") for i in range(total)]
    return read(write_csv(tmp_path / "catalog.csv", HEADER, rows))


def test_bad_row_share_over_the_limit(tmp_path):
    result = share_result(tmp_path, 5, 20)
    with pytest.raises(BadInputError) as info:
        check_bad_row_share(result, 0.2)
    assert str(info.value) == (f"{tmp_path / 'catalog.csv'}: 5 of 20 rows are bad (25%), over the job's "
                               "limit max_bad_row_share=0.2; first: line 2, field 'price': "
                               "'x' is not a number (write e.g. 12.50)")
    assert info.value.exit_code == 2


def test_bad_row_share_at_or_under_the_limit(tmp_path):
    check_bad_row_share(share_result(tmp_path, 4, 20), 0.2)
    check_bad_row_share(share_result(tmp_path, 0, 3), 0.0)
