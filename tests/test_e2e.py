"""End to end: the CLI on a slice of the example catalog, read back by every downstream reader."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from conftest import EXAMPLE_CATALOG, EXAMPLE_JOB
from pipeline.cli import main

RUN_DATE = "2026-11-26"


def _job(tmp_path: Path, **overrides) -> Path:
    config = yaml.safe_load(EXAMPLE_JOB.read_text())
    config["kinds"] = ["campaign"]  # the counts below are campaign rows; training has tests of its own
    config.update(overrides)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def published(tmp_path_factory, models_dir, ray_session):
    """One real run: 4 SKUs of the example catalog, published under a temporary root."""
    tmp = tmp_path_factory.mktemp("e2e")
    catalog = tmp / "catalog.csv"
    catalog.write_text("".join(EXAMPLE_CATALOG.read_text().splitlines(keepends=True)[:5]))
    job = _job(tmp, variants=1, shard_size=4, gates={"min_clip_score": -1.0})  # layout, not gating
    out = tmp / "out"
    args = ["run", "--manifest", str(catalog), "--config", str(job), "--out", str(out),
            "--run-date", RUN_DATE, "--run-id", "run-a", "--no-progress"]
    assert main(args) == 0
    return {"out": out, "root": out / "catalog_images", "args": args, "catalog": catalog, "job": job}


def test_layout_and_manifest_written_last(published):
    root = published["root"]
    files = sorted(p.relative_to(root).as_posix() for p in (root / "data").rglob("*.parquet"))
    assert files and all(f.startswith(f"data/run_date={RUN_DATE}/market=") for f in files)
    manifest = json.loads((root / "_runs" / "run-a" / "manifest.json").read_text())
    assert manifest["validation"]["success"] is True
    assert manifest["models"]["generator"]["sha256"]
    assert len(manifest["models"]["scorer"]["sha256"]) == 64  # the card's hash of the scorer's weights
    # no gates.reference_index: the memorization gate compares with the tiny training set's index
    reference = manifest["models"]["reference"]
    assert reference["origin"] == "tiny training set" and reference["images"] == 16005
    assert len(reference["sha256"]) == 64
    rows = [r for kind in ("data", "rejects") if (root / kind).exists()
            for r in pq.read_table(root / kind, columns=["ref_nearest_id", "ref_similarity", "ref_tile_l2",
                                                          "gate_reasons"]).to_pylist()]
    assert rows and all(r["ref_nearest_id"] and r["ref_similarity"] is not None and r["ref_tile_l2"] is not None
                        for r in rows)
    assert not any(x.startswith("memorization:") for r in rows for x in r["gate_reasons"] or [])
    cost = manifest["cost"]  # CPU core-seconds held by generation, priced per 1,000 accepted images
    assert cost["device"] == "cpu" and cost["device_seconds"] > 0 and cost["usd_per_1000_accepted"] > 0
    report = (root / "_runs" / "run-a" / "report.html").read_text()
    assert "CPU core-s / accepted image" in report
    # start-up: from the generate step's start to the first written batch, within that step
    timings = manifest["timings_s"]
    assert 0 < timings["generate_first_batch"] <= timings["generate"]
    assert "until the first batch was written" in report and ">generate_first_batch<" not in report
    for record in manifest["files"]:
        assert hashlib.sha256((root / record["path"]).read_bytes()).hexdigest() == record["sha256"]
    assert (root / "_runs" / "run-a" / "report.html").stat().st_size > 1000
    assert not (root / "_staging").exists()  # the run's staging folder, and _staging/ left empty
    for path in (root / "data").rglob("*.parquet"):
        metadata = pq.ParquetFile(path).metadata
        assert all(metadata.row_group(i).num_rows <= 100 for i in range(metadata.num_row_groups))


def test_the_generate_actor_logs_its_start_up(published):
    """A run's start-up is the actor's set-up and its first batch: each is a line of its Ray log."""
    import re

    import ray

    logs = Path(ray._private.worker.global_worker.node.get_logs_dir_path())
    text = "".join(p.read_text(errors="replace") for p in logs.glob("worker-*.err"))
    parts = ", ".join(rf"{part} \d+\.\d s" for part in ("import", "load", "to_device", "optimise",
                                                         "score_import", "score_load"))
    assert re.search(rf"INFO pipeline\.worker: generate: actor set up in \d+\.\d s \({parts}\) \(pid \d+\)", text)
    assert re.search(r"INFO pipeline\.worker: generate: first batch \(\d+ rows\) in \d+\.\d s", text)


def test_pyarrow_and_pandas_read_lineage_and_images(published):
    import pandas as pd

    table = pq.read_table(published["root"] / "data")
    # 4 SKUs: three take the job's 3 markets, MUG-002 overrides to de-DE alone
    assert table.num_rows == 3 + 1 + 3 + 3
    for column in ["item_id", "run_id", "run_date", "sku", "market", "locale", "kind", "variant",
                   "format", "attempt", "prompt", "negative_prompt", "seed", "model_id", "model_sha256",
                   "scheduler", "steps", "guidance_scale", "width", "height", "image_sha256",
                   "clip_model", "clip_score", "dup_group", "gate_status", "created_at"]:
        assert column in table.column_names
    assert len(table.column("item_id").unique()) == table.num_rows
    frame = pd.read_parquet(published["root"] / "data")
    image = Image.open(io.BytesIO(frame["image"].iloc[0]["bytes"]))
    assert image.size == (frame["width"].iloc[0], frame["height"].iloc[0])  # campaign: the 512 px canvas
    assert hashlib.sha256(frame["image"].iloc[0]["bytes"]).hexdigest() == frame["image_sha256"].iloc[0]


def test_duckdb_reads_the_dataset(published):
    import duckdb

    pattern = str(published["root"] / "data" / "**" / "*.parquet")
    rows = duckdb.sql(f"select market, count(*) n from read_parquet('{pattern}', hive_partitioning=true) "
                      "group by market order by market").fetchall()
    assert rows == [("de-DE", 4), ("en-US", 3), ("ja-JP", 3)]


def test_hugging_face_datasets_decodes_images(published, tmp_path):
    import datasets

    files = [str(p) for p in sorted((published["root"] / "data").rglob("*.parquet"))]
    ds = datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=str(tmp_path / "hf"))
    assert isinstance(ds.features["image"], datasets.Image)
    assert ds[0]["image"].size == (ds[0]["width"], ds[0]["height"])
    assert ds.num_rows == 10


def test_rerun_of_the_same_run_date_replaces_rows_and_reproduces_images(published, monkeypatch):
    import pipeline.publish as publish

    before = pq.read_table(published["root"] / "data").sort_by("item_id")
    args = [a if a != "run-a" else "run-b" for a in published["args"]]

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    # a first try whose publish fails before its commit: nothing changes, and no run folder is left
    # without its manifest (its report and input rejects go with it); the same run id then resumes
    monkeypatch.setattr(publish, "publish_run", full_disk)
    assert main(args) == 1
    assert not (published["root"] / "_runs" / "run-b").exists()
    assert pq.read_table(published["root"] / "data").sort_by("item_id").equals(before)
    monkeypatch.undo()
    assert main(args) == 0
    after = pq.read_table(published["root"] / "data").sort_by("item_id")
    assert after.num_rows == before.num_rows
    assert after.column("item_id").to_pylist() == before.column("item_id").to_pylist()
    assert after.column("image_sha256").to_pylist() == before.column("image_sha256").to_pylist()
    assert set(after.column("run_id").to_pylist()) == {"run-b"}


def test_failed_gate_exits_3_and_keeps_published_data(published, tmp_path, capsys):
    before = pq.read_table(published["root"] / "data").sort_by("item_id")
    job = _job(tmp_path, variants=1, shard_size=4, gates={"min_clip_score": 0.99, "max_attempts": 1})
    args = ["run", "--manifest", str(published["catalog"]), "--config", str(job), "--out",
            str(published["out"]), "--run-date", RUN_DATE, "--run-id", "run-strict", "--no-progress"]
    assert main(args) == 3
    err = capsys.readouterr().err
    assert "validation failed, nothing published" in err and "Traceback" not in err
    after = pq.read_table(published["root"] / "data").sort_by("item_id")
    assert after.equals(before)
    assert not (published["root"] / "_runs" / "run-strict").exists()  # no run folder without its manifest
    # the failed run's report is in its staging folder, named in the error: what failed, and the images
    report = published["root"] / "_staging" / "run-strict" / "report.html"
    assert f"the run's report: {report}" in " ".join(err.split())
    page = report.read_text(encoding="utf-8")
    assert "expect_table_row_count_to_be_between" in page and page.count("<img") >= 4  # none accepted


# Crashes (SIGKILL at generate, score, publish) and resume: tests/reliability/test_crash_resume.py


def test_failing_items_are_regenerated_with_their_next_seed(published, tmp_path, monkeypatch):
    import pipeline.run as run
    import pipeline.steps.gate as gate
    from pipeline.identity import seed_for
    from pipeline.warm_models import warm_session

    hosts = []  # the generator's host actors after each generation round of the run

    def generate_shards(*args, **kwargs):
        result = real_generate_shards(*args, **kwargs)
        hosts.append(list(warm_session().hosts.get("generate", [])))
        return result

    real_generate_shards = run.generate_shards
    monkeypatch.setattr(run, "generate_shards", generate_shards)  # the first round
    monkeypatch.setattr(gate, "generate_shards", generate_shards)  # the regeneration round

    scores = sorted(pq.read_table(published["root"] / "data").column("clip_score").to_pylist())
    threshold = scores[len(scores) // 2]  # about half the first attempts fail
    job = _job(tmp_path, variants=1, shard_size=4, gates={"min_clip_score": threshold, "max_attempts": 2,
                                                        "reference_index": "none"})  # opted out
    out = tmp_path / "out"
    assert main(["run", "--manifest", str(published["catalog"]), "--config", str(job), "--out", str(out),
                 "--run-date", RUN_DATE, "--run-id", "run-retry", "--no-progress"]) in (0, 3)
    root = out / "catalog_images"
    rows = [r for kind in ("data", "rejects") if (root / kind).exists()
            for r in pq.read_table(root / kind, columns=["item_id", "attempt", "seed", "clip_score",
                                                          "gate_reasons", "ref_nearest_id",
                                                          "ref_similarity"]).to_pylist()]
    assert len(rows) == 10 and len({r["item_id"] for r in rows}) == 10  # one row per item
    assert all(r["ref_nearest_id"] is None and r["ref_similarity"] is None for r in rows)  # no reference
    retried = [r for r in rows if r["attempt"] == 1]
    assert retried, "some first attempts scored under the median and were regenerated"
    assert all(r["seed"] == seed_for(r["item_id"], 1) for r in retried)
    assert all(r["clip_score"] >= threshold for r in rows if r["attempt"] == 0)
    # the regeneration round ran on the generator the first round set up (pipeline/warm_models.py)
    assert len(hosts) == 2 and len(hosts[0]) == 1 and hosts[0] == hosts[1]
    # which held its CPU meanwhile, through both gate passes: that time is in the run's cost
    cost = json.loads(next((root / "_runs" / "run-retry").glob("manifest.json")).read_text())["cost"]
    assert 0 < cost["held_idle_seconds"] < cost["device_seconds"]


def test_report_command_rebuilds_the_report_of_a_published_run(published, tmp_path, capsys, monkeypatch):
    import re

    runs = sorted((published["root"] / "_runs").glob("*/manifest.json"))
    run_dir = runs[-1].parent
    target = tmp_path / "again.html"
    reads = []
    real_read = pq.read_table
    monkeypatch.setattr(pq, "read_table", lambda path, **kw: reads.append(kw.get("columns")) or real_read(path, **kw))
    assert main(["report", str(run_dir), "--out", str(target)]) == 0
    monkeypatch.undo()
    assert reads and all(columns and "image" not in columns for columns in reads)  # whole files: no images
    page = target.read_text(encoding="utf-8")
    assert page.count(";base64,") >= 10 and run_dir.name in page
    # the same cards, each thumbnail made from its published image as the encode stage made it
    thumbnails = re.compile(r"data:image/(?:png|jpeg);base64,[A-Za-z0-9+/=]+")
    original = (run_dir / "report.html").read_text(encoding="utf-8")
    assert sorted(thumbnails.findall(page)) == sorted(thumbnails.findall(original))
    assert main(["report", str(tmp_path)]) == 2 and "no manifest.json" in capsys.readouterr().err
    monkeypatch.chdir(run_dir)  # from inside the run's folder: the dataset is still found two folders up
    assert main(["report", ".", "--out", str(tmp_path / "here.html")]) == 0 and (tmp_path / "here.html").is_file()
    assert main(["report", str(run_dir), "--out", str(tmp_path / "no" / "r.html")]) == 2
    assert "does not exist" in capsys.readouterr().err
    manifest = (run_dir / "manifest.json").read_bytes()  # a dataset's file is never overwritten with a report
    assert main(["report", str(run_dir), "--out", str(run_dir / "manifest.json")]) == 2
    assert "not a report" in capsys.readouterr().err and (run_dir / "manifest.json").read_bytes() == manifest
    (tmp_path / "folder").mkdir()  # a folder: its report.html
    assert main(["report", str(run_dir), "--out", str(tmp_path / "folder")]) == 0
    assert (tmp_path / "folder" / "report.html").is_file()
    for text, says in (('{"run_id": ', "cannot be read as JSON"), ("{}", "not a synthcat run manifest")):
        (tmp_path / "manifest.json").write_text(text)
        assert main(["report", str(tmp_path)]) == 2 and says in capsys.readouterr().err
    # the report names the dataset, never the producing machine's path to it
    assert str(published["root"]) not in original and "dataset catalog_images" in original
    # a damaged copy of the run (a part cut short; the manifest's fields edited by hand): exit 2, named
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(published["root"], copy)
    copied = copy / "_runs" / run_dir.name
    record = json.loads((copied / "manifest.json").read_text())
    part = copy / record["files"][0]["path"]
    part.write_bytes(part.read_bytes()[:1000])
    assert main(["report", str(copied)]) == 2
    assert f"{record['files'][0]['path']} is not a readable Parquet file" in capsys.readouterr().err
    shutil.copytree(published["root"] / "data", copy / "data", dirs_exist_ok=True)  # whole again
    for field, value in (("rows", {}), ("validation", None), ("cost", {"device": "gpu", "device_s_per_accepted": 1.0})):
        (copied / "manifest.json").write_text(json.dumps({**record, field: value}))
        assert main(["report", str(copied)]) == 2
        err = capsys.readouterr().err
        assert "a field is not as a synthcat publish writes it" in err and "Traceback" not in err


def test_campaign_rows_carry_the_copy_drawn_its_font_and_the_brand_lineage(published):
    from babel.numbers import format_currency

    from pipeline.campaign.brand import WEIGHT_NAME

    rows = pq.read_table(published["root"] / "data").to_pylist()
    adapter = Path(__file__).resolve().parents[1] / "models" / "tiny" / "lora" / "northwind-look" / WEIGHT_NAME
    for row in rows:
        market = str(row["market"])
        assert row["price_text"] == format_currency(row["price"], row["currency"], locale=market.replace("-", "_"))
        drawn, planned = "".join(row["overlay_text"].split()), "".join((row["headline"] + row["price_text"]).split())
        assert drawn == planned and row["overlay_contrast"] >= 4.5
        assert ("Noto Sans CJK JP" if market == "ja-JP" else "Noto Sans 700") in row["overlay_font"]
        image = Image.open(io.BytesIO(row["image"]["bytes"]))
        assert image.size == (row["width"], row["height"]) == (512, 512) and row["generated_width"] == 64
        if row["brand"] == "Northwind":
            assert row["brand_adapter"] == "northwind-look" and row["palette_distance"] is not None
            assert row["brand_adapter_sha256"] == hashlib.sha256(adapter.read_bytes()).hexdigest()
        else:
            assert row["brand_adapter"] is None and row["palette_distance"] is None
    report = next((published["root"] / "_runs").glob("*/report.html")).read_text(encoding="utf-8")
    assert "セール：マグカップ" in report and "Black Friday" in report

