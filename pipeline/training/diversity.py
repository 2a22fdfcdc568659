"""Dataset metrics of a run's training rows: counts per class and split, diversity, alignment, duplicates.

Diversity is the Vendi score (Friedman & Dieng, 2023) of each class's CLIP image embeddings:
exp(entropy of the eigenvalues of K/n), K the cosine-similarity matrix. It reads as an
effective number of distinct images: 1 when all are the same, n when all are orthogonal.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.training import TRAINING_KIND
from pipeline.training.splits import SPLITS
from pipeline.vector_index import embedding_rows

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def vendi_score(embeddings: np.ndarray) -> float:
    """Vendi score of row vectors (normalised here to unit length); 0.0 for no rows.

    The non-zero eigenvalues of K/n = X Xᵀ/n (n x n) equal those of Xᵀ X/n (d x d): the smaller
    of the two is decomposed, so a class costs min(n, d)³, not d³ for a class of a few images.
    """
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        return 0.0
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x = x / np.where(norms > 0, norms, 1.0)
    gram = x @ x.T if x.shape[0] < x.shape[1] else x.T @ x
    eigenvalues = np.linalg.eigvalsh(gram / x.shape[0])
    eigenvalues = eigenvalues[eigenvalues > 1e-12]
    return float(np.exp(-np.sum(eigenvalues * np.log(eigenvalues))))


UNLABELLED = "(unlabelled)"


def _training(table: pa.Table) -> pa.Table:
    if table.num_rows == 0 or "kind" not in table.column_names:
        return table.slice(0, 0)
    rows = table.filter(pc.equal(table.column("kind"), TRAINING_KIND))
    # Rows written before the training columns existed (or by hand) still count, under a visible name.
    index = rows.schema.get_field_index("label")
    return rows.set_column(index, "label", pc.fill_null(rows.column("label"), UNLABELLED))


def _distribution(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    array = np.asarray(values, dtype=np.float64)
    summary = {"n": int(array.size), "mean": float(array.mean()), "min": float(array.min()),
               "max": float(array.max())}
    summary |= {f"p{round(q * 100):02d}": float(np.quantile(array, q)) for q in QUANTILES}
    return summary


def training_metrics(accepted: pa.Table, rejected: pa.Table) -> dict:
    """Metrics of the training rows of one run (accepted and rejected, OUTPUT_SCHEMA tables).

    {"images", "accepted", "rejected", "classes": {label: {"accepted", "rejected", "splits",
    "skus", "vendi", "clip_score"}}, "splits": {split: n}, "clip_score": distribution,
    "duplicate_rate", "duplicates", "skus_in_several_splits"}; {} when there are no training rows.
    """
    kept, dropped = _training(accepted), _training(rejected)
    total = kept.num_rows + dropped.num_rows
    if total == 0:
        return {}
    columns = ["label", "split", "sku", "clip_score"]
    kept_rows = kept.select(columns).to_pylist()
    rejected_per_label = Counter(dropped.column("label").to_pylist())
    rows_of: dict[str, list[int]] = {label: [] for label in sorted({r["label"] for r in kept_rows} | set(rejected_per_label))}
    for i, row in enumerate(kept_rows):  # one pass: a label's rows, not a scan of all rows per label
        rows_of[row["label"]].append(i)
    vectors, present = embedding_rows(kept.column("clip_embedding"))
    classes = {}
    for label, mine in rows_of.items():
        embedded = [i for i in mine if present[i]]
        classes[label] = {
            "accepted": len(mine),
            "rejected": rejected_per_label[label],
            "splits": {s: sum(1 for i in mine if kept_rows[i]["split"] == s) for s in SPLITS},
            "skus": len({kept_rows[i]["sku"] for i in mine}),
            "vendi": round(vendi_score(vectors[embedded]), 3) if embedded else 0.0,
            "clip_score": _distribution([kept_rows[i]["clip_score"] for i in mine
                                         if kept_rows[i]["clip_score"] is not None]),
        }
    # A duplicate names another row's item_id as its group (the kept copy names itself).
    duplicates = sum(1 for table in (kept, dropped)
                     for ident, group in zip(table.column("item_id").to_pylist(), table.column("dup_group").to_pylist())
                     if group is not None and group != ident)
    splits_of: dict[str, set] = {}
    for row in kept_rows + dropped.select(["sku", "split"]).to_pylist():
        splits_of.setdefault(row["sku"], set()).add(row["split"])
    return {
        "images": total, "accepted": kept.num_rows, "rejected": dropped.num_rows,
        "classes": classes,
        "splits": {s: sum(1 for r in kept_rows if r["split"] == s) for s in SPLITS},
        "clip_score": _distribution([r["clip_score"] for r in kept_rows if r["clip_score"] is not None]),
        "clip_score_rejected": _distribution([v for v in dropped.column("clip_score").to_pylist() if v is not None]),
        "duplicates": duplicates, "duplicate_rate": round(duplicates / total, 4),
        "skus_in_several_splits": sum(1 for s in splits_of.values() if len(s) > 1),
    }
