"""Materialise the embedded `tiny` preset: a tiny latent diffusion model and a tiny CLIP scorer.

Until the project's trained tiny models land, both are built from small configs with
fixed-seed random weights, then saved once in the standard formats (diffusers directory,
open_clip local directory, safetensors only). From then on they load through exactly the
code path a real Stable Diffusion checkpoint and a real open_clip model use.
"""

from __future__ import annotations

import gzip
import json
import shutil
import tempfile
from pathlib import Path

TINY_SEED = 20261126
IMAGE_SIZE = 64
CLIP_CONFIG = {
    "model_cfg": {
        "embed_dim": 32,
        "vision_cfg": {"image_size": IMAGE_SIZE, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
    },
    "preprocess_cfg": {
        "mean": [0.48145466, 0.4578275, 0.40821073],
        "std": [0.26862954, 0.26130258, 0.27577711],
        "interpolation": "bicubic",
        "resize_mode": "shortest",
    },
}


def _write_clip_bpe_tokenizer(target: Path) -> None:
    """Write vocab.json + merges.txt for `CLIPTokenizer` from open_clip's bundled BPE file.

    open_clip ships the CLIP BPE merges inside its wheel, so the tokenizer is built offline and
    matches open_clip's SimpleTokenizer id for id (same byte alphabet, merges and specials).
    """
    from open_clip.tokenizer import bytes_to_unicode, default_bpe

    with gzip.open(default_bpe(), "rt", encoding="utf-8") as fh:
        merges = fh.read().split("\n")[1 : 49152 - 256 - 2 + 1]
    alphabet = list(bytes_to_unicode().values())
    vocab = alphabet + [v + "</w>" for v in alphabet] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    target.mkdir(parents=True, exist_ok=True)
    (target / "vocab.json").write_text(
        json.dumps({tok: i for i, tok in enumerate(vocab)}, ensure_ascii=False), encoding="utf-8"
    )
    (target / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")


def build_tiny_diffusion(target: Path) -> None:
    """Build and save the tiny StableDiffusionPipeline (64x64 px) in diffusers format."""
    import torch
    from diffusers import (AutoencoderKL, DPMSolverMultistepScheduler, StableDiffusionPipeline,
                           UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(TINY_SEED)
    unet = UNet2DConditionModel(
        sample_size=IMAGE_SIZE // 2, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
        attention_head_dim=8,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=IMAGE_SIZE,
        block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=77, projection_dim=32,
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
    ))
    scheduler = DPMSolverMultistepScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
    )
    with tempfile.TemporaryDirectory() as tmp:
        _write_clip_bpe_tokenizer(Path(tmp))
        tokenizer = CLIPTokenizer(
            str(Path(tmp) / "vocab.json"), str(Path(tmp) / "merges.txt"),
            bos_token="<|startoftext|>", eos_token="<|endoftext|>",
            unk_token="<|endoftext|>", pad_token="<|endoftext|>", model_max_length=77,
        )
        pipe = StableDiffusionPipeline(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
        pipe.save_pretrained(str(target), safe_serialization=True)


def build_tiny_clip(target: Path) -> None:
    """Build and save the tiny open_clip model as a `local-dir:` folder (config + safetensors)."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(TINY_SEED + 1)
    model = open_clip.CLIP(**CLIP_CONFIG["model_cfg"])
    target.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(target / "open_clip_model.safetensors"))
    (target / "open_clip_config.json").write_text(json.dumps(CLIP_CONFIG, indent=2), encoding="utf-8")


def ensure_tiny_models(root: Path) -> Path:
    """Build `root/tiny/{diffusion,clip}` if absent; return `root/tiny`.

    Each part is built in a temporary sibling folder and renamed into place, so an
    interrupted build never leaves a half-written model behind.
    """
    home = root / "tiny"
    for name, build in (("diffusion", build_tiny_diffusion), ("clip", build_tiny_clip)):
        final = home / name
        if final.is_dir():
            continue
        home.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=home))
        try:
            build(staging)
            staging.rename(final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return home
