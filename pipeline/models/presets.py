"""Model presets: a diffusers pipeline directory plus an open_clip scorer, with their defaults.

Every preset, the embedded `tiny` one included, loads from a local directory with
safetensors weights; production presets only differ in where their folders live
(`<models_dir>/<name>/diffusion` and `<models_dir>/<scorer>/clip`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import BadInputError

DEFAULT_MODELS_DIR = Path(__file__).resolve().parents[2] / "models"


@dataclass(frozen=True)
class ScorerPreset:
    """An open_clip model in a `local-dir:` folder (open_clip_config.json + *.safetensors)."""

    name: str
    path: Path
    # Cosine threshold of the alignment gate for this scorer, calibrated on generated images
    # (the tiny one by `python -m pipeline.models.evaluate`, see MODEL_CARD.md).
    min_clip_score: float
    # Image-image cosine at or above which two images are semantic duplicates (None: off).
    min_semantic_cosine: float | None = None


@dataclass(frozen=True)
class ModelPreset:
    """A text-to-image diffusers pipeline folder and the sampler defaults that suit it."""

    name: str
    path: Path
    pipeline_class: str
    width: int
    height: int
    steps: int
    guidance_scale: float
    scorer: str
    description: str


# name -> (pipeline class, width, height, steps, guidance, scorer, description)
_MODELS = {
    "tiny": ("StableDiffusionPipeline", 64, 64, 20, 7.5, "tiny",
             "embedded tiny latent diffusion model trained by the project on rendered products "
             "(64 px; see pipeline/models/MODEL_CARD.md)"),
    "sd15": ("StableDiffusionPipeline", 512, 512, 30, 7.5, "vit-b-32", "Stable Diffusion 1.5"),
    "sd-turbo": ("StableDiffusionPipeline", 512, 512, 1, 0.0, "vit-b-32", "SD-Turbo (SD 2.1 architecture)"),
    "sdxl": ("StableDiffusionXLPipeline", 1024, 1024, 30, 5.0, "vit-l-14", "Stable Diffusion XL 1.0"),
    "sdxl-turbo": ("StableDiffusionXLPipeline", 512, 512, 1, 0.0, "vit-l-14", "SDXL-Turbo"),
}
# name -> calibrated cosine threshold (LAION kept ViT-B/32 pairs at cosine >= 0.28; tiny: Youden
# threshold of own vs mismatched prompts on 200 generated held-out images, MODEL_CARD.md)
_SCORERS = {"tiny": 0.11, "vit-b-32": 0.28, "vit-l-14": 0.20}
# name -> semantic-duplicate cosine (SemDeDup / NeMo Curator start at 1 - eps = 0.95). Off for
# the tiny scorer until a threshold is calibrated on its (trained, 64 px) embeddings.
_SEMANTIC = {"tiny": None, "vit-b-32": 0.95, "vit-l-14": 0.95}


def resolve_model(name: str, models_dir: Path) -> ModelPreset:
    """The preset called `name`, with its folder under `models_dir`; the folder must exist."""
    if name not in _MODELS:
        raise BadInputError(f"unknown model preset {name!r}; known: {', '.join(_MODELS)}")
    if name == "tiny":
        from pipeline.models.tiny import ensure_tiny_models

        ensure_tiny_models(models_dir)
    cls, width, height, steps, guidance, scorer, description = _MODELS[name]
    path = models_dir / name / "diffusion"
    _require_safetensors(path, f"model preset {name!r}")
    return ModelPreset(name, path, cls, width, height, steps, guidance, scorer, description)


def resolve_scorer(name: str, models_dir: Path) -> ScorerPreset:
    """The open_clip scorer called `name`, with its folder under `models_dir`."""
    if name not in _SCORERS:
        raise BadInputError(f"unknown scorer preset {name!r}; known: {', '.join(_SCORERS)}")
    if name == "tiny":
        from pipeline.models.tiny import ensure_tiny_models

        ensure_tiny_models(models_dir)
    path = models_dir / name / "clip"
    _require_safetensors(path, f"scorer preset {name!r}")
    if not (path / "open_clip_config.json").is_file():
        raise BadInputError(f"scorer preset {name!r}: {path} has no open_clip_config.json")
    return ScorerPreset(name, path, _SCORERS[name], _SEMANTIC[name])


def _require_safetensors(path: Path, what: str) -> None:
    if not path.is_dir():
        raise BadInputError(f"{what}: folder {path} not found (put the weights there, or set models_dir)")
    if not any(path.rglob("*.safetensors")):
        raise BadInputError(f"{what}: {path} has no .safetensors weights (other formats are refused)")


def weights_sha256(path: Path) -> str:
    """One sha256 over every safetensors file under `path` (relative name + content, sorted).

    It identifies the exact weights in lineage, whatever the folder's other files say.
    """
    digest = hashlib.sha256()
    for file in sorted(path.rglob("*.safetensors")):
        digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        with file.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def describe_presets(models_dir: Path) -> list[dict]:
    """Every model preset with its local folders (for `synthcat models`); builds nothing."""
    rows = []
    for name, (cls, width, height, steps, guidance, scorer, description) in _MODELS.items():
        path, clip_path = models_dir / name / "diffusion", models_dir / scorer / "clip"
        rows.append({
            "name": name, "path": str(path), "clip_path": str(clip_path), "scorer": scorer,
            "pipeline_class": cls, "width": width, "height": height, "steps": steps,
            "guidance_scale": guidance, "description": description,
            "available": path.is_dir() and clip_path.is_dir(),
        })
    return rows
