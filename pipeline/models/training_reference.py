"""The default reference index of a preset that ships its training set: the embedded `tiny` one.

The memorization gate compares every generated image with a reference index of training or
protected images (`pipeline/reference.py`). A real preset's training set is not on this
machine, so a job names its own index (`gates.reference_index`); the `tiny` preset's training
set, though, is procedural (`pipeline/models/data.py`, recipe in `models/tiny/training.json`),
so when a job names none the run uses an index of exactly that set: rendered with the recorded
seed and sizes, embedded with the run's scorer by the same code as `synthcat index build`.

It is built once, on first use (about a minute on 2 CPU cores: 18,000 renders, 16,005
distinct images), and cached under the models folder (`<models_dir>/tiny-reference/`, which
git ignores). Like the architecture presets (`pipeline/models/arch.py`) it is written into a
sibling temporary folder and renamed into place, so a killed build never leaves half an
index. The folder's name carries a key of the recipe and the scorer's weights: retrained
models or another scorer get their own index instead of a stale one.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

# model preset -> its training recipe under the models folder (presets that ship a training set)
TRAINING_RECIPES = {"tiny": "tiny/training.json"}
IMAGE_SIZE = 64  # build_training_set's default: the size the tiny models were trained at


def training_recipe(model: str, models_dir: Path) -> dict | None:
    """The recipe that rebuilds `model`'s training set ({seed, n_ordinary, hero_copies, size}),
    or None when the preset ships none."""
    relative = TRAINING_RECIPES.get(model)
    if relative is None or not (models_dir / relative).is_file():
        return None
    recorded = json.loads((models_dir / relative).read_text(encoding="utf-8"))
    return {"seed": int(recorded["seed"]), "n_ordinary": int(recorded["recipe"]["n_ordinary"]),
            "hero_copies": int(recorded["recipe"]["hero_copies"]), "size": IMAGE_SIZE}


def training_reference_dir(model: str, models_dir: Path, scorer_path: Path) -> Path | None:
    """Where `model`'s training-set index for this scorer lives (built or not); None without a recipe."""
    from pipeline.models.presets import weights_sha256

    recipe = training_recipe(model, models_dir)
    if recipe is None:
        return None
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode() + weights_sha256(scorer_path).encode())
    return models_dir / f"{model}-reference" / f"{Path(scorer_path).parent.name}-{key.hexdigest()[:12]}"


def training_images(recipe: dict):
    """(label, PNG bytes) for every image of the training set, in training order."""
    from PIL import Image

    from pipeline.models.data import build_training_set

    training = build_training_set(recipe["n_ordinary"], recipe["hero_copies"], recipe["seed"], recipe["size"])
    for row, pixels in enumerate(training.images):
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        yield f"training#{row}", buffer.getvalue()


def ensure_training_reference(model: str, models_dir: Path, scorer_path: Path) -> Path | None:
    """The folder of `model`'s training-set reference index for this scorer, built first if it
    is not there yet; None when the preset ships no training set."""
    from pipeline.models.arch import write_atomically
    from pipeline.reference import build_index_from_images

    target = training_reference_dir(model, models_dir, scorer_path)
    if target is None or (target / "index.json").is_file():
        return target
    recipe = training_recipe(model, models_dir)
    source = (f"{model} training set (seed {recipe['seed']}, {recipe['n_ordinary']} ordinary renders, "
              f"{recipe['hero_copies']} copies of each planted hero)")
    return write_atomically(target, lambda tmp: build_index_from_images(
        training_images(recipe), source, tmp, Path(scorer_path), extra={"training_recipe": recipe}))
