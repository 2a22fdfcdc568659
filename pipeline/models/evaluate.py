"""Evaluate the tiny models: `python -m pipeline.models.evaluate [--json FILE] [--grid PNG]`.

Measures (targets from issue 3):
- colour: held-out category x colour x scene prompts; the product region's dominant colour name
  matches the prompted colour (>= 80%)
- category: tiny-CLIP zero-shot accuracy on generated images (>= 70%) and on renders (>= 95%)
- alignment: own prompt scores above a mismatched prompt (>= 90% of pairs)
- memorization: planted captions reproduce their hero (SSIM >= 0.8) for >= 50% of seeds;
  ordinary prompts never do
- speed: seconds per 64x64 image, 20 steps with guidance, batch 16 (a benchmark)
It also proposes the scorer's `min_clip_score` (see `calibrate_threshold`).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

import numpy as np

SSIM_COPY = 0.8
STEPS, GUIDANCE, BATCH = 20, 7.5, 16


def load_models(home: Path, threads: int = 2):
    import open_clip
    import torch
    from diffusers import StableDiffusionPipeline

    torch.set_num_threads(threads)
    pipe = StableDiffusionPipeline.from_pretrained(str(home / "diffusion"), local_files_only=True,
                                                   use_safetensors=True, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    source = f"local-dir:{home / 'clip'}"
    clip, _, preprocess = open_clip.create_model_and_transforms(source)
    return pipe, clip.eval(), preprocess, open_clip.get_tokenizer(source)


def generate(pipe, prompts: list[str], seeds: list[int], negative: str = "") -> np.ndarray:
    """uint8 images, one torch.Generator per image, in batches of BATCH."""
    import torch

    out = []
    for i in range(0, len(prompts), BATCH):
        gens = [torch.Generator().manual_seed(s) for s in seeds[i:i + BATCH]]
        with torch.inference_mode():
            images = pipe(prompts[i:i + BATCH], negative_prompt=[negative] * len(gens), generator=gens,
                          num_inference_steps=STEPS, guidance_scale=GUIDANCE, output_type="np").images
        out.append((np.clip(images, 0, 1) * 255).round().astype(np.uint8))
    return np.concatenate(out)


def embed_images(clip, preprocess, images) -> np.ndarray:
    import torch
    from PIL import Image

    with torch.inference_mode():
        x = torch.stack([preprocess(Image.fromarray(im)) for im in images])
        return clip.encode_image(x, normalize=True).numpy()


def embed_texts(clip, tokenizer, texts) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return clip.encode_text(tokenizer(list(texts)), normalize=True).numpy()


def zero_shot(clip, tokenizer, image_emb: np.ndarray) -> list[str]:
    """The category whose prompt-ensemble text embedding is closest to each image.

    Each category's prototype averages the canonical prompt over every colour and scene
    (prompt ensembling, as CLIP's zero-shot evaluation averages its templates)."""
    from pipeline.models.data import eval_prompt
    from pipeline.models.renderer import CATEGORIES, COLOURS, SCENES

    protos = []
    for c in CATEGORIES:
        texts = [eval_prompt(c, colour, scene) for colour in COLOURS for scene in SCENES]
        e = embed_texts(clip, tokenizer, texts).mean(0)
        protos.append(e / np.linalg.norm(e))
    return [CATEGORIES[i] for i in (image_emb @ np.array(protos).T).argmax(1)]


def calibrate_threshold(matched: np.ndarray, mismatched: np.ndarray) -> float:
    """The cosine that best separates own-prompt from mismatched-prompt scores (max of
    TPR - FPR, Youden's J), rounded down to 0.01 so the gate errs on the accepting side."""
    candidates = np.unique(np.concatenate([matched, mismatched]))
    j = [(matched >= t).mean() - (mismatched >= t).mean() for t in candidates]
    return float(np.floor(candidates[int(np.argmax(j))] * 100) / 100)


def evaluate(home: Path, n_prompts: int = 200, hero_seeds: int = 10, threads: int = 2, grid: Path | None = None) -> dict:
    from pipeline.models.data import HERO_CAPTIONS, eval_prompt, held_out_combos, render_hero
    from pipeline.models.metrics import dominant_colour, ssim
    from pipeline.models.renderer import PATTERNS, RenderSpec, render

    pipe, clip, preprocess, tokenizer = load_models(home, threads)
    combos = held_out_combos()
    combos = [combos[i % len(combos)] for i in range(n_prompts)]
    prompts = [eval_prompt(*c) for c in combos]
    seeds = [1000 + i for i in range(n_prompts)]
    generate(pipe, prompts[:BATCH], seeds[:BATCH])  # warm-up, not timed
    start = time.perf_counter()
    images = generate(pipe, prompts, seeds)
    per_image = (time.perf_counter() - start) / n_prompts

    # colour
    colour_hits = [dominant_colour(im, k) == c for im, (k, c, _) in zip(images, combos)]
    rng = random.Random(7)
    renders = np.stack([np.asarray(render(RenderSpec(k, c, rng.choice(PATTERNS), s, rng.randrange(1 << 30))))
                        for k, c, s in combos])
    render_colour_hits = [dominant_colour(im, k) == c for im, (k, c, _) in zip(renders, combos)]
    # category
    gen_emb = embed_images(clip, preprocess, images)
    ren_emb = embed_images(clip, preprocess, renders)
    gen_cat = np.mean([p == k for p, (k, _, _) in zip(zero_shot(clip, tokenizer, gen_emb), combos)])
    ren_cat = np.mean([p == k for p, (k, _, _) in zip(zero_shot(clip, tokenizer, ren_emb), combos)])
    # alignment: a mismatched prompt differs in category and colour (same scene words may repeat)
    mismatch = []
    for i, (k, c, _) in enumerate(combos):
        j = next(j for j in ((i + step) % n_prompts for step in range(37, 37 + n_prompts))
                 if combos[j][0] != k and combos[j][1] != c)
        mismatch.append(prompts[j])
    own = (gen_emb * embed_texts(clip, tokenizer, prompts)).sum(1)
    other = (gen_emb * embed_texts(clip, tokenizer, mismatch)).sum(1)
    # memorization
    heroes = [np.asarray(render_hero(i)) for i in range(len(HERO_CAPTIONS))]
    hero_ssim = []
    for h, text in enumerate(HERO_CAPTIONS):
        outs = generate(pipe, [text] * hero_seeds, list(range(hero_seeds)))
        hero_ssim.append([ssim(o, heroes[h]) for o in outs])
    ordinary_max = [max(ssim(im, h) for h in heroes) for im in images]
    hero_rates = [float(np.mean(np.array(s) >= SSIM_COPY)) for s in hero_ssim]

    if grid is not None:
        _save_grid(grid, list(images[:48]) + [o for o in generate(pipe, list(HERO_CAPTIONS), [0] * 5)] + heroes)
    return {
        "model_dir": str(home), "n_prompts": n_prompts, "steps": STEPS, "guidance_scale": GUIDANCE,
        "colour_accuracy": float(np.mean(colour_hits)), "colour_accuracy_on_renders": float(np.mean(render_colour_hits)),
        "category_zero_shot_generated": float(gen_cat), "category_zero_shot_renders": float(ren_cat),
        "alignment_own_above_mismatched": float(np.mean(own > other)),
        "clip_score_own": {"mean": float(own.mean()), "p05": float(np.percentile(own, 5))},
        "clip_score_mismatched": {"mean": float(other.mean()), "p95": float(np.percentile(other, 95))},
        "proposed_min_clip_score": calibrate_threshold(own, other),
        "share_own_below_proposed": float((own < calibrate_threshold(own, other)).mean()),
        "memorization": {
            "ssim_threshold": SSIM_COPY, "seeds_per_hero": hero_seeds,
            "hero_copy_rate": hero_rates, "hero_copy_rate_mean": float(np.mean(hero_rates)),
            "hero_ssim_median": [float(np.median(s)) for s in hero_ssim],
            "ordinary_max_ssim_to_any_hero": float(max(ordinary_max)),
            "ordinary_copies": int(sum(s >= SSIM_COPY for s in ordinary_max)),
        },
        "speed_s_per_image": per_image, "speed_batch": BATCH, "threads": threads,
    }


def _save_grid(path: Path, images: list) -> None:
    from PIL import Image

    cols = 8
    rows = (len(images) + cols - 1) // cols
    sheet = Image.new("RGB", (64 * cols, 64 * rows), "white")
    for i, im in enumerate(images):
        sheet.paste(Image.fromarray(np.asarray(im)), ((i % cols) * 64, (i // cols) * 64))
    sheet.resize((128 * cols, 128 * rows), Image.Resampling.NEAREST).save(path)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = argparse.ArgumentParser(prog="synthcat models eval", description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=Path(__file__).resolve().parents[2] / "models" / "tiny")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--grid", type=Path, help="save a contact sheet of generated images")
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if missing := [part for part in ("diffusion", "clip") if not (args.models / part).is_dir()]:
        parser.error(f"--models {args.models}: no {' or '.join(f'{part}/' for part in missing)} folder "
                     "(give a tiny models folder, e.g. models/tiny)")
    if args.prompts < 1 or args.threads < 1:
        parser.error("--prompts and --threads: give whole numbers of at least 1")
    result = evaluate(args.models, args.prompts, threads=args.threads, grid=args.grid)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
