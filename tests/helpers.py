"""Test helpers: small, real, seeded tables in the published layout."""

from __future__ import annotations

import datetime as dt
import hashlib
import io

import numpy as np
import pyarrow as pa
from PIL import Image

from pipeline.schema import ACCEPTED, OUTPUT_SCHEMA, conform

EMBEDDING_DIM = 16
IMAGE_SIZE = 64


def _png(rng: np.random.Generator) -> bytes:
    pixels = rng.integers(0, 256, size=(IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def make_output_table(n: int, run_date: str = "2026-11-26", markets=("en-US", "de-DE"),
                      run_id: str = "run-test", seed: int = 0) -> pa.Table:
    """An OUTPUT_SCHEMA table of `n` accepted rows with real 64x64 PNG noise images.

    Rows cycle through `markets`; item ids are unique 32-hex digests of (run_date, sku, market,
    seed), so tables built with different seeds or dates never share ids.
    """
    rng = np.random.default_rng(seed)
    now = dt.datetime.now(dt.timezone.utc)
    rows = []
    for i in range(n):
        market = markets[i % len(markets)]
        sku = f"SKU-{seed:03d}-{i // len(markets):05d}"
        item_id = hashlib.sha256(f"{run_date}|{sku}|{market}|{seed}|{i}".encode()).hexdigest()[:32]
        png = _png(rng)
        embedding = rng.standard_normal(EMBEDDING_DIM).astype(np.float32)
        embedding /= np.linalg.norm(embedding)
        rows.append({
            "item_id": item_id,
            "run_id": run_id,
            "run_date": run_date,
            "sku": sku,
            "market": market,
            "locale": market,
            "kind": "training" if i % 2 else "campaign",
            "variant": i % 3,
            "format": "1:1",
            "attempt": 0,
            "seed": int(rng.integers(0, 2**31)),
            "prompt": f"a studio photo of product {sku}",
            "negative_prompt": "blurry",
            "title": f"Product {sku}",
            "category": "mug",
            "attributes": '{"colour": "red"}',
            "brand": "Acme",
            "price": 9.99,
            "currency": "EUR",
            "width": IMAGE_SIZE,
            "height": IMAGE_SIZE,
            "model_id": "tiny-sd",
            "model_sha256": hashlib.sha256(b"tiny-sd-weights").hexdigest(),
            "scheduler": "DDIMScheduler",
            "steps": 4,
            "guidance_scale": 7.5,
            "torch_version": "2.14.1",
            "device": "cpu",
            "clip_model": "tiny-clip",
            "clip_score": float(rng.uniform(0.2, 0.4)),
            "clip_embedding": embedding.tolist(),
            "image": {"bytes": png, "path": f"{item_id}.png"},
            "image_sha256": hashlib.sha256(png).hexdigest(),
            "dup_group": None,
            "dup_reason": None,
            "gate_status": ACCEPTED,
            "gate_reasons": [],
            "created_at": now,
        })
    if not rows:
        return OUTPUT_SCHEMA.empty_table()
    return conform(pa.Table.from_pylist(rows, schema=OUTPUT_SCHEMA), OUTPUT_SCHEMA)
