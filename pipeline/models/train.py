"""Train the embedded `tiny` models from scratch: `python -m pipeline.models.train --out models/tiny`.

Renders the training set, trains the tiny CLIP, the VAE and the UNet, and writes
`<out>/clip` (open_clip local-dir) and `<out>/diffusion` (diffusers) atomically.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline.models.arch import write_atomically


@dataclass(frozen=True)
class Recipe:
    """Sizes of one training run (the default: a from-scratch run; MODEL_CARD.md says which rounds made the
    committed weights).

    Two rounds. Round 1 trains everything from scratch. Round 2 goes on from round 1's weights
    (warm restarts: a new cosine cycle each) without moving what the parts share: the CLIP image
    tower against the frozen text tower (the generator's text encoder), the VAE decoder on the
    frozen encoder's latents (the UNet's latent space), and the UNet with Min-SNR-5 weighting.
    Two optional rounds go on from a finished folder: the text round (`unet_retext_steps`, see
    `train_all`) and the image round (`clip_image_tower_steps`, `train_image_round`).
    """

    n_ordinary: int = 16000
    hero_copies: int = 400
    clip_steps: int = 1500
    vae_steps: int = 500
    unet_steps: int = 1100
    clip_image_steps: int = 800
    vae_decoder_steps: int = 800
    unet_refine_steps: int = 2400
    unet_retext_steps: int = 3000
    clip_image_tower_steps: int = 2000
    threads: int = 2

    @classmethod
    def quick(cls) -> "Recipe":
        """A smoke-test recipe (a minute or two): the same code path, useless weights."""
        return cls(n_ordinary=600, hero_copies=20, clip_steps=3, vae_steps=3, unet_steps=3,
                   clip_image_steps=2, vae_decoder_steps=2, unet_refine_steps=2, unet_retext_steps=2,
                   clip_image_tower_steps=2)


ROUND_1 = ("clip_s", "vae_s", "encode_s", "unet_s")  # timings a resumed run carries over


def _write_record(out_dir: Path, seed: int, recipe: Recipe, timings: dict, **extra) -> None:
    """`out_dir/training.json`: seed, recipe, timings (their total added) and what `extra` says."""
    import torch

    timings["total_s"] = sum(timings.values())
    record = {"seed": seed, "recipe": asdict(recipe), "timings_s": {k: round(v, 1) for k, v in timings.items()},
              "torch": torch.__version__} | extra
    (out_dir / "training.json").write_text(json.dumps(record, indent=2), encoding="utf-8")


def _training_stream(recipe: Recipe, seed: int):
    """The rendered training set (unique images), the stream's row indices into it, and the stream
    the trainers sample from: each hero repeated `hero_copies` times by index, not by copying pixels."""
    from pipeline.models.data import build_training_set

    data = build_training_set(recipe.n_ordinary, 1, seed)
    hero_rows = [i for i, s in enumerate(data.specs) if isinstance(s, int)]
    ordinary_rows = [i for i, s in enumerate(data.specs) if not isinstance(s, int)]
    sampled = ordinary_rows + hero_rows * recipe.hero_copies

    class Sampled:  # the training set as the trainers see it
        images = data.images[sampled]
        captions = [data.captions[i] for i in sampled]
        specs = [data.specs[i] for i in sampled]

    return data, sampled, Sampled


def train_image_round(resume: Path, out_dir: Path, seed: int = 20261126, recipe: Recipe = Recipe(),
                      log=print) -> dict:
    """The image round: a new CLIP image tower (`CLIP_CONFIG`'s) trained from scratch for
    `clip_image_tower_steps` against `resume`'s text tower, locked. The text tower is the
    generator's text encoder, so the diffusion model is not touched: it is copied to `out_dir`
    as it is (nothing to copy when `out_dir` is `resume`). Writes `out_dir/clip` atomically."""
    import shutil

    import torch

    from pipeline.models.data import caption
    from pipeline.models.train_clip import load_clip, save_clip, train_clip, with_new_image_tower

    torch.set_num_threads(recipe.threads)
    earlier = json.loads((resume / "training.json").read_text(encoding="utf-8"))
    t0 = time.time()
    *_, stream = _training_stream(recipe, seed)
    timings = {"render_s": time.time() - t0}
    clip = with_new_image_tower(load_clip(resume / "clip"), seed + 2)
    t = time.time()
    clip = train_clip(stream, caption, steps=recipe.clip_image_tower_steps, seed=seed + 2, model=clip,
                      lock_text=True, lr=2e-3, log=log)
    timings["clip_image_tower_s"] = time.time() - t
    if out_dir.resolve() != resume.resolve():
        write_atomically(out_dir / "diffusion", lambda d: shutil.copytree(resume / "diffusion", d), replace=True)
    write_atomically(out_dir / "clip", lambda d: save_clip(clip, d), replace=True)
    _write_record(out_dir, seed, recipe, timings, resumed=True, round="image", before=earlier)
    log(f"image round in {timings['total_s'] / 60:.1f} min: {timings}")
    return timings


def train_all(out_dir: Path, seed: int = 20261126, recipe: Recipe = Recipe(), log=print,
              resume: Path | None = None, new_text_tower: bool = False, clip_from: Path | None = None) -> dict:
    """Train everything and write `out_dir/{clip,diffusion}`; returns timings (seconds).

    `resume`: a models folder holding round 1's weights (as this function writes them): run
    round 2 only, from those weights; round 1's timings are carried over from its training.json.
    `new_text_tower` (with `resume`): the text round instead. A new CLIP is trained from
    scratch (both of its rounds), so the generator gets a new text encoder; the VAE is kept as it
    is; the UNet goes on from `resume`'s weights for `unet_retext_steps` (Min-SNR), learning
    to read the new text encoder while keeping what it knows of images. `clip_from`: the text
    round takes this CLIP (both CLIP rounds done, e.g. on another machine) instead of training one.
    """
    if new_text_tower and resume is None:
        raise ValueError("new_text_tower needs the models folder to go on from (resume)")
    if clip_from is not None and not new_text_tower:
        raise ValueError("clip_from is the text round's CLIP: it needs new_text_tower")
    import torch

    from pipeline.models.data import UNCONDITIONAL, caption
    from pipeline.models.train_clip import load_clip, save_clip, text_tower_to_transformers, train_clip
    from pipeline.models.train_ldm import (encode_latents, make_tokenizer, refine_vae_decoder, save_pipeline,
                                           train_unet, train_vae)

    torch.set_num_threads(recipe.threads)
    timings: dict[str, float] = {}
    t0 = time.time()
    data, sampled, Sampled = _training_stream(recipe, seed)
    timings["render_s"] = time.time() - t0
    log(f"rendered {len(data.captions)} unique images in {timings['render_s']:.0f}s")

    def captions(i, rng: random.Random) -> str:
        spec = Sampled.specs[i]
        return Sampled.captions[i] if isinstance(spec, int) else caption(spec, rng)

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = make_tokenizer(Path(tmp))
        if clip_from is not None:
            clip = load_clip(clip_from)
        elif resume is None or new_text_tower:  # round 1 of the CLIP, from scratch
            t = time.time()
            clip = train_clip(Sampled, caption, steps=recipe.clip_steps, seed=seed, log=log)
            timings["clip_s"] = time.time() - t
        if resume is None:  # round 1 of the VAE and the UNet, from scratch
            t = time.time()
            vae = train_vae(data.images, steps=recipe.vae_steps, seed=seed, log=log)
            timings["vae_s"] = time.time() - t
            t = time.time()
            latents = encode_latents(vae, data.images)[sampled]
            vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
            latents = latents * vae.config.scaling_factor
            timings["encode_s"] = time.time() - t
            text_encoder = text_tower_to_transformers(clip).requires_grad_(False)
            t = time.time()
            unet = train_unet(latents, captions, text_encoder, tokenizer,
                              steps=recipe.unet_steps, seed=seed, uncond=UNCONDITIONAL, log=log)
            timings["unet_s"] = time.time() - t
        else:
            from diffusers import AutoencoderKL, UNet2DConditionModel

            clip = clip if new_text_tower else load_clip(resume / "clip")
            vae = AutoencoderKL.from_pretrained(str(resume / "diffusion" / "vae"), use_safetensors=True,
                                                local_files_only=True)
            unet = UNet2DConditionModel.from_pretrained(str(resume / "diffusion" / "unet"), use_safetensors=True,
                                                        local_files_only=True)
            for part in (vae, unet):  # where they were loaded from is not part of the model
                part._internal_dict = type(part.config)({k: v for k, v in part.config.items() if k != "_name_or_path"})
            earlier = json.loads((resume / "training.json").read_text(encoding="utf-8"))
            if not new_text_tower:  # round 2 completes round 1's record; the text round keeps it whole
                timings |= {k: earlier["timings_s"][k] for k in ROUND_1 if k in earlier["timings_s"]}
            # round 2 leaves the encoder and the scaling factor alone: round 1's latents all through
            latents = encode_latents(vae, data.images)[sampled] * vae.config.scaling_factor
        log(f"{'text round' if new_text_tower else 'round 2'} from {'round 1' if resume is None else resume}")

        if clip_from is None:
            t = time.time()
            clip = train_clip(Sampled, caption, steps=recipe.clip_image_steps, seed=seed + 1, model=clip,
                              lock_text=True, lr=1e-3, log=log)
            timings["clip_image_s"] = time.time() - t
        if not new_text_tower:  # the decoder reads no text: the text round leaves it as it is
            t = time.time()
            vae = refine_vae_decoder(vae, Sampled.images, steps=recipe.vae_decoder_steps, seed=seed + 1, log=log)
            timings["vae_decoder_s"] = time.time() - t
        log(f"latents {tuple(latents.shape)} scaling_factor {vae.config.scaling_factor:.4f}")
        text_encoder = text_tower_to_transformers(clip).requires_grad_(False)
        t = time.time()
        unet = train_unet(latents, captions, text_encoder, tokenizer,
                          steps=recipe.unet_retext_steps if new_text_tower else recipe.unet_refine_steps,
                          seed=seed + 1, uncond=UNCONDITIONAL, unet=unet, snr_gamma=5.0, log=log)
        timings["unet_retext_s" if new_text_tower else "unet_refine_s"] = time.time() - t
        write_atomically(out_dir / "clip", lambda d: save_clip(clip, d), replace=True)
        write_atomically(out_dir / "diffusion", lambda d: save_pipeline(d, vae, unet, text_encoder, tokenizer),
                         replace=True)
    extra = {"resumed": resume is not None}
    if new_text_tower:  # what this round went on from, and where its CLIP came from
        extra |= {"round": "text", "clip_from": str(clip_from) if clip_from else None, "before": earlier}
    _write_record(out_dir, seed, recipe, timings, **extra)
    log(f"trained in {timings['total_s'] / 60:.1f} min: {timings}")
    return timings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="synthcat models train", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[2] / "models" / "tiny")
    parser.add_argument("--seed", type=int, default=20261126)
    parser.add_argument("--quick", action="store_true", help="smoke-test sizes (minutes, useless weights)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--resume", type=Path, metavar="DIR",
                        help="a models folder with round 1's weights: train round 2 only, from them")
    parser.add_argument("--new-text-tower", action="store_true",
                        help="with --resume: train a new CLIP from scratch, keep the VAE, and retrain the UNet "
                             "from --resume's weights on the new text encoder")
    parser.add_argument("--new-image-tower", action="store_true",
                        help="with --resume: train a new CLIP image tower against --resume's text tower (locked); "
                             "the diffusion model is kept as it is")
    parser.add_argument("--clip", type=Path, metavar="DIR",
                        help="with --new-text-tower: use this trained CLIP (open_clip local-dir) instead of training one")
    args = parser.parse_args(argv)
    if args.new_text_tower and args.resume is None:
        parser.error("--new-text-tower goes on from a models folder: give --resume DIR")
    if args.clip and not args.new_text_tower:
        parser.error("--clip is the text round's CLIP: give --new-text-tower")
    for option, folder in (("--resume", args.resume), ("--clip", args.clip)):
        if folder is not None and not folder.is_dir():
            parser.error(f"{option} {folder}: not a folder")
    if args.new_image_tower and (args.resume is None or args.new_text_tower):
        parser.error("--new-image-tower goes on from a models folder (--resume DIR), without --new-text-tower")
    recipe = Recipe.quick() if args.quick else Recipe()
    recipe = Recipe(**{**asdict(recipe), "threads": args.threads})
    if args.new_image_tower:
        train_image_round(args.resume, args.out, args.seed, recipe, log=lambda m: print(m, flush=True))
        return 0
    train_all(args.out, args.seed, recipe, log=lambda m: print(m, flush=True), resume=args.resume,
              new_text_tower=args.new_text_tower, clip_from=args.clip)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
