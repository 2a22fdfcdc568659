"""The training kind's plan: quotas and balance, facets, prompts, SKU splits, labels, config errors.

Pure planning (no model): fast.
"""

from __future__ import annotations

import json
from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pipeline.config import parse_job_config
from pipeline.errors import BadInputError
from pipeline.plan import plan_items
from pipeline.schema import PRODUCT_SCHEMA
from pipeline.training.splits import split_for

RUN_DATE = "2026-11-26"


def _products(per_class: dict[str, int], colour: str | None = "red") -> pa.Table:
    rows = []
    for category, n in per_class.items():
        for k in range(n):
            attributes = json.dumps({"color": colour}) if colour else "{}"
            rows.append({"line": len(rows) + 2, "sku": f"{category}-{k}", "title": f"{category} {k}",
                         "category": category, "attributes": attributes, "markets": []})
    return pa.Table.from_pylist(rows, schema=PRODUCT_SCHEMA)


def _plan(products: pa.Table, run_date: str = RUN_DATE, **training) -> pa.Table:
    config = parse_job_config({"kinds": ["training"], "training": training})
    items = plan_items(products, config, run_id="run-1", run_date=run_date, width=64, height=64)
    assert items.num_rows == pc.sum(pc.equal(items["kind"], "training")).as_py()
    return items


def test_every_class_gets_its_quota_spread_evenly_over_its_skus():
    products = _products({"mug": 3, "lamp": 1, "watch": 5, "chair": 2})
    items = _plan(products, images_per_class=7, class_quotas={"lamp": 4, "chair": 0})
    per_class = Counter(items["label"].to_pylist())
    assert per_class == {"mug": 7, "lamp": 4, "watch": 7}  # balance from the config, not the catalog
    for label in per_class:
        skus = Counter(s for s, l in zip(items["sku"].to_pylist(), items["label"].to_pylist()) if l == label)
        assert max(skus.values()) - min(skus.values()) <= 1
    assert items["label"].to_pylist() == items["category"].to_pylist()
    assert len(set(items["item_id"].to_pylist())) == items.num_rows


def test_facets_cycle_evenly_within_a_class_and_prompts_use_them():
    items = _plan(_products({"sneaker": 2}), images_per_class=13, viewpoints=["front view", "side view"],
                  lighting=["soft daylight", "studio lighting", "warm light"])
    facets = [json.loads(f) for f in items["facets"].to_pylist()]
    for axis, n_values in (("scene", 6), ("viewpoint", 2), ("lighting", 3), ("template", 5)):
        counts = Counter(f[axis] for f in facets)
        assert len(counts) == n_values and max(counts.values()) - min(counts.values()) <= 1, axis
    for prompt, f in zip(items["prompt"].to_pylist(), facets):
        assert f["viewpoint"] in prompt and f["lighting"] in prompt and "red" in prompt
        assert ", ," not in prompt and "  " not in prompt and not prompt.endswith(",")
    assert len(set(items["prompt"].to_pylist())) >= 12  # paraphrases + facets: nearly every prompt differs


def test_default_prompts_use_only_words_the_tiny_model_learnt():
    from pipeline.models.data import CATEGORY_WORDS, COLOUR_WORDS, SCENE_WORDS, TEMPLATES

    vocabulary = set()
    for words in [*CATEGORY_WORDS.values(), *SCENE_WORDS.values(), *COLOUR_WORDS.values(), TEMPLATES,
                  ["striped", "dotted", "metallic"]]:
        for text in words:
            vocabulary |= set(text.replace(",", " ").replace(":", " ").replace("{", " ").replace("}", " ").split())
    items = _plan(_products({c: 2 for c in CATEGORY_WORDS}), images_per_class=6)
    for prompt in items["prompt"].to_pylist():
        unknown = set(prompt.replace(",", " ").replace(":", " ").split()) - vocabulary
        assert not unknown, (prompt, unknown)


def test_splits_are_by_sku_stable_and_follow_the_ratios():
    ratios = {"train": 0.7, "val": 0.2, "test": 0.1}
    items = _plan(_products({"mug": 4, "bottle": 4}), images_per_class=16, splits=ratios)
    again = _plan(_products({"mug": 4, "bottle": 4}), images_per_class=16, splits=ratios)
    assert items.equals(again)  # the whole plan is deterministic
    by_sku: dict[str, set] = {}
    for sku, split in zip(items["sku"].to_pylist(), items["split"].to_pylist()):
        by_sku.setdefault(sku, set()).add(split)
    assert all(len(s) == 1 for s in by_sku.values())
    # another run date, a bigger catalog: every SKU keeps its split
    later = _plan(_products({"mug": 9, "bottle": 4, "chair": 3}), run_date="2026-12-01",
                  images_per_class=16, splits=ratios)
    later_split = dict(zip(later["sku"].to_pylist(), later["split"].to_pylist()))
    assert all(later_split[sku] == splits.pop() for sku, splits in by_sku.items())
    shares = Counter(split_for(f"SKU-{i:05d}", ratios) for i in range(4000))
    for name, ratio in ratios.items():
        assert abs(shares[name] / 4000 - ratio) < 0.025


def test_training_rows_carry_labels_and_the_global_partition():
    items = _plan(_products({"mug": 2, "sneaker": 1}), images_per_class=3, guidance_scale=4.5,
                  taxonomy={"mug": "home/kitchen/drinkware"})
    rows = items.to_pylist()
    assert {r["market"] for r in rows} == {"global"} and {r["locale"] for r in rows} == {"und"}
    assert {r["format"] for r in rows} == {"1:1"} and {(r["width"], r["height"]) for r in rows} == {(64, 64)}
    assert {tuple(r["taxonomy"]) for r in rows if r["label"] == "mug"} == {("home", "kitchen", "drinkware", "mug")}
    assert {tuple(r["taxonomy"]) for r in rows if r["label"] == "sneaker"} == {("sneaker",)}
    assert {r["guidance_override"] for r in rows} == {4.5}


def test_both_kinds_plan_side_by_side():
    config = parse_job_config({"kinds": ["campaign", "training"], "markets": ["en-US", "de-DE"],
                               "training": {"images_per_class": 2}})
    products = _products({"mug": 2, "lamp": 1})
    items = plan_items(products, config, run_id="r", run_date=RUN_DATE, width=64, height=64)
    kinds = Counter(items["kind"].to_pylist())
    assert kinds == {"campaign": 3 * 2, "training": 2 * 2}
    campaign = items.filter(pc.equal(items["kind"], "campaign"))
    assert campaign["label"].null_count == campaign.num_rows and campaign["split"].null_count == campaign.num_rows


@pytest.mark.parametrize("training, key", [
    ({"splits": {"train": 0.8, "val": 0.1}}, "training.splits"),
    ({"splits": {"train": 0.8, "holdout": 0.2}}, "training.splits"),
    ({"class_quotas": {"mug": -1}}, "training.class_quotas"),
    ({"templates": ["a {colour} {brand}"]}, "training"),
    ({"images_per_clas": 3}, "training.images_per_clas"),
])
def test_bad_training_config_is_refused_naming_the_key(training, key):
    with pytest.raises(BadInputError, match=key.replace(".", r"\.")):
        parse_job_config({"kinds": ["training"], "training": training}, "job.yaml")


@pytest.mark.parametrize("training, key", [
    ({"splits": {"train": float("nan"), "val": 0.5, "test": 0.5}}, r"training\.splits.*finite numbers >= 0"),
    ({"splits": {"train": float("inf"), "val": float("nan")}}, r"training\.splits.*finite numbers >= 0"),
    ({"scenes": {"beach": []}}, r"training\.scenes\.beach"),
    ({"class_words": {"mug": [""]}}, r"training\.class_words\.mug\.0"),
])
def test_training_settings_that_would_fail_planning_are_refused_naming_the_key(training, key):
    with pytest.raises(BadInputError, match=key):
        parse_job_config({"kinds": ["training"], "training": training})


def test_new_split_ratios_that_would_move_a_published_sku_are_refused(tmp_path, capsys):
    from pipeline.cli import main
    from pipeline.training.splits import moved_skus, split_for

    from conftest import EXAMPLE_CATALOG

    out = tmp_path / "out"
    partition = out / "catalog_images" / "data" / "run_date=2026-11-01" / "market=global"
    partition.mkdir(parents=True)
    published = split_for("MUG-001", {"train": 0.8, "val": 0.1, "test": 0.1})
    pq.write_table(pa.table({"sku": ["MUG-001"], "split": [published], "kind": ["training"]}),
                   partition / "part-0.parquet")
    moved = next(s for s in ("train", "val", "test") if s != published)
    config = tmp_path / "job.yaml"
    config.write_text(json.dumps({"kinds": ["training"], "training": {"splits": {moved: 1.0}}}), encoding="utf-8")
    args = ["run", "--manifest", str(EXAMPLE_CATALOG), "--config", str(config), "--out", str(out),
            "--skus", "MUG-001", "--run-date", "2026-11-02", "--no-progress"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"'MUG-001', {published} -> {moved}" in err and "both sides of an evaluation" in err
    assert not (out / "catalog_images" / "_staging").exists()  # before any work
    # a rerun of the published date replaces that partition: its own rows are not in the way
    assert moved_skus(out / "catalog_images", "2026-11-01", {"MUG-001": moved}) == []
    assert moved_skus(out / "catalog_images", "2026-11-02", {"MUG-001": published, "NEW-1": moved}) == []


def test_a_quota_under_the_sku_count_reaches_every_split_and_other_skus_each_day():
    products = _products({"mug": 40})
    ratios = {"train": 0.6, "val": 0.2, "test": 0.2}
    split_of = {f"mug-{k}": split_for(f"mug-{k}", ratios) for k in range(40)}
    counts = Counter(split_of.values())
    assert set(counts) == {"train", "val", "test"}
    quota = -(-40 // min(counts.values())) + 1  # the spacing of the rarest split's SKUs (rounded up), and one
    assert quota < 10
    days = {}
    for day in ("2026-11-26", "2026-11-27", "2026-11-28", "2026-11-29"):
        items = _plan(products, run_date=day, images_per_class=quota, splits=ratios)
        skus = items["sku"].to_pylist()
        assert len(set(skus)) == quota and {split_of[s] for s in skus} == {"train", "val", "test"}
        assert items["split"].to_pylist() == [split_of[s] for s in skus]
        days[day] = set(skus)
    assert len(set.union(*days.values())) > 10  # not the same five SKUs every day
    again = _plan(products, run_date="2026-11-27", images_per_class=quota, splits=ratios)
    assert set(again["sku"].to_pylist()) == days["2026-11-27"]  # the same plan for the same day


def test_one_sku_or_label_spelt_two_unicode_ways_is_one(tmp_path):
    import unicodedata

    from pipeline.ingest import read_manifest

    nfc, nfd = "CAFÉ-0", unicodedata.normalize("NFD", "CAFÉ-0")
    assert nfc != nfd
    manifest = tmp_path / "catalog.csv"
    manifest.write_text(f"sku,title,category\n{nfc},Cup,café cup\n{nfd},Cup,{unicodedata.normalize('NFD', 'café cup')}\n"
                        "LAMP-1,Lamp,lamp  shade\n", encoding="utf-8")
    result = read_manifest(manifest, parse_job_config({"kinds": ["training"]}))
    assert result.products["sku"].to_pylist() == [nfc, "LAMP-1"]
    assert result.products["category"].to_pylist() == ["café cup", "lamp shade"]
    (problem,) = result.problems()
    assert "line 3, field 'sku'" in problem and "duplicate sku 'CAFÉ-0' (first on line 2)" in problem
    # a SKU published in its NFD spelling (by a version before) is the same SKU to the split check
    from pipeline.training.splits import moved_skus

    partition = tmp_path / "ds" / "data" / "run_date=2026-11-01" / "market=global"
    partition.mkdir(parents=True)
    pq.write_table(pa.table({"sku": [nfd], "split": ["val"], "kind": ["training"]}), partition / "part-0.parquet")
    assert moved_skus(tmp_path / "ds", "2026-11-02", {nfc: "train"}) == [(nfc, "val", "train")]
    # a product photo's path is the bytes its filesystem holds: never respelt
    photo = tmp_path / unicodedata.normalize("NFD", "café.png")
    from PIL import Image

    Image.new("RGBA", (8, 8)).save(photo)
    manifest.write_text(f"sku,title,category,image\nA,Cup,cup,{photo.name}\n", encoding="utf-8")
    assert read_manifest(manifest, parse_job_config({"kinds": ["training"]})).products["image"].to_pylist() == \
        [str(photo)]
