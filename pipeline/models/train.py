"""Train the embedded `tiny` models from scratch: `python -m pipeline.models.train --out models/tiny`.

Renders the training set, trains the tiny CLIP, the VAE and the UNet, and writes
`<out>/clip` (open_clip local-dir) and `<out>/diffusion` (diffusers) atomically.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class Recipe:
    """Sizes of one training run; `default` is what the committed weights were trained with."""

    n_ordinary: int = 16000
    hero_copies: int = 400
    clip_steps: int = 350
    vae_steps: int = 500
    unet_steps: int = 1100
    threads: int = 2

    @classmethod
    def quick(cls) -> "Recipe":
        """A smoke-test recipe (a minute or two): the same code path, useless weights."""
        return cls(n_ordinary=600, hero_copies=20, clip_steps=3, vae_steps=3, unet_steps=3)


def train_all(out_dir: Path, seed: int = 20261126, recipe: Recipe = Recipe(), log=print) -> dict:
    """Train everything and write `out_dir/{clip,diffusion}`; returns timings (seconds)."""
    import torch

    from pipeline.models.data import UNCONDITIONAL, build_training_set, caption
    from pipeline.models.train_clip import save_clip, text_tower_to_transformers, train_clip
    from pipeline.models.train_ldm import encode_latents, make_tokenizer, save_pipeline, train_unet, train_vae

    torch.set_num_threads(recipe.threads)
    timings: dict[str, float] = {}
    t0 = time.time()
    # unique images only: heroes are repeated by sampling weights, not by copying pixels
    data = build_training_set(recipe.n_ordinary, 1, seed)
    hero_rows = [i for i, s in enumerate(data.specs) if isinstance(s, int)]
    ordinary_rows = [i for i, s in enumerate(data.specs) if not isinstance(s, int)]
    sampled = ordinary_rows + hero_rows * recipe.hero_copies
    timings["render_s"] = time.time() - t0
    log(f"rendered {len(data.captions)} unique images in {timings['render_s']:.0f}s")

    class Sampled:  # the training set as the trainers see it: heroes repeated hero_copies times
        images = data.images[sampled]
        captions = [data.captions[i] for i in sampled]
        specs = [data.specs[i] for i in sampled]

    t = time.time()
    clip = train_clip(Sampled, caption, steps=recipe.clip_steps, seed=seed, log=log)
    timings["clip_s"] = time.time() - t

    t = time.time()
    vae = train_vae(data.images, steps=recipe.vae_steps, seed=seed, log=log)
    timings["vae_s"] = time.time() - t

    t = time.time()
    latents = encode_latents(vae, data.images)[sampled]
    scale = float(1.0 / latents.std())
    vae.register_to_config(scaling_factor=scale)
    latents = latents * scale
    timings["encode_s"] = time.time() - t
    log(f"latents {tuple(latents.shape)} scaling_factor {scale:.4f}")

    text_encoder = text_tower_to_transformers(clip).requires_grad_(False)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = make_tokenizer(Path(tmp))
        t = time.time()

        def captions(i, rng: random.Random) -> str:
            spec = Sampled.specs[i]
            return Sampled.captions[i] if isinstance(spec, int) else caption(spec, rng)

        unet = train_unet(latents, captions, text_encoder, tokenizer, steps=recipe.unet_steps, seed=seed,
                          uncond=UNCONDITIONAL, log=log)
        timings["unet_s"] = time.time() - t
        _write_atomically(out_dir / "clip", lambda d: save_clip(clip, d))
        _write_atomically(out_dir / "diffusion", lambda d: save_pipeline(d, vae, unet, text_encoder, tokenizer))
    timings["total_s"] = time.time() - t0
    (out_dir / "training.json").write_text(json.dumps(
        {"seed": seed, "recipe": asdict(recipe), "timings_s": {k: round(v, 1) for k, v in timings.items()},
         "torch": torch.__version__}, indent=2), encoding="utf-8")
    log(f"trained in {timings['total_s'] / 60:.1f} min: {timings}")
    return timings


def _write_atomically(final: Path, write) -> None:
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    try:
        staging.chmod(0o755)  # mkdtemp makes it private; the models are shared files
        write(staging)
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[2] / "models" / "tiny")
    parser.add_argument("--seed", type=int, default=20261126)
    parser.add_argument("--quick", action="store_true", help="smoke-test sizes (minutes, useless weights)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    recipe = Recipe.quick() if args.quick else Recipe()
    recipe = Recipe(**{**asdict(recipe), "threads": args.threads})
    train_all(args.out, args.seed, recipe, log=lambda m: print(m, flush=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
