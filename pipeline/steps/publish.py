"""Step 5: write the report, stage the dataset's Parquet files, swap them in, manifest last."""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from pathlib import Path

import pipeline
from pipeline.config import parse_job_config
from pipeline.errors import BadInputError, GateFailedError
from pipeline.shards import ShardStore
from pipeline.steps.gate import gated_tables
from pipeline.steps.state import STATE, RunSummary, generation_rate, read_state


def publish(staging: Path, summary_extra: dict | None = None) -> RunSummary:
    """Write the report, stage the Parquet files, swap partitions in, write manifest.json last."""
    published = staging.parents[1] / "_runs" / staging.name / "manifest.json"
    if not (staging / STATE).is_file() and published.is_file():
        # a retried task whose first attempt finished, its staging already cleaned up (the worker
        # died before Airflow recorded the success); prepare refuses another run under a published id
        return RunSummary.of_manifest(published, json.loads(published.read_text(encoding="utf-8")))
    state, tick = read_state(staging), time.perf_counter()
    root, run_id = Path(state["dataset_root"]), state["run_id"]
    run_dir = root / "_runs" / run_id
    if (run_dir / "manifest.json").is_file():  # before anything is written into the run's folder
        return _committed(staging, state, run_dir / "manifest.json", summary_extra or {})
    if not state.get("validation", {}).get("success"):
        raise GateFailedError(f"{staging}: the run has not passed validation; nothing published")
    accepted, rejected = (_photos_as_catalogued(table, state.get("photo_base")) for table in gated_tables(staging))
    shards = ShardStore(staging / "shards")
    summary = _summary(state, run_dir / "report.html", accepted, rejected, summary_extra or {})
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        _publish(staging, state, summary, accepted, rejected, shards)
    except BaseException:
        if not summary.manifest_path.exists():  # not committed: no run folder without its commit record
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    _finish(root, staging)
    summary.timings["publish"] = time.perf_counter() - tick
    return summary


def failed_run_report(staging: Path) -> Path:
    """The report of a run that failed validation, in its staging folder (nothing is published):
    its accepted and rejected images, scores, reasons, and the expectations that failed."""
    state = read_state(staging)
    accepted, rejected = (_photos_as_catalogued(table, state.get("photo_base")) for table in gated_tables(staging))
    summary = _summary(state, staging / "report.html", accepted, rejected, {})
    return _write_report(state, summary, accepted, rejected, ShardStore(staging / "shards"))


def _summary(state: dict, report_path: Path, accepted, rejected, extra: dict) -> RunSummary:
    from pipeline.cost import run_cost

    root, run_id = Path(state["dataset_root"]), state["run_id"]
    return RunSummary(
        run_id=run_id, run_date=state["run_date"], dataset_root=root, items=state["items"],
        generated=extra.get("generated", state["items"]), resumed_shards=extra.get("skipped", 0),
        accepted=accepted.num_rows, rejected=rejected.num_rows, reasons=state["gate"]["reasons"],
        bad_rows=state["input"]["bad_rows"], images_per_s=extra.get("images_per_s") or generation_rate(state),
        seconds=extra.get("seconds", 0.0), manifest_path=root / "_runs" / run_id / "manifest.json",
        report_path=report_path, timings=dict(state["timings"]),
        regenerated=state["gate"].get("regenerated", 0),
        cost=run_cost(state.get("device"), accepted.num_rows, parse_job_config(state["config"]).cost),
    )


def _write_report(state: dict, summary: RunSummary, accepted, rejected, shards) -> Path:
    from pipeline.report import write_report

    return write_report(summary.report_path, accepted, rejected, summary, state["validation"],
                        thresholds=state["scorer"], thumbnails=shards.thumbnails)


def _publish(staging: Path, state: dict, summary: RunSummary, accepted, rejected, shards) -> None:
    """The run's folder (input rejects, report), its staged files swapped in, the manifest last."""
    from pipeline.publish import publish_run, stage_run
    from pipeline.training.diversity import training_metrics

    root, run_id, run_dir = summary.dataset_root, summary.run_id, summary.manifest_path.parent
    if (staging / "input_rejects.parquet").is_file():
        shutil.copyfile(staging / "input_rejects.parquet", run_dir / "input_rejects.parquet")
    _write_report(state, summary, accepted, rejected, shards)
    # the images are copied into the dataset's files from the shards, in one pass over them
    stage_run(staging / "publish", accepted, rejected, run_id, images=shards)
    manifest = {
        "run_id": run_id, "run_date": state["run_date"], "dataset": state["dataset"],
        "synthcat_version": pipeline.__version__, "input": state["input"], "config": state["config"],
        "models": {"generator": state["generator"], "scorer": state["scorer"],
                   "reference": state.get("reference")},  # the memorization gate's index, None: none
        "items": state["items"], "reasons": state["gate"]["reasons"], "validation": state["validation"],
        "regenerated": summary.regenerated, "images_per_s": summary.images_per_s,
        "timings_s": {k: round(v, 3) for k, v in state["timings"].items()}, "cost": summary.cost,
    }
    if training := training_metrics(accepted, rejected):  # per class and split: Vendi, clip_score, duplicates
        manifest["training"] = training
    publish_run(root, staging / "publish", run_id, [state["run_date"]], manifest)


def _finish(root: Path, staging: Path) -> None:
    """After the commit: the dataset card, then the staging folder goes (and `_staging/` with it
    when no other run has one)."""
    from pipeline.publish import publish_lock
    from pipeline.training.card import write_dataset_card

    # README.md at the dataset root (its `configs` keep `load_dataset(<root>)` off rejects/), made
    # from the live files under the publish lock: a card rendered before another run's commit is
    # never written after it
    with publish_lock(root):
        write_dataset_card(root)
    shutil.rmtree(staging, ignore_errors=True)
    with contextlib.suppress(OSError):
        staging.parent.rmdir()


def _committed(staging: Path, state: dict, manifest_path: Path, extra: dict) -> RunSummary:
    """The run id is published. The same run (input, config, run date), killed between its commit
    and its clean-up, is finished and its summary returned (a retried Airflow task succeeds);
    another run under that id is refused before it writes anything."""
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    if any(_same_run(manifest.get(key)) != _same_run(state.get(key)) for key in ("input", "config", "run_date")):
        raise BadInputError(f"run {state['run_id']} is already published ({manifest_path}); "
                            "publish this one under a new --run-id")
    _finish(manifest_path.parents[2], staging)
    summary = RunSummary.of_manifest(manifest_path, manifest)
    summary.resumed_shards = extra.get("skipped", 0)  # this attempt's, as a normal publish reports it
    return summary


def _same_run(value):
    """What tells two attempts of a run apart: the input by its bytes, not by how its path was
    spelt (`examples/catalog.csv`, then `/abs/path/examples/catalog.csv`)."""
    return {k: v for k, v in value.items() if k != "path"} if isinstance(value, dict) and "sha256" in value else value


def _photos_as_catalogued(table, base: str | None):
    """`product_image` relative to the catalog's folder, as the catalog names it, where the photo
    lies under it: the dataset does not carry the producing machine's paths (`product_image_sha256`
    identifies the photo)."""
    import pyarrow as pa

    if not base or "product_image" not in table.column_names:
        return table
    root = Path(base)
    paths = [p if not p or not Path(p).is_relative_to(root) else Path(p).relative_to(root).as_posix()
             for p in table.column("product_image").to_pylist()]
    return table.set_column(table.schema.get_field_index("product_image"), "product_image", pa.array(paths, pa.string()))
