"""The Great Expectations suite over a run's accepted rows."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from helpers import make_output_table
from validators import ValidationReport, validate_accepted

pytest.importorskip("great_expectations")

ROWS = 6


@pytest.fixture(scope="module")
def good():
    return make_output_table(ROWS)


def replace(table: pa.Table, name: str, values) -> pa.Table:
    index = table.schema.get_field_index(name)
    return table.set_column(index, name, pa.array(values, table.schema.field(name).type))


def failed(report: ValidationReport) -> set[tuple[str, str | None]]:
    return {(r["expectation"], r["column"]) for r in report.failed()}


def test_a_good_table_passes(good):
    report = validate_accepted(good, expected_rows=ROWS, min_clip_score=0.1, width=64, height=64,
                               run_id=good["run_id"][0].as_py(), run_date=good["run_date"][0].as_py())
    assert report.success, report.failed()
    assert report.statistics["unsuccessful_expectations"] == 0
    assert report.statistics["evaluated_expectations"] == len(report.results) >= 30
    assert report.results[0]["expectation"] == "expect_table_columns_to_match_set"
    assert json.loads(json.dumps(report.to_dict()))["success"] is True


def test_the_report_is_frozen(good):
    report = validate_accepted(good)
    with pytest.raises(AttributeError):
        report.success = False


def _duplicate_id(t):
    return replace(t, "item_id", [t["item_id"][0].as_py()] * 2 + t["item_id"].to_pylist()[2:])


BAD_TABLES = {
    "duplicate item_id": (_duplicate_id, {},
                          ("expect_column_values_to_be_unique", "item_id")),
    "null model_sha256": (lambda t: replace(t, "model_sha256", [None] + t["model_sha256"].to_pylist()[1:]),
                          {}, ("expect_column_values_to_not_be_null", "model_sha256")),
    "clip_score 1.5": (lambda t: replace(t, "clip_score", [1.5] + t["clip_score"].to_pylist()[1:]),
                       {}, ("expect_column_values_to_be_between", "clip_score")),
    "clip_score under the threshold": (lambda t: t, {"min_clip_score": 0.9},
                                       ("expect_column_values_to_be_between", "clip_score")),
    "wrong width": (lambda t: t, {"width": 512},
                    ("expect_column_values_to_be_in_set", "width")),
    "wrong height": (lambda t: replace(t, "height", [32] * ROWS), {"height": 64},
                     ("expect_column_values_to_be_in_set", "height")),
    "rejected row": (lambda t: replace(t, "gate_status", ["rejected"] + ["accepted"] * (ROWS - 1)),
                     {}, ("expect_column_values_to_be_in_set", "gate_status")),
    "null image": (lambda t: replace(t, "image", [None] + t["image"].to_pylist()[1:]),
                   {}, ("expect_column_values_to_not_be_null", "image_nbytes")),
    "empty image bytes": (lambda t: replace(t, "image", [{"bytes": b"", "path": None}] * ROWS),
                          {}, ("expect_column_values_to_be_between", "image_nbytes")),
    "wrong row count": (lambda t: t, {"expected_rows": ROWS + 1},
                        ("expect_table_row_count_to_equal", None)),
    "empty table": (lambda t: t.slice(0, 0), {}, ("expect_table_row_count_to_be_between", None)),
    "another run's row": (lambda t: replace(t, "run_id", ["other"] + t["run_id"].to_pylist()[1:]),
                          {"run_id": "__RUN_ID__"}, ("expect_column_values_to_be_in_set", "run_id")),
    "another date's row": (lambda t: replace(t, "run_date", ["1999-12-31"] + t["run_date"].to_pylist()[1:]),
                           {"run_date": "__RUN_DATE__"}, ("expect_column_values_to_be_in_set", "run_date")),
}


@pytest.mark.parametrize("case", list(BAD_TABLES))
def test_a_bad_table_fails_and_names_the_expectation(good, case):
    mutate, options, expected_failure = BAD_TABLES[case]
    own = {"__RUN_ID__": good["run_id"][0].as_py(), "__RUN_DATE__": good["run_date"][0].as_py()}
    options = {key: own.get(value, value) for key, value in options.items()}
    report = validate_accepted(mutate(good), **options)
    assert not report.success
    assert expected_failure in failed(report)
    json.dumps(report.to_dict())


def test_the_failure_shows_what_was_observed(good):
    report = validate_accepted(replace(good, "width", [32] * ROWS), width=64)
    (width,) = [r for r in report.failed() if r["column"] == "width"]
    assert width["observed"] == {"unexpected_count": ROWS, "examples": [32, 32, 32]}
    assert width["expected"] == {"value_set": [64]}


def test_a_missing_column_fails_cleanly(good):
    report = validate_accepted(good.drop_columns(["model_sha256", "image"]))
    assert not report.success
    (columns,) = [r for r in report.results
                  if r["expectation"] == "expect_table_columns_to_match_set"]
    assert sorted(columns["observed"]["missing"]) == ["image_nbytes", "model_sha256"]
    (missing,) = [r for r in report.failed() if r["column"] == "model_sha256"]
    assert "model_sha256" in missing["error"]


def test_a_table_without_columns_fails_cleanly():
    report = validate_accepted(pa.table({}))
    assert not report.success
    assert ("expect_table_columns_to_match_set", None) in failed(report)
