"""Stable identity: item ids and seeds (DESIGN.md, "Identity and determinism")."""

from __future__ import annotations

import hashlib

_SEP = "\x1f"  # unit separator: cannot occur in a trimmed SKU or locale tag by accident


def item_id(dataset: str, run_date: str, sku: str, market: str, kind: str, variant: int, fmt: str) -> str:
    """A stable 32-hex-digit hash of (dataset, run_date, sku, market, kind, variant, format)."""
    key = _SEP.join([dataset, run_date, sku, market, kind, str(variant), fmt])
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]


def seed_for(item: str, attempt: int) -> int:
    """The generator seed of an item's attempt: non-negative and fits int64."""
    digest = hashlib.sha256(f"{item}{_SEP}{attempt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & 0x7FFF_FFFF_FFFF_FFFF


def shard_id(index: int) -> str:
    """The name of the index-th shard of a run's plan."""
    return f"shard-{index:05d}"
