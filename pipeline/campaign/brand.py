"""Brand style: LoRA adapters fused into a copy of the base pipeline, and the brand's rules.

A brand profile (job config `campaign.brands`, see `pipeline.config.BrandProfile`) names, per
model preset, an adapter folder under `<models_dir>/<preset>/lora/<name>/` holding a diffusers
LoRA file (`pytorch_lora_weights.safetensors`). It is loaded with `load_lora_weights`, fused
into the weights (`fuse_lora`: no extra matmuls per step) and the LoRA layers unloaded, in
a copy of the UNet and text encoder, so the base pipeline and other brands stay untouched and
each brand's images do not depend on which brands ran before in the same worker.
"""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path

from pipeline.errors import BadInputError

WEIGHT_NAME = "pytorch_lora_weights.safetensors"


def brand_for(brands: dict, name: str | None):
    """The brand profile of a catalog row's `brand`, matched ignoring case and surrounding spaces
    (a catalog's `northwind` is the job's `Northwind`: missing it would drop the brand's banned
    terms, palette and adapter without a word); None for a brand without a profile."""
    if not name:
        return None
    if name in brands:
        return brands[name]
    key = name.strip().casefold()
    return next((profile for known, profile in brands.items() if known.strip().casefold() == key), None)


def adapter_file(adapters_dir: Path, name: str) -> Path:
    """The adapter's weight file; BadInputError says where it was looked for."""
    path = Path(adapters_dir) / name / WEIGHT_NAME
    if not path.is_file():
        raise BadInputError(f"brand adapter {name!r}: {path} not found (train it with "
                            "`python -m pipeline.models.train_lora`, or fix campaign.brands.*.adapters)")
    return path


def adapter_sha256(adapters_dir: Path, name: str) -> str:
    """sha256 of the adapter's safetensors file: the exact style weights, for lineage."""
    digest = hashlib.sha256()
    with adapter_file(adapters_dir, name).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fused_pipeline(base, adapters_dir: Path, name: str, scale: float, sha256: str | None = None):
    """A pipeline sharing `base`'s VAE, tokenizer and scheduler config, with the adapter fused
    into its own copies of the UNet and text encoder. `sha256`, when given, must match the file."""
    path = adapter_file(adapters_dir, name)
    if sha256 is not None and adapter_sha256(adapters_dir, name) != sha256:
        raise RuntimeError(f"brand adapter {name!r} changed since the run was planned (sha256 differs)")
    components = dict(base.components)
    components["unet"] = copy.deepcopy(base.unet)
    components["text_encoder"] = copy.deepcopy(base.text_encoder)
    components["scheduler"] = copy.deepcopy(base.scheduler)
    options = {"requires_safety_checker": False} if "requires_safety_checker" in base.config else {}
    pipe = type(base)(**components, **options)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(path.parent), weight_name=WEIGHT_NAME, adapter_name=name)
    pipe.fuse_lora(lora_scale=scale, adapter_names=[name])
    pipe.unload_lora_weights()  # the fused weights stay; the LoRA layers (and their matmuls) go
    return pipe
