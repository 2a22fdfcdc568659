"""What a warm host's proxy costs per batch: Ray Data's own actor against a proxy and its host.

    python bench/proxy_copy.py [--batch 64] [--size 512] [--batches 24] [--rounds 3] [--work-s 0]

A model stage on a single-node Ray runs in a host actor that outlives the execution; Ray Data's
pool for it holds a proxy that hands each batch to the host (pipeline/warm_models.py). The
host's output (the batch's pixels) then goes through the object store twice: the host returns
it to the proxy, and the proxy returns it to Ray Data. This runs a stage that only attaches a
batch of ready uint8 pixels (as the generator's `binary_column` does, in place), after
`--work-s` of sleep standing in for the GPU's time, through `run_ray` both ways, and reports
the stage's idle time between two batches (from the end of one call to the start of the next, in
its actor): the time a GPU would wait. Each way runs with one call
at a time per actor (what the executor did before the seventh session) and with
`CALLS_PER_ACTOR` (2): a host then puts one batch's output into the object store while it runs
the next, and a proxy's calls run at once. Rounds alternate the four.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

import pipeline.executor as executor
from pipeline.config import StageResources
from pipeline.stages._columns import binary_column


@dataclass
class PixelStage:
    """A model stage whose "model" is a ready batch of images: only the pixels' path is timed."""

    side: int
    work_s: float
    resources: StageResources = field(default_factory=StageResources)
    name: str = "generate"
    holds_model = True

    def setup(self) -> None:
        n = self.resources.batch_size
        self._pixels = np.random.default_rng(0).integers(0, 256, (n, self.side, self.side, 3), dtype=np.uint8)

    def __call__(self, batch: pa.Table) -> pa.Table:
        started = time.time()
        time.sleep(self.work_s)
        pixels = binary_column(list(self._pixels[:batch.num_rows]), pa.binary())
        n = batch.num_rows
        return (batch.append_column("pixels", pixels).append_column("started", pa.array([started] * n))
                .append_column("ended", pa.array([time.time()] * n)))


def idle_s(stage: PixelStage, batches: list[pa.Table], hosted: bool, calls: int) -> float:
    """The median time the stage waits between two batches (a GPU's idle time), with or without
    warm hosts: from the end of one call of the stage to the start of the next, in its actor."""
    real, real_calls = executor.hosted_stages, executor.CALLS_PER_ACTOR
    executor.CALLS_PER_ACTOR = calls
    if not hosted:  # what a cluster run does: Ray Data's actor pool runs the stage itself
        executor.hosted_stages = lambda stages: [False] * len(stages)
    try:
        calls_s = []
        for out in executor.run_ray([stage], batches):
            assert out.column("pixels").nbytes >= out.num_rows * stage.side ** 2 * 3
            calls_s.append((out.column("started")[0].as_py(), out.column("ended")[0].as_py()))
        assert len(calls_s) == len(batches)
        calls_s.sort()
        return statistics.median(b[0] - a[1] for a, b in zip(calls_s, calls_s[1:]))
    finally:
        executor.hosted_stages, executor.CALLS_PER_ACTOR = real, real_calls


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batches", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work-s", type=float, default=0.0)
    args = parser.parse_args(argv)
    executor.init_ray(num_cpus=2)
    stage = PixelStage(args.size, args.work_s, StageResources(num_cpus=1, batch_size=args.batch))
    batches = [pa.table({"item_id": [f"{b}-{i}" for i in range(args.batch)]}) for b in range(args.batches)]
    ways = {f"{name}, {calls} call{'s' if calls > 1 else ''}": (hosted, calls)
            for calls in (1, executor.CALLS_PER_ACTOR) for name, hosted in (("actor", False), ("proxy+host", True))}
    times: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(args.rounds):
        for name, (hosted, calls) in ways.items():
            times[name].append(idle_s(stage, batches, hosted, calls))
    mb = args.batch * args.size ** 2 * 3 / 1e6
    for name, values in times.items():
        print(f"{name:19s} idle {statistics.median(values) * 1000:6.1f} ms between batches of {args.batch} at "
              f"{args.size}² ({mb:.0f} MB; work {args.work_s * 1000:.0f} ms)  "
              f"(rounds: {', '.join(f'{v * 1000:.1f}' for v in values)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
