"""Load a synthcat training dataset with Hugging Face `datasets`: images decode to PIL.

    python examples/consume/hf_datasets.py out/catalog_images
"""

from __future__ import annotations

import sys

import datasets


def load_split(dataset_root: str, split: str = "train", cache_dir: str | None = None) -> datasets.Dataset:
    """One split of the training rows, with `image` as a `datasets.Image` feature and `label` as a
    `ClassLabel` (class names sorted), ready for a Trainer or `.with_format("torch")`."""
    ds = datasets.load_dataset("parquet", data_files=f"{dataset_root}/data/**/*.parquet", split="train",
                               cache_dir=cache_dir)
    ds = ds.filter(lambda kind: kind == "training", input_columns="kind")
    names = sorted(set(ds["label"]))  # from every split, so label ids agree between splits
    ds = ds.filter(lambda s: s == split, input_columns="split")
    ds = ds.select_columns(["image", "label", "sku", "split", "bbox", "mask"])
    return ds.cast_column("label", datasets.ClassLabel(names=names))


if __name__ == "__main__":
    ds = load_split(sys.argv[1])
    print(ds)
    print(ds[0]["image"].size, ds.features["label"].int2str(ds[0]["label"]))
