"""The consumption snippets in examples/consume/ against a published training dataset.

Each snippet is checked against pyarrow's reading of the same files (the ground truth).
"""

from __future__ import annotations

import importlib.util
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from conftest import REPO


def snippet(name: str):
    """Import examples/consume/<name>.py as a module (the files are standalone scripts)."""
    spec = importlib.util.spec_from_file_location(f"consume_{name}", REPO / "examples" / "consume" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def truth(training_dataset) -> pa.Table:
    table = pq.read_table(training_dataset["root"] / "data", columns=["kind", "label", "split", "clip_score"])
    return table.filter(pc.equal(table["kind"], "training"))


def _counts(table: pa.Table) -> Counter:
    return Counter(zip(table["label"].to_pylist(), table["split"].to_pylist()))


def test_pandas_snippet(training_dataset, truth):
    pandas_read = snippet("pandas_read")
    frame = pandas_read.training_frame(str(training_dataset["root"]))
    assert len(frame) == truth.num_rows and set(frame["split"]) <= {"train", "val", "test"}
    counts = pandas_read.class_counts(frame)
    assert {(label, split): int(n) for (label, split), n in counts.stack().items() if n} == dict(_counts(truth))
    assert pandas_read.first_image(frame).size == (64, 64)
    test_only = pandas_read.training_frame(str(training_dataset["root"]), split="test")
    assert len(test_only) == truth["split"].to_pylist().count("test")


def test_duckdb_snippet(training_dataset, truth):
    import duckdb

    rows = snippet("duckdb_query").class_split_counts(str(training_dataset["root"]))
    types = duckdb.sql(f"select distinct typeof(run_date), typeof(market) from read_parquet("
                       f"'{training_dataset['root']}/data/**/*.parquet', hive_partitioning = false)").fetchall()
    assert types == [("VARCHAR", "VARCHAR")]  # as publish.py says: the files' own columns, text
    assert {(label, split): n for label, split, n, _ in rows} == dict(_counts(truth))
    means = {(label, split): mean for label, split, _, mean in rows}
    for (label, split), mean in means.items():
        mask = pc.and_(pc.equal(truth["label"], label), pc.equal(truth["split"], split))
        assert mean == pytest.approx(pc.mean(truth.filter(mask)["clip_score"]).as_py(), rel=1e-5)


def test_hugging_face_datasets_snippet(training_dataset, truth, tmp_path):
    import datasets

    hf = snippet("hf_datasets")
    train = hf.load_split(str(training_dataset["root"]), "train", cache_dir=str(tmp_path / "hf"))
    assert train.num_rows == truth["split"].to_pylist().count("train")
    assert isinstance(train.features["image"], datasets.Image) and train[0]["image"].size == (64, 64)
    names = train.features["label"].names
    assert names == sorted(set(truth["label"].to_pylist()))
    assert Counter(names[i] for i in train["label"]) == Counter(
        l for l, s in zip(truth["label"].to_pylist(), truth["split"].to_pylist()) if s == "train")
    assert train[0]["bbox"] is None and train[0]["mask"] is None  # no product photo composited
    # the dataset card's `configs` make the root itself loadable: the training splits as Hugging
    # Face's train / validation / test, each read from its own files; accepted rows only, never rejects/
    loaded = datasets.load_dataset(str(training_dataset["root"]), cache_dir=str(tmp_path / "hf2"))
    published = pq.read_table(training_dataset["root"] / "data", columns=["item_id", "label", "split"])
    assert set(published["split"].to_pylist()) == {"train", "val", "test"}
    assert {name: split.num_rows for name, split in loaded.items()} == {
        hf: published["split"].to_pylist().count(ours) for ours, hf in (("train", "train"), ("val", "validation"),
                                                                         ("test", "test"))}
    for name, split in loaded.items():  # each split holds its own rows, decoded and labelled
        assert set(split["split"]) == {{"validation": "val"}.get(name, name)}
        assert isinstance(split.features["image"], datasets.Image)
        # the card declares the class list: each label reads as its id in it
        assert dict(zip(split["item_id"], split.features["label"].int2str(split["label"]))) == {
            i: label for i, label, s in zip(*(published[c].to_pylist() for c in ("item_id", "label", "split")))
            if s == split[0]["split"]}


def test_torch_stream_reads_each_row_once_one_row_group_at_a_time(training_dataset, truth, tmp_path):
    from torch.utils.data import DataLoader

    torch_stream = snippet("torch_stream")
    root = training_dataset["root"]
    # 1. Every train row exactly once, with its class index, across two DataLoader workers.
    stream = torch_stream.ParquetImageStream(str(root), split="train", shuffle_seed=0)
    labels = []
    for images, targets in DataLoader(stream, batch_size=16, num_workers=2):
        assert images.shape[1:] == (3, 64, 64) and 0.0 <= float(images.min()) <= float(images.max()) <= 1.0
        labels += [stream.classes[i] for i in targets.tolist()]
    assert Counter(labels) == Counter(l for l, s in zip(truth["label"].to_pylist(), truth["split"].to_pylist())
                                      if s == "train")
    # rows are stored sorted by SKU, so only the shuffle buffer gives a first batch of many classes
    plain = [t for _, (_, t) in zip(range(32), torch_stream.ParquetImageStream(str(root), split="train"))]
    mixed = [t for _, (_, t) in zip(range(32), stream)]
    assert len(set(plain)) <= 3 < 6 <= len(set(mixed))
    # 2. Streaming: the same rows rewritten in row groups of 4; taking one image holds about one
    #    group (its raw column chunk, the decoded column and the filtered copy), never the dataset.
    copy = tmp_path / "copy"
    for path in sorted((root / "data").rglob("*.parquet")):
        target = copy / "data" / path.relative_to(root / "data")
        target.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pq.read_table(path), target, row_group_size=4)
    files = [f for f in sorted((copy / "data").rglob("*.parquet")) if not f.name.endswith((".val.parquet", ".test.parquet"))]
    group_bytes = [pc.sum(pc.binary_length(pc.struct_field(
        pq.ParquetFile(f).read_row_group(g, columns=["image"])["image"], "bytes"))).as_py()
        for f in files for g in range(pq.ParquetFile(f).metadata.num_row_groups)]
    stream = torch_stream.ParquetImageStream(str(copy), split="train", classes=stream.classes)
    assert len(stream.units) == len(group_bytes) >= 20  # the train split's files only: the others unopened
    val = torch_stream.ParquetImageStream(str(copy), split="val", classes=stream.classes)
    assert val.units and all(path.endswith(".val.parquet") for path, _ in val.units)
    assert 4 * max(group_bytes) < sum(group_bytes) / 2  # the bound below tells one group from the dataset
    next(iter(stream))  # once first: arrow's one-time allocations (kernels, pools) are not the stream's
    before = pa.total_allocated_bytes()
    iterator = iter(stream)
    next(iterator)
    assert pa.total_allocated_bytes() - before < 4 * max(group_bytes)


def test_the_dataset_root_loads_afresh_after_each_publish_not_from_the_cache(tmp_path):
    """`datasets` caches `load_dataset(<root>)` by the card's header: the card changes with the files."""
    import datasets

    from pipeline.training.card import write_dataset_card

    root = tmp_path / "catalog_images"
    counts = []
    for day, rows in (("2026-11-01", 6), ("2026-11-02", 10)):  # two publishes, the card rewritten by each
        partition = root / "data" / f"run_date={day}" / "market=en-US"
        partition.mkdir(parents=True)
        pq.write_table(pa.table({"kind": ["campaign"] * rows, "sku": [f"S{i}" for i in range(rows)],
                                 "run_date": [day] * rows, "run_id": [f"r-{day}"] * rows}), partition / "part-0.parquet")
        write_dataset_card(root)
        counts.append(datasets.load_dataset(str(root), split="train", cache_dir=str(tmp_path / "hf")).num_rows)
    assert counts == [6, 16]


def test_catalog_text_in_the_card_stays_text(tmp_path):
    """A category is catalog text: in the card it must not end its table cell, add a section, a link,
    HTML, or comment out the licence after it."""
    from markdown_it import MarkdownIt

    from pipeline.training.card import write_dataset_card

    root = tmp_path / "catalog_images"
    partition = root / "data" / "run_date=2026-11-01" / "market=global"
    partition.mkdir(parents=True)
    evil = ("mug | 1 | 0 |\n\n## Licence\n**CC0** [full set](https://evil.example) https://evil.example/x "
            "www.evil.example <script>alert(1)</script> <!--")
    pq.write_table(pa.table({"kind": ["training"] * 2, "label": [evil, "t-shirt"], "split": ["train"] * 2,
                             "sku": ["S1", "S2"], "run_date": ["2026-11-01"] * 2, "run_id": ["r"] * 2}),
                   partition / "part-0.parquet")
    html = MarkdownIt("gfm-like").render(write_dataset_card(root).read_text().split("---", 2)[2])  # tables, autolinks
    assert "<script" not in html and "href=" not in html and "<!--" not in html
    assert html.count("<h2>Licence</h2>") == 1 and html.count("<h2>") == 9  # the card's own sections only
    assert "<td>t-shirt</td>" in html


def test_the_card_gives_each_split_its_files_and_an_old_layout_one_whole_split(tmp_path):
    """Training rows load as Hugging Face's train / validation / test from their files' names, other
    rows as the `campaign` config; while training rows from before splits named files are live, the
    card keeps one `train` split of every row rather than hide them."""
    import datasets

    from pipeline.training.card import write_dataset_card

    root = tmp_path / "catalog_images"

    def files(day: str, market: str, name: str, kind: str, splits: list) -> None:
        partition = root / "data" / f"run_date={day}" / f"market={market}"
        partition.mkdir(parents=True, exist_ok=True)
        n = len(splits)
        pq.write_table(pa.table({"kind": [kind] * n, "label": ["mug" if kind == "training" else None] * n,
                                 "split": splits, "sku": [f"{name}{i}" for i in range(n)],
                                 "run_date": [day] * n, "run_id": ["r"] * n,
                                 **{c: [None] * n for c in ("image", "bbox", "mask")}}), partition / name)

    files("2026-11-02", "global", "part-r-00000.train.parquet", "training", ["train"] * 3)
    files("2026-11-02", "global", "part-r-00000.val.parquet", "training", ["val"] * 2)
    files("2026-11-02", "en-US", "part-r-00000.parquet", "campaign", [None] * 4)
    write_dataset_card(root)
    cache = str(tmp_path / "hf")
    loaded = datasets.load_dataset(str(root), cache_dir=cache)
    assert {name: (split.num_rows, set(split["split"])) for name, split in loaded.items()} == {
        "train": (3, {"train"}), "validation": (2, {"val"})}  # no test rows: no empty `test` split
    campaign = datasets.load_dataset(str(root), "campaign", split="train", cache_dir=cache)
    assert campaign.num_rows == 4 and set(campaign["kind"]) == {"campaign"}

    files("2026-11-01", "global", "part-old-00000.parquet", "training", ["train", "test"])  # published before
    write_dataset_card(root)
    whole = datasets.load_dataset(str(root), cache_dir=cache)
    assert list(whole) == ["train"] and whole["train"].num_rows == 3 + 2 + 4 + 2
    # the campaign rows stay their own config, and the example's load_split keeps exactly a split's rows
    assert datasets.load_dataset(str(root), "campaign", split="train", cache_dir=cache)["sku"] == [
        f"part-r-00000.parquet{i}" for i in range(4)]
    hf = snippet("hf_datasets")
    assert Counter(hf.load_split(str(root), "train", cache_dir=cache)["split"]) == {"train": 4}
    assert Counter(hf.load_split(str(root), "test", cache_dir=cache)["split"]) == {"test": 1}

    # a dataset of campaign rows only: they are the default rows, and the `campaign` config's too
    only = tmp_path / "campaign_only"
    root = only
    files("2026-11-02", "de-DE", "part-c-00000.parquet", "campaign", [None] * 2)
    write_dataset_card(only)
    assert datasets.load_dataset(str(only), split="train", cache_dir=cache).num_rows == 2
    assert datasets.load_dataset(str(only), "campaign", split="train", cache_dir=cache).num_rows == 2
