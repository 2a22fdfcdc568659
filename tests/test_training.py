"""The training kind end to end: a real run publishes labelled, SKU-split rows, metrics and a card."""

from __future__ import annotations

import json
import shutil
from collections import Counter

import pyarrow.parquet as pq
import pytest
import yaml

from training_run import IMAGES_PER_CLASS, RUN_DATE, SPLITS, write_job


@pytest.fixture(scope="module")
def published(training_dataset) -> dict:
    root = training_dataset["root"]
    rows = pq.read_table(root / "data").to_pylist()
    rejects = pq.read_table(root / "rejects").to_pylist() if (root / "rejects").exists() else []
    manifest = json.loads((root / "_runs" / "run-train" / "manifest.json").read_text())
    return {**training_dataset, "rows": rows, "rejects": rejects, "manifest": manifest}


def test_rows_carry_labels_taxonomy_splits_and_region_columns(published):
    rows, rejects = published["rows"], published["rejects"]
    assert len(rows) + len(rejects) == 8 * IMAGES_PER_CLASS and len(rows) >= 6 * IMAGES_PER_CLASS
    files = sorted(p.relative_to(published["root"]).as_posix() for p in (published["root"] / "data").rglob("*.parquet"))
    assert files and all(f.startswith(f"data/run_date={RUN_DATE}/market=global/") for f in files)
    for row in rows:
        assert row["kind"] == "training" and row["label"] == row["category"]
        assert row["taxonomy"][-1] == row["label"] and row["split"] in ("train", "val", "test")
        assert row["market"] == "global" and row["locale"] == "und"
        assert row["bbox"] is None and row["mask"] is None  # nothing composited: unknown, not guessed
        assert row["guidance_scale"] == pytest.approx(7.5)  # training.guidance_scale, not the run's 5.0
        assert json.loads(row["facets"])["scene"] in row["facets"]
        assert json.loads(row["attributes"])["color"] in row["prompt"]
    assert {tuple(r["taxonomy"]) for r in rows if r["label"] == "mug"} == {("home", "kitchen", "mug")}
    schema = pq.read_schema(next((published["root"] / "data").rglob("*.parquet")))
    assert {"label", "taxonomy", "split", "bbox", "mask", "facets"} <= set(schema.names)
    assert "guidance_override" not in schema.names
    features = json.loads(schema.metadata[b"huggingface"])["info"]["features"]
    assert features["bbox"]["_type"] == "List" and features["mask"] == {"dtype": "binary", "_type": "Value"}


def test_splits_are_sku_disjoint_and_stable_across_reruns(published):
    from pipeline.config import load_job_config
    from pipeline.ingest import read_manifest
    from pipeline.plan import plan_items

    splits_of: dict[str, set] = {}
    for row in published["rows"] + published["rejects"]:
        splits_of.setdefault(row["sku"], set()).add(row["split"])
    assert all(len(s) == 1 for s in splits_of.values())
    assert {s.pop() for s in splits_of.values()} == {"train", "val", "test"}
    # planning the run again, or another day, gives every SKU the split it was published with
    config = load_job_config(published["job"])
    products = read_manifest(published["catalog"], config).products
    published_split = {r["sku"]: r["split"] for r in published["rows"] + published["rejects"]}
    for run_date in (RUN_DATE, "2027-01-15"):
        again = plan_items(products, config, run_id="again", run_date=run_date, width=64, height=64)
        assert dict(zip(again["sku"].to_pylist(), again["split"].to_pylist())) == published_split


def test_manifest_and_report_hold_the_dataset_metrics(published):
    metrics = published["manifest"]["training"]
    rows = published["rows"]
    assert metrics["accepted"] == len(rows) and metrics["images"] == len(rows) + len(published["rejects"])
    assert {label: c["accepted"] for label, c in metrics["classes"].items()} == Counter(r["label"] for r in rows)
    assert metrics["splits"] == {s: sum(1 for r in rows if r["split"] == s) for s in ("train", "val", "test")}
    for c in metrics["classes"].values():
        assert 1.0 < c["vendi"] <= c["accepted"]  # Vendi: between one image and all distinct
    assert 0.0 <= metrics["duplicate_rate"] <= 1.0 and metrics["skus_in_several_splits"] == 0
    scores = sorted(r["clip_score"] for r in rows)
    assert metrics["clip_score"]["min"] == pytest.approx(scores[0])
    assert metrics["clip_score"]["max"] == pytest.approx(scores[-1])
    page = (published["root"] / "_runs" / "run-train" / "report.html").read_text(encoding="utf-8")
    assert "<h2 id=training>Training dataset</h2>" in page and "Vendi" in page
    assert all(f"<td>{label}</td>" in page for label in metrics["classes"])


def test_dataset_card_is_a_hugging_face_card_refreshed_at_each_publish(published, tmp_path):
    from huggingface_hub import DatasetCard

    from pipeline.cli import main

    root = published["root"]
    card = DatasetCard.load(root / "README.md")
    assert card.data.license == "other" and card.data.task_categories == ["image-classification"]
    present = {r["split"] for r in published["rows"]}  # each split read from its own files
    assert card.data.configs == [{"config_name": "default", "data_files": [
        {"split": hf, "path": f"data/**/*.{ours}.parquet"}
        for ours, hf in (("train", "train"), ("val", "validation"), ("test", "test")) if ours in present]}]
    for section in ("## Class counts", "## Generation settings", "## Models and hashes", "## Gate statistics",
                    "## Licence", "## Intended use", "## Limits"):
        assert section in card.text
    generator = published["manifest"]["models"]["generator"]
    assert generator["sha256"] in card.text
    assert "Runs `" not in card.text and f"images per class: {IMAGES_PER_CLASS};" in card.text  # one run
    mugs = [r for r in published["rows"] if r["label"] == "mug"]
    counts = Counter(r["split"] for r in mugs)
    classes = json.loads((root / "_classes.json").read_text())["names"]
    assert classes == sorted({r["label"] for r in published["rows"]})  # a first publish: sorted
    assert (f"| {classes.index('mug')} | mug | {counts['train']} | {counts['val']} | {counts['test']} | "
            f"{len(mugs)} |") in card.text

    # another publish into a copy of the dataset (a new run date, one image per class, a new class
    # that sorts first) refreshes it, and every earlier class keeps its id
    copy = tmp_path / "out"
    shutil.copytree(published["out"], copy)
    catalog = tmp_path / "catalog.csv"
    catalog.write_text(published["catalog"].read_text() + 'AAA-T00,red aardvark 0,aardvark,"{""color"": ""red""}"\n')
    job = write_job(tmp_path / "job.yaml", generation={"steps": 2},  # the dataset's split ratios, kept
                    training={"images_per_class": 1, "license": "cc-by-4.0", "splits": SPLITS},
                    gates={"min_clip_score": -1.0, "max_phash_distance": None, "max_attempts": 1})
    args = ["run", "--manifest", str(catalog), "--config", str(job), "--out", str(copy),
            "--run-date", "2026-11-27", "--run-id", "run-next", "--no-progress"]
    assert main(args) == 0
    refreshed = DatasetCard.load(copy / "training_images" / "README.md")
    assert refreshed.data.license == "cc-by-4.0" and "2026-11-26, 2026-11-27" in refreshed.text
    assert "| mug | " in refreshed.text and "run-next" in refreshed.text and "run-train" in refreshed.text
    # each live run's generation settings, as it was made: here two runs with different quotas
    settings = refreshed.text.split("## Generation settings")[1].split("## ")[0]
    first, second = settings.split("Runs `run-next` (2026-11-27):")
    assert "Runs `run-train` (2026-11-26):" in first and f"images per class: {IMAGES_PER_CLASS};" in first
    assert "images per class: 1;" in second
    grown = json.loads((copy / "training_images" / "_classes.json").read_text())["names"]
    assert grown == [*classes, "aardvark"] and f"| {len(classes)} | aardvark | " in refreshed.text
    header = yaml.safe_load(refreshed.content.split("---")[1])
    assert header["size_categories"] == ["n<1K"] and header["pretty_name"] == "training_images"
    total = pq.read_table(copy / "training_images" / "data", columns=["kind"]).num_rows
    assert total > len(published["rows"]) and f"{total} published rows" in refreshed.text
