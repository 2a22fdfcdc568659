"""A Ray worker SIGKILLed in the middle of a shard: the run recovers with no item lost or doubled.

The generator blocks on its first batch and tells the test its process id; the test kills that
process. Both ways a model stage runs on Ray are covered: in a warm model's host actor (a
single-node Ray, pipeline/warm_models.py), which Ray restarts before running the batch again
while Ray Data's proxy waits; and in Ray Data's own actor pool (a cluster), which restarts the
actor and retries the batch (both `max_restarts=-1`, `max_task_retries=-1`). The shard store
must then hold every item once, with the images of an undisturbed run.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pytest
import ray.cloudpickle

from pipeline.config import load_job_config
from reliability_support import RUN_DATE, clean_run, same_rows_as_clean, write_job


@dataclass
class BlockOnceThenWork:
    """Wraps the first stage: the first batch ever blocks (until the test kills the worker);
    once the marker exists, batches run normally. Pickled by value into the Ray actor."""

    stage: object
    marker: str
    holds_model: bool = True  # False: run as Ray Data's own actor, as on a cluster

    @property
    def name(self) -> str:
        return self.stage.name

    @property
    def resources(self):
        return self.stage.resources

    def setup(self) -> None:
        self.stage.setup()

    def __call__(self, batch: pa.Table) -> pa.Table:
        marker = Path(self.marker)
        if not marker.exists():
            marker.write_text(str(os.getpid()))
            time.sleep(600)  # mid-shard: the test SIGKILLs this process now
        return self.stage(batch)


@pytest.mark.parametrize("hosted", [True, False], ids=["warm-model-host", "ray-data-actor"])
def test_a_ray_worker_killed_mid_shard_is_replaced_without_loss_or_duplicates(
        tmp_path_factory, models_dir, ray_session, monkeypatch, hosted):
    import pipeline.run as run
    import pipeline.steps.generate as generate
    from pipeline.shards import ShardStore

    clean = clean_run(tmp_path_factory.getbasetemp())
    folder = tmp_path_factory.mktemp(f"ray-kill-{hosted}")
    manifest, config = write_job(folder, executor="ray")
    request = run.RunRequest(manifest=manifest, config=load_job_config(config), out=folder / "out",
                             run_date=RUN_DATE, run_id="ray-kill", models_dir=models_dir, show_progress=False)
    staging = Path(run.prepare(request)["staging"])
    marker = folder / "worker.pid"
    real_build = generate.build_stages
    monkeypatch.setattr(generate, "build_stages", lambda *args: [
        BlockOnceThenWork(stage, str(marker), hosted) if i == 0 else stage for i, stage in enumerate(real_build(*args))])
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

    outcome: dict = {}
    first_batches: list[float] = []

    def generate() -> None:
        try:
            outcome["result"] = run.generate_shards(staging, on_first_batch=lambda: first_batches.append(time.time()))
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            outcome["error"] = exc

    thread = threading.Thread(target=generate, daemon=True)
    thread.start()
    deadline = time.monotonic() + 300
    while not marker.exists():
        assert time.monotonic() < deadline and thread.is_alive(), f"the worker never started: {outcome}"
        time.sleep(0.2)
    time.sleep(0.5)  # the pid is written before the sleep begins
    worker = int(marker.read_text())
    assert worker != os.getpid()
    os.kill(worker, signal.SIGKILL)
    thread.join(timeout=300)
    assert not thread.is_alive(), "the run never recovered from the killed worker"
    assert "error" not in outcome, outcome.get("error")
    assert outcome["result"]["generated"] == 2
    assert len(first_batches) == 1  # once, whatever the number of batches (run_job imports GE then)

    store = ShardStore(staging / "shards")
    assert store.done() == set(run.read_state(staging)["shards"])
    same_rows_as_clean(store.read_all().sort_by("item_id"), clean)
