"""One synthcat run: ingest -> plan -> generate/score/encode (sharded) -> gate -> validate -> publish.

`run_job` is the single entry point the CLI (and the Airflow DAGs) call. Everything it
needs arrives as arguments; it reads no environment variables.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

import pipeline
from pipeline.config import JobConfig
from pipeline.errors import GateFailedError
from pipeline.executor import make_batches, run_stages
from pipeline.ingest import IngestResult, check_bad_row_share, read_manifest
from pipeline.models.presets import resolve_model, resolve_scorer, weights_sha256
from pipeline.plan import plan_items
from pipeline.progress import Progress
from pipeline.shards import ShardStore
from pipeline.stages.encode import EncodeStage
from pipeline.stages.gate import apply_gates
from pipeline.stages.generate import GenerateStage
from pipeline.stages.score import ScoreStage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunRequest:
    """What to run: the edge (CLI, DAG) fills this in from arguments and the environment."""

    manifest: Path
    config: JobConfig
    out: Path
    run_date: str
    run_id: str
    models_dir: Path
    ray_address: str | None = None
    ray_num_cpus: int | None = None
    show_progress: bool = True


@dataclass
class RunSummary:
    run_id: str
    run_date: str
    dataset_root: Path
    items: int
    generated: int
    resumed_shards: int
    accepted: int
    rejected: int
    reasons: dict[str, int]
    bad_rows: int
    images_per_s: float
    seconds: float
    manifest_path: Path
    report_path: Path
    timings: dict[str, float] = field(default_factory=dict)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _build_stages(request: RunRequest):
    config = request.config
    model = resolve_model(config.model, request.models_dir)
    scorer = resolve_scorer(config.scorer or model.scorer, request.models_dir)
    steps = config.generation.steps or model.steps
    guidance = model.guidance_scale if config.generation.guidance_scale is None else config.generation.guidance_scale
    stages = [
        GenerateStage(model.path, model.name, weights_sha256(model.path), model.pipeline_class,
                      steps, guidance, resources=config.resources.generate),
        ScoreStage(scorer.path, scorer.name, resources=config.resources.score),
        EncodeStage(config.image_format, resources=config.resources.encode),
    ]
    return model, scorer, stages


def run_job(request: RunRequest) -> RunSummary:
    """Run one job end to end and publish it; raises SynthcatError subclasses for users' errors."""
    config, started = request.config, time.perf_counter()
    timings: dict[str, float] = {}
    dataset_root = request.out / config.dataset
    staging = dataset_root / "_staging" / request.run_id

    # 1. Ingest and check the manifest: a bad file or too many bad rows stop here, before any work
    tick = time.perf_counter()
    ingest = read_manifest(request.manifest, config)
    check_bad_row_share(ingest, config.max_bad_row_share)
    timings["ingest"] = time.perf_counter() - tick

    # 2. Resolve models and plan items (deterministic ids, seeds and shards)
    model, scorer, stages = _build_stages(request)
    width, height = config.generation.width or model.width, config.generation.height or model.height
    items = plan_items(ingest.products, config, run_id=request.run_id, run_date=request.run_date,
                       width=width, height=height)

    # 3. Generate, score and encode every shard not already done (resume = skip finished shards)
    store = ShardStore(staging / "shards")
    done = store.done()
    todo = items.filter(pc.invert(pc.is_in(items.column("shard_id"), pa.array(sorted(done), pa.string()))))
    expected = {s: c for s, c in zip(*_value_counts(todo.column("shard_id")))}
    tick = time.perf_counter()
    with Progress("generate", total=todo.num_rows, enabled=request.show_progress) as bar:
        batches = make_batches(todo, config.resources.generate.batch_size)
        results = run_stages(stages, batches, executor=config.executor, ray_address=request.ray_address,
                             num_cpus=request.ray_num_cpus)
        for _, rows in store.collect(results, expected):
            bar.advance(rows)
    timings["generate"] = time.perf_counter() - tick

    # 4. Gate the whole run at once (duplicates are a global property)
    tick = time.perf_counter()
    produced = store.read_all()
    if produced.num_rows != items.num_rows:
        raise RuntimeError(f"staging holds {produced.num_rows} rows for {items.num_rows} planned items")
    min_score = scorer.min_clip_score if config.gates.min_clip_score is None else config.gates.min_clip_score
    gated = apply_gates(produced, min_clip_score=min_score, exact_duplicates=config.gates.exact_duplicates,
                        created_at=datetime.now(timezone.utc))
    timings["gate"] = time.perf_counter() - tick

    # 5. Validate the accepted table; a failure publishes nothing
    from validators import validate_accepted

    tick = time.perf_counter()
    report = validate_accepted(gated.accepted, min_clip_score=min_score)
    timings["validate"] = time.perf_counter() - tick
    if not report.success:
        failed = [r for r in report.results if not r["success"]]
        names = "; ".join(f"{r['expectation']}({r.get('column') or ''}): {r.get('observed')}" for r in failed[:5])
        raise GateFailedError(f"validation failed, nothing published ({len(failed)} expectations): {names}")

    # 6. Stage, then publish atomically; the run's manifest.json is written last
    from pipeline.publish import publish_run, stage_run
    from pipeline.report import write_report

    tick = time.perf_counter()
    run_dir = dataset_root / "_runs" / request.run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_input_rejects(ingest, run_dir)
    seconds = time.perf_counter() - started
    images_per_s = todo.num_rows / timings["generate"] if todo.num_rows and timings["generate"] else 0.0
    summary = RunSummary(
        run_id=request.run_id, run_date=request.run_date, dataset_root=dataset_root,
        items=items.num_rows, generated=todo.num_rows, resumed_shards=len(done),
        accepted=gated.accepted.num_rows, rejected=gated.rejected.num_rows, reasons=gated.reasons(),
        bad_rows=ingest.bad_rows, images_per_s=images_per_s, seconds=seconds,
        manifest_path=run_dir / "manifest.json", report_path=run_dir / "report.html", timings=timings,
    )
    write_report(summary.report_path, gated.accepted, gated.rejected, summary, report.to_dict())
    stage_run(staging / "publish", gated.accepted, gated.rejected, request.run_id)
    manifest = {
        "run_id": request.run_id, "run_date": request.run_date, "dataset": config.dataset,
        "synthcat_version": pipeline.__version__,
        "input": {"path": str(request.manifest), "sha256": _sha256_file(request.manifest),
                  "rows": ingest.total_rows, "bad_rows": ingest.bad_rows},
        "config": config.model_dump(mode="json"),
        "models": {"generator": {"id": model.name, "path": str(model.path),
                                 "sha256": stages[0].model_sha256, "class": model.pipeline_class},
                   "scorer": {"id": scorer.name, "path": str(scorer.path), "min_clip_score": min_score}},
        "items": items.num_rows, "reasons": summary.reasons, "validation": report.to_dict(),
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
    }
    publish_run(dataset_root, staging / "publish", request.run_id, [request.run_date], manifest)
    timings["publish"] = time.perf_counter() - tick
    summary.seconds = time.perf_counter() - started
    shutil.rmtree(staging, ignore_errors=True)
    return summary


def _value_counts(column: pa.ChunkedArray) -> tuple[list[str], list[int]]:
    counts = pc.value_counts(column)
    return counts.field("values").to_pylist(), counts.field("counts").to_pylist()


def _write_input_rejects(ingest: IngestResult, run_dir: Path) -> None:
    """Bad manifest rows (line, field, reason, raw row) go into the run's record for the operator."""
    if ingest.rejects.num_rows:
        pq.write_table(ingest.rejects, run_dir / "input_rejects.parquet")
