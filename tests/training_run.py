"""One small published `training` dataset, made through the CLI with the embedded tiny model.

Shared by test_training.py, test_consumption.py and test_classifier.py through the session
fixture `training_dataset` (conftest.py): generating is the expensive part, so it happens once.
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import yaml

from pipeline.models.renderer import CATEGORIES, COLOURS

RUN_DATE = "2026-11-26"
SKUS_PER_CLASS = 12            # many SKUs per class: the hash split then gives every class train rows
IMAGES_PER_CLASS = 24           # 192 images: enough for a small classifier to learn the silhouettes
SPLITS = {"train": 0.7, "val": 0.15, "test": 0.15}
STEPS = 20         # the tiny preset's default: fewer steps blur the silhouettes the classifier needs


def write_catalog(path: Path, seed: int = 7) -> Path:
    """8 classes x SKUS_PER_CLASS SKUs, each with a random colour, so colour never gives the class away."""
    rng = random.Random(seed)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sku", "title", "category", "attributes"])
        for category in CATEGORIES:
            for k in range(SKUS_PER_CLASS):
                colour = rng.choice(list(COLOURS))
                writer.writerow([f"{category[:3].upper()}-T{k:02d}", f"{colour} {category} {k}", category,
                                 json.dumps({"color": colour})])
    return path


def write_job(path: Path, **overrides) -> Path:
    """A training-only job on the in-process executor (no Ray: not what these tests are about)."""
    job = {
        "dataset": "training_images", "kinds": ["training"], "markets": ["en-US"], "executor": "local",
        # training.guidance_scale overrides the run's guidance for training images only
        "generation": {"steps": STEPS, "guidance_scale": 5.0},
        "training": {"images_per_class": IMAGES_PER_CLASS, "splits": SPLITS, "guidance_scale": 7.5,
                     "taxonomy": {"mug": "home/kitchen", "sneaker": "apparel/footwear"}},
        # one attempt: a rejected image is simply left out (the gates have tests of their own)
        "gates": {"max_attempts": 1},
        "shard_size": 64,
        "resources": {"generate": {"batch_size": 16, "num_cpus": 2}, "score": {"batch_size": 64}},
    }
    job.update(overrides)
    path.write_text(yaml.safe_dump(job), encoding="utf-8")
    return path


def publish_training_dataset(folder: Path) -> dict:
    """Run the CLI once; returns paths and the CLI arguments (for reruns)."""
    from pipeline.cli import main

    catalog, job, out = write_catalog(folder / "catalog.csv"), write_job(folder / "job.yaml"), folder / "out"
    args = ["run", "--manifest", str(catalog), "--config", str(job), "--out", str(out),
            "--run-date", RUN_DATE, "--run-id", "run-train", "--no-progress"]
    code = main(args)
    if code != 0:
        raise RuntimeError(f"the training run exited {code}")
    return {"root": out / "training_images", "catalog": catalog, "job": job, "out": out, "args": args}
