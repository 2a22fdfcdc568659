"""What a run is asked to do (`RunRequest`), what it did (`RunSummary`), and its staging record."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.config import JobConfig
from pipeline.errors import BadInputError
from pipeline.fsops import locked, write_json

STATE = "run.json"  # the staging folder's record of the run: request, models, step results


@dataclass(frozen=True)
class RunRequest:
    """What to run: the edge (CLI, DAG) fills this in from arguments and the environment."""

    manifest: Path
    config: JobConfig
    out: Path
    run_date: str
    run_id: str
    models_dir: Path
    skus: tuple[str, ...] = ()          # on-demand subset; empty = every SKU
    ray_address: str | None = None
    ray_num_cpus: int | None = None
    show_progress: bool = True

    @property
    def dataset_root(self) -> Path:
        return self.out / self.config.dataset

    @property
    def staging(self) -> Path:
        return self.dataset_root / "_staging" / self.run_id


@dataclass
class RunSummary:
    run_id: str
    run_date: str
    dataset_root: Path
    items: int
    generated: int
    resumed_shards: int
    accepted: int
    rejected: int
    reasons: dict[str, int]
    bad_rows: int
    images_per_s: float
    seconds: float
    manifest_path: Path
    report_path: Path
    timings: dict[str, float] = field(default_factory=dict)
    regenerated: int = 0
    cost: dict = field(default_factory=dict)  # device-seconds and price per accepted image (pipeline/cost.py)


    @classmethod
    def of_manifest(cls, manifest_path: Path, manifest: dict) -> RunSummary:
        """The summary a published run's manifest.json records (`synthcat report`, a retried publish)."""
        return cls(
            run_id=manifest["run_id"], run_date=manifest["run_date"], dataset_root=manifest_path.parents[2],
            items=manifest["items"], generated=manifest["items"], resumed_shards=0,
            accepted=manifest["rows"]["accepted"], rejected=manifest["rows"]["rejected"], reasons=manifest["reasons"],
            bad_rows=manifest["input"]["bad_rows"], images_per_s=manifest.get("images_per_s", 0.0), seconds=0.0,
            manifest_path=manifest_path, report_path=manifest_path.with_name("report.html"),
            timings=manifest.get("timings_s", {}), regenerated=manifest.get("regenerated", 0),
            cost=manifest.get("cost") or {})


# --- the staging record -------------------------------------------------------------------------
def read_state(staging: Path) -> dict:
    if not (staging / STATE).is_file():
        raise BadInputError(f"{staging}: no {STATE}; run the prepare step first")
    return load_state(staging)


def load_state(staging: Path) -> dict:
    """The staging record, {} where there is none yet; a file that is not one is named (exit 2)."""
    path = staging / STATE
    if not path.is_file():
        return {}
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:  # written whole or not at all: edited by hand, or another disk's fault
        raise BadInputError(f"{path}: not a staging record ({exc}); start over with a new --run-id, "
                            "or delete it and run the prepare step again") from None
    if not isinstance(state, dict):
        raise BadInputError(f"{path}: not a staging record (a JSON object); start over with a new --run-id, "
                            "or delete it and run the prepare step again")
    return state


def record_generation(staging: Path, start: float, end: float, generated: int) -> dict:
    """A generate step's wall span (epoch seconds) and images, added to the run's record. A run's
    generate tasks may run at once, so its `timings.generate` is the length of the union of their
    spans (not their sum), and `generated` the images they made: the run's images/s."""
    with editing_state(staging) as state:
        spans = sorted([*state.get("generate_spans", []), [start, end]])
        merged: list[list[float]] = []
        for first, last in spans:
            if merged and first <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], last)
            else:
                merged.append([first, last])
        state.update(generate_spans=merged, generated=state.get("generated", 0) + generated,
                     timings={**state.get("timings", {}), "generate": sum(last - first for first, last in merged)})
    return state


def generation_rate(state: dict) -> float:
    """Images per second of the run's generate steps as its record holds them (0.0: not recorded)."""
    seconds = state.get("timings", {}).get("generate") or 0.0
    return state.get("generated", 0) / seconds if seconds else 0.0


def update_state(staging: Path, **values) -> dict:
    """Set `values` in the staging record; returns the record."""
    with editing_state(staging) as state:
        state.update(values)
    return state


@contextlib.contextmanager
def editing_state(staging: Path) -> Iterator[dict]:
    """The staging record to change in place, written back (atomically) when the block ends.

    A run's steps may run at once (Airflow's mapped `generate_shards` tasks, on one machine or on
    a Ray cluster's shared volume), each reading the record, adding its device time and writing it
    back: an exclusive lock on a file beside the record makes each read-change-write whole, so no
    step's update overwrites another's. The record is on the disk when the block ends: a step
    resumed after a power cut finds it whole."""
    path = staging / STATE
    with locked(staging / f".{STATE}.lock"):  # a volume without locks: as before, unlocked
        state = load_state(staging)
        yield state
        write_json(path, state, default=str)
