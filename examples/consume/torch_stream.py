"""Stream a synthcat training dataset into PyTorch, one Parquet row group at a time.

    python examples/consume/torch_stream.py out/catalog_images

`ParquetImageStream` is an `IterableDataset`: it never loads the dataset into memory. It lists
the (file, row group) pairs from the Parquet footers, and each DataLoader worker reads only its
share of them, one row group (about 100 images) at a time, decoding images as it yields them.
Rows are stored shard by shard (a shard holds a few neighbouring products of the catalog;
regenerated items come at the end), so a row group holds few classes: with `shuffle_seed` the stream shuffles row groups and
mixes rows through a buffer of `shuffle_buffer` encoded images (the webdataset way), which a
model needs to see mixed batches. Needs only torch, pyarrow, numpy and
Pillow (no synthcat).
"""

from __future__ import annotations

import io
import json
import random
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info


def training_classes(dataset_root: str) -> list[str]:
    """The dataset's class names in id order: its `_classes.json` (ids kept from run to run), else
    the sorted labels of the training rows (reads the `kind` and `label` columns only)."""
    recorded = Path(dataset_root, "_classes.json")
    if recorded.is_file():
        return json.loads(recorded.read_text(encoding="utf-8"))["names"]
    labels = set()
    for path in sorted(Path(dataset_root, "data").rglob("*.parquet")):
        table = pq.read_table(path, columns=["kind", "label"])
        labels |= set(table.filter(pc.equal(table["kind"], "training"))["label"].to_pylist())
    return sorted(labels)


def may_hold(name: str, splits: list[str]) -> bool:
    """Whether a file may hold rows of `splits`: one named for a split (`part-<run>-<n>.<split>.parquet`)
    holds only that split's rows, so the others are skipped unopened; a file without a split in its
    name (campaign rows, or training rows published before splits named files) is read and filtered."""
    named = name.rsplit(".", 2)[1] if name.count(".") >= 2 else None
    return named not in ("train", "val", "test") or named in splits


class ParquetImageStream(IterableDataset):
    """(image float tensor C x H x W in [0, 1], class index) for the training rows of `split`
    (one name, or several: ("train", "val"))."""

    def __init__(self, dataset_root: str, split: str | tuple[str, ...] = "train", classes: list[str] | None = None,
                 size: int | None = None, shuffle_seed: int | None = None, shuffle_buffer: int = 1000) -> None:
        self.splits = [split] if isinstance(split, str) else list(split)
        self.size, self.shuffle_seed, self.epoch = size, shuffle_seed, 0
        self.shuffle_buffer = max(1, shuffle_buffer)
        self.classes = classes or training_classes(dataset_root)
        self.index = {name: i for i, name in enumerate(self.classes)}
        files = [f for f in sorted(Path(dataset_root, "data").rglob("*.parquet")) if may_hold(f.name, self.splits)]
        self.units = [(str(f), g) for f in files for g in range(pq.ParquetFile(f).metadata.num_row_groups)]

    def set_epoch(self, epoch: int) -> None:
        """A new row-group order per epoch when shuffling."""
        self.epoch = epoch

    def _my_units(self) -> list[tuple[str, int]]:
        units = list(self.units)
        if self.shuffle_seed is not None:
            random.Random(f"{self.shuffle_seed}|{self.epoch}").shuffle(units)
        worker = get_worker_info()
        return units if worker is None else units[worker.id::worker.num_workers]

    def _tensor(self, png: bytes) -> torch.Tensor:
        with Image.open(io.BytesIO(png)) as image:
            image = image.convert("RGB")
            if self.size and image.size != (self.size, self.size):
                image = image.resize((self.size, self.size), Image.Resampling.BOX)
            return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)

    def _rows(self):
        """(encoded image, class index) of this worker's rows, one row group at a time."""
        for path, group in self._my_units():
            table = pq.ParquetFile(path).read_row_group(group, columns=["kind", "split", "label", "image"])
            keep = pc.and_(pc.equal(table["kind"], "training"), pc.is_in(table["split"], pa.array(self.splits)))
            table = table.filter(keep)
            for label, image in zip(table["label"].to_pylist(), table["image"].to_pylist()):
                yield image["bytes"], self.index[label]

    def __iter__(self):
        if self.shuffle_seed is None:
            for png, target in self._rows():
                yield self._tensor(png), target
            return
        worker = get_worker_info()
        rng = random.Random(f"{self.shuffle_seed}|{self.epoch}|{worker.id if worker else 0}")
        buffer: list[tuple[bytes, int]] = []
        for row in self._rows():
            buffer.append(row)
            if len(buffer) >= self.shuffle_buffer:  # full: send a random one on, keep the rest
                i = rng.randrange(len(buffer))
                buffer[i], buffer[-1] = buffer[-1], buffer[i]
                png, target = buffer.pop()
                yield self._tensor(png), target
        rng.shuffle(buffer)
        for png, target in buffer:
            yield self._tensor(png), target


if __name__ == "__main__":
    stream = ParquetImageStream(sys.argv[1], split="train", size=64)
    loader = DataLoader(stream, batch_size=32, num_workers=2)
    for images, labels in loader:
        print(images.shape, labels.tolist())
