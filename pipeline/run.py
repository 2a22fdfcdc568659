"""One synthcat run as five steps: prepare -> generate shards -> consolidate -> validate -> publish.

Every step reads what it needs from the run's staging folder and writes its result there
(`_staging/<run_id>/`), so each can run in its own process: all in one `synthcat run`, as
separate Airflow tasks, or (the shard step) as a Ray job on a cluster. XCom and job
arguments carry paths and counts only. Nothing here reads environment variables.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

import pipeline
from pipeline.config import JobConfig, parse_job_config
from pipeline.errors import BadInputError, GateFailedError
from pipeline.schema import GATED_SCHEMA, OUTPUT_SCHEMA, conform
from pipeline.shards import ShardStore, shard_sizes
from pipeline.warm_models import held_idle, keep_models_warm

STATE = "run.json"  # the staging folder's record of the run: request, models, step results


@dataclass(frozen=True)
class RunRequest:
    """What to run: the edge (CLI, DAG) fills this in from arguments and the environment."""

    manifest: Path
    config: JobConfig
    out: Path
    run_date: str
    run_id: str
    models_dir: Path
    skus: tuple[str, ...] = ()          # on-demand subset; empty = every SKU
    ray_address: str | None = None
    ray_num_cpus: int | None = None
    show_progress: bool = True

    @property
    def dataset_root(self) -> Path:
        return self.out / self.config.dataset

    @property
    def staging(self) -> Path:
        return self.dataset_root / "_staging" / self.run_id


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
    regenerated: int = 0
    cost: dict = field(default_factory=dict)  # device-seconds and price per accepted image (pipeline/cost.py)


# --- the staging record -------------------------------------------------------------------------
def read_state(staging: Path) -> dict:
    path = staging / STATE
    if not path.is_file():
        raise BadInputError(f"{staging}: no {STATE}; run the prepare step first")
    return json.loads(path.read_text(encoding="utf-8"))


def _update_state(staging: Path, **values) -> dict:
    path = staging / STATE
    state = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    state.update(values)
    tmp = path.with_name(f".{STATE}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(state, indent=2, default=str), encoding="utf-8")
    os.replace(tmp, path)
    return state


# --- 1. prepare ---------------------------------------------------------------------------------
def prepare(request: RunRequest) -> dict:
    """Ingest and check the manifest, resolve the models, plan items and shards into staging.

    A bad file or too many bad rows raise BadInputError here, before any work. Preparing
    again (a resume, a task retry) rewrites the same plan: ids and seeds are deterministic.
    """
    from pipeline.ingest import check_bad_row_share, read_manifest
    from pipeline.consolidate import memorization_thresholds, resolve_reference
    from pipeline.models.presets import resolve_model, resolve_scorer, weights_sha256
    from pipeline.plan import plan_items
    from pipeline.publish import sha256_file

    tick, config = time.perf_counter(), request.config
    ingest = read_manifest(request.manifest, config)
    check_bad_row_share(ingest, config.max_bad_row_share)
    products = ingest.products
    if request.skus:
        if unknown := sorted(set(request.skus) - set(products.column("sku").to_pylist())):
            raise BadInputError(f"{request.manifest}: skus not in the manifest: {', '.join(unknown)}")
        products = products.filter(pc.is_in(products.column("sku"), pa.array(list(request.skus))))
    model = resolve_model(config.model, request.models_dir)
    scorer = resolve_scorer(config.scorer or model.scorer, request.models_dir)
    # the memorization gate's reference index (the tiny preset's training set unless the job
    # names one or `none`): built here on first use, so a bad path fails before any work
    reference = resolve_reference(config.gates, model.name, request.models_dir, scorer.path)
    generation = config.generation
    items = plan_items(products, config, run_id=request.run_id, run_date=request.run_date,
                       width=generation.width or model.width, height=generation.height or model.height,
                       models_dir=request.models_dir)

    staging = request.staging
    model_sha256 = weights_sha256(model.path)
    steps = generation.steps or model.steps
    guidance = model.guidance_scale if generation.guidance_scale is None else generation.guidance_scale
    encoding = f"{config.image_format}|{config.png_compress_level}"
    fingerprint = _plan_fingerprint(items, f"{model_sha256}|{steps}|{guidance}|{encoding}")
    _check_resumable(staging, fingerprint)
    staging.mkdir(parents=True, exist_ok=True)
    pq.write_table(items, staging / "plan.parquet")
    if ingest.rejects.num_rows:
        pq.write_table(ingest.rejects, staging / "input_rejects.parquet")
    (staging / STATE).unlink(missing_ok=True)  # later steps' results belong to the earlier attempt
    state = _update_state(
        staging, plan_sha256=fingerprint, run_id=request.run_id, run_date=request.run_date, dataset=config.dataset,
        dataset_root=str(request.dataset_root), config=config.model_dump(mode="json"),
        input={"path": str(request.manifest), "sha256": sha256_file(request.manifest),
               "rows": ingest.total_rows, "bad_rows": ingest.bad_rows},
        generator={"id": model.name, "path": str(model.path), "class": model.pipeline_class,
                   "sha256": model_sha256, "steps": steps, "guidance_scale": guidance},
        scorer={"id": scorer.name, "path": str(scorer.path),
                "min_clip_score": scorer.min_clip_score if config.gates.min_clip_score is None
                else config.gates.min_clip_score,
                "min_semantic_cosine": scorer.min_semantic_cosine if config.gates.min_semantic_cosine is None
                else config.gates.min_semantic_cosine,
                **memorization_thresholds(config.gates, model, scorer)},
        reference=reference,
        items=items.num_rows, shards=shard_sizes(items),
        timings={"prepare": time.perf_counter() - tick},
    )
    return {"staging": str(staging), "items": state["items"], "shards": sorted(state["shards"]),
            "bad_rows": ingest.bad_rows}


def _plan_fingerprint(items: pa.Table, generator: str) -> str:
    """A hash of what decides every image: ids, shards, seeds, prompts, sizes and the generator."""
    digest = hashlib.sha256(generator.encode())
    for name in ("item_id", "shard_id", "seed", "prompt", "negative_prompt", "width", "height",
                 "guidance_override"):
        digest.update("\x1f".join(map(str, items.column(name).to_pylist())).encode())
    return digest.hexdigest()


def _check_resumable(staging: Path, fingerprint: str) -> None:
    """Resuming is only sound when the plan is the one the finished shards were made from."""
    path = staging / STATE
    previous = json.loads(path.read_text(encoding="utf-8")).get("plan_sha256") if path.is_file() else None
    if previous and previous != fingerprint and any((staging / "shards").glob("shard-*.parquet")):
        raise BadInputError(
            f"run id {staging.name!r} was started with a different manifest, config or model; "
            f"resume it with the same inputs, or use a new --run-id (staging: {staging})")


# --- 2. generate, score and encode shards -------------------------------------------------------
def build_stages(state: dict, items: int | None = None) -> list:
    """The stage chain of a prepared run (models as resolved by `prepare`) for `items` items."""
    from pipeline.campaign.chain import campaign_generation, campaign_stages
    from pipeline.stages.encode import EncodeStage
    from pipeline.stages.engine import engine_for
    from pipeline.stages.fused import generate_and_score
    from pipeline.stages.generate import GenerateStage
    from pipeline.stages.score import ScoreStage

    config, gen, scorer = parse_job_config(state["config"]), state["generator"], state["scorer"]
    return [
        *generate_and_score(  # one worker for both when they share a device kind (engine.fuse_score)
            GenerateStage(Path(gen["path"]), gen["id"], gen["sha256"], gen["class"], gen["steps"],
                          gen["guidance_scale"], resources=config.resources.generate,
                          campaign=campaign_generation(config, gen), engine=engine_for(config, items)),
            ScoreStage(Path(scorer["path"]), scorer["id"], resources=config.resources.score,
                       engine=config.engine),
            config.engine),
        *campaign_stages(config),  # composite, overlay, integrity (pipeline/campaign/chain.py)
        EncodeStage(config.image_format, config.resources.encode, config.png_compress_level),
    ]


def generate_shards(staging: Path, shards: list[str] | None = None, *, ray_address: str | None = None,
                    ray_num_cpus: int | None = None, show_progress: bool = False, on_first_batch=lambda: None) -> dict:
    """Generate every listed shard (default: all) whose file is not already there.

    With an `http(s)://` Ray address the work is submitted to that cluster through the Ray
    Jobs API (see `pipeline.jobs`); otherwise it runs on a local or connected Ray (or in
    process, `executor: local`). A shard file appears only when the shard is complete; the
    first one back calls `on_first_batch()` and ends `first_batch_s`, the start-up.
    """
    from pipeline.cost import add_device_seconds, devices_held
    from pipeline.executor import run_stages
    from pipeline.plan import generation_batches
    from pipeline.progress import Progress

    state = read_state(staging)
    wanted = sorted(state["shards"]) if shards is None else list(shards)
    if unknown := set(wanted) - set(state["shards"]):
        raise BadInputError(f"{staging}: unknown shards {sorted(unknown)}")
    store = ShardStore(staging / "shards")
    done = store.done()  # one listing of the shard folder, not one per shard
    todo_shards = [s for s in wanted if s not in done]
    if ray_address and ray_address.startswith(("http://", "https://")) and todo_shards:
        from pipeline.jobs import submit_shards

        submit_shards(ray_address, staging, todo_shards, state)
        return {"shards": len(wanted), "generated": sum(state["shards"][s] for s in todo_shards),
                "skipped": len(wanted) - len(todo_shards)}

    config = parse_job_config(state["config"])
    plan = pq.read_table(staging / "plan.parquet")
    todo = plan.filter(pc.is_in(plan.column("shard_id"), pa.array(todo_shards, pa.string())))
    tick, first_batch_s = time.perf_counter(), None
    stages = build_stages(state, todo.num_rows)
    # a step of the run: the next one (consolidate, on the same Ray) may take the models up
    with Progress("generate", total=todo.num_rows, enabled=show_progress) as bar, keep_models_warm(state, last=False):
        batches = generation_batches(todo, config.resources.generate.batch_size)
        results = run_stages(stages, batches, executor=config.executor, ray_address=ray_address, num_cpus=ray_num_cpus)
        for _, rows in store.collect(results, {s: state["shards"][s] for s in todo_shards}):
            if first_batch_s is None:  # start-up ends here: Ray Data, the actors, their models
                first_batch_s = time.perf_counter() - tick
                on_first_batch()
            bar.advance(rows)
        seconds = time.perf_counter() - tick
        if todo.num_rows:  # held for this round, and idle since the last (read in the step's session)
            _update_state(staging, device=add_device_seconds(read_state(staging).get("device"), *devices_held(stages),
                                                             seconds, held_idle(seconds)))
    return {"shards": len(wanted), "generated": todo.num_rows, "skipped": len(wanted) - len(todo_shards),
            "seconds": seconds, "first_batch_s": first_batch_s}


# --- 3. consolidate: the global gates -----------------------------------------------------------
def consolidate(staging: Path, *, ray_address: str | None = None, ray_num_cpus: int | None = None) -> dict:
    """Gate the whole run at once (duplicates are a global property); regenerate failing items
    with their next seed up to `gates.max_attempts`; write accepted and rejected rows."""
    from pipeline.consolidate import (gate_settings, plan_retries, published_history, reference_index,
                                      run_gates, write_plan)
    from pipeline.cost import add_held_idle

    state, tick, regenerated = read_state(staging), time.perf_counter(), 0
    config = parse_job_config(state["config"])
    store = ShardStore(staging / "shards")
    settings = gate_settings(config, state["scorer"])
    history = (published_history(Path(state["dataset_root"]), state["run_date"], state["scorer"]["id"])
               if config.gates.dedupe_history else None)
    reference = (reference_index(config, state["scorer"], state["reference"]) if "reference" in state
                 else reference_index(config, state["scorer"]))  # prepared before the reference was recorded
    with keep_models_warm(state) as warm:  # each regeneration round reuses the models the first one loaded
        warm.take_up_left_hosts(ray_address)  # the run's generate tasks left them: ended when this step ends
        while True:
            missing = sorted(set(state["shards"]) - store.done())
            if missing:
                raise RuntimeError(f"{staging}: shards not generated yet: {', '.join(missing[:5])}")
            gated = run_gates(store.read_all(sorted(state["shards"]), images=False),  # images stay in the shards
                              settings, history, reference)
            if gated.accepted.num_rows + gated.rejected.num_rows != state["items"]:
                raise RuntimeError(f"{staging}: gated {gated.accepted.num_rows + gated.rejected.num_rows} "
                                   f"items of {state['items']} planned")
            failed = gated.rejected.filter(pc.less(gated.rejected.column("attempt"), config.gates.max_attempts - 1))
            if failed.num_rows == 0:
                break
            plan = pq.read_table(staging / "plan.parquet")
            retries = plan_retries(plan, failed, config.shard_size)
            write_plan(staging, pa.concat_tables([plan, retries]))
            sizes = shard_sizes(retries)
            if clash := set(sizes) & set(state["shards"]):  # they would be skipped as done: an endless loop
                raise RuntimeError(f"{staging}: retry shards already planned: {sorted(clash)}")
            state = _update_state(staging, shards={**state["shards"], **sizes})
            generate_shards(staging, list(sizes), ray_address=ray_address, ray_num_cpus=ray_num_cpus)
            regenerated += retries.num_rows
        idle = held_idle()  # the last gate pass ran with the models still set up: held too
    (staging / "gated").mkdir(exist_ok=True)
    pq.write_table(gated.accepted, staging / "gated" / "accepted.parquet")
    pq.write_table(gated.rejected, staging / "gated" / "rejected.parquet")
    result = {"accepted": gated.accepted.num_rows, "rejected": gated.rejected.num_rows,
              "reasons": gated.reasons(), "regenerated": regenerated,
              "history_rows": 0 if history is None else history.num_rows}
    _update_state(staging, gate=result, timings={**state["timings"], "gate": time.perf_counter() - tick},
                  device=add_held_idle(read_state(staging).get("device"), idle))
    return result


def _gated(staging: Path) -> tuple[pa.Table, pa.Table]:
    """(accepted, rejected) without their images (GATED_SCHEMA), or with them as earlier versions staged them."""
    tables = [pq.read_table(staging / "gated" / f"{name}.parquet") for name in ("accepted", "rejected")]
    accepted, rejected = (conform(t, OUTPUT_SCHEMA if "image" in t.column_names else GATED_SCHEMA) for t in tables)
    return accepted, rejected


# --- 4. validate --------------------------------------------------------------------------------
def validate(staging: Path) -> dict:
    """Run the Great Expectations suite over the accepted rows; a failure raises GateFailedError."""
    from validators import validate_accepted

    state, tick = read_state(staging), time.perf_counter()
    accepted, _ = _gated(staging)
    report = validate_accepted(accepted, min_clip_score=state["scorer"]["min_clip_score"]).to_dict()
    _update_state(staging, validation=report, timings={**state["timings"], "validate": time.perf_counter() - tick})
    if not report["success"]:
        failed = [r for r in report["results"] if not r["success"]]
        names = "; ".join(f"{r['expectation']}({r.get('column') or ''}): observed {r.get('observed')}"
                          for r in failed[:5])
        raise GateFailedError(f"validation failed, nothing published ({len(failed)} expectations "
                              f"failed; details in {staging / STATE}): {names}")
    return {"success": True, "expectations": len(report["results"])}


# --- 5. publish ---------------------------------------------------------------------------------
def publish(staging: Path, summary_extra: dict | None = None) -> RunSummary:
    """Write the report, stage the Parquet files, swap partitions in, write manifest.json last."""
    from pipeline.cost import run_cost
    from pipeline.publish import publish_run, stage_run
    from pipeline.report import write_report
    from pipeline.training.card import wants_card, write_dataset_card
    from pipeline.training.diversity import training_metrics

    state, tick = read_state(staging), time.perf_counter()
    if not state.get("validation", {}).get("success"):
        raise GateFailedError(f"{staging}: the run has not passed validation; nothing published")
    accepted, rejected = _gated(staging)
    shards = ShardStore(staging / "shards")
    root, run_id = Path(state["dataset_root"]), state["run_id"]
    run_dir = root / "_runs" / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    if (staging / "input_rejects.parquet").is_file():
        shutil.copyfile(staging / "input_rejects.parquet", run_dir / "input_rejects.parquet")
    extra = summary_extra or {}
    summary = RunSummary(
        run_id=run_id, run_date=state["run_date"], dataset_root=root, items=state["items"],
        generated=extra.get("generated", state["items"]), resumed_shards=extra.get("skipped", 0),
        accepted=accepted.num_rows, rejected=rejected.num_rows, reasons=state["gate"]["reasons"],
        bad_rows=state["input"]["bad_rows"], images_per_s=extra.get("images_per_s", 0.0),
        seconds=extra.get("seconds", 0.0), manifest_path=run_dir / "manifest.json",
        report_path=run_dir / "report.html", timings=dict(state["timings"]),
        regenerated=state["gate"].get("regenerated", 0),
        cost=run_cost(state.get("device"), accepted.num_rows, parse_job_config(state["config"]).cost),
    )
    write_report(summary.report_path, accepted, rejected, summary, state["validation"], thresholds=state["scorer"],
                 thumbnails=shards.thumbnails)
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
    if wants_card(root, parse_job_config(state["config"])):
        write_dataset_card(root)  # README.md at the dataset root, refreshed at each publish
    shutil.rmtree(staging, ignore_errors=True)
    summary.timings["publish"] = time.perf_counter() - tick
    return summary


# --- all five, in one process -------------------------------------------------------------------
def run_job(request: RunRequest) -> RunSummary:
    """Run one job end to end and publish it; raises SynthcatError subclasses for users' errors."""
    started = time.perf_counter()
    prepared = prepare(request)
    staging = Path(prepared["staging"])
    # Great Expectations takes seconds to import: once the first batch is back, not while the workers
    # start (the import holds the GIL the driver's Ray Data start-up needs: ~3 s later actors).
    load_ge = threading.Thread(target=importlib.import_module, args=("great_expectations",), daemon=True)
    with keep_models_warm(read_state(staging)):  # the regeneration rounds reuse the models generation loaded
        generated = generate_shards(staging, ray_address=request.ray_address, ray_num_cpus=request.ray_num_cpus,
                                    show_progress=request.show_progress, on_first_batch=load_ge.start)
        _update_state(staging, timings={**read_state(staging)["timings"], "generate": generated.get("seconds", 0.0),
                                        "generate_first_batch": generated.get("first_batch_s") or 0.0})
        consolidate(staging, ray_address=request.ray_address, ray_num_cpus=request.ray_num_cpus)
    validate(staging)
    seconds = generated.get("seconds") or 0.0
    rate = generated["generated"] / seconds if generated["generated"] and seconds else 0.0
    summary = publish(staging, {**generated, "images_per_s": rate})
    summary.seconds = time.perf_counter() - started
    return summary
