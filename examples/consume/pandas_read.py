"""Read a synthcat training dataset with pandas: labels and splits as a DataFrame, images on demand.

    python examples/consume/pandas_read.py out/catalog_images
"""

from __future__ import annotations

import io
import sys

import pandas as pd
from PIL import Image


def training_frame(dataset_root: str, split: str | None = None) -> pd.DataFrame:
    """The published training rows (optionally one split), image bytes included."""
    filters = [("kind", "==", "training")] + ([("split", "==", split)] if split else [])
    columns = ["item_id", "sku", "label", "taxonomy", "split", "attributes", "facets", "bbox", "mask",
               "clip_score", "image"]
    # `run_date` and `market` are also inside the files; reading the folder adds them from the paths.
    return pd.read_parquet(f"{dataset_root}/data", columns=columns, filters=filters)


def class_counts(frame: pd.DataFrame) -> pd.DataFrame:
    """Images per label (rows) and split (columns)."""
    return frame.groupby(["label", "split"]).size().unstack(fill_value=0)


def first_image(frame: pd.DataFrame) -> Image.Image:
    """The first row's image, decoded."""
    return Image.open(io.BytesIO(frame["image"].iloc[0]["bytes"]))


if __name__ == "__main__":
    df = training_frame(sys.argv[1])
    print(class_counts(df))
    print(first_image(df).size)
