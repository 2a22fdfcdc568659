"""Plan: products x markets x kinds x variants x formats -> items with ids, seeds, prompts, shards."""

from __future__ import annotations

import json
import math

from pathlib import Path

import pyarrow as pa

from pipeline.campaign.planner import CampaignPlanner
from pipeline.config import JobConfig
from pipeline.executor import make_batches
from pipeline.identity import item_id, seed_for, shard_id
from pipeline.locales import market_to_locale
from pipeline.schema import ITEM_SCHEMA

ASPECTS = {"1:1": 1.0, "4:5": 4 / 5, "9:16": 9 / 16, "1.91:1": 1.91}


def format_size(fmt: str, base_width: int, base_height: int) -> tuple[int, int]:
    """Width and height for a channel format at about the model's native pixel count.

    Sides are multiples of 8, as latent diffusion VAEs require; the aspect is then within
    a few percent of the target (the model generates it directly, nothing is cropped).
    """
    aspect = ASPECTS[fmt]
    area = base_width * base_height
    width = math.sqrt(area * aspect)
    height = width / aspect
    return max(8, round(width / 8) * 8), max(8, round(height / 8) * 8)


def _prompt_values(product: dict, market: str, kind: str) -> dict[str, str]:
    from babel import Locale

    locale = Locale.parse(market_to_locale(market))
    attributes = json.loads(product["attributes"] or "{}")
    # Words describe the product to the model; numbers (capacity_ml: 350) mostly do not.
    attribute_text = "".join(f", {v.strip()}" for v in attributes.values() if isinstance(v, str) and v.strip())
    return {
        "title": product["title"], "category": product["category"], "attributes": attribute_text,
        "country": locale.get_territory_name("en") or market,
        "language": locale.get_language_name("en") or market, "market": market, "kind": kind,
    }


def plan_items(products: pa.Table, config: JobConfig, *, run_id: str, run_date: str,
               width: int, height: int, models_dir: Path | None = None) -> pa.Table:
    """Expand products into items (ITEM_SCHEMA) in a deterministic order, grouped into shards.

    `width`/`height` are the model's native size; formats scale from it. Campaign items get
    their prompt, copy, brand adapter and layout from `pipeline.campaign.planner` (brand
    adapters live under `models_dir`).
    """
    campaign = CampaignPlanner(config, run_date, models_dir) if "campaign" in config.kinds else None
    rows = []
    for product in products.to_pylist():
        markets = product["markets"] or list(config.markets)
        for market in markets:
            for kind in config.kinds:
                if kind == "training":  # planned per class, not per market: plan_training below
                    continue
                values = _prompt_values(product, market, kind)
                prompt = config.generation.prompt_template.format_map(values)
                for variant in range(config.variants):
                    for fmt in config.formats:
                        ident = item_id(config.dataset, run_date, product["sku"], market, kind, variant, fmt)
                        w, h = format_size(fmt, width, height)
                        rows.append({
                            "item_id": ident, "dataset": config.dataset, "run_id": run_id,
                            "run_date": run_date, "sku": product["sku"], "market": market,
                            "locale": market_to_locale(market), "kind": kind, "variant": variant,
                            "format": fmt, "attempt": 0, "seed": seed_for(ident, 0),
                            "prompt": prompt, "negative_prompt": config.generation.negative_prompt,
                            "title": product["title"], "category": product["category"],
                            "attributes": product["attributes"], "brand": product["brand"],
                            "price": product["price"], "currency": product["currency"],
                            "width": w, "height": h,
                        })
                        if kind == "campaign":
                            rows[-1].update(campaign.fields(product, market, fmt, w, h, prompt))
    if "training" in config.kinds:
        from pipeline.training.plan import plan_training

        rows += plan_training(products, config, run_id=run_id, run_date=run_date, width=width, height=height)
    rows = in_generation_groups(rows)
    for index, row in enumerate(rows):
        row["shard_id"] = shard_id(index // config.shard_size)
    return pa.Table.from_pylist(rows, schema=ITEM_SCHEMA)


GROUP_COLUMNS = ("guidance_override", "brand_adapter", "brand_adapter_sha256", "brand_adapter_scale",
                 "width", "height", "product_image")


def generation_group(row: dict) -> tuple:
    """What decides how the generate stage runs a row: one pipeline call per (guidance, brand
    adapter, size) in a batch, then one inpainting pass over the batch's product-photo rows."""
    return (row.get("guidance_override"), row.get("brand_adapter"), row.get("brand_adapter_sha256"),
            row.get("brand_adapter_scale"), row["width"], row["height"], bool(row.get("product_image")))


def generation_batches(items: pa.Table, batch_size: int) -> list[pa.Table]:
    """The generate stage's batches of planned `items`: never across a shard, nor across two
    generation groups.

    A batch spanning two groups already costs a call per group (each padded to the batch size
    under torch.compile), so cutting there adds no call; the product-photo flag, which shares
    the generation call, is cut too, so a photo group's batches are whole: their inpainting pass
    then holds as many rows as the compiled generation call and runs its compiled graph
    (pipeline/campaign/generation.py), where a batch straddling the edge would have run two
    partial, eager passes. That costs at most one more padded call per photo group edge."""
    columns = [c for c in GROUP_COLUMNS if c in items.column_names]
    return make_batches(items, batch_size, also_by=[generation_group(row) for row in items.select(columns).to_pylist()])


def in_generation_groups(rows: list[dict]) -> list[dict]:
    """`rows` with each generation group's rows together, groups in order of first appearance
    and rows in their order within a group (a stable sort; ids and seeds do not depend on it).

    Batches are cut from this order, and a batch mixing groups costs a call per group: on a GPU
    each is padded to the batch size under torch.compile, and the product-photo rows' second,
    inpainting pass runs at whatever count of them the batch holds. Products with a photo are
    scattered through a catalog, so in catalog order most batches held a few photo rows, each
    batch paying an inpainting pass at a small, launch-bound batch (1.5-2.5x a batch's time on
    the H200); grouped, they fill whole batches, and a batch runs one call, or two for photo rows.
    """
    keys = [generation_group(row) for row in rows]
    first: dict[tuple, int] = {}
    for key in keys:
        first.setdefault(key, len(first))
    return [rows[k] for k in sorted(range(len(rows)), key=lambda k: first[keys[k]])]
