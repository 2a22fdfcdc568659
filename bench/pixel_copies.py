"""The host time a generator worker spends moving one batch's pixels into Arrow and back to its scorer.

    python bench/pixel_copies.py [--batch 64] [--size 512] [--repeats 20] [--rounds 4]

Times, per batch of decoded uint8 images (a fresh host array each time, as `.cpu().numpy()` gives):
`alloc` that array alone; `per_row` a Python `bytes` object per image into `pa.array`, then
`to_pylist` and a join on the scorer's side (what the stages did before the sixth session);
`buffers` the stages' `binary_column` (the batch's array used in place) and `binary_views` + one
stack. On a GPU the worker is synchronous, so this time is time the GPU waits. Rounds alternate
the three.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import pyarrow as pa
import torch

from pipeline.stages._columns import binary_column, binary_views


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args(argv)
    n, side = args.batch, args.size
    decoded = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (n, side, side, 3), dtype=np.uint8))

    def alloc():
        return decoded.clone().numpy()

    def per_row():
        column = pa.chunked_array([pa.array([image.tobytes() for image in alloc()], pa.binary())])
        return np.frombuffer(bytearray().join(column.to_pylist()), np.uint8).reshape(n, side, side, 3)

    def buffers():
        column = pa.chunked_array([binary_column(list(alloc()))])
        return np.stack(binary_views(column)).reshape(n, side, side, 3)

    assert np.array_equal(per_row(), buffers())
    times: dict[str, list[float]] = {"alloc": [], "per_row": [], "buffers": []}
    for _ in range(args.rounds):
        for name, call in (("alloc", alloc), ("per_row", per_row), ("buffers", buffers)):
            call()
            tick = time.perf_counter()
            for _ in range(args.repeats):
                call()
            times[name].append((time.perf_counter() - tick) / args.repeats * 1000)
    for name, values in times.items():
        print(f"{name:8s} median {statistics.median(values):6.1f} ms per batch of {n} at {side}²  "
              f"(rounds: {', '.join(f'{v:.1f}' for v in values)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
