"""Step 1: ingest and check the manifest, resolve the models, plan items and shards into staging."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.errors import BadInputError
from pipeline.fsops import replacing
from pipeline.shards import shard_sizes
from pipeline.steps.state import STATE, RunRequest, load_state, update_state


def prepare(request: RunRequest) -> dict:
    """Ingest and check the manifest, resolve the models, plan items and shards into staging.

    A bad file or too many bad rows raise BadInputError here, before any work. Preparing
    again (a resume, a task retry) rewrites the same plan: ids and seeds are deterministic.
    """
    from pipeline.ingest import check_bad_row_share, read_manifest
    from pipeline.consolidate import memorization_thresholds, resolve_reference
    from pipeline.models.presets import resolve_model, resolve_scorer, weights_sha256
    from pipeline.plan import plan_items
    from pipeline.fsops import sha256_file

    tick, config = time.perf_counter(), request.config
    if bad := next((f for f in (request.out, request.dataset_root) if f.exists() and not f.is_dir()), None):
        raise BadInputError(f"--out {request.out}: {bad} is a file, not a folder")
    published = request.dataset_root / "_runs" / request.run_id / "manifest.json"
    if published.is_file() and not (request.staging / STATE).is_file():  # staged: killed after its commit
        raise BadInputError(f"run id {request.run_id!r} is already published ({published}); use a new --run-id")
    ingest = read_manifest(request.manifest, config)
    check_bad_row_share(ingest, config.max_bad_row_share)
    products = ingest.products
    if request.skus:
        if unknown := sorted(set(request.skus) - set(products.column("sku").to_pylist())):
            refused = ingest.problems(set(unknown))  # rows the manifest has, but ingest refused
            raise BadInputError(f"{request.manifest}: skus not among its good rows: {', '.join(unknown)}"
                                + (" (refused: " + "; ".join(refused[:10]) + ")" if refused else " (not in the manifest)"))
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
    if items.num_rows == 0:  # a run of nothing would publish nothing (an Airflow run: succeed doing nothing)
        raise BadInputError(f"{request.manifest}: the run plans no items: its SKUs, markets, kinds and "
                            "training.class_quotas leave none to generate")
    _check_splits(request, items)

    staging = request.staging
    model_sha256 = weights_sha256(model.path)
    steps = generation.steps or model.steps
    guidance = model.guidance_scale if generation.guidance_scale is None else generation.guidance_scale
    encoding = f"{config.image_format}|{config.png_compress_level}"
    # what the plan's rows leave out and the images still depend on: the weights' dtype and the
    # campaign's inpainting strength and canvas
    numerics = f"{config.engine.dtype}|{config.campaign.background_strength}|{config.campaign.canvas}"
    generator = f"{model_sha256}|{steps}|{guidance}|{encoding}"
    fingerprint = _plan_fingerprint(items, f"{generator}|{numerics}")
    _check_resumable(staging, fingerprint, _earlier_fingerprint(items, generator), request.run_date)
    try:
        staging.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a read-only or impossible --out; a full disk is the run's own error
        from pipeline.faults import is_disk_full

        if is_disk_full(exc):
            raise
        raise BadInputError(f"--out {request.out}: cannot create {staging} ({exc.strerror or exc})") from None
    with replacing(staging / "plan.parquet") as tmp:  # another attempt may be reading the plan
        pq.write_table(items, tmp)
    if ingest.rejects.num_rows:
        with replacing(staging / "input_rejects.parquet") as tmp:
            pq.write_table(ingest.rejects, tmp)
    (staging / STATE).unlink(missing_ok=True)  # later steps' results belong to the earlier attempt
    state = update_state(
        staging, plan_sha256=fingerprint, run_id=request.run_id, run_date=request.run_date, dataset=config.dataset,
        dataset_root=str(request.dataset_root), config=config.model_dump(mode="json"),
        photo_base=str(Path(request.manifest).resolve().parent),  # product photos are published relative to it
        input={"path": str(request.manifest), "sha256": sha256_file(request.manifest),
               "rows": ingest.total_rows, "bad_rows": ingest.bad_rows},
        generator={"id": model.name, "path": str(model.path), "class": model.pipeline_class,
                   "sha256": model_sha256, "steps": steps, "guidance_scale": guidance},
        scorer={"id": scorer.name, "path": str(scorer.path), "sha256": weights_sha256(scorer.path),
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
    """A hash of what decides every image: every column of the plan (ids, shards, seeds, prompts,
    sizes, copy, brand adapters and their scale, product photos) and the generator's settings."""
    digest = hashlib.sha256(generator.encode())
    for name in sorted(set(items.column_names) - {"product_image"}):  # the photo by its sha256, not its path
        digest.update(f"\x1e{name}\x1f".encode())
        digest.update("\x1f".join(map(repr, items.column(name).to_pylist())).encode())
    return digest.hexdigest()


def _earlier_fingerprint(items: pa.Table, generator: str) -> str:
    """The fingerprint that runs staged before 2026-11-29 recorded (fewer columns, no dtype,
    strength or canvas): such a run, in flight across an upgrade, still resumes."""
    digest = hashlib.sha256(generator.encode())
    for name in ("item_id", "shard_id", "seed", "prompt", "negative_prompt", "width", "height",
                 "guidance_override"):
        digest.update("\x1f".join(map(str, items.column(name).to_pylist())).encode())
    return digest.hexdigest()


class ResumeMismatch(BadInputError):
    """The run id's staging folder holds finished shards of another plan."""


def _check_resumable(staging: Path, fingerprint: str, earlier: str | None = None, run_date: str | None = None) -> None:
    """Resuming is only sound when the plan is the one the finished shards were made from (`earlier`:
    the same plan's fingerprint as an earlier version recorded it)."""
    if not any((staging / "shards").glob("shard-*.parquet")):
        return  # nothing finished to resume: the step writes a new record
    state = load_state(staging)
    previous = state.get("plan_sha256")
    if previous and previous not in (fingerprint, earlier):
        what = (f"for run date {state['run_date']}, not {run_date}" if state.get("run_date", run_date) != run_date
                else "with a different manifest, config or model")
        raise ResumeMismatch(f"run id {staging.name!r} was started {what}; resume it with the same inputs, "
                            f"or use a new --run-id (staging: {staging})")


def _check_splits(request: RunRequest, items: pa.Table) -> None:
    """A SKU stays in the split the dataset published it in: no product on both sides of an evaluation."""
    from pipeline.training import TRAINING_KIND
    from pipeline.training.splits import moved_skus

    training = items.filter(pc.equal(items.column("kind"), TRAINING_KIND)).select(["sku", "split"])
    planned = dict(zip(training.column("sku").to_pylist(), training.column("split").to_pylist()))
    if planned and (moved := moved_skus(request.dataset_root, request.run_date, planned)):
        sku, was, now = moved[0]
        raise BadInputError(
            f"training.splits {dict(request.config.training.splits)} puts {len(moved)} SKUs of {request.dataset_root} "
            f"in another split than its published rows (first: {sku!r}, {was} -> {now}): one product would be on "
            "both sides of an evaluation. Keep the dataset's ratios, or publish into a new dataset (a SKU's split "
            "follows its text: one published in another Unicode spelling, NFD, moves too)")
