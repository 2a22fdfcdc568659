"""The driver's memory over a run's last three steps (gate, validate, publish), by image size.

    python bench/publish_memory.py [--items 600] [--side 512] [--executor local]

Generates a tiny job's shards once, then swaps every shard's encoded image for a PNG of random
pixels `--side` pixels square (0.75 MB at 512², about what a random-weight sd15 image weighs) and
runs consolidate, validate and publish in this process, sampling its resident memory every 10 ms.
It prints, per step, the seconds and the peak above the memory before the gate step (memory a
step frees stays with the process for the next), and the bytes of images published: a driver
that holds a run's images grows with the run, one that streams them from the shards does not.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


class _PeakRss:
    """Peak resident set size (MB) of this process above `base` MB (default: its level at entry),
    sampled every 10 ms."""

    def __init__(self, base: float | None = None) -> None:
        self._base = self._rss() if base is None else base

    def __enter__(self):
        self._stop, self.peak = threading.Event(), 0.0
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    @staticmethod
    def _rss() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096 / 2**20

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self._rss() - self._base)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss() - self._base)


def _inflate(shards: Path, side: int) -> int:
    """Give every shard row a `side`² random-pixel PNG as its image (sha256 and size updated);
    returns the images' bytes."""
    from PIL import Image

    rng, total = np.random.default_rng(0), 0
    for path in sorted(shards.glob("shard-*.parquet")):
        table = pq.read_table(path)
        images, hashes = [], []
        for item in table.column("item_id").to_pylist():
            buffer = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(
                buffer, format="PNG", compress_level=1)
            data = buffer.getvalue()
            images.append({"bytes": data, "path": f"{item}.png"})
            hashes.append(hashlib.sha256(data).hexdigest())
            total += len(data)
        index = table.schema.get_field_index
        table = table.set_column(index("image"), table.schema.field("image"),
                                 pa.array(images, table.schema.field("image").type))
        table = table.set_column(index("image_sha256"), "image_sha256", pa.array(hashes, pa.string()))
        if "image_nbytes" in table.column_names:
            sizes = pa.array([len(image["bytes"]) for image in images], pa.int64())
            table = table.set_column(index("image_nbytes"), "image_nbytes", sizes)
        pq.write_table(table, path, row_group_size=100, compression="zstd")
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=600, help="about this many items (default: 600)")
    parser.add_argument("--side", type=int, default=512, help="side of the random-pixel images (default: 512)")
    parser.add_argument("--executor", choices=["local", "ray"], default="local",
                        help="how the shards are generated (default: local, in this process)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)

    from pipeline.bench import _bench_job
    from pipeline.config import JobConfig
    from pipeline.models.presets import DEFAULT_MODELS_DIR
    from pipeline.run import RunRequest, consolidate, generate_shards, prepare, publish, validate

    manifest = Path(__file__).resolve().parents[1] / "examples" / "catalog.csv"
    config = JobConfig(model="tiny", markets=("en-US",), executor=args.executor)
    config = config.model_copy(update={
        "images": config.images.model_copy(update={"roots": (*config.images.roots, str(manifest.parent))}),
        "gates": config.gates.model_copy(update={"max_attempts": 1, "memorization_gate": False})})
    config, products = _bench_job(config, manifest, args.items)
    with tempfile.TemporaryDirectory() as tmp:
        catalog = Path(tmp) / "catalog.parquet"
        pq.write_table(products.drop_columns(["line"]), catalog)
        request = RunRequest(manifest=catalog, config=config, out=Path(tmp) / "out", run_date="2026-01-01",
                             run_id="memory", models_dir=DEFAULT_MODELS_DIR, show_progress=False)
        staging = Path(prepare(request)["staging"])
        generated = generate_shards(staging)
        image_bytes = _inflate(staging / "shards", args.side)
        import great_expectations  # noqa: F401  (its import is not the step's memory)

        steps, base = {}, _PeakRss._rss()  # every step's peak above the memory before the first
        for name, step in (("gate", lambda: consolidate(staging)), ("validate", lambda: validate(staging)),
                           ("publish", lambda: publish(staging, {**generated, "images_per_s": 0.0}))):
            tick = time.perf_counter()
            with _PeakRss(base) as peak:
                step()
            steps[name] = {"seconds": round(time.perf_counter() - tick, 2), "peak_mb": round(peak.peak, 1)}
        published = sum(f.stat().st_size for f in (request.dataset_root / "data").rglob("*.parquet"))
    record = {"items": generated["generated"], "side": args.side, "image_mb": round(image_bytes / 2**20, 1),
              "published_data_mb": round(published / 2**20, 1), "steps": steps}
    text = json.dumps(record, indent=2)
    if args.json:
        Path(args.json).write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
