"""The job config: one YAML file, validated once at the edge and passed down as typed objects."""

from __future__ import annotations

import re
import string
import typing
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from pipeline.config_base import Section, fillable
from pipeline.errors import BadInputError
from pipeline.training.settings import Training

CANONICAL_FIELDS = (
    "sku", "title", "category", "attributes", "description", "image",
    "markets", "brand", "price", "currency",
)
REQUIRED_FIELDS = ("sku", "title", "category")
PROMPT_FIELDS = ("title", "category", "attributes", "country", "language", "market", "kind")


class StageResources(Section):
    """What one stage asks of the executor: Ray translates it into actor options."""

    num_gpus: float = Field(0, ge=0)
    num_cpus: float = Field(1, gt=0)
    actors: int = Field(1, ge=1)
    batch_size: int = Field(8, ge=1)


class Resources(Section):
    generate: StageResources = StageResources()
    score: StageResources = StageResources(num_cpus=0.5, batch_size=32)
    encode: StageResources = StageResources(num_cpus=0.5, batch_size=32)
    campaign: StageResources = StageResources(num_cpus=0.5, batch_size=16)  # composite, overlay, integrity


class Generation(Section):
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
        return fillable(value, PROMPT_FIELDS)


class Gates(Section):
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
    # Memorization (pipeline/stages/memorization_gate.py). With a reference index of training or
    # protected images, built with the run's scorer, an image is rejected at or above
    # `max_ref_similarity` descriptor cosine to a reference or at or below `max_ref_tile_l2` tiled
    # pixel L2 (Carlini et al. 2023: a near-verbatim copy); without one, by its in-generation
    # signal alone, `mem_cfg_gap` above `max_mem_cfg_gap`. `reference_index`: a folder built by
    # `synthcat index build`; unset (null), the model preset's own training set when it ships
    # one (`tiny`: its 16,005 distinct training images, indexed on first use under
    # `<models_dir>/tiny-reference/`, pipeline/models/training_reference.py), else no index;
    # `none` turns the reference off. `None` thresholds take the presets' calibrated values
    # (scorer: descriptor cosine; model: CFG gap at 1% false positives on ordinary prompts).
    # `memorization_gate: false` records the evidence and rejects nothing.
    reference_index: str | None = None
    memorization_gate: bool = True
    max_ref_similarity: float | None = Field(None, ge=-1, le=1)
    max_ref_tile_l2: float | None = Field(None, ge=0, le=1)
    max_mem_cfg_gap: float | None = Field(None, gt=0)
    # Campaign: CIEDE2000 from the dominant colours to the brand palette (None: recorded, not gated),
    # and the share of a product photo's opaque pixels allowed to differ in the creative (0: exact).
    max_palette_distance: float | None = Field(None, gt=0)
    max_product_diff: float = Field(0.0, ge=0, le=1)


class ImageSources(Section):
    """Where a manifest's `image` cells may point (enforced by pipeline/references.py).

    Local paths: under the manifest's folder or one of `roots` (relative to the manifest's
    folder), after resolving symlinks; `..` is refused. URLs: refused unless `allow_urls`, then
    https only, to `allowed_hosts` ("cdn.example.com" or "*.example.com"), public addresses only.
    """

    roots: tuple[str, ...] = ()
    allow_urls: bool = False
    allowed_hosts: tuple[str, ...] = ()

    @field_validator("allowed_hosts")
    @classmethod
    def _host_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        import ipaddress

        for host in value:
            try:
                ipaddress.ip_address(host)  # an address literal, e.g. 203.0.113.7 or 2001:db8::7
                continue
            except ValueError:
                pass
            if not re.fullmatch(r"(\*\.)?[a-z0-9]([a-z0-9.-]*[a-z0-9])?", host):
                raise ValueError(f"{host!r} is not a lower-case host name like 'cdn.example.com' "
                                 "or '*.example.com', or an IP address (no scheme, port or path)")
        return value


class BrandProfile(Section):
    """A brand's rules for campaign creative (see pipeline/campaign/brand.py).

    `adapters`: model preset -> LoRA adapter folder under `<models_dir>/<preset>/lora/`, fused
    at `adapter_scale`; `palette`: the brand colours ("#1F3A5F") the palette gate measures
    against; `logo_free_zones`: canvas fractions (x0, y0, x1, y1) kept clear of copy and
    product for the logo; `banned_terms`: never in a prompt, always in the negative prompt.
    """

    adapters: dict[str, str] = Field(default_factory=dict)
    adapter_scale: float = Field(1.0, ge=0, le=2)
    palette: tuple[str, ...] = ()
    logo_free_zones: tuple[tuple[float, float, float, float], ...] = ()
    banned_terms: tuple[str, ...] = ()

    @field_validator("palette")
    @classmethod
    def _colours(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for colour in value:
            if not re.fullmatch(r"#[0-9A-Fa-f]{6}", colour):
                raise ValueError(f"{colour!r} is not a colour like '#1F3A5F'")
        return value

    @field_validator("logo_free_zones")
    @classmethod
    def _zones(cls, value: tuple) -> tuple:
        for zone in value:
            x0, y0, x1, y1 = zone
            if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
                raise ValueError(f"{list(zone)} is not x0, y0, x1, y1 with 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1")
        return value


class Campaign(Section):
    """Campaign creative: theme, canvas, product-photo backgrounds, market profiles, brands."""

    theme: Literal["new-arrivals", "sale", "gifts"] = "new-arrivals"
    # long side of the published creative, px; under 256 a market's usual copy no longer fits a
    # 9:16 story's copy area at the smallest legible size (9 px), and every campaign row is rejected
    canvas: int = Field(512, ge=256, le=4096)
    background_strength: float = Field(0.9, gt=0, le=1)  # inpainting strength around product photos
    markets_dir: str | None = None             # extra market profiles (<market>.yaml), beside the packaged ones
    brands: dict[str, BrandProfile] = Field(default_factory=dict)

    @field_validator("brands")
    @classmethod
    def _one_profile_per_brand(cls, value: dict) -> dict:
        """A catalog's brand matches its profile ignoring case and spaces: two such names are one brand."""
        seen: dict[str, str] = {}
        for name in value:
            if (key := name.strip().casefold()) in seen:
                raise ValueError(f"brands {seen[key]!r} and {name!r} differ only in case or spaces: one brand")
            seen[key] = name
        return value

    @field_validator("markets_dir")
    @classmethod
    def _a_folder(cls, value: str | None) -> str | None:
        """An absolute path (a config file's relative one is taken from its folder by `load_job_config`),
        so Ray workers with another working folder read the same profiles."""
        if value is None:
            return None
        folder = Path(value).expanduser().resolve()
        if not folder.is_dir():
            raise ValueError(f"{value!r} is not a folder")
        return str(folder)


class Engine(Section):
    """How the generate stage drives its model (pipeline/stages/engine.py).

    `None` switches are on for CUDA and off for CPU, where they do not pay. Padding follows
    `compile` unless set: a compiled model must see one batch shape to never recompile.
    """

    # auto: bf16 on CUDA, and for the generator on a CPU with native bf16 (AVX512-BF16, AMX); else fp32
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    channels_last: bool | None = None
    fuse_qkv: bool | None = None          # fused QKV projections (pipe.fuse_qkv_projections())
    compile: bool | None = None           # torch.compile of the UNet and the VAE decoder
    # With `compile` unset, a round of fewer items than this runs eagerly: compiling costs a minute
    # or more per worker start and saves ~0.04 s per 512² image (bench/README.md), so a small round
    # (a regeneration round, a short run) finishes sooner without it. 0: always compile on CUDA.
    compile_min_items: int = Field(1000, ge=0)
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = "default"
    compile_backend: Literal["inductor", "cudagraphs", "aot_eager", "eager"] = "inductor"  # eager: tracing only
    # model: the whole UNet; blocks: only its repeated transformer blocks (diffusers' regional
    # compilation, `compile_repeated_blocks`): a fraction of the compile time, part of the speed-up.
    compile_scope: Literal["model", "blocks"] = "model"
    pad_batches: bool | None = None       # pad each call to the batch size (None: when compiled)
    vae_decode_chunk: int = Field(8, ge=1)  # images per VAE decode call: bounds decoder memory
    fuse_score: bool = True               # score in the generate actor when both use the same device kind
    torch_threads: int | None = Field(None, ge=1)  # CPU threads per model actor (None: its num_cpus)
    # On a Ray that outlives the run's steps (`ray start`, a cluster's head): how long a model host
    # that one step (an Airflow generate task) left set up waits, idle, for the next step of the run.
    keep_warm_s: float = Field(120.0, ge=0)


class Cost(Section):
    """Prices for the run summary's cost per 1,000 accepted images (device-hours held by generation)."""

    gpu_hour_usd: float = Field(2.5, ge=0)   # one GPU for one hour
    cpu_hour_usd: float = Field(0.05, ge=0)  # one CPU core for one hour (runs without GPUs)


class JobConfig(Section):
    """A synthcat job: what to make from a manifest and how to gate and publish it."""

    dataset: str = "catalog_images"
    kinds: tuple[Literal["campaign", "training"], ...] = ("campaign",)
    markets: tuple[str, ...] = ("en-US",)
    variants: int = Field(1, ge=1, le=1000)
    formats: tuple[Literal["1:1", "4:5", "9:16", "1.91:1"], ...] = ("1:1",)
    model: str = "tiny"
    scorer: str | None = None
    image_format: Literal["png", "webp"] = "png"
    # zlib level of PNG files: 1 encodes a 512 px creative ~4x faster than Pillow's default 6 for
    # ~25% more bytes (OpenCV's default is 1 too); 9 for the smallest files. Lossless either way.
    png_compress_level: int = Field(1, ge=0, le=9)
    out: str = "./out"
    max_bad_row_share: float = Field(0.2, ge=0, le=1)
    columns: dict[str, str] = Field(default_factory=dict)
    list_separator: str = Field(";", min_length=1)
    generation: Generation = Generation()
    gates: Gates = Gates()
    resources: Resources = Resources()
    engine: Engine = Engine()
    cost: Cost = Cost()
    executor: Literal["ray", "local"] = "ray"
    shard_size: int = Field(64, ge=1)
    models_dir: str | None = None
    images: ImageSources = ImageSources()
    campaign: Campaign = Campaign()
    training: Training = Training()

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

        markets = tuple(normalize_market(m) for m in value)
        if twice := next((f"{a!r} and {b!r} are both {m}" for i, (a, m) in enumerate(zip(value, markets))
                          for b, n in zip(value[i + 1:], markets[i + 1:]) if m == n), None):
            raise ValueError(f"lists a market twice: {twice}")
        return markets

    @model_validator(mode="after")
    def _campaign_markets_have_profiles(self) -> "JobConfig":
        if "campaign" in self.kinds:
            from pipeline.markets import known_markets

            known = known_markets(self.campaign.markets_dir)
            missing = [m for m in self.markets if m not in known]
            if missing:
                raise ValueError(f"markets {missing} have no market profile, so no campaign can be made "
                                 f"for them (profiles: {', '.join(known)}; add one under campaign.markets_dir)")
        return self

    @field_validator("columns")
    @classmethod
    def _known_targets(cls, value: dict[str, str]) -> dict[str, str]:
        for canonical in value:
            if canonical not in CANONICAL_FIELDS:
                raise ValueError(
                    f"maps unknown field {canonical!r}; allowed: {', '.join(CANONICAL_FIELDS)}"
                )
        return value


def _section_at(loc: tuple) -> tuple[type[BaseModel], str]:
    """The config section that holds the key at `loc`, and its dotted name ("" at the top)."""
    section, path, keyed = JobConfig, [], False
    for part in loc[:-1]:
        path.append(str(part))
        if isinstance(part, int) or keyed:  # an item of a list, a value of a mapping
            keyed = False
            continue
        annotation = section.model_fields[part].annotation if part in section.model_fields else None
        inner = _model_in(annotation)
        if inner is None:
            break
        section, keyed = inner, typing.get_origin(annotation) is dict
    return section, ".".join(path)


def _model_in(annotation) -> type[BaseModel] | None:
    """The config section a field's type holds (`Gates`, `dict[str, BrandProfile]`, `X | None`)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next(filter(None, map(_model_in, typing.get_args(annotation))), None)


def _describe(error: dict) -> str:
    key = ".".join(str(part) for part in error["loc"]) or "(top level)"
    message = error["msg"]
    if error["type"] == "extra_forbidden":
        section, name = _section_at(tuple(error["loc"]))
        message = f"unknown key; allowed {f'keys of {name}' if name else 'top-level keys'}: {', '.join(section.model_fields)}"
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
    except RecursionError:  # PyYAML composes recursively: a deeply nested document overflows
        raise BadInputError(f"{path}: the YAML is nested too deeply") from None
    except yaml.YAMLError as exc:
        raise BadInputError(f"{path}: not valid YAML ({exc})".replace("\n", " ")) from None
    return parse_job_config(anchored(data, path.parent), str(path))


def anchored(data: object, folder: Path) -> object:
    """The decoded config with its relative paths taken from `folder`, the config file's folder
    (`campaign.markets_dir`), whoever reads the file: the CLI, or the DAGs' tasks."""
    campaign = data.get("campaign") if isinstance(data, dict) else None
    if isinstance(campaign, dict) and isinstance(campaign.get("markets_dir"), str):
        folder = Path(folder) / Path(campaign["markets_dir"]).expanduser()
        return {**data, "campaign": {**campaign, "markets_dir": str(folder)}}
    return data
