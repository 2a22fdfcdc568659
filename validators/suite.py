"""The Great Expectations suite a run's ACCEPTED table must pass before it is published."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.schema import ACCEPTED, OUTPUT_SCHEMA

# Every accepted row must say where it came from (DESIGN.md "Every row carries its lineage").
LINEAGE_COLUMNS = (
    "item_id", "run_id", "run_date", "sku", "market", "locale", "kind", "variant", "format",
    "attempt", "prompt", "seed", "model_id", "model_sha256", "scheduler", "steps",
    "guidance_scale", "width", "height", "image_sha256", "clip_model", "clip_score",
    "gate_status", "created_at",
)

# Heavy columns are replaced by small derived ones before pandas sees the table: GE only needs
# to know that the image bytes are there and how long the embedding is.
_DERIVED = {"image": "image_nbytes", "clip_embedding": "clip_embedding_dim"}


@dataclass(frozen=True)
class ValidationReport:
    """The outcome of the suite: overall success, GE's statistics and one entry per expectation."""

    success: bool
    statistics: dict = field(default_factory=dict)
    results: list[dict] = field(default_factory=list)

    def failed(self) -> list[dict]:
        """The results of the expectations that did not pass."""
        return [r for r in self.results if not r["success"]]

    def to_dict(self) -> dict:
        """A JSON-serialisable copy, as written into the run's manifest.json."""
        return _jsonable({"success": self.success, "statistics": self.statistics,
                          "results": self.results})


def validate_accepted(table: pa.Table, *, expected_rows: int | None = None,
                      min_clip_score: float | None = None, width: int | None = None,
                      height: int | None = None, run_id: str | None = None,
                      run_date: str | None = None) -> ValidationReport:
    """Run the accepted-rows suite over `table` and report every expectation's result
    (`run_id`, `run_date`: every row must be the run's own, of its date).

    Never raises for bad data: a missing column, an empty table or a bad value shows up as a
    failed expectation. The caller decides what a failure means (GateFailedError, exit 3).
    """
    import great_expectations as gx  # slow import (~3 s): only when a run validates

    # 1. Build a light DataFrame (no image bytes or embeddings).
    frame = _light_frame(table)

    # 2. Declare the suite.
    suite = gx.ExpectationSuite(name="synthcat-accepted", expectations=_expectations(
        gx.expectations, expected_rows=expected_rows, min_clip_score=min_clip_score,
        width=width, height=height, run_id=run_id, run_date=run_date))

    # 3. Validate the whole DataFrame as one batch in an in-memory context.
    context = _ephemeral_context(gx)
    batch = (context.data_sources.add_pandas("synthcat")
             .add_dataframe_asset("accepted")
             .add_batch_definition_whole_dataframe("whole-run"))
    suite = context.suites.add(suite)
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name="synthcat-accepted", data=batch, suite=suite))
    outcome = definition.run(batch_parameters={"dataframe": frame})

    # 4. Report in the suite's order, each with a short observed value.
    order = {expectation.id: i for i, expectation in enumerate(suite.expectations)}
    results = sorted(outcome.results, key=lambda r: order.get(r.expectation_config.id, len(order)))
    return ValidationReport(success=bool(outcome.success),
                            statistics=_jsonable(dict(outcome.statistics)),
                            results=[_summarise(r) for r in results])


def _light_frame(table: pa.Table):
    derived = {}
    if "image" in table.column_names:
        derived["image_nbytes"] = pc.binary_length(pc.struct_field(table["image"], "bytes"))
    if "clip_embedding" in table.column_names:
        derived["clip_embedding_dim"] = pc.list_value_length(table["clip_embedding"])
    light = table.drop_columns([c for c in _DERIVED if c in table.column_names])
    for name, values in derived.items():
        light = light.append_column(name, values)
    return light.to_pandas()


def _expectations(E, *, expected_rows, min_clip_score, width, height, run_id=None, run_date=None) -> list:
    expected_columns = [_DERIVED.get(f.name, f.name) for f in OUTPUT_SCHEMA]
    expectations = [E.ExpectTableColumnsToMatchSet(column_set=expected_columns, exact_match=False)]
    if expected_rows is None:
        expectations.append(E.ExpectTableRowCountToBeBetween(min_value=1))
    else:
        expectations.append(E.ExpectTableRowCountToEqual(value=expected_rows))
    expectations += [E.ExpectColumnValuesToNotBeNull(column=c)
                     for c in (*LINEAGE_COLUMNS, "image_nbytes")]
    expectations += [
        E.ExpectColumnValuesToBeUnique(column="item_id"),
        E.ExpectColumnValuesToBeBetween(column="image_nbytes", min_value=1),
        E.ExpectColumnValuesToBeBetween(column="clip_score", min_value=-1.0, max_value=1.0),
        E.ExpectColumnValuesToBeInSet(column="gate_status", value_set=[ACCEPTED]),
        # campaign copy is legible (WCAG AA); null on other kinds, which GX leaves out
        E.ExpectColumnValuesToBeBetween(column="overlay_contrast", min_value=4.5, max_value=21.0),
    ]
    if min_clip_score is not None:
        expectations.append(E.ExpectColumnValuesToBeBetween(column="clip_score",
                                                            min_value=float(min_clip_score)))
    for column, value in (("run_id", run_id), ("run_date", run_date)):  # rows of another run would be
        if value is not None:                                             # published as this one's
            expectations.append(E.ExpectColumnValuesToBeInSet(column=column, value_set=[value]))
    if width is not None:
        expectations.append(E.ExpectColumnValuesToBeInSet(column="width", value_set=[width]))
    if height is not None:
        expectations.append(E.ExpectColumnValuesToBeInSet(column="height", value_set=[height]))
    return expectations


def _ephemeral_context(gx):
    from great_expectations.data_context.types.base import (
        DataContextConfig, InMemoryStoreBackendDefaults, ProgressBarsConfig)

    # In memory, no progress bars, no usage statistics: a pipeline step, not a notebook.
    config = DataContextConfig(store_backend_defaults=InMemoryStoreBackendDefaults(),
                               progress_bars=ProgressBarsConfig(globally=False),
                               analytics_enabled=False)
    return gx.get_context(mode="ephemeral", project_config=config)


def _summarise(result) -> dict:
    config = result.expectation_config
    kwargs = {k: v for k, v in config.kwargs.items() if k not in ("batch_id", "column")}
    if "column_set" in kwargs:  # 38 names: the missing ones say enough
        kwargs = {"exact_match": kwargs.get("exact_match")}
    summary = {"expectation": config.type, "column": config.kwargs.get("column"),
               "success": bool(result.success), "expected": kwargs,
               "observed": _observed(result.result or {})}
    message = (result.exception_info or {}).get("exception_message")
    if message is None:  # on a metric error GE nests the info under the metric's id
        nested = [v for v in (result.exception_info or {}).values() if isinstance(v, dict)]
        message = next((v.get("exception_message") for v in nested if v.get("raised_exception")),
                       None)
    if message:
        summary["error"] = message
    return _jsonable(summary)


def _observed(result: dict):
    mismatched = (result.get("details") or {}).get("mismatched")
    if isinstance(mismatched, dict):
        return {"missing": mismatched.get("missing", [])}
    if "observed_value" in result:
        return result["observed_value"]
    if "unexpected_count" in result:
        return {"unexpected_count": result["unexpected_count"],
                "examples": list(result.get("partial_unexpected_list") or [])[:3]}
    return None


def _jsonable(value):
    # numpy scalars, timestamps and the like become plain JSON values (or their str()).
    return json.loads(json.dumps(value, default=str))
