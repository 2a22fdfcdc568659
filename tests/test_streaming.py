"""Streaming: each batch the Ray executor finishes reaches its caller at once, not with the next one.

The caller writes each shard as soon as its rows are back and the run's start-up ends at the first
batch; a batch held back until a later one is done delays both by a generation batch.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import ray.cloudpickle

from pipeline.config import StageResources
from pipeline.executor import make_batches, run_stages

WAIT_S = 20.0


@dataclass
class AfterTheFirstIsSeen:
    """Passes the first batch on at once; every other batch waits (up to WAIT_S) until the caller
    has seen a batch, and says whether it had to give up waiting."""

    seen: str
    resources: StageResources = field(default_factory=lambda: StageResources(num_cpus=0.25, batch_size=2))
    name: str = "after_the_first"
    stateless = True

    def setup(self) -> None:
        pass

    def __call__(self, batch: pa.Table) -> pa.Table:
        first = batch.column("item_id")[0].as_py() == "i0"
        deadline = time.monotonic() + WAIT_S
        while not first and not Path(self.seen).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        gave_up = not first and not Path(self.seen).exists()
        return batch.append_column("gave_up", pa.array([gave_up] * batch.num_rows))


ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray's workers cannot import tests/


def test_a_finished_batch_reaches_the_caller_before_the_next_is_done(tmp_path, ray_session):
    seen = tmp_path / "seen"
    items = pa.table({"item_id": [f"i{k}" for k in range(6)], "shard_id": ["s0", "s0", "s1", "s1", "s2", "s2"]})
    out = []
    for batch in run_stages([AfterTheFirstIsSeen(str(seen))], make_batches(items, 2), executor="ray"):
        seen.touch()
        out.append(batch)
    table = pa.concat_tables(out).sort_by("item_id")
    assert table.column("item_id").to_pylist() == items.column("item_id").to_pylist()
    # Held back, the first batch would come only with a second one, and each other batch waits for it
    assert not any(table.column("gave_up").to_pylist())
