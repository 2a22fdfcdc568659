"""Step 2: generate, score and encode the planned shards (on Ray, a Ray cluster, or in process)."""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.config import parse_job_config
from pipeline.errors import BadInputError
from pipeline.shards import ShardStore
from pipeline.steps.state import editing_state, read_state
from pipeline.warm_models import held_idle, keep_models_warm


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
    from pipeline.cost import add_held, devices_held
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
    with Progress("generate", total=todo.num_rows, enabled=show_progress) as bar, \
            keep_models_warm(state, last=False) as warm:
        batches = generation_batches(todo, config.resources.generate.batch_size)
        results = run_stages(stages, batches, executor=config.executor, ray_address=ray_address, num_cpus=ray_num_cpus)
        for _, rows in store.collect(results, {s: state["shards"][s] for s in todo_shards}):
            if first_batch_s is None:  # start-up ends here: Ray Data, the actors, their models
                first_batch_s = time.perf_counter() - tick
                on_first_batch()
            bar.advance(rows)
        seconds, end = time.perf_counter() - tick, time.time()
        if todo.num_rows:  # held for this round, and idle since the last (read in the step's session)
            idle = held_idle(seconds)
            with editing_state(staging) as record:  # other steps of the run may be adding theirs
                record["device"] = add_held(record.get("device"), *devices_held(stages), warm.holder,
                                            end - seconds - idle, end, idle)
    return {"shards": len(wanted), "generated": todo.num_rows, "skipped": len(wanted) - len(todo_shards),
            "seconds": seconds, "first_batch_s": first_batch_s}
