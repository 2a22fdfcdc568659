"""Train the tiny latent diffusion model: a 4x AutoencoderKL, then a UNet on cached latents.

The text encoder is the tiny CLIP's text tower (frozen, converted to transformers' layout),
so the diffusion model and the scorer read prompts the same way. DDPM training with epsilon
prediction; 10% caption dropout teaches the unconditional branch that guidance needs.
"""

from __future__ import annotations

import copy
import math
import random
import time
from pathlib import Path

IMAGE_SIZE = 64
SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def make_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=IMAGE_SIZE,
        block_out_channels=(16, 32, 64), down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3, layers_per_block=1, norm_num_groups=8,
        mid_block_add_attention=False,
    )


def make_unet(cross_attention_dim: int):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=IMAGE_SIZE // 4, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64, 64),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim, attention_head_dim=4, norm_num_groups=16,
    )


def _images_to_tensor(images_uint8):
    import torch

    return torch.as_tensor(images_uint8).permute(0, 3, 1, 2).float() / 127.5 - 1


def _cosine_lr(opt, steps: int, warmup: int):
    import torch

    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(i, steps) / steps))))


def _reconstruction_loss(recon, x):
    """MSE + 0.5 L1 between a decoded batch and its images."""
    return (recon - x).pow(2).mean() + 0.5 * (recon - x).abs().mean()


def _optimise(opt, sched, loss, clip_grad_of=None) -> None:
    """One optimiser and one schedule step on `loss`; gradients clipped to norm 1 when `clip_grad_of`
    (the parameters) is given."""
    import torch

    opt.zero_grad(set_to_none=True)
    loss.backward()
    if clip_grad_of is not None:
        torch.nn.utils.clip_grad_norm_(clip_grad_of, 1.0)
    opt.step()
    sched.step()


def train_vae(images_uint8, *, steps: int, batch_size: int = 32, lr: float = 2e-3, seed: int = 0, log=print):
    """MSE + L1 reconstruction with a tiny KL term (as in Stable Diffusion's VAE, minus the GAN)."""
    import torch

    torch.manual_seed(seed)
    rng = random.Random(seed)
    vae = make_vae()
    data = _images_to_tensor(images_uint8)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    sched = _cosine_lr(opt, steps, max(1, steps // 20))
    start = time.time()
    for step in range(steps):
        x = data[rng.sample(range(len(data)), batch_size)]
        post = vae.encode(x).latent_dist
        recon = vae.decode(post.sample()).sample
        kl = post.kl().mean() / x[0].numel()
        loss = _reconstruction_loss(recon, x) + 1e-4 * kl
        _optimise(opt, sched, loss)
        if step % 100 == 0 or step == steps - 1:
            log(f"vae step {step}/{steps} loss {loss.item():.4f} {time.time() - start:.0f}s")
    return vae.eval()


def refine_vae_decoder(vae, images_uint8, *, steps: int, batch_size: int = 32, lr: float = 1e-3, seed: int = 0,
                       log=print):
    """Train the decoder alone on the frozen encoder's posterior means: sharper, truer colours,
    and the latent space the UNet was trained on stays exactly as it was."""
    import torch

    torch.manual_seed(seed)
    rng = random.Random(seed)
    data = _images_to_tensor(images_uint8)
    vae.requires_grad_(False)
    decoder = [*vae.post_quant_conv.parameters(), *vae.decoder.parameters()]
    for param in decoder:
        param.requires_grad_(True)
    opt = torch.optim.AdamW(decoder, lr=lr, weight_decay=0.0)
    sched = _cosine_lr(opt, steps, max(1, steps // 20))
    vae.train()
    start = time.time()
    for step in range(steps):
        x = data[rng.sample(range(len(data)), batch_size)]
        with torch.no_grad():
            z = vae.encode(x).latent_dist.mean
        recon = vae.decode(z).sample
        loss = _reconstruction_loss(recon, x)
        _optimise(opt, sched, loss)
        if step % 100 == 0 or step == steps - 1:
            log(f"vae decoder step {step}/{steps} loss {loss.item():.4f} {time.time() - start:.0f}s")
    return vae.eval().requires_grad_(False)


def encode_latents(vae, images_uint8, batch_size: int = 128):
    """Posterior means of all images (unscaled)."""
    import torch

    out = []
    with torch.no_grad():
        for i in range(0, len(images_uint8), batch_size):
            out.append(vae.encode(_images_to_tensor(images_uint8[i:i + batch_size])).latent_dist.mean)
    return torch.cat(out)


def train_unet(latents, captions, text_encoder, tokenizer, *, steps: int, batch_size: int = 64,
               lr: float = 1e-3, seed: int = 0, uncond=("",), dropout: float = 0.1, unet=None,
               snr_gamma: float | None = None, log=print):
    """DDPM epsilon-prediction training; `captions(i, rng)` gives item i's caption for this step.

    `unet`: go on from these weights (a new cosine cycle, a warm restart) instead of a new UNet.
    `snr_gamma`: Min-SNR-gamma loss weighting (Hang et al. 2023, gamma 5), min(SNR, gamma) / SNR
    per timestep for epsilon prediction: the nearly clean timesteps stop dominating the gradient,
    which speeds convergence several-fold. Returns the EMA copy of the UNet (what is shipped).
    """
    import torch
    import torch.nn.functional as F
    from diffusers import DDPMScheduler

    torch.manual_seed(seed)
    rng = random.Random(seed)
    unet = (copy.deepcopy(unet).requires_grad_(True) if unet is not None
            else make_unet(text_encoder.config.hidden_size)).train()
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    noise_sched = DDPMScheduler(**SCHEDULE)
    alphas = noise_sched.alphas_cumprod
    snr = alphas / (1 - alphas)
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.0)
    sched = _cosine_lr(opt, steps, max(1, steps // 20))
    token_cache: dict[str, torch.Tensor] = {}

    def encode(texts):
        missing = [t for t in set(texts) if t not in token_cache]
        if missing:
            ids = tokenizer(missing, padding="max_length", max_length=tokenizer.model_max_length,
                            truncation=True, return_tensors="pt").input_ids
            token_cache.update(zip(missing, ids))
        with torch.no_grad():
            return text_encoder(torch.stack([token_cache[t] for t in texts]))[0]

    n = len(latents)
    start = time.time()
    for step in range(steps):
        idx = [rng.randrange(n) for _ in range(batch_size)]
        texts = [rng.choice(uncond) if rng.random() < dropout else captions(i, rng) for i in idx]
        x0 = latents[idx]
        noise = torch.randn_like(x0)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (batch_size,))
        pred = unet(noise_sched.add_noise(x0, noise, t), t, encode(texts)).sample
        if snr_gamma is None:
            loss = F.mse_loss(pred, noise)
        else:
            weight = snr[t].clamp(max=snr_gamma) / snr[t]
            loss = (F.mse_loss(pred, noise, reduction="none").mean((1, 2, 3)) * weight).mean()
        _optimise(opt, sched, loss, clip_grad_of=unet.parameters())
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), unet.parameters()):
                pe.lerp_(p, 1 - decay)
        if step % 100 == 0 or step == steps - 1:
            log(f"unet step {step}/{steps} loss {loss.item():.4f} {time.time() - start:.0f}s")
    return ema


def make_tokenizer(tmp: Path):
    """CLIPTokenizer from open_clip's bundled BPE vocabulary (offline, id-for-id the same)."""
    from transformers import CLIPTokenizer

    from pipeline.models.tiny import write_clip_bpe_vocab

    write_clip_bpe_vocab(tmp)
    return CLIPTokenizer(str(tmp / "vocab.json"), str(tmp / "merges.txt"), bos_token="<|startoftext|>",
                         eos_token="<|endoftext|>", unk_token="<|endoftext|>", pad_token="<|endoftext|>",
                         model_max_length=77)


def save_pipeline(target: Path, vae, unet, text_encoder, tokenizer) -> None:
    """diffusers layout, safetensors only, with the DPM-Solver++ sampler the presets use."""
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=DPMSolverMultistepScheduler(**SCHEDULE, steps_offset=1),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(str(target), safe_serialization=True)

