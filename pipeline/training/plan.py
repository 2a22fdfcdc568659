"""Plan the `training` kind: per-class quotas spread over each class's SKUs, one item per image.

A class is a catalog `category` (the row's `label`). Class balance comes from the job config:
every class gets `training.images_per_class` images unless `training.class_quotas` names
another number (0 leaves the class out), however many SKUs it has. Within a class, images go
round-robin over its SKUs, so SKUs share the quota evenly; `variant` counts a SKU's images. The
round begins each day elsewhere and spreads each split's SKUs through it (`_sku_order`), so a
quota under the SKU count reaches every split and, day by day, every SKU. Items are not localized (see `pipeline.training`: market `global`, locale `und`).
"""

from __future__ import annotations

import hashlib
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
        skus = _sku_order(by_class[label], label, run_date, training.splits)
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


def _sku_order(products: list[dict], label: str, run_date: str, ratios) -> list[dict]:
    """The order a class's SKUs take its quota in: each split's SKUs spread evenly through it (a
    quota under the class's SKU count still reaches every split, in proportion), and started at
    an offset that moves with the run date (such a quota reaches other SKUs each day, not the
    same first ones). Deterministic for a (class, run date)."""
    by_split: dict[str, list[dict]] = {}
    for product in sorted(products, key=lambda p: p["sku"]):
        by_split.setdefault(split_for(product["sku"], ratios), []).append(product)
    spread = sorted(((rank + 0.5) / len(members), split, product["sku"], product)
                    for split, members in by_split.items() for rank, product in enumerate(members))
    order = [entry[-1] for entry in spread]
    start = int.from_bytes(hashlib.sha256(f"{run_date}|{label}".encode()).digest()[:8], "big") % len(order)
    return order[start:] + order[:start]

