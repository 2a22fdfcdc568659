"""Step 3: gate the whole run at once (duplicates are a global property), regenerating failing items."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.config import parse_job_config
from pipeline.schema import GATED_SCHEMA, OUTPUT_SCHEMA, conform
from pipeline.shards import ShardStore, shard_sizes
from pipeline.steps.generate import generate_shards
from pipeline.steps.state import editing_state, read_state, update_state
from pipeline.warm_models import held_idle, keep_models_warm

log = logging.getLogger(__name__)


def consolidate(staging: Path, *, ray_address: str | None = None, ray_num_cpus: int | None = None) -> dict:
    """Gate the whole run at once (duplicates are a global property); regenerate failing items
    with their next seed up to `gates.max_attempts`; write accepted and rejected rows."""
    from pipeline.consolidate import (gate_settings, plan_retries, published_history, reference_index,
                                      run_gates, write_plan)
    from pipeline.cost import add_held_idle

    state, tick = read_state(staging), time.perf_counter()
    config = parse_job_config(state["config"])
    store = ShardStore(staging / "shards")
    settings = gate_settings(config, state["scorer"])
    history = (published_history(Path(state["dataset_root"]), state["run_date"], state["scorer"]["id"])
               if config.gates.dedupe_history else None)
    reference = (reference_index(config, state["scorer"], state["reference"]) if "reference" in state
                 else reference_index(config, state["scorer"]))  # prepared before the reference was recorded
    if reference is not None and (state.get("reference") or {}).get("files") not in (None, reference.files):
        # the build prepare resolved is gone (rebuilt twice since): the run records the one it searched
        state = update_state(staging, reference={**state["reference"], **reference.lineage()})
    planned = shard_sizes(pq.read_table(staging / "plan.parquet", columns=["shard_id"]))
    if unrecorded := {shard: n for shard, n in planned.items() if shard not in state["shards"]}:
        # an earlier attempt of this step wrote a round's retries into the plan, then died before
        # recording their shards: they are the run's, generated below, never planned twice
        state = update_state(staging, shards={**state["shards"], **unrecorded})
    with keep_models_warm(state) as warm:  # each regeneration round reuses the models the first one loaded
        warm.take_up_left_hosts(ray_address)  # the run's generate tasks left them: ended when this step ends
        while True:
            missing = sorted(set(state["shards"]) - store.done())
            if unplanned := sorted(set(missing) - _retry_shards(staging)) if missing else []:  # generate tasks' own
                raise RuntimeError(f"{staging}: shards not generated yet: {', '.join(unplanned[:5])}")
            if missing:  # a regeneration round an earlier attempt of this step began (a retried task)
                generate_shards(staging, missing, ray_address=ray_address, ray_num_cpus=ray_num_cpus)
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
            _drop_stale_retries(store, retries)
            state = update_state(staging, shards={**state["shards"], **sizes})
            generate_shards(staging, list(sizes), ray_address=ray_address, ray_num_cpus=ray_num_cpus)
        # the last gate pass ran with the models still set up: held too, until now
        idle, holder, now = held_idle(), warm.holder, time.time()
    (staging / "gated").mkdir(exist_ok=True)
    pq.write_table(gated.accepted, staging / "gated" / "accepted.parquet")
    pq.write_table(gated.rejected, staging / "gated" / "rejected.parquet")
    retried = pq.read_table(staging / "plan.parquet", columns=["attempt"]).column("attempt")
    result = {"accepted": gated.accepted.num_rows, "rejected": gated.rejected.num_rows,  # every round's, retried too
              "reasons": gated.reasons(), "regenerated": pc.sum(pc.greater(retried, 0)).as_py() or 0,
              "history_rows": 0 if history is None else history.num_rows}
    with editing_state(staging) as record:
        record.update(gate=result, timings={**record["timings"], "gate": time.perf_counter() - tick},
                      device=add_held_idle(record.get("device"), holder, now, idle))
    return result


def _drop_stale_retries(store: ShardStore, retries: pa.Table) -> None:
    """A retry shard already on disk is this round's only if it holds exactly the rows planned for
    it. A run resumed under another gating (another `gates:` config) plans its rounds otherwise, and
    an earlier attempt may have left a shard of that name with other items or attempts: it is
    removed, so this round generates it, rather than skipped as done."""
    for shard in sorted(set(retries.column("shard_id").to_pylist()) & store.done()):
        planned = retries.filter(pc.equal(retries.column("shard_id"), shard))
        found = pq.read_table(store.path(shard), columns=["item_id", "attempt", "seed"])
        if _keys(found) != _keys(planned):
            log.warning("%s: made by an earlier attempt of the run for other items; generated again", shard)
            store.path(shard).unlink()


def _keys(rows: pa.Table) -> set[tuple]:
    return set(zip(*(rows.column(c).to_pylist() for c in ("item_id", "attempt", "seed"))))


def _retry_shards(staging: Path) -> set[str]:
    """The shards of the plan's regeneration rounds (attempt 1 on), which this step generates."""
    plan = pq.read_table(staging / "plan.parquet", columns=["shard_id", "attempt"])
    return set(pc.unique(plan.filter(pc.greater(plan.column("attempt"), 0)).column("shard_id")).to_pylist())


def gated_tables(staging: Path) -> tuple[pa.Table, pa.Table]:
    """(accepted, rejected) without their images (GATED_SCHEMA), or with them as earlier versions staged them."""
    tables = [pq.read_table(staging / "gated" / f"{name}.parquet") for name in ("accepted", "rejected")]
    accepted, rejected = (conform(t, OUTPUT_SCHEMA if "image" in t.column_names else GATED_SCHEMA) for t in tables)
    return accepted, rejected
