"""Shared pieces of the reliability suite: one small job, its clean run, and killed subprocesses.

The clean run is made once per test session (a cached function, not a fixture, so every
module of this folder shares it) and is the yardstick: a run that was killed, retried or
squeezed for memory must publish exactly its rows -- same item ids, same image bytes.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
RUN_DATE = "2026-11-26"
DATASET = "catalog_images"
HOSTILE_TITLE = "<script>alert(1)</script><img src=x onerror=alert(2)> Diner Mug"
# One SKU in two markets: two items, one shard each, two market partitions. Its title is hostile
# (the report must escape it) and a second row is bad (rejected; the run must go on).
MANIFEST = ("sku,title,category,attributes\n"
            f'MUG-001,"{HOSTILE_TITLE}",mug,"{{""color"": ""white"", ""material"": ""ceramic""}}"\n'
            "MUG-002,No category,,\n")
JOB = {
    "markets": ["en-US", "de-DE"], "variants": 1, "executor": "local", "shard_size": 1, "max_bad_row_share": 0.5,
    "generation": {"steps": 2},
    # Accept every image: these tests are about rows surviving faults, not about gating.
    "gates": {"min_clip_score": -1.0, "max_phash_distance": None, "max_attempts": 1,
              "min_pixel_mean": 0, "min_pixel_std": 0},
    "resources": {"generate": {"batch_size": 1}},
}


def write_job(folder: Path, **overrides) -> tuple[Path, Path]:
    """The small job's manifest and config in `folder` (config keys overridden as given)."""
    folder.mkdir(parents=True, exist_ok=True)
    manifest, config = folder / "catalog.csv", folder / "job.yaml"
    manifest.write_text(MANIFEST, encoding="utf-8")
    config.write_text(yaml.safe_dump({**JOB, **overrides}), encoding="utf-8")
    return manifest, config


def run_args(manifest: Path, config: Path, out: Path, run_id: str) -> list[str]:
    return ["run", "--manifest", str(manifest), "--config", str(config), "--out", str(out),
            "--run-date", RUN_DATE, "--run-id", run_id, "--no-progress"]


def published_rows(dataset_root: Path, kind: str = "data") -> pa.Table:
    """Every published row of one kind (data or rejects), by item id."""
    folder = dataset_root / kind
    if not folder.is_dir():
        return pa.table({"item_id": pa.array([], pa.string())})
    return pq.read_table(folder, columns=["item_id", "run_id", "image", "image_sha256"]).sort_by("item_id")


@dataclass(frozen=True)
class CleanRun:
    manifest: Path
    config: Path
    out: Path
    rows: pa.Table  # data rows of the clean run, by item id

    @property
    def item_ids(self) -> list[str]:
        return self.rows.column("item_id").to_pylist()

    @property
    def images(self) -> list[bytes]:
        return [image["bytes"] for image in self.rows.column("image").to_pylist()]


@functools.cache
def clean_run(base: Path) -> CleanRun:
    """Run the small job once, undisturbed, in this process; every fault test compares to it."""
    from pipeline.cli import main

    manifest, config = write_job(base / "clean")
    out = base / "clean" / "out"
    assert main(run_args(manifest, config, out, "clean")) == 0
    rows = published_rows(out / DATASET)
    assert rows.num_rows == 2 and not (out / DATASET / "rejects").exists()
    return CleanRun(manifest, config, out, rows)


def same_rows_as_clean(rows: pa.Table, clean: CleanRun) -> None:
    """Exactly the clean run's rows: no gap, no duplicate, byte-identical images."""
    ids = rows.column("item_id").to_pylist()
    assert ids == clean.item_ids, "lost or duplicated items"
    assert [image["bytes"] for image in rows.column("image").to_pylist()] == clean.images


def run_killed(args: list[str], point: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """`synthcat <args>` in a fresh process that SIGKILLs itself at `point` (see killpoint.py)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, str(HERE / "killpoint.py"), point, *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=timeout)
