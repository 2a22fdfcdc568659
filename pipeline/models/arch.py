"""Architecture presets: published model configs with random weights, for throughput benchmarks.

`sd15-arch` (Stable Diffusion 1.5) and `sd-turbo-arch` (SD-Turbo, the SD 2.1 architecture) are
the published UNet2DConditionModel, AutoencoderKL and CLIPTextModel configs (JSON files in
`pipeline/models/arch/`) with seeded random weights; `vit-l-14-arch` is open_clip's bundled
ViT-L/14 config, likewise random. A model's compute does not depend on its weight values, so
these measure exactly what the real checkpoints would cost, without a download. The folders are
materialised on first use under the models folder (about 2.2 GB each in fp16, on the GPU when
there is one) and then load through the same `from_pretrained` path as any checkpoint. The
tokenizer is CLIP's BPE built offline from open_clip's bundled vocabulary, as for `tiny`.
Their images are noise-like: the gates' thresholds mean nothing for them.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path

ARCH_MODELS = {"sd15-arch": "sd15", "sd-turbo-arch": "sd-turbo"}  # preset -> config file
ARCH_SCORERS = {"vit-l-14-arch": "ViT-L-14"}                        # preset -> open_clip config
CONFIG_DIR = Path(__file__).with_name("arch")
# OpenAI CLIP's image normalisation, which open_clip's ViT-L/14 uses.
_CLIP_PREPROCESS = {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711],
                    "interpolation": "bicubic", "resize_mode": "shortest"}


def arch_config(name: str, *, small: bool = False) -> dict:
    """The component configs of an architecture preset; `small` shrinks every width and depth
    (same block structure) so tests can build and run it on a CPU in seconds."""
    config = json.loads((CONFIG_DIR / f"{ARCH_MODELS[name]}.json").read_text(encoding="utf-8"))
    if not small:
        return config
    unet, vae, text = config["unet"], config["vae"], config["text_encoder"]
    heads = unet["attention_head_dim"]
    unet.update(block_out_channels=[32, 32, 64, 64], layers_per_block=1, norm_num_groups=8, cross_attention_dim=32,
                attention_head_dim=[2, 2, 4, 4] if isinstance(heads, list) else 2)
    vae.update(block_out_channels=[8, 8, 16, 16], layers_per_block=1, norm_num_groups=8)
    text.update(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=2, projection_dim=32)
    return config


def build_pipeline(name: str, *, small: bool = False, device: str = "cpu", seed: int = 0):
    """A StableDiffusionPipeline of the preset's architecture with seeded random weights."""
    import tempfile

    import diffusers
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from pipeline.models.tiny import write_clip_bpe_vocab

    config = arch_config(name, small=small)
    torch.manual_seed(seed)
    with torch.device(device):  # random init where it is fastest (a GPU: well under a second)
        unet = diffusers.UNet2DConditionModel.from_config(config["unet"])
        vae = diffusers.AutoencoderKL.from_config(config["vae"])
        text_encoder = CLIPTextModel(CLIPTextConfig(**config["text_encoder"]))
    scheduler_config = dict(config["scheduler"])
    scheduler = getattr(diffusers, scheduler_config.pop("_class_name")).from_config(scheduler_config)
    with tempfile.TemporaryDirectory() as scratch:  # the tokenizer is saved with the pipeline
        vocab = Path(scratch)
        write_clip_bpe_vocab(vocab)
        tokenizer = CLIPTokenizer(str(vocab / "vocab.json"), str(vocab / "merges.txt"),
                                  bos_token="<|startoftext|>", eos_token="<|endoftext|>",
                                  unk_token="<|endoftext|>", pad_token=config["tokenizer"]["pad_token"],
                                  model_max_length=77)
    return diffusers.StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def materialise_model(name: str, target: Path, *, small: bool = False) -> Path:
    """Write the preset's diffusers folder (fp16 safetensors) to `target`, atomically."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    pipe = build_pipeline(name, small=small, device=device).to(torch.float16)
    return write_atomically(target, lambda tmp: pipe.save_pretrained(str(tmp), safe_serialization=True))


def materialise_scorer(name: str, target: Path, *, small: bool = False) -> Path:
    """Write an open_clip `local-dir` folder (config + fp16 safetensors) with random weights."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    model_cfg = open_clip.get_model_config(ARCH_SCORERS[name])
    if small:
        model_cfg = {"embed_dim": 32, "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16},
                     "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}
    torch.manual_seed(0)
    model = open_clip.CLIP(**model_cfg)
    weights = {k: v.to(torch.float16).contiguous() for k, v in model.state_dict().items()}

    def write(tmp: Path) -> None:
        tmp.mkdir(parents=True)
        (tmp / "open_clip_config.json").write_text(
            json.dumps({"model_cfg": model_cfg, "preprocess_cfg": _CLIP_PREPROCESS}, indent=2), encoding="utf-8")
        save_file(weights, str(tmp / "open_clip_model.safetensors"))

    return write_atomically(target, write)


def ensure_arch_model(name: str, models_dir: Path) -> Path:
    """`models_dir/<name>/diffusion`, materialised first if it is not there yet."""
    target = models_dir / name / "diffusion"
    if not (target / "model_index.json").is_file():
        materialise_model(name, target)
    return target


def ensure_arch_scorer(name: str, models_dir: Path) -> Path:
    """`models_dir/<name>/clip`, materialised first if it is not there yet."""
    target = models_dir / name / "clip"
    if not (target / "open_clip_config.json").is_file():
        materialise_scorer(name, target)
    return target


def write_atomically(target: Path, write, *, replace: bool = False) -> Path:
    """Build in a sibling temporary folder, then rename: a reader never sees half a model. Of two
    processes materialising at once, the first rename wins and the other's copy goes; with
    `replace` (retraining), an existing `target` is swapped out for the new one instead."""
    target.parent.mkdir(parents=True, exist_ok=True)
    # a name of this writer's own: pods on a shared models volume can have the same process id
    mine = f"{os.getpid()}-{secrets.token_hex(4)}"
    tmp = target.with_name(f".{target.name}.tmp-{mine}")
    write(tmp)
    tmp.chmod(0o755)  # the models are shared files, whatever made the folder
    old = target.with_name(f".{target.name}.old-{mine}")
    if replace and target.exists():
        os.rename(target, old)
    try:
        os.rename(tmp, target)
    except OSError:
        if not target.is_dir():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
    return target
