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
from pipeline.models.arch import ARCH_MODELS, ARCH_SCORERS, ensure_arch_model, ensure_arch_scorer

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
    # Copy-descriptor cosine to a reference image at or above which an image is a copy (None: not gated).
    max_ref_similarity: float | None = None


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
    # mem_cfg_gap above which a prompt counts as memorized: 1% false positives on ordinary prompts
    # (None: not calibrated for this model, recorded only). See MEM_CFG_GAP below.
    max_mem_cfg_gap: float | None = None


# name -> (pipeline class, width, height, steps, guidance, scorer, description)
_MODELS = {
    "tiny": ("StableDiffusionPipeline", 64, 64, 20, 7.5, "tiny",
             "embedded tiny latent diffusion model trained by the project on rendered products "
             "(64 px; see pipeline/models/MODEL_CARD.md)"),
    "sd15": ("StableDiffusionPipeline", 512, 512, 30, 7.5, "vit-b-32", "Stable Diffusion 1.5"),
    "sd-turbo": ("StableDiffusionPipeline", 512, 512, 1, 0.0, "vit-b-32", "SD-Turbo (SD 2.1 architecture)"),
    "sdxl": ("StableDiffusionXLPipeline", 1024, 1024, 30, 5.0, "vit-l-14", "Stable Diffusion XL 1.0"),
    "sdxl-turbo": ("StableDiffusionXLPipeline", 512, 512, 1, 0.0, "vit-l-14", "SDXL-Turbo"),
    # Published architectures with random weights, built on first use (pipeline/models/arch.py):
    # for `synthcat bench` on a GPU, where compute, not image quality, is measured.
    "sd15-arch": ("StableDiffusionPipeline", 512, 512, 20, 7.5, "vit-l-14-arch",
                  "Stable Diffusion 1.5 architecture, random weights (benchmarks; built on first use)"),
    "sd-turbo-arch": ("StableDiffusionPipeline", 512, 512, 1, 0.0, "vit-l-14-arch",
                      "SD-Turbo / SD 2.1 architecture, random weights (benchmarks; built on first use)"),
}
# name -> calibrated cosine threshold (LAION kept ViT-B/32 pairs at cosine >= 0.28; tiny: Youden
# threshold of own vs mismatched prompts on 200 generated held-out images, MODEL_CARD.md)
_SCORERS = {"tiny": 0.43, "vit-b-32": 0.28, "vit-l-14": 0.20,
            "vit-l-14-arch": -1.0}  # random weights: an alignment threshold would mean nothing
# name -> semantic-duplicate cosine (SemDeDup / NeMo Curator start at 1 - eps = 0.95). Off for
# the tiny scorer until a threshold is calibrated on its (trained, 64 px) embeddings.
_SEMANTIC = {"tiny": None, "vit-b-32": 0.95, "vit-l-14": 0.95, "vit-l-14-arch": None}


# name -> copy-descriptor cosine (memorization gate). Somepalli et al. 2023 flag SSCD similarity
# > 0.5; CLIP cosines of merely similar images run far higher, so a CLIP scorer needs its own value.
# tiny: 0.996, 1% false positives on ordinary prompts against the reference a run uses by default,
# the whole training set (16,005 distinct images, pipeline/models/training_reference.py): the
# 99th percentile of the nearest-reference cosine over the 200 calibration prompts of `synthcat
# eval memorization` (tiny, 20 steps, default negative prompt) is 0.9957, rounded up. With the
# shipped scorer (image round) ordinary generations sit close to their training renders (median
# 0.938), planted-caption ones closer (median 0.986); exact copies score 1.0. (Earlier scorers:
# round 1 0.991, round 2 0.998, text round 0.995.)
# vit-*: not calibrated here (no weights on this machine): SemDeDup's near-duplicate cosine 0.95.
REF_SIMILARITY = {"tiny": 0.996, "vit-b-32": 0.95, "vit-l-14": 0.95}
# model -> mem_cfg_gap threshold at 1% false positives on ordinary prompts, measured with the job's
# default negative prompt as the unconditional half (what runs send): `synthcat eval memorization`
# gives it as `threshold_at_1pct_fpr` (tiny: 2.2209 = p99 of 200 calibration prompts, rounded down;
# round 1 alone: 1.82; round 2: 2.21).
# Other models: not calibrated yet (the signal is recorded, not gated; a job can set
# `gates.max_mem_cfg_gap`). A job's own negative prompt shifts the signal: recalibrate for it.
MEM_CFG_GAP = {"tiny": 2.22}


def _require_tiny(models_dir: Path) -> None:
    """The embedded preset ships with the checkout: a models folder without it is a wrong folder,
    refused at once (retraining it takes about 1 h 35 min; `make models` or `synthcat models train`
    does that on purpose)."""
    from pipeline.models.tiny import tiny_models_present

    if not tiny_models_present(models_dir / "tiny"):
        raise BadInputError(
            f"models folder {models_dir}: no tiny preset in {models_dir / 'tiny'} (SYNTHCAT_MODELS_DIR or the job's "
            f"models_dir); point it at a folder holding tiny/, such as the checkout's {DEFAULT_MODELS_DIR}, or "
            f"retrain it there with `synthcat models train --out {models_dir / 'tiny'}`")


def resolve_model(name: str, models_dir: Path) -> ModelPreset:
    """The preset called `name`, with its folder under `models_dir`; the folder must exist."""
    if name not in _MODELS:
        raise BadInputError(f"unknown model preset {name!r}; known: {', '.join(_MODELS)}")
    if name == "tiny":
        _require_tiny(models_dir)
    if name in ARCH_MODELS:
        ensure_arch_model(name, models_dir)
    cls, width, height, steps, guidance, scorer, description = _MODELS[name]
    path = models_dir / name / "diffusion"
    _require_safetensors(path, f"model preset {name!r}")
    return ModelPreset(name, path, cls, width, height, steps, guidance, scorer, description,
                       MEM_CFG_GAP.get(name))


def resolve_scorer(name: str, models_dir: Path) -> ScorerPreset:
    """The open_clip scorer called `name`, with its folder under `models_dir`."""
    if name not in _SCORERS:
        raise BadInputError(f"unknown scorer preset {name!r}; known: {', '.join(_SCORERS)}")
    if name == "tiny":
        _require_tiny(models_dir)
    if name in ARCH_SCORERS:
        ensure_arch_scorer(name, models_dir)
    path = models_dir / name / "clip"
    _require_safetensors(path, f"scorer preset {name!r}")
    if not (path / "open_clip_config.json").is_file():
        raise BadInputError(f"scorer preset {name!r}: {path} has no open_clip_config.json")
    # open_clip's `local-dir:` loader prefers `open_clip_pytorch_model.bin` over `model.safetensors`
    # and would unpickle it: a scorer folder may hold safetensors weights only.
    pickled = sorted(p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl"))
    if pickled:
        raise BadInputError(f"scorer preset {name!r}: {path} holds pickle weights ({', '.join(pickled)}); "
                            "only .safetensors are loaded, remove them")
    return ScorerPreset(name, path, _SCORERS[name], _SEMANTIC[name], REF_SIMILARITY.get(name))


def _require_safetensors(path: Path, what: str) -> None:
    if not path.is_dir():
        raise BadInputError(f"{what}: folder {path} not found (put the weights there, or set models_dir)")
    if not any(path.rglob("*.safetensors")):
        raise BadInputError(f"{what}: {path} has no .safetensors weights (other formats are refused)")


_HASHED: dict[tuple, str] = {}  # weights hashed in this process, by their files' names, sizes and times


def weights_sha256(path: Path) -> str:
    """One sha256 over every safetensors file under `path` (relative name + content, sorted).

    It identifies the exact weights in lineage, whatever the folder's other files say. Hashed
    once per process while the files keep their size and modification and change times (a run asks for it in
    several places; a real checkpoint takes seconds to read).
    """
    files = sorted(path.rglob("*.safetensors"))
    # ctime too: a copy that keeps the inode and carries an older file's mtime (`cp -p`) still changes it
    key = (str(path.resolve()), *((f.relative_to(path).as_posix(), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
                                  for f, st in ((f, f.stat()) for f in files)))
    if key in _HASHED:
        return _HASHED[key]
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        with file.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    _HASHED[key] = digest.hexdigest()
    return _HASHED[key]


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
            "on_demand": name in ARCH_MODELS,  # random-weight architectures are built on first use
        })
    return rows
