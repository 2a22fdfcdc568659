"""`synthcat eval memorization`: how well the memorization gate's signals catch planted copies.

Planted prompts are the captions of the embedded model's planted memorization set (each hero
image repeated 400 times in training under one caption, as duplicated web images were for
Stable Diffusion); ordinary prompts are catalog-style prompts (half in the training captions'
style, half in the job's default prompt template). Every prompt is generated as a run would
(the preset's steps and guidance, the job's default negative prompt as the unconditional
half) and goes through the gate's own evidence code against the reference index a run uses
by default: the whole training set (16,005 distinct images, the five heroes among them;
pipeline/models/training_reference.py), so the figures describe the shipped gate:

- `mem_cfg_gap` — Wen et al. (ICLR 2024), the first denoising step;
- `ref_tile_l2` — tiled pixel L2 to the closest training image (Carlini et al. 2023);
- `ref_similarity` — the scorer's descriptor cosine to the nearest training image;
- `combined` — z(mem_cfg_gap) + z(−ref_tile_l2), each standardised on a separate
  *calibration* set of ordinary prompts (other prompts, other seeds), so no planted label
  and no evaluation image shapes the score.

The calibration set also gives each signal's threshold at 1% false positives (CFG gap: the
model preset's `max_mem_cfg_gap`; descriptor cosine: the scorer preset's `max_ref_similarity`;
tiled L2: `copy_detection.DEFAULT_MAX_TILE_L2`). Reported per signal: ROC AUC and the TPR at
1% FPR, plus the operating point of the gate as shipped (OR of the presets' thresholds).
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pyarrow as pa

COUNTRIES = ("the United States", "Germany", "Japan", "Vietnam", "France")


def roc_auc(positives: np.ndarray, negatives: np.ndarray) -> float:
    """P(score of a random positive > score of a random negative), ties counted half."""
    greater = (positives[:, None] > negatives[None, :]).sum()
    ties = (positives[:, None] == negatives[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(positives) * len(negatives)))


def tpr_at_fpr(positives: np.ndarray, negatives: np.ndarray, fpr: float = 0.01) -> tuple[float, float]:
    """(TPR, threshold) where the threshold lets at most `fpr` of the negatives through."""
    threshold = float(np.quantile(negatives, 1.0 - fpr, method="higher"))
    return float((positives > threshold).mean()), threshold


def ordinary_prompts(n: int, seed: int) -> list[str]:
    """Catalog-style prompts: alternately the training captions' style and the job's template."""
    from pipeline.config import Generation
    from pipeline.models.data import eval_prompt
    from pipeline.models.renderer import CATEGORIES, COLOURS, SCENES

    rng, template = random.Random(seed), Generation().prompt_template
    prompts = []
    for i in range(n):
        category, colour = rng.choice(CATEGORIES), rng.choice(list(COLOURS))
        if i % 2 == 0:
            prompts.append(eval_prompt(category, colour, rng.choice(SCENES)))
        else:
            prompts.append(template.format(title=f"{colour.capitalize()} {category}", category=category,
                                           attributes=f", {colour}", country=rng.choice(COUNTRIES),
                                           kind="campaign", language="", market=""))
    return prompts


def _items(prompts: list[str], seeds: list[int], width: int, height: int, negative: str) -> pa.Table:
    n = len(prompts)
    return pa.table({"item_id": [f"eval-{i:05d}" for i in range(n)], "prompt": prompts,
                     "negative_prompt": [negative] * n, "seed": seeds, "width": [width] * n,
                     "height": [height] * n, "shard_id": ["eval"] * n})


def _training_reference(models_dir: Path, clip_path: Path):
    """The run's default reference index: the tiny training set, built on first use."""
    from pipeline.models.training_reference import ensure_training_reference
    from pipeline.reference import ReferenceIndex

    return ReferenceIndex(ensure_training_reference("tiny", models_dir, clip_path), clip_path)


def _signals(items: pa.Table, stages, reference) -> dict[str, np.ndarray]:
    from pipeline.executor import make_batches
    from pipeline.stages.memorization_gate import memorization_evidence

    out: dict[str, list] = {"mem_cfg_gap": [], "ref_tile_l2": [], "ref_similarity": []}
    for batch in make_batches(items, 32):
        for stage in stages:
            batch = stage(batch)
        embeddings = np.asarray(batch.column("clip_embedding").to_pylist(), dtype=np.float32)
        evidence = memorization_evidence(batch, embeddings, reference, max_ref_similarity=None,
                                         max_ref_tile_l2=None, max_mem_cfg_gap=None)
        out["mem_cfg_gap"] += batch.column("mem_cfg_gap").to_pylist()
        out["ref_tile_l2"] += evidence.ref_tile_l2
        out["ref_similarity"] += evidence.ref_similarity
    return {k: np.asarray(v, dtype=float) for k, v in out.items()}


def _figures(scores: np.ndarray, planted: np.ndarray) -> dict:
    tpr, threshold = tpr_at_fpr(scores[planted], scores[~planted], 0.01)
    return {"auc": roc_auc(scores[planted], scores[~planted]), "tpr_at_1pct_fpr": tpr,
            "planted_median": float(np.median(scores[planted])), "ordinary_median": float(np.median(scores[~planted]))}


def evaluate_memorization(models_dir: Path, *, seeds_per_planted: int = 8, n_ordinary: int = 200,
                          n_calibration: int = 200, steps: int | None = None, seed: int = 0) -> dict:
    """Generate planted, ordinary and calibration prompts with the tiny model; the figures above."""
    from pipeline.config import Generation
    from pipeline.copy_detection import DEFAULT_MAX_TILE_L2
    from pipeline.models.data import HERO_CAPTIONS
    from pipeline.models.presets import resolve_model, resolve_scorer
    from pipeline.stages.encode import EncodeStage
    from pipeline.stages.generate import GenerateStage
    from pipeline.stages.score import ScoreStage

    model = resolve_model("tiny", models_dir)
    scorer = resolve_scorer(model.scorer, models_dir)
    steps, negative = steps or model.steps, Generation().negative_prompt
    planted_prompts = [c for c in HERO_CAPTIONS for _ in range(seeds_per_planted)]
    planted_seeds = [s for _ in HERO_CAPTIONS for s in range(seeds_per_planted)]
    evaluation = _items(planted_prompts + ordinary_prompts(n_ordinary, seed),
                        planted_seeds + [1000 + i for i in range(n_ordinary)], model.width, model.height, negative)
    calibration = _items(ordinary_prompts(n_calibration, seed + 1), [5000 + i for i in range(n_calibration)],
                         model.width, model.height, negative)
    stages = [GenerateStage(model.path, model.name, "eval", model.pipeline_class, steps, model.guidance_scale),
              ScoreStage(scorer.path, scorer.name), EncodeStage()]
    for stage in stages:
        stage.setup()
    reference = _training_reference(models_dir, scorer.path)
    found = _signals(evaluation, stages, reference)
    calib = _signals(calibration, stages, reference)

    planted = np.arange(evaluation.num_rows) < len(planted_prompts)
    z = {k: (found[k] - calib[k].mean()) / calib[k].std() for k in ("mem_cfg_gap", "ref_tile_l2")}
    combined = z["mem_cfg_gap"] - z["ref_tile_l2"]
    gap_threshold = float(np.quantile(calib["mem_cfg_gap"], 0.99, method="higher"))
    # the gate as shipped: the presets' thresholds, as a run without its own ones uses them
    shipped_gap = gap_threshold if model.max_mem_cfg_gap is None else model.max_mem_cfg_gap
    flagged = (found["mem_cfg_gap"] > shipped_gap) | (found["ref_tile_l2"] <= DEFAULT_MAX_TILE_L2)
    if scorer.max_ref_similarity is not None:
        flagged |= found["ref_similarity"] >= scorer.max_ref_similarity
    figures = _figures(combined, planted)
    return {
        "signal": "combined: z(mem_cfg_gap) + z(-ref_tile_l2 to the training set), z on the calibration set",
        "reference": {"source": reference.description["source"], "images": len(reference.ids)},
        "auc": figures["auc"], "tpr_at_1pct_fpr": figures["tpr_at_1pct_fpr"],
        "n_planted": int(planted.sum()), "n_ordinary": int((~planted).sum()), "n_calibration": n_calibration,
        "steps": steps, "negative_prompt": negative,
        "signals": {"combined": figures, "mem_cfg_gap": _figures(found["mem_cfg_gap"], planted),
                    "ref_tile_l2": _figures(-found["ref_tile_l2"], planted),
                    "ref_similarity": _figures(found["ref_similarity"], planted)},
        # the model preset's max_mem_cfg_gap: 1% of the calibration prompts lie above it
        "threshold_at_1pct_fpr": gap_threshold,
        # the scorer preset's max_ref_similarity and DEFAULT_MAX_TILE_L2 at 1% false positives:
        # 1% of the calibration prompts lie at or above / at or below them (the gate's comparisons)
        "ref_similarity_threshold_at_1pct_fpr": float(np.quantile(calib["ref_similarity"], 0.99, method="higher")),
        "ref_tile_l2_threshold_at_1pct_fpr": float(np.quantile(calib["ref_tile_l2"], 0.01, method="lower")),
        "calibration": {k: {"mean": float(v.mean()), "std": float(v.std()),
                            "p99": float(np.quantile(v, 0.99, method="higher")),
                            "p1": float(np.quantile(v, 0.01, method="lower"))} for k, v in calib.items()},
        "gate": {"rule": f"mem_cfg_gap > {shipped_gap:.4g} or ref_tile_l2 <= {DEFAULT_MAX_TILE_L2:g}"
                         + (f" or ref_similarity >= {scorer.max_ref_similarity:g}"
                            if scorer.max_ref_similarity is not None else ""),
                 "tpr": float(flagged[planted].mean()), "fpr": float(flagged[~planted].mean())},
        "planted_median": float(np.median(found["mem_cfg_gap"][planted])),
        "ordinary_median": float(np.median(found["mem_cfg_gap"][~planted])),
    }
