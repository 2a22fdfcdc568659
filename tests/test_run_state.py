"""The staging record (run.json) when a run's steps run at once: Airflow's mapped generate tasks."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest

from conftest import EXAMPLE_CATALOG, REPO, campaign_spec
from pipeline.steps.state import STATE, editing_state, read_state

ADD = """
import sys
from pathlib import Path
from pipeline.steps.state import editing_state
for _ in range(int(sys.argv[2])):
    with editing_state(Path(sys.argv[1])) as state:
        state[sys.argv[3]] = state.get(sys.argv[3], 0) + 1
        state["total"] = state.get("total", 0) + 1
"""


def test_steps_changing_the_record_at_once_lose_none_of_each_others_changes(tmp_path):
    (tmp_path / STATE).write_text(json.dumps({"run_id": "r"}))
    steps = [subprocess.Popen([sys.executable, "-c", ADD, str(tmp_path), "40", f"step{k}"], cwd=REPO)
             for k in range(4)]
    assert [step.wait(timeout=120) for step in steps] == [0] * 4
    state = read_state(tmp_path)
    assert state == {"run_id": "r", "total": 160, **{f"step{k}": 40 for k in range(4)}}
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".{STATE}.lock", STATE]  # no temporary file left


def test_generate_tasks_at_once_count_their_common_time_once_in_the_runs_rate(tmp_path):
    from pipeline.steps.state import generation_rate, record_generation

    (tmp_path / STATE).write_text(json.dumps({"run_id": "r", "timings": {"prepare": 1.0}}))
    record_generation(tmp_path, 100.0, 110.0, 20)   # two tasks at once,
    record_generation(tmp_path, 105.0, 112.0, 10)
    state = record_generation(tmp_path, 120.0, 125.0, 5)  # and a retried one later
    assert state["generate_spans"] == [[100.0, 112.0], [120.0, 125.0]]
    assert state["timings"] == {"prepare": 1.0, "generate": 17.0} and state["generated"] == 35
    assert generation_rate(read_state(tmp_path)) == 35 / 17 and generation_rate({}) == 0.0


def test_a_failed_change_leaves_the_record_as_it_was(tmp_path):
    (tmp_path / STATE).write_text(json.dumps({"run_id": "r"}))
    with pytest.raises(KeyError), editing_state(tmp_path) as state:
        state["half"] = "written"
        raise KeyError("a step failed half-way")
    assert read_state(tmp_path) == {"run_id": "r"}


def test_two_generate_tasks_at_once_on_the_runs_hosts_count_their_common_time_once(tmp_path, models_dir,
                                                                                   ray_session):
    from pipeline import orchestrate

    spec = campaign_spec(tmp_path, markets=["en-US"], variants=4, dag_run_id="manual__2026-11-29T01:00:00+00:00",
                         run_date="2026-11-29")
    groups = orchestrate.plan_shards(spec, max_groups=2)
    assert len(groups) == 2
    # two mapped tasks at once (threads here: each has a session of its own, as a process would);
    # whichever asks first makes the run's generator host, the other takes it up and waits for it
    results, errors = [], []

    def task(group: list[str]) -> None:
        try:
            results.append(orchestrate.generate_shards(spec, group))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    tick = time.time()
    tasks = [threading.Thread(target=task, args=(group,)) for group in groups]
    for thread in tasks:
        thread.start()
    for thread in tasks:
        thread.join(timeout=300)
    wall = time.time() - tick
    assert not errors, errors
    device = read_state(orchestrate._staging(spec))["device"]
    assert device["rounds"] == 2  # both tasks' records are there
    spans = device["spans"]
    assert list(spans) == [next(iter(spans))] and next(iter(spans)).startswith("hosts:")  # one holder: the hosts
    both = sum(result["seconds"] for result in results)
    # the tasks overlapped (both waited for the one host's set-up), so their sum is well over the wall time
    assert both > 1.5 * wall
    assert max(r["seconds"] for r in results) * device["count"] <= device["seconds"] + 0.01
    assert device["seconds"] <= wall * device["count"] + 0.01  # held once, not once per task
    print(f"tasks {[round(r['seconds'], 1) for r in results]} s, wall {wall:.1f} s, record {device['seconds']:.1f}")
    orchestrate.consolidate(spec)  # the last step (regenerating, and ending the hosts) adds its own time
    after = read_state(orchestrate._staging(spec))["device"]
    assert after["seconds"] > device["seconds"] and list(after["spans"]) == list(spans)


def test_on_a_volume_without_locks_the_record_still_changes(tmp_path, monkeypatch):
    import errno
    import fcntl

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    (tmp_path / STATE).write_text(json.dumps({"run_id": "r"}))
    monkeypatch.setattr(fcntl, "flock", no_locks)
    with editing_state(tmp_path) as state:
        state["device"] = {"seconds": 1.0}
    assert read_state(tmp_path) == {"run_id": "r", "device": {"seconds": 1.0}}

    def broken(fd, operation):
        raise OSError(errno.EBADF, "Bad file descriptor")

    monkeypatch.setattr(fcntl, "flock", broken)  # any other lock error is not passed over
    with pytest.raises(OSError, match="Bad file descriptor"), editing_state(tmp_path) as state:
        state["device"] = {"seconds": 2.0}
    assert read_state(tmp_path)["device"] == {"seconds": 1.0}


def test_a_run_staged_by_the_version_before_still_resumes(tmp_path, models_dir):
    """Upgrading while a run is in flight: its run.json holds the earlier plan fingerprint (its device
    record without spans carries on too: tests/test_engine.py)."""
    import pyarrow.parquet as pq

    from pipeline import orchestrate
    from pipeline.steps.prepare import _earlier_fingerprint
    from pipeline.steps.state import update_state

    catalog = tmp_path / "catalog.csv"
    catalog.write_text("".join(EXAMPLE_CATALOG.read_text().splitlines(keepends=True)[:3]))
    spec = orchestrate.make_spec({"manifest": str(catalog), "config": str(REPO / "examples" / "job.yaml"),
                                  "out": str(tmp_path / "out")}, dag_run_id="manual__up", run_date="2026-11-29")
    orchestrate.plan_shards(spec)
    staging = orchestrate._staging(spec)
    state = read_state(staging)
    config, generator = state["config"], state["generator"]
    earlier = _earlier_fingerprint(pq.read_table(staging / "plan.parquet"),
                                   f"{generator['sha256']}|{generator['steps']}|{generator['guidance_scale']}|"
                                   f"{config['image_format']}|{config['png_compress_level']}")
    (staging / "shards").mkdir()
    (staging / "shards" / "shard-00000.parquet").write_bytes(b"a finished shard")
    update_state(staging, plan_sha256=earlier)
    orchestrate.plan_shards(spec)  # resumes: not "a different manifest, config or model"
    assert read_state(staging)["plan_sha256"] != earlier  # now recorded the new way
    update_state(staging, plan_sha256="another plan")
    with pytest.raises(Exception, match="different manifest, config or model"):
        orchestrate.plan_shards(spec)


@pytest.mark.parametrize("text", ["{\"rounds\": 1", "[1, 2]", "\udcff"])
def test_a_staging_record_that_is_not_one_is_named_not_a_traceback(tmp_path, text):
    from pipeline.errors import BadInputError
    from pipeline.steps.state import STATE, read_state

    (tmp_path / STATE).write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(BadInputError, match=f"{STATE}: not a staging record"):
        read_state(tmp_path)
    with pytest.raises(BadInputError, match=f"{STATE}: not a staging record"), editing_state(tmp_path):
        pass  # a step adding its result


def test_a_resumed_run_whose_record_is_not_one_is_named_unless_it_has_nothing_to_resume(tmp_path, models_dir):
    from pipeline import orchestrate
    from pipeline.errors import BadInputError

    catalog = tmp_path / "catalog.csv"
    catalog.write_text("".join(EXAMPLE_CATALOG.read_text().splitlines(keepends=True)[:3]))
    spec = orchestrate.make_spec({"manifest": str(catalog), "config": str(REPO / "examples" / "job.yaml"),
                                  "out": str(tmp_path / "out")}, dag_run_id="manual__bad", run_date="2026-11-29")
    staging = orchestrate._staging(spec)
    staging.mkdir(parents=True)
    (staging / STATE).write_text("{\"plan_sha256\": ")  # edited by hand
    orchestrate.plan_shards(spec)  # no finished shard: prepared afresh
    assert read_state(staging)["plan_sha256"]
    (staging / "shards").mkdir()
    (staging / "shards" / "shard-00000.parquet").write_bytes(b"a finished shard")
    (staging / STATE).write_text("[]")
    with pytest.raises(BadInputError, match=f"{STATE}: not a staging record"):
        orchestrate.plan_shards(spec)  # which plan the shard was made from is not known
