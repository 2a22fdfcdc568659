"""Plan the `training` kind: per-class quotas spread over each class's SKUs, one item per image.

A class is a catalog `category` (the row's `label`). Class balance comes from the job config:
every class gets `training.images_per_class` images unless `training.class_quotas` names
another number (0 leaves the class out), however many SKUs it has. Within a class, images go
round-robin over its SKUs (sorted), so SKUs share the quota evenly; `variant` counts a SKU's
images. Items are not localized (see `pipeline.training`: market `global`, locale `und`).
"""

from __future__ import annotations

import json
import math
import random

import pyarrow as pa

from pipeline.identity import item_id, seed_for
from pipeline.training import TRAINING_FORMAT, TRAINING_KIND, TRAINING_LOCALE, TRAINING_MARKET
from pipeline.training.prompts import FacetCycle, Vocabulary, compose_prompt
from pipeline.training.splits import split_for


def square_size(width: int, height: int) -> tuple[int, int]:
    """A square of about the model's native pixel count, sides multiples of 8 (classifiers and
    detectors take square crops; the model generates it directly)."""
    side = max(8, round(math.sqrt(width * height) / 8) * 8)
    return side, side


def taxonomy_path(label: str, taxonomy: dict[str, str]) -> list[str]:
    """Root-to-leaf path of a class: the configured parents ("home/kitchen") plus the label."""
    parents = [part.strip() for part in taxonomy.get(label, "").split("/") if part.strip()]
    return parents + [label]


def class_quotas(products: pa.Table, training) -> dict[str, int]:
    """Images per class for the classes present in `products` (quota 0 classes left out)."""
    classes = sorted(set(products.column("category").to_pylist()))
    quotas = {label: training.class_quotas.get(label, training.images_per_class) for label in classes}
    return {label: n for label, n in quotas.items() if n > 0}


def plan_training(products: pa.Table, config, *, run_id: str, run_date: str,
                  width: int, height: int) -> list[dict]:
    """Training items (ITEM_SCHEMA rows as dicts), classes in sorted order, deterministic.

    `config` is the JobConfig; `width`/`height` the model's native size.
    """
    training = config.training
    vocabulary = Vocabulary.from_config(training)
    w, h = square_size(width, height)
    by_class: dict[str, list[dict]] = {}
    for product in products.to_pylist():
        by_class.setdefault(product["category"], []).append(product)
    rows = []
    for label, quota in class_quotas(products, training).items():
        skus = sorted(by_class[label], key=lambda p: p["sku"])
        cycle = FacetCycle(vocabulary, label)
        for j in range(quota):
            product, variant = skus[j % len(skus)], j // len(skus)
            ident = item_id(config.dataset, run_date, product["sku"], TRAINING_MARKET, TRAINING_KIND,
                            variant, TRAINING_FORMAT)
            prompt, facets = compose_prompt(vocabulary, product, cycle.pick(j), random.Random(ident))
            rows.append({
                "item_id": ident, "dataset": config.dataset, "run_id": run_id, "run_date": run_date,
                "sku": product["sku"], "market": TRAINING_MARKET, "locale": TRAINING_LOCALE,
                "kind": TRAINING_KIND, "variant": variant, "format": TRAINING_FORMAT, "attempt": 0,
                "seed": seed_for(ident, 0), "prompt": prompt,
                "negative_prompt": config.generation.negative_prompt,
                "title": product["title"], "category": label, "attributes": product["attributes"],
                "brand": product["brand"], "price": product["price"], "currency": product["currency"],
                "width": w, "height": h,
                "label": label, "taxonomy": taxonomy_path(label, training.taxonomy),
                "facets": json.dumps(facets, sort_keys=True, ensure_ascii=False),
                "split": split_for(product["sku"], training.splits),
                "guidance_override": training.guidance_scale,
            })
    return rows
