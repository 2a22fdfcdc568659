"""Train a brand-look LoRA for the embedded `tiny` model: `python -m pipeline.models.train_lora`.

The look ("Northwind": navy, slate and cream) is a duotone grade of the rendered scene; the
product keeps its own colours, as a brand's campaign photography would. Captions are the
ordinary catalog captions (no trigger word), so the adapter shifts every prompt toward the
look. Only the UNet gets LoRA layers (attention projections, resnet and in/out convolutions,
rank 8, alpha = rank); the weights are saved in the diffusers LoRA layout and load with
`pipe.load_lora_weights(folder)`. The committed adapter (models/tiny/lora/northwind-look) is
0.7 MB, 300 steps, about 5 minutes on one CPU thread; at scale 1 it takes the mean CIEDE2000
distance of generated images to the Northwind palette from about 23 to about 16.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np

# Navy -> cream duotone; the slate midpoint is in the brand palette too (examples/job.yaml).
NORTHWIND = ((31, 58, 95), (242, 232, 213))
TARGET_MODULES = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "conv1", "conv2", "conv_in", "conv_out"]
WEIGHT_NAME = "pytorch_lora_weights.safetensors"
MIN_TIMESTEP = 200  # of 1000
MAX_WEIGHT = 20.0   # cap of the 1/SNR loss weight


def brand_look(image: np.ndarray, product: np.ndarray, duotone=NORTHWIND) -> np.ndarray:
    """The scene of `image` (HWC uint8) graded to a duotone; pixels where `product` is True kept."""
    rgb = image.astype(np.float32) / 255
    luma = (0.2126 * rgb[..., 0] + 0.7152 * rgb[..., 1] + 0.0722 * rgb[..., 2])[..., None]
    dark, light = (np.array(c, np.float32) for c in duotone)
    graded = dark + (light - dark) * luma
    out = np.where(product[..., None], image.astype(np.float32), graded)
    return out.round().clip(0, 255).astype(np.uint8)


def training_images(n: int, seed: int, size: int = 64) -> tuple[np.ndarray, list[str]]:
    """`n` rendered products with the brand look and their catalog captions."""
    from pipeline.models.data import caption, training_spec
    from pipeline.models.renderer import render, render_mask

    rng = random.Random(seed)
    specs = [training_spec(rng) for _ in range(n)]
    images = [brand_look(np.asarray(render(s, size)), render_mask(s, size)) for s in specs]
    return np.stack(images), [caption(s, rng) for s in specs]


def train_lora(diffusion_dir: Path, out_dir: Path, *, n_images: int = 600, steps: int = 300,
               batch_size: int = 16, rank: int = 8, lr: float = 5e-3, seed: int = 0, log=print) -> dict:
    """Train the adapter on the model in `diffusion_dir`; write `out_dir/pytorch_lora_weights.safetensors`."""
    import torch
    from diffusers import DDPMScheduler, StableDiffusionPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from pipeline.models.train_ldm import SCHEDULE, encode_latents

    torch.manual_seed(seed)
    rng = random.Random(seed)
    started = time.time()
    pipe = StableDiffusionPipeline.from_pretrained(str(diffusion_dir), local_files_only=True,
                                                   use_safetensors=True, dtype=torch.float32)
    images, captions = training_images(n_images, seed)
    scale = pipe.vae.config.scaling_factor
    latents = encode_latents(pipe.vae, images) * scale
    with torch.no_grad():
        ids = pipe.tokenizer(captions, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        text = torch.cat([pipe.text_encoder(ids[i:i + 256])[0] for i in range(0, len(ids), 256)])
    unet = pipe.unet
    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                target_modules=TARGET_MODULES))
    params = [p for p in unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    noise_sched = DDPMScheduler(**SCHEDULE)
    alphas = noise_sched.alphas_cumprod
    unet.train()
    for step in range(steps):
        idx = [rng.randrange(len(latents)) for _ in range(batch_size)]
        x0, cond = latents[idx], text[idx]
        noise = torch.randn_like(x0)
        # a look is global colour and tone: decided at the noisier steps, so those are sampled
        t = torch.randint(MIN_TIMESTEP, SCHEDULE["num_train_timesteps"], (batch_size,))
        # epsilon-MSE barely sees colour at high noise (x_t is almost all noise there); weighting it
        # by 1/SNR (capped) turns it into an x0 loss where the look is decided
        snr = alphas[t] / (1 - alphas[t])
        weight = (1 / snr).clamp(max=MAX_WEIGHT)[:, None, None, None]
        error = unet(noise_sched.add_noise(x0, noise, t), t, cond).sample - noise
        loss = (weight * error ** 2).mean() / weight.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 25 == 0 or step == steps - 1:
            log(f"lora step {step}/{steps} loss {loss.item():.4f} {time.time() - started:.0f}s")
    out_dir.mkdir(parents=True, exist_ok=True)
    StableDiffusionPipeline.save_lora_weights(
        str(out_dir), unet_lora_layers=get_peft_model_state_dict(unet), weight_name=WEIGHT_NAME,
        safe_serialization=True)
    record = {"base": str(diffusion_dir), "look": "northwind duotone", "duotone": NORTHWIND, "rank": rank,
              "target_modules": TARGET_MODULES, "n_images": n_images, "steps": steps, "batch_size": batch_size,
              "lr": lr, "min_timestep": MIN_TIMESTEP, "loss": "1/SNR-weighted epsilon MSE (x0 loss), "
              f"weight capped at {MAX_WEIGHT}", "seed": seed, "seconds": round(time.time() - started, 1),
              "torch": torch.__version__}
    (out_dir / "training.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return record


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/tiny/diffusion", help="base diffusers folder")
    parser.add_argument("--out", default="models/tiny/lora/northwind-look", help="adapter folder")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    print(json.dumps(train_lora(Path(args.model), Path(args.out), steps=args.steps), indent=2))


if __name__ == "__main__":
    main()
