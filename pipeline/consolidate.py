"""Consolidate a run: gate it as a whole, regenerate failures with their next seed, gate again.

An item whose latest attempt fails a gate gets attempt + 1 (seed = seed_for(item_id,
attempt)) in a retry shard (`shard-a<attempt>-<n>`), up to the job's `max_attempts`; after
that its last attempt is rejected with every reason. Only shards listed in the run's state
count, so a resumed run re-plans the same retries and reuses their finished files.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.config import Gates, JobConfig
from pipeline.copy_detection import DEFAULT_MAX_TILE_L2
from pipeline.fsops import replacing
from pipeline.identity import seed_for
from pipeline.plan import in_generation_groups
from pipeline.schema import SHARD_SCHEMA, conform
from pipeline.stages.gate import GateResult, GateSettings, apply_gates

HISTORY_COLUMNS = ["item_id", "run_date", "clip_model", "image_sha256", "image_phash", "clip_embedding"]


def memorization_thresholds(gates: Gates, model, scorer) -> dict:
    """The memorization gate's thresholds for a run: the job's own, else the presets' calibrated
    ones (scorer: descriptor cosine; model: CFG gap; tiled L2: `DEFAULT_MAX_TILE_L2`); all None
    (recorded, not gated) when `memorization_gate` is off."""
    if not gates.memorization_gate:
        return {"max_ref_similarity": None, "max_ref_tile_l2": None, "max_mem_cfg_gap": None}
    return {
        "max_ref_similarity": scorer.max_ref_similarity if gates.max_ref_similarity is None
        else gates.max_ref_similarity,
        "max_ref_tile_l2": DEFAULT_MAX_TILE_L2 if gates.max_ref_tile_l2 is None else gates.max_ref_tile_l2,
        "max_mem_cfg_gap": model.max_mem_cfg_gap if gates.max_mem_cfg_gap is None else gates.max_mem_cfg_gap,
    }


def gate_settings(config: JobConfig, scorer: dict) -> GateSettings:
    """Gate settings from the job config and the run's resolved thresholds (state["scorer"])."""
    gates = config.gates
    return GateSettings(
        min_clip_score=scorer["min_clip_score"], exact_duplicates=gates.exact_duplicates,
        max_phash_distance=gates.max_phash_distance, min_semantic_cosine=scorer["min_semantic_cosine"],
        min_pixel_mean=gates.min_pixel_mean, min_pixel_std=gates.min_pixel_std,
        max_ref_similarity=scorer.get("max_ref_similarity"), max_ref_tile_l2=scorer.get("max_ref_tile_l2"),
        max_mem_cfg_gap=scorer.get("max_mem_cfg_gap"),
        max_palette_distance=gates.max_palette_distance, max_product_diff=gates.max_product_diff,
    )


REFERENCE_OFF = "none"  # `gates.reference_index: none`: no reference index, not even the default
_LEGACY = object()


def reference_disabled(gates: Gates) -> bool:
    value = gates.reference_index
    return value is not None and value.strip().lower() in (REFERENCE_OFF, "")


def resolve_reference(gates: Gates, model: str, models_dir: Path, scorer_path: Path) -> dict | None:
    """Which reference index a run uses, for its lineage (state["reference"], the manifest's
    models.reference): the job's own `gates.reference_index`; unset, the model preset's training
    set when it ships one (built on first use, pipeline/models/training_reference.py); None when
    off or there is none. `files` names the build, `sha256` is that of its Parquet file: the exact
    images and embeddings."""
    from pipeline.fsops import sha256_file
    from pipeline.reference import LEGACY_FILES, ReferenceIndex

    if reference_disabled(gates):
        return None
    if gates.reference_index is not None:
        path, origin = Path(gates.reference_index), "job"
    else:
        from pipeline.models.training_reference import ensure_training_reference

        path, origin = ensure_training_reference(model, models_dir, scorer_path), f"{model} training set"
        if path is None:
            return None
    description = ReferenceIndex.describe(path, scorer_path)  # checks it is an index for this scorer
    files = description.get("files") or dict(LEGACY_FILES)  # the build the gate will search
    return {"path": str(path), "origin": origin, "source": description["source"], "images": description["images"],
            "sha256": description.get("sha256") or sha256_file(path / files["parquet"]), "files": files}


def reference_index(config: JobConfig, scorer: dict, resolved=_LEGACY):
    """The run's reference index, loaded, or None: `resolved` is state["reference"] (from
    `resolve_reference`); a run prepared before it was recorded uses the job's path only."""
    from pipeline.reference import ReferenceIndex

    if resolved is _LEGACY:
        if reference_disabled(config.gates) or config.gates.reference_index is None:
            return None
        resolved = {"path": config.gates.reference_index}
    if not resolved:
        return None
    return ReferenceIndex(Path(resolved["path"]), Path(scorer["path"]), files=resolved.get("files"))


def published_history(dataset_root: Path, run_date: str, clip_model: str) -> pa.Table:
    """Published rows of other run dates (this date's partition is about to be replaced), with the
    columns the duplicate checks compare. Rows scored by another CLIP model keep their bytes and
    pHash, compared as ever, but not their embeddings: those live in another model's space."""
    schema = pa.schema([SHARD_SCHEMA.field(c) for c in HISTORY_COLUMNS])
    parts = []
    for path in sorted((dataset_root / "data").rglob("*.parquet")):
        if f"run_date={run_date}" in path.parts:
            continue
        present = [c for c in HISTORY_COLUMNS if c in pq.read_schema(path).names]
        parts.append(conform(pq.read_table(path, columns=present), schema))
    if not parts:
        return schema.empty_table()
    table = pa.concat_tables(parts)
    table = table.filter(pc.is_valid(table.column("image_phash")))
    same_space = pc.fill_null(pc.equal(table.column("clip_model"), clip_model), False)
    embeddings = table.column("clip_embedding")
    return table.set_column(table.schema.get_field_index("clip_embedding"), "clip_embedding",
                            pc.if_else(same_space, embeddings, pa.scalar(None, embeddings.type)))


def latest_attempts(rows: pa.Table) -> pa.Table:
    """One row per item, its highest attempt; rows keep their order.

    Only the two key columns are sorted; the rows are copied once when some item has several
    attempts, and not at all when none has (a run without retries).
    """
    order = pc.sort_indices(rows.select(["item_id", "attempt"]),
                            sort_keys=[("item_id", "ascending"), ("attempt", "descending")]).to_numpy()
    ids = rows.column("item_id").take(order).to_pylist()
    keep = np.zeros(rows.num_rows, dtype=bool)
    keep[order[[i == 0 or ids[i] != ids[i - 1] for i in range(len(ids))]]] = True
    return rows if keep.all() else rows.filter(pa.array(keep))


def plan_retries(plan: pa.Table, failed: pa.Table, shard_size: int) -> pa.Table:
    """Items for the next attempt of every failed row: same item, next attempt and seed.

    Retry shards are named `shard-a<attempt>-<n>`, numbered on from the plan's shards of that
    attempt: an item can first fail in a later round (a regenerated image can make an accepted
    one its duplicate), and its retry must not land in a shard that is already done.
    """
    if failed.num_rows == 0:
        return plan.slice(0, 0)
    attempts = dict(zip(failed.column("item_id").to_pylist(), failed.column("attempt").to_pylist()))
    current = plan.filter(pc.is_in(plan.column("item_id"), pa.array(list(attempts))))
    current = latest_attempts(current).sort_by([("shard_id", "ascending"), ("item_id", "ascending")])
    taken = set(plan.column("shard_id").to_pylist())
    rows = in_generation_groups(current.to_pylist())  # whole batches of one kind of call, as planned
    placed: dict[int, int] = {}  # attempt -> rows placed so far in this round
    for row in rows:
        row["attempt"] = attempt = attempts[row["item_id"]] + 1
        row["seed"] = seed_for(row["item_id"], attempt)
        if attempt not in placed:  # start after the last shard an earlier round made for this attempt
            used = [int(s.rsplit("-", 1)[1]) for s in taken if s.startswith(f"shard-a{attempt}-")]
            placed[attempt] = (max(used) + 1) * shard_size if used else 0
        row["shard_id"] = f"shard-a{attempt}-{placed[attempt] // shard_size:05d}"
        placed[attempt] += 1
    return pa.Table.from_pylist(rows, schema=plan.schema)


def write_plan(staging: Path, plan: pa.Table) -> None:
    with replacing(staging / "plan.parquet") as tmp:  # resume trusts it: whole and on the disk
        pq.write_table(plan, tmp)


def run_gates(produced: pa.Table, settings: GateSettings, history: pa.Table | None, reference=None) -> GateResult:
    return apply_gates(latest_attempts(produced), settings, created_at=datetime.now(timezone.utc),
                       history=history, reference=reference)
