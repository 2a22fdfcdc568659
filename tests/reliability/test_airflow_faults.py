"""Airflow: on-demand params are checked before any work, and a retried task loses and doubles nothing.

Runs the real DAGs with `dag.test()` on the suite's SQLite Airflow home (tests/test_dags.py).
"""

from __future__ import annotations

import copy
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reliability_support import DATASET, JOB, RUN_DATE, clean_run, published_rows, same_rows_as_clean, write_job
from test_dags import dagbag  # noqa: F401 - the suite's one Airflow home, migrated, and its DagBag

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = str(REPO / "examples" / "catalog.csv")
TEXT = st.text(max_size=12)
CONF = st.fixed_dictionaries({}, optional={
    "manifest": st.one_of(st.just(EXAMPLE), TEXT, st.integers()),
    "config": st.one_of(st.just("examples/job.yaml"), TEXT, st.none()),
    "skus": st.one_of(st.lists(st.sampled_from(["MUG-001", "NOPE", ""]), max_size=2), TEXT),
    "markets": st.one_of(st.lists(st.sampled_from(["en-US", "de_de", "xx-YY", "english", ""]), max_size=2),
                         st.integers()),
    "kinds": st.lists(st.sampled_from(["campaign", "training", "poster"]), max_size=2),
    "variants": st.one_of(st.none(), st.integers(-1, 200), TEXT),
    "model": st.one_of(st.none(), st.sampled_from(["tiny", "sd15", "dalle", ""]), st.integers()),
    "dry_run": st.one_of(st.booleans(), TEXT),
})


@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(conf=CONF)
def test_on_demand_params_are_checked_before_any_work(dagbag, tmp_path_factory, conf):  # noqa: F811
    """A trigger's conf is refused by the params' schema or by `make_spec`, naming the field,
    or accepted; either way nothing is written before the manifest check."""
    from pipeline import orchestrate
    from pipeline.errors import BadInputError

    out = tmp_path_factory.mktemp("params") / "out"
    params = copy.deepcopy(dagbag.get_dag("synthcat_on_demand").params)  # Param objects hold values
    try:
        params.update({**conf, "out": str(out)})
        params.validate()
    except Exception as exc:  # noqa: BLE001 - Airflow's ParamValidationError family
        assert any(field in str(exc) for field in conf), (conf, exc)
        return
    try:
        spec = orchestrate.make_spec(params.dump(), dag_run_id="manual__x", run_date=RUN_DATE)
        orchestrate.check_manifest(spec)
    except BadInputError as exc:
        assert any(f"'{field}'" in str(exc) for field in conf), (conf, exc)
    assert not out.exists()


def _set_retry_delay(dag, delay: timedelta) -> None:
    for task in dag.tasks:
        if hasattr(task, "partial_kwargs"):  # a mapped task keeps its arguments here
            task.partial_kwargs["retry_delay"] = delay
        else:
            task.retry_delay = delay


def test_retried_generate_tasks_lose_and_duplicate_nothing(dagbag, tmp_path_factory, monkeypatch):  # noqa: F811
    """Two mapped generate tasks fail on their first try -- one after writing its shard, one in
    the middle of generating -- and Airflow retries both."""
    from pipeline.shards import ShardStore
    from pipeline.stages.generate import GenerateStage

    clean = clean_run(tmp_path_factory.getbasetemp())
    out = tmp_path_factory.mktemp("airflow-retry") / "out"
    dag = dagbag.get_dag("synthcat_on_demand")
    _set_retry_delay(dag, timedelta(0))
    real_write, real_generate, calls = ShardStore.write, GenerateStage.generate, {"write": 0, "generate": 0}

    def write_then_die(self, shard, table):
        path = real_write(self, shard, table)
        calls["write"] += 1
        if calls["write"] == 1:
            raise RuntimeError("worker lost after finishing its shard")
        return path

    def die_mid_shard(self, batch):
        calls["generate"] += 1
        if calls["generate"] == 2:
            raise RuntimeError("worker lost in the middle of a shard")
        return real_generate(self, batch)

    monkeypatch.setattr(ShardStore, "write", write_then_die)
    monkeypatch.setattr(GenerateStage, "generate", die_mid_shard)  # fused or not, every batch
    run = dag.test(run_conf={"manifest": str(clean.manifest), "config": str(clean.config), "out": str(out)},
                   logical_date=datetime.fromisoformat(RUN_DATE).replace(tzinfo=timezone.utc))
    assert "success" in str(run.state).lower()

    tries = {ti.map_index: ti.try_number for ti in run.get_task_instances() if ti.task_id == "generate_shards"}
    assert sorted(tries.values()) == [2, 2], tries  # both failed once and were retried
    rows = published_rows(out / DATASET)
    same_rows_as_clean(rows, clean)
    assert pq.read_table(out / DATASET / "data").num_rows == 2



def _steps_up_to_consolidate(folder: Path, **job) -> dict:
    """The run's tasks as the DAG calls them, through its generate tasks; returns the run's spec."""
    from pipeline import orchestrate

    manifest, config = write_job(folder, **job)
    spec = orchestrate.make_spec({"manifest": str(manifest), "config": str(config), "out": str(folder / "out")},
                                 dag_run_id="manual__retried", run_date=RUN_DATE)
    orchestrate.check_manifest(spec)
    for group in orchestrate.plan_shards(spec):
        orchestrate.generate_shards(spec, group)
    return spec


def test_a_retried_consolidate_finishes_the_regeneration_round_its_first_try_began(tmp_path, monkeypatch):
    import pipeline.steps.gate as gate
    from pipeline import orchestrate

    # every image fails the alignment gate: each item is regenerated once (two attempts in all)
    spec = _steps_up_to_consolidate(tmp_path, gates={**JOB["gates"], "min_clip_score": 0.99, "max_attempts": 2})
    real = gate.generate_shards

    def lost(*args, **kwargs):
        raise RuntimeError("worker lost during the regeneration round")

    monkeypatch.setattr(gate, "generate_shards", lost)  # the retry shards are planned, then the worker goes
    with pytest.raises(RuntimeError, match="worker lost"):
        orchestrate.consolidate(spec)
    monkeypatch.setattr(gate, "generate_shards", real)
    retried = orchestrate.consolidate(spec)  # Airflow's retry generates them and gates the run
    assert (retried["regenerated"], retried["rejected"], retried["accepted"]) == (2, 2, 0)
    assert orchestrate.consolidate(spec) == retried  # and a second retry counts the same round, once


def test_a_retried_publish_whose_first_try_finished_returns_the_published_run(tmp_path):
    from pipeline import orchestrate

    spec = _steps_up_to_consolidate(tmp_path)
    orchestrate.consolidate(spec)
    orchestrate.validate_run(spec)
    first = orchestrate.publish(spec)
    assert not orchestrate._staging(spec).exists()  # cleaned up; then the worker died before Airflow knew
    assert orchestrate.publish(spec) == first
    assert pq.read_table(Path(first["path"]) / "data").num_rows == first["rows"] == 2


def test_a_consolidate_killed_between_planning_a_round_and_recording_it_plans_that_round_once(tmp_path,
                                                                                              monkeypatch):
    import pyarrow.compute as pc

    import pipeline.steps.gate as gate
    from pipeline import orchestrate

    spec = _steps_up_to_consolidate(tmp_path, gates={**JOB["gates"], "min_clip_score": 0.99, "max_attempts": 2})
    real = gate.update_state

    def killed_before_recording(staging, **values):
        if "shards" in values:  # the retries are in plan.parquet already
            raise RuntimeError("worker lost between write_plan and recording the round's shards")
        return real(staging, **values)

    monkeypatch.setattr(gate, "update_state", killed_before_recording)
    with pytest.raises(RuntimeError, match="worker lost"):
        orchestrate.consolidate(spec)
    monkeypatch.setattr(gate, "update_state", real)
    retried = orchestrate.consolidate(spec)
    assert (retried["regenerated"], retried["rejected"]) == (2, 2)
    plan = pq.read_table(orchestrate._staging(spec) / "plan.parquet", columns=["item_id", "attempt"])
    assert plan.num_rows == 4 and pc.count_distinct(pc.binary_join_element_wise(
        plan["item_id"], pc.cast(plan["attempt"], "string"), "#")).as_py() == 4  # each item and attempt once
