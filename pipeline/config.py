"""The job config: one YAML file, validated once at the edge and passed down as typed objects."""

from __future__ import annotations

import re
import string
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pipeline.errors import BadInputError

CANONICAL_FIELDS = (
    "sku", "title", "category", "attributes", "description", "image",
    "markets", "brand", "price", "currency",
)
REQUIRED_FIELDS = ("sku", "title", "category")
PROMPT_FIELDS = ("title", "category", "attributes", "country", "language", "market", "kind")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StageResources(_Strict):
    """What one stage asks of the executor: Ray translates it into actor options."""

    num_gpus: float = Field(0, ge=0)
    num_cpus: float = Field(1, gt=0)
    actors: int = Field(1, ge=1)
    batch_size: int = Field(8, ge=1)


class Resources(_Strict):
    generate: StageResources = StageResources()
    score: StageResources = StageResources(num_cpus=0.5, batch_size=32)
    encode: StageResources = StageResources(num_cpus=0.5, batch_size=32)


class Generation(_Strict):
    """Sampler settings; `None` means the model preset's default."""

    steps: int | None = Field(None, ge=1, le=1000)
    guidance_scale: float | None = Field(None, ge=0)
    width: int | None = Field(None, ge=8, le=4096)
    height: int | None = Field(None, ge=8, le=4096)
    negative_prompt: str = "blurry, low quality, watermark, text artifacts"
    # Fields: {title} {category} {attributes} (", red, ceramic") {country} {language} {market} {kind}
    prompt_template: str = "{title}, {category}{attributes}, product photo, {kind} image for {country}"

    @field_validator("prompt_template")
    @classmethod
    def _known_fields(cls, value: str) -> str:
        for _, name, _, _ in string.Formatter().parse(value):
            if name is not None and name not in PROMPT_FIELDS:
                allowed = ", ".join("{" + f + "}" for f in PROMPT_FIELDS)
                raise ValueError(f"unknown field {{{name}}}; allowed: {allowed}")
        return value


class Gates(_Strict):
    """Gate thresholds; `None` takes the scorer preset's calibrated value.

    Alignment: `min_clip_score`, a cosine in [-1, 1]. Duplicates (within the run and against
    every published run of the dataset): exact bytes, pHash Hamming distance <= `max_phash_distance`
    of 64 (imagededup's default 10), CLIP-embedding cosine >= `min_semantic_cosine` (SemDeDup's
    1 - eps, 0.95 for real CLIP). Sanity: black (mean < `min_pixel_mean`) or blank (std <
    `min_pixel_std`) images. A failing item is regenerated with its next seed up to
    `max_attempts` attempts in all.
    """

    min_clip_score: float | None = Field(None, ge=-1, le=1)
    exact_duplicates: bool = True
    max_phash_distance: int | None = Field(10, ge=0, le=64)
    min_semantic_cosine: float | None = Field(None, ge=-1, le=1)
    dedupe_history: bool = True
    min_pixel_mean: float = Field(8.0, ge=0, le=255)
    min_pixel_std: float = Field(2.0, ge=0, le=255)
    max_attempts: int = Field(3, ge=1, le=20)
    # Memorization: a reference index (`synthcat index build`) of training or protected images,
    # built with the run's scorer; images at or above `max_ref_similarity` cosine are rejected
    # (None: the nearest reference and its similarity are recorded, nothing is rejected).
    reference_index: str | None = None
    max_ref_similarity: float | None = Field(None, ge=-1, le=1)


class JobConfig(_Strict):
    """A synthcat job: what to make from a manifest and how to gate and publish it."""

    dataset: str = "catalog_images"
    kinds: tuple[Literal["campaign"], ...] = ("campaign",)
    markets: tuple[str, ...] = ("en-US",)
    variants: int = Field(1, ge=1, le=1000)
    formats: tuple[Literal["1:1", "4:5", "9:16", "1.91:1"], ...] = ("1:1",)
    model: str = "tiny"
    scorer: str | None = None
    image_format: Literal["png", "webp"] = "png"
    out: str = "./out"
    max_bad_row_share: float = Field(0.2, ge=0, le=1)
    columns: dict[str, str] = Field(default_factory=dict)
    list_separator: str = ";"
    generation: Generation = Generation()
    gates: Gates = Gates()
    resources: Resources = Resources()
    executor: Literal["ray", "local"] = "ray"
    shard_size: int = Field(64, ge=1)
    models_dir: str | None = None

    @field_validator("dataset")
    @classmethod
    def _dataset_name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}", value):
            raise ValueError("must be letters, digits, '_', '.' or '-' (it names a folder)")
        return value

    @field_validator("kinds", "markets", "formats")
    @classmethod
    def _non_empty_unique(cls, value: tuple) -> tuple:
        if not value:
            raise ValueError("must list at least one value")
        if len(set(value)) != len(value):
            raise ValueError("lists a value twice")
        return value

    @field_validator("markets")
    @classmethod
    def _valid_markets(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        from pipeline.locales import normalize_market

        return tuple(normalize_market(m) for m in value)

    @field_validator("columns")
    @classmethod
    def _known_targets(cls, value: dict[str, str]) -> dict[str, str]:
        for canonical in value:
            if canonical not in CANONICAL_FIELDS:
                raise ValueError(
                    f"maps unknown field {canonical!r}; allowed: {', '.join(CANONICAL_FIELDS)}"
                )
        return value


def _describe(error: dict) -> str:
    key = ".".join(str(part) for part in error["loc"]) or "(top level)"
    message = error["msg"]
    if error["type"] == "extra_forbidden":
        allowed = ", ".join(JobConfig.model_fields)
        message = f"unknown key; allowed top-level keys: {allowed}"
    return f"key '{key}': {message}"


def parse_job_config(data: object, source: str = "<config>") -> JobConfig:
    """Validate a decoded YAML mapping; errors name the key and what is allowed."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise BadInputError(f"{source}: the job config must be a YAML mapping, got {type(data).__name__}")
    try:
        return JobConfig.model_validate(data)
    except ValidationError as exc:
        details = "; ".join(_describe(e) for e in exc.errors())
        raise BadInputError(f"{source}: {details}") from None


def load_job_config(path: str | Path | None) -> JobConfig:
    """Read and validate a job config file; `None` gives the defaults."""
    if path is None:
        return JobConfig()
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BadInputError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInputError(f"{path}: cannot read config ({exc})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise BadInputError(f"{path}: not valid YAML ({exc})".replace("\n", " ")) from None
    return parse_job_config(data, str(path))
