"""Shared fixtures: offline libraries, the embedded tiny models, one Ray session for the suite."""

from __future__ import annotations

import os

# Before any Hugging Face library is imported: tests never touch the network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_CATALOG = REPO / "examples" / "catalog.csv"
EXAMPLE_JOB = REPO / "examples" / "job.yaml"


@pytest.fixture(scope="session")
def models_dir() -> Path:
    """The repository's models folder, with the embedded tiny preset materialised."""
    from pipeline.models.presets import DEFAULT_MODELS_DIR
    from pipeline.models.tiny import ensure_tiny_models

    ensure_tiny_models(DEFAULT_MODELS_DIR)
    return DEFAULT_MODELS_DIR


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole suite: starting Ray costs seconds."""
    from pipeline.executor import init_ray

    started = init_ray(num_cpus=2)
    yield
    if started:
        import ray

        ray.shutdown()


@pytest.fixture(scope="session")
def training_dataset(tmp_path_factory, models_dir) -> dict:
    """A published `training` dataset (8 classes, tiny model), made once per session (tests/training_run.py)."""
    from training_run import publish_training_dataset

    return publish_training_dataset(tmp_path_factory.mktemp("training"))


@pytest.fixture
def small_catalog(tmp_path: Path) -> Path:
    """The first rows of the example catalog: every kind of row, few images."""
    lines = EXAMPLE_CATALOG.read_text(encoding="utf-8").splitlines(keepends=True)
    path = tmp_path / "catalog.csv"
    path.write_text("".join(lines[:4]), encoding="utf-8")
    return path
