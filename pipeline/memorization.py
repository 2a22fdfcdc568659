"""`synthcat eval memorization`: how well the in-generation signal separates memorized prompts.

Planted prompts are the captions of the embedded model's planted memorization set (each hero
image repeated many times in training under one caption, as duplicated web images were for
Stable Diffusion); ordinary prompts are catalog-style category x colour x scene prompts. For
each generation the score is `mem_cfg_gap` (Wen et al., ICLR 2024: the norm of the
text-conditional minus unconditional noise prediction at the first step). Reported: ROC AUC,
the TPR at 1% FPR, and the threshold that gives that FPR on ordinary prompts (calibration).
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pyarrow as pa


def roc_auc(positives: np.ndarray, negatives: np.ndarray) -> float:
    """P(score of a random positive > score of a random negative), ties counted half."""
    greater = (positives[:, None] > negatives[None, :]).sum()
    ties = (positives[:, None] == negatives[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(positives) * len(negatives)))


def tpr_at_fpr(positives: np.ndarray, negatives: np.ndarray, fpr: float = 0.01) -> tuple[float, float]:
    """(TPR, threshold) where the threshold lets at most `fpr` of the negatives through."""
    threshold = float(np.quantile(negatives, 1.0 - fpr, method="higher"))
    return float((positives > threshold).mean()), threshold


def _prompts(seeds_per_planted: int, n_ordinary: int, seed: int) -> list[tuple[str, int, bool]]:
    from pipeline.models.data import HERO_CAPTIONS, eval_prompt
    from pipeline.models.renderer import CATEGORIES, COLOURS, SCENES

    rng = random.Random(seed)
    planted = [(c, s, True) for c in HERO_CAPTIONS for s in range(seeds_per_planted)]
    ordinary = [(eval_prompt(rng.choice(CATEGORIES), rng.choice(list(COLOURS)), rng.choice(SCENES)),
                 1000 + i, False) for i in range(n_ordinary)]
    return planted + ordinary


def evaluate_memorization(models_dir: Path, *, seeds_per_planted: int = 8, n_ordinary: int = 200,
                          steps: int = 4, seed: int = 0) -> dict:
    """Generate planted and ordinary prompts with the tiny model; score them; AUC and TPR@1%FPR.

    Only the first denoising step feeds the signal, so a few steps suffice.
    """
    from pipeline.executor import make_batches
    from pipeline.models.presets import resolve_model
    from pipeline.stages.generate import GenerateStage

    model = resolve_model("tiny", models_dir)
    prompts = _prompts(seeds_per_planted, n_ordinary, seed)
    items = pa.table({
        "prompt": [p for p, _, _ in prompts], "negative_prompt": [""] * len(prompts),
        "seed": [s for _, s, _ in prompts], "width": [model.width] * len(prompts),
        "height": [model.height] * len(prompts), "shard_id": ["eval"] * len(prompts),
    })
    stage = GenerateStage(model.path, model.name, "eval", model.pipeline_class, steps, model.guidance_scale)
    stage.setup()
    gaps = np.concatenate([np.asarray(stage(b).column("mem_cfg_gap").to_pylist(), dtype=float)
                           for b in make_batches(items, 32)])
    planted = np.array([p for _, _, p in prompts])
    auc = roc_auc(gaps[planted], gaps[~planted])
    tpr, threshold = tpr_at_fpr(gaps[planted], gaps[~planted], 0.01)
    return {"signal": "mem_cfg_gap", "auc": auc, "tpr_at_1pct_fpr": tpr, "threshold_at_1pct_fpr": threshold,
            "n_planted": int(planted.sum()), "n_ordinary": int((~planted).sum()), "steps": steps,
            "planted_median": float(np.median(gaps[planted])), "ordinary_median": float(np.median(gaps[~planted]))}
