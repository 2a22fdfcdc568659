"""Load a synthcat training dataset with Hugging Face `datasets`: images decode to PIL.

    python examples/consume/hf_datasets.py out/catalog_images
"""

from __future__ import annotations

import sys

import datasets


def load_split(dataset_root: str, split: str = "train", cache_dir: str | None = None) -> datasets.Dataset:
    """One split of the training rows ("train", "validation" or "test"), with `image` as a
    `datasets.Image` feature and `label` as the dataset's `ClassLabel` (its card declares the class
    list, ids kept from run to run), ready for a Trainer or `.with_format("torch")`.

    The card maps each split onto its own files. A dataset that still holds training files
    published before splits named them gets one `train` split of every row instead: the filter on
    `kind` and `split` below keeps exactly the split's training rows either way."""
    splits = datasets.load_dataset(dataset_root, cache_dir=cache_dir)
    ds = splits[split] if split in splits else splits["train"]
    ours = {"validation": "val"}.get(split, split)
    ds = ds.filter(lambda kind, s: kind == "training" and s == ours, input_columns=["kind", "split"])
    return ds.select_columns(["image", "label", "sku", "split", "bbox", "mask"])


if __name__ == "__main__":
    ds = load_split(sys.argv[1])
    print(ds)
    print(ds[0]["image"].size, ds.features["label"].int2str(ds[0]["label"]))
