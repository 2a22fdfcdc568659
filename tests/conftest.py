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


def campaign_spec(folder: Path, *, dag_run_id: str, run_date: str, **params) -> dict:
    """The spec of a DAG run of the example's first three SKUs, campaign only, shards of 2 items
    (`params`: trigger params over the example's manifest, job and `folder/out`)."""
    import yaml

    from pipeline import orchestrate

    catalog = folder / "catalog.csv"
    catalog.write_text("".join(EXAMPLE_CATALOG.read_text().splitlines(keepends=True)[:4]))
    job = folder / "job.yaml"
    job.write_text(yaml.safe_dump({**yaml.safe_load(EXAMPLE_JOB.read_text()), "shard_size": 2, "kinds": ["campaign"]}))
    return orchestrate.make_spec({"manifest": str(catalog), "config": str(job), "out": str(folder / "out"), **params},
                                 dag_run_id=dag_run_id, run_date=run_date)


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


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which turns the marker into the `@group` suffix
def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (`make test` runs `-n 2 --dist loadgroup`), keep each test module on one
    worker, so its module fixtures are built once, and put every module that uses the session's
    published training dataset on one worker, so that dataset is built once too."""
    shared = {item.module.__name__ for item in items if "training_dataset" in getattr(item, "fixturenames", ())}
    for item in items:
        module = item.module.__name__
        item.add_marker(pytest.mark.xdist_group("training_dataset" if module in shared else module))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node, ids):
    """Stop the run, rather than silently build every shared fixture twice, when xdist's loadgroup did
    not take the groups (pytest-xdist#1386: xdist 3.8 writes `Item._nodeid`, which pytest 9.2 no
    longer reads; pyproject pins pytest below 9.2 until xdist follows)."""
    if node.config.getvalue("dist") == "loadgroup" and any("@" not in nodeid for nodeid in ids):
        pytest.exit("pytest-xdist's --dist loadgroup did not group the tests (pytest-xdist#1386); "
                    "install the test extra's pytest: pip install -e '.[test]'", returncode=4)
