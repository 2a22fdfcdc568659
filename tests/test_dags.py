"""Airflow 3 DAGs: they parse, they are wired as designed, and on-demand runs end to end on SQLite."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from conftest import EXAMPLE_CATALOG, REPO, campaign_spec

# Airflow reads its configuration at import: give the suite its own SQLite home first.
AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="synthcat-airflow-"))
os.environ.update({
    "AIRFLOW_HOME": str(AIRFLOW_HOME),
    "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "AIRFLOW__CORE__UNIT_TEST_MODE": "True",
    "SYNTHCAT_PARAM_ROOTS": tempfile.gettempdir(),  # the on-demand DAG's test runs read and write under it
})
sys.path.insert(0, str(REPO / "dags"))  # Airflow's bundle loader does this for the DAG folder


@pytest.fixture(scope="module")
def dagbag():
    subprocess.run([str(Path(sys.executable).parent / "airflow"), "db", "migrate"], check=True,
                   capture_output=True, env=os.environ.copy(), timeout=300)
    try:
        from airflow.dag_processing.dagbag import DagBag
    except ImportError:  # before Airflow 3.2
        from airflow.models.dagbag import DagBag
    return DagBag(dag_folder=str(REPO / "dags"))


def test_dags_import_without_errors_and_have_retries_and_tags(dagbag):
    assert dagbag.import_errors == {}
    assert {"synthcat_nightly", "synthcat_on_demand", "synthcat_reference_index"} <= set(dagbag.dag_ids)
    for dag_id in dagbag.dag_ids:
        dag = dagbag.get_dag(dag_id)
        assert "synthcat" in dag.tags
        assert all(task.retries >= 1 for task in dag.tasks), dag_id


def test_nightly_schedule_and_run_shape(dagbag):
    dag = dagbag.get_dag("synthcat_nightly")
    assert dag.max_active_runs == 1 and dag.catchup is False
    assert dag.timetable.expression == "0 1 * * *" and type(dag.timetable).__name__ == "CronTriggerTimetable"
    order = ["resolve_spec", "check_manifest", "plan_shards", "unless_dry_run", "generate_shards",
             "consolidate", "validate_run", "publish"]
    for upstream, downstream in zip(order, order[1:]):
        assert downstream in dag.get_task(upstream).downstream_task_ids
    assert type(dag.get_task("generate_shards")).__name__.endswith("MappedOperator")
    assert [o.name for o in dag.get_task("publish").outlets] == ["synthcat_dataset"]


def test_on_demand_params_are_exactly_the_documented_ones(dagbag):
    dag = dagbag.get_dag("synthcat_on_demand")
    assert type(dag.timetable).__name__ == "NullTimetable"
    assert set(dag.params.keys()) == {"manifest", "config", "out", "skus", "markets", "kinds",
                                      "variants", "model", "dry_run"}


@pytest.mark.parametrize("conf, field", [
    ({"variants": 0}, "variants"),
    ({"skus": ["MUG-001", "MUG-001"]}, "skus"),
    ({"markets": ["english"]}, "markets"),
    ({"model": "dalle"}, "model"),
    ({"dry_run": "yes"}, "dry_run"),
])
def test_an_invalid_trigger_is_refused_naming_the_field(dagbag, conf, field):
    from airflow.sdk.definitions.param import ParamsDict

    dag = dagbag.get_dag("synthcat_on_demand")
    params = ParamsDict(dict(dag.params.items()) if hasattr(dag.params, "items") else dag.params)
    with pytest.raises(Exception) as error:
        params.update(conf)
        params.validate()
    assert field in str(error.value)


def _run(dag, conf: dict):
    return dag.test(run_conf=conf)


def test_on_demand_runs_end_to_end_like_the_cli(dagbag, tmp_path, models_dir, ray_session):
    out = tmp_path / "out"
    dag = dagbag.get_dag("synthcat_on_demand")
    run = _run(dag, {"out": str(out), "skus": ["MUG-001", "TSH-001"], "markets": ["en-US", "vi-VN"],
                     "kinds": ["campaign"]})
    assert str(run.state) in ("success", "DagRunState.SUCCESS")
    table = pq.read_table(out / "catalog_images" / "data")
    rejects = out / "catalog_images" / "rejects"
    rejected = pq.read_table(rejects).num_rows if rejects.exists() else 0
    assert table.num_rows + rejected == 2 * 2  # 2 SKUs x 2 markets x 1 variant
    assert set(table.column("market").to_pylist()) <= {"en-US", "vi-VN"} and table.num_rows >= 1
    run_ids = set(table.column("run_id").to_pylist())
    manifest = out / "catalog_images" / "_runs" / run_ids.pop() / "manifest.json"
    # the generate tasks' time and images reach the manifest (and the report): the run's images/s
    recorded = json.loads(manifest.read_text())
    assert recorded["images_per_s"] > 0 and recorded["timings_s"]["generate"] > 0
    # a dataset of campaign rows only has its card too, so the root loads data/ and never rejects/
    from huggingface_hub import DatasetCard

    assert DatasetCard.load(out / "catalog_images" / "README.md").data.task_categories == ["text-to-image"]

    # the CLI on the same inputs publishes the same dataset: same items, same image bytes
    from pipeline.cli import main

    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({**yaml.safe_load((REPO / "examples" / "job.yaml").read_text()),
                                   "markets": ["en-US", "vi-VN"], "kinds": ["campaign"]}))
    cli_out = tmp_path / "cli"
    assert main(["run", "--manifest", str(EXAMPLE_CATALOG), "--config", str(job), "--out", str(cli_out),
                 "--run-date", table.column("run_date")[0].as_py(), "--skus", "MUG-001,TSH-001",
                 "--no-progress"]) == 0
    cli = pq.read_table(cli_out / "catalog_images" / "data").sort_by("item_id")
    table = table.sort_by("item_id")
    assert cli.column("item_id").to_pylist() == table.column("item_id").to_pylist()
    assert cli.column("image_sha256").to_pylist() == table.column("image_sha256").to_pylist()


def test_on_demand_with_a_missing_manifest_fails_before_any_work(dagbag, tmp_path):
    out = tmp_path / "out"
    run = _run(dagbag.get_dag("synthcat_on_demand"), {"out": str(out), "manifest": str(tmp_path / "none.csv")})
    assert "fail" in str(run.state).lower()
    assert not out.exists()


def test_a_dry_run_without_out_leaves_no_folder_of_its_own(tmp_path, monkeypatch):
    from pipeline import orchestrate

    monkeypatch.setenv("SYNTHCAT_DATA_DIR", str(tmp_path))
    spec = orchestrate.make_spec({"manifest": "examples/catalog.csv", "config": "examples/job.yaml", "skus": ["MUG-001"],
                                  "dry_run": True}, dag_run_id="manual__dry", run_date="2026-11-26",
                                 triggered_by="synthcat_on_demand")
    assert orchestrate.plan_shards(spec)
    orchestrate.end_dry_run(spec)
    assert not Path(spec["out"]).exists() and Path(spec["out"]).parent == tmp_path / "out" / "on-demand"


def test_a_dry_run_checks_and_plans_then_leaves_nothing_behind(dagbag, tmp_path):
    out = tmp_path / "out"
    run = _run(dagbag.get_dag("synthcat_on_demand"), {"out": str(out), "skus": ["MUG-001"], "dry_run": True,
                                                       # dag.test keeps an earlier test's conf in the DAG's params
                                                       "manifest": "examples/catalog.csv", "config": "examples/job.yaml"})
    assert str(run.state) in ("success", "DagRunState.SUCCESS")
    states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    assert "success" in states["plan_shards"] and "skipped" in states["publish"]
    assert out.is_dir() and not (out / "catalog_images").exists()  # no plan, no staging, no dataset


def test_a_retried_shard_group_produces_no_duplicates(tmp_path, models_dir, ray_session):
    import hashlib

    from pipeline import orchestrate
    from pipeline.run import read_state
    from pipeline.shards import ShardStore

    spec = campaign_spec(tmp_path, markets=["en-US"], variants=2, dag_run_id="manual__2026-11-26T01:00:00+00:00",
                         run_date="2026-11-26")
    assert spec["run_id"].startswith("manual__2026-11-26T01-00-00-00-00-")
    groups = orchestrate.plan_shards(spec, max_groups=2)
    assert len(groups) == 2  # 6 items, shards of 2, two groups
    first = orchestrate.generate_shards(spec, groups[0])
    retried = orchestrate.generate_shards(spec, groups[0])  # the task retried after it had finished
    assert retried["generated"] == 0 and retried["skipped"] == len(groups[0])
    time.sleep(1.0)  # the scheduler starts the next mapped task: the model host the first one left waits, held
    for group in groups[1:]:
        orchestrate.generate_shards(spec, group)
    # that time is the run's device time, counted by the task that took the host up (its own session)
    assert read_state(orchestrate._staging(spec))["device"]["held_idle_seconds"] >= 1.0
    orchestrate.consolidate(spec)
    # the gate step stages the rows without their images, which stay in the shards until publish
    staging = orchestrate._staging(spec)
    gated = pq.read_table(staging / "gated" / "accepted.parquet")
    shards = ShardStore(staging / "shards").read_all()
    sizes = {(i, a): len(image["bytes"]) for i, a, image in zip(*(shards.column(c).to_pylist()
                                                                  for c in ("item_id", "attempt", "image")))}
    assert "image" not in gated.column_names and gated.num_rows > 0
    assert gated.column("image_nbytes").to_pylist() == [
        sizes[key] for key in zip(gated.column("item_id").to_pylist(), gated.column("attempt").to_pylist())]
    orchestrate.validate_run(spec)
    result = orchestrate.publish(spec)
    table = pq.read_table(tmp_path / "out" / "catalog_images" / "data")
    assert table.num_rows == result["rows"] and result["rows"] + result["rejected"] == 3 * 2
    assert first["generated"] > 0
    assert len(set(table.column("item_id").to_pylist())) == table.num_rows
    # each published row carries its own image, fetched back from the shards
    assert [hashlib.sha256(image["bytes"]).hexdigest() for image in table.column("image").to_pylist()] == \
        table.column("image_sha256").to_pylist()


def test_reference_index_task_builds_the_index_named_in_the_settings(tmp_path, models_dir):
    import numpy as np
    from PIL import Image

    from pipeline import orchestrate

    images = tmp_path / "reference_images"
    images.mkdir()
    for i in range(3):
        pixels = np.random.default_rng(i).integers(0, 256, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / f"protected-{i}.png")
    result = orchestrate.build_reference_index({"reference_images": str(images), "out": str(tmp_path / "out")})
    assert result["images"] == 3 and (Path(result["index"]) / result["files"]["parquet"]).is_file()
    with pytest.raises(orchestrate.BadInputError, match="reference_images"):
        orchestrate.build_reference_index({"reference_images": None, "out": str(tmp_path / "out")})


def test_settings_without_reference_images_leave_the_reference_dag_manual(dagbag, tmp_path, monkeypatch):
    import runpy

    settings = tmp_path / "dags" / "settings.yaml"
    settings.parent.mkdir()
    settings.write_text("manifest: examples/catalog.csv\nconfig: examples/job.yaml\nout: out\n", encoding="utf-8")
    monkeypatch.setenv("SYNTHCAT_DAGS_SETTINGS", str(settings))
    module = runpy.run_path(str(REPO / "dags" / "synthcat_reference_index.py"))
    assert module["REFERENCE_IMAGES"] is None  # imports (no KeyError); triggered by hand, its task says why


def test_a_trigger_can_name_only_allowed_folders_and_never_another_dags_run_id(tmp_path, monkeypatch):
    from pipeline import orchestrate
    from pipeline.errors import BadInputError

    (secret := tmp_path / "secret" / "creds.csv").parent.mkdir()
    secret.write_text("username,password\nadmin,hunter2\n")
    monkeypatch.setenv("SYNTHCAT_PARAM_ROOTS", str(tmp_path / "allowed"))
    params = {"manifest": "examples/catalog.csv", "config": "examples/job.yaml", "out": str(tmp_path / "allowed")}
    for field, value in (("manifest", str(secret)), ("out", str(tmp_path / "allowed" / ".." / "elsewhere")),
                         ("config", "../../etc/job.yaml")):
        with pytest.raises(BadInputError, match=f"param '{field}': .* is outside the folders a trigger may name"):
            orchestrate.make_spec({**params, field: value}, dag_run_id="manual__x", run_date="2026-11-26",
                                  triggered_by="synthcat_on_demand")
    orchestrate.make_spec({**params, "manifest": str(secret)}, dag_run_id="x", run_date="2026-11-26")  # settings: trusted
    # a trigger that names its run as the nightly's scheduled run gets a run id of its own
    nightly = orchestrate.make_spec(params, dag_run_id="scheduled__2026-01-05T01:00:00+00:00", run_date="2026-01-05")
    for chosen in ("scheduled__2026-01-05T01:00:00+00:00", "scheduled__2026-01-05T01-00-00-00-00"):
        triggered = orchestrate.make_spec(params, dag_run_id=chosen, run_date="2026-01-05",
                                          triggered_by="synthcat_on_demand")
        assert triggered["run_id"].startswith("synthcat_on_demand-") and triggered["run_id"] != nightly["run_id"]


def test_distinct_dag_runs_get_distinct_run_ids_and_a_trigger_without_out_a_dataset_of_its_own(tmp_path,
                                                                                                 monkeypatch):
    from pipeline import orchestrate
    from pipeline.layout import check_name as _check_name

    ids = ["xmas:2026", "xmas+2026", "xmas-2026", "a" * 200, "a" * 199 + "b", ":::", "manual__x",
           "scheduled__2026-11-26T01:00:00+00:00", "scheduled__2026-11-26T01-00-00-00-00"]
    run_ids = [orchestrate.airflow_run_id(i) for i in ids]
    assert len(set(run_ids)) == len(ids) and all(len(r) <= 128 for r in run_ids)
    for run_id in run_ids:
        _check_name("run_id", run_id)  # names a folder and a file
    assert orchestrate.airflow_run_id("manual__x") == "manual__x"  # nothing to replace: as Airflow named it
    assert orchestrate.airflow_run_id("xmas:2026") == run_ids[0]  # stable: a retried task finds its staging
    monkeypatch.setenv("SYNTHCAT_DATA_DIR", str(tmp_path))
    params = {"manifest": "examples/catalog.csv", "config": "examples/job.yaml", "out": None}
    outs = {orchestrate.make_spec(params, dag_run_id=i, run_date="2026-11-26", triggered_by="synthcat_on_demand")["out"]
            for i in ("xmas:2026", "xmas+2026")}
    assert len(outs) == 2 and all(Path(o).parent == tmp_path / "out" / "on-demand" for o in outs)


def test_the_job_configs_models_dir_wins_in_the_dags_as_in_the_cli(tmp_path, monkeypatch):
    from pipeline import cli, orchestrate

    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({**yaml.safe_load((REPO / "examples" / "job.yaml").read_text()),
                                   "models_dir": str(tmp_path / "job-models")}))
    monkeypatch.setenv("SYNTHCAT_MODELS_DIR", str(tmp_path / "deployment-models"))
    spec = orchestrate.make_spec({"manifest": str(EXAMPLE_CATALOG), "config": str(job), "out": str(tmp_path)},
                                 dag_run_id="manual__m", run_date="2026-11-26")
    config = orchestrate.request_from_spec(spec).config
    assert orchestrate.request_from_spec(spec).models_dir == cli._models_dir(config.models_dir) == \
        tmp_path / "job-models"


def test_a_param_the_job_config_cannot_take_is_named_as_the_param(tmp_path):
    from pipeline import orchestrate
    from pipeline.errors import BadInputError

    params = {"manifest": str(EXAMPLE_CATALOG), "config": "examples/job.yaml", "out": str(tmp_path)}
    with pytest.raises(BadInputError, match=r"^param 'markets' on the job config .*job.yaml: .*'fr-FR'.*no market"):
        orchestrate.make_spec({**params, "markets": ["fr-FR"]}, dag_run_id="manual__p", run_date="2026-11-26")
    assert orchestrate.make_spec({**params, "markets": ["de-DE"]}, dag_run_id="manual__p",
                                 run_date="2026-11-26")["markets"] == ["de-DE"]
    with pytest.raises(BadInputError, match=r"^param 'market' is not one synthcat takes"):  # misspelt
        orchestrate.make_spec({**params, "market": ["de-DE"]}, dag_run_id="manual__p", run_date="2026-11-26")


def test_a_dag_run_cleared_after_it_published_runs_again_under_a_new_id(tmp_path):
    from pipeline import orchestrate

    params = {"manifest": str(EXAMPLE_CATALOG), "config": "examples/job.yaml", "out": str(tmp_path)}
    dag_run_id, run_date = "scheduled__2026-11-26T01:00:00+00:00", "2026-11-26"
    base = orchestrate.make_spec(params, dag_run_id=dag_run_id, run_date=run_date)["run_id"]
    # cleared before it published (a failed task, cleared with the run): the same id resumes its staging
    assert orchestrate.make_spec(params, dag_run_id=dag_run_id, run_date=run_date, clear_number=1)["run_id"] == base
    published = tmp_path / "catalog_images" / "_runs" / base / "manifest.json"
    published.parent.mkdir(parents=True)
    published.write_text("{}")
    # cleared after it published (Airflow's way to redo a date): a new id, which replaces the partition
    assert orchestrate.make_spec(params, dag_run_id=dag_run_id, run_date=run_date, clear_number=1)["run_id"] == \
        f"{base}-c1"
    assert orchestrate.make_spec(params, dag_run_id=dag_run_id, run_date=run_date)["run_id"] == base  # a retry
    # the -c1 run fails before it publishes, and the DAG run is cleared again: -c1 resumes its staging
    (tmp_path / "catalog_images" / "_staging" / f"{base}-c1").mkdir(parents=True)
    assert orchestrate.make_spec(params, dag_run_id=dag_run_id, run_date=run_date, clear_number=2)["run_id"] == \
        f"{base}-c1"


def test_a_dag_run_cleared_after_its_catalog_changed_starts_its_unpublished_attempt_again(tmp_path):
    from pipeline import orchestrate
    from pipeline.errors import BadInputError

    catalog = tmp_path / "catalog.csv"
    lines = EXAMPLE_CATALOG.read_text().splitlines(keepends=True)
    catalog.write_text("".join(lines[:3]))
    params = {"manifest": str(catalog), "config": "examples/job.yaml", "out": str(tmp_path / "out")}
    dag_run_id, run_date = "scheduled__2026-11-26T01:00:00+00:00", "2026-11-26"
    spec = orchestrate.make_spec(params, dag_run_id=dag_run_id, run_date=run_date)
    orchestrate.plan_shards(spec)
    staging = orchestrate._staging(spec)
    (staging / "shards").mkdir()
    (staging / "shards" / "shard-00000.parquet").write_bytes(b"a finished shard of the old catalog")
    catalog.write_text("".join(lines[:4]))  # the catalog gets a row; the failed run is cleared
    with pytest.raises(BadInputError, match="different manifest"):  # a task retry of the run: refused
        orchestrate.plan_shards(spec)
    cleared = orchestrate.make_spec(params, dag_run_id=dag_run_id, run_date=run_date, clear_number=1)
    assert cleared["run_id"] == spec["run_id"]
    # a publish of the old attempt stopped half-way: a published partition waits in its staging
    aside = staging / "publish" / ".replaced-data-run_date=2026-11-26" / "market=en-US"
    aside.mkdir(parents=True)
    (aside / "part-earlier-00000.parquet").write_bytes(b"published rows")
    with pytest.raises(BadInputError, match="different manifest"):
        orchestrate.plan_shards(cleared)  # never deleted: the old inputs finish (or undo) that publish
    assert (aside / "part-earlier-00000.parquet").is_file()
    shutil.rmtree(staging / "publish")
    orchestrate.plan_shards(cleared)  # redone: the old attempt's shards go
    assert not (staging / "shards").exists() and pq.read_table(staging / "plan.parquet").num_rows > 0


def test_with_a_shared_data_folder_relative_outputs_land_there_and_inputs_stay_in_the_project(tmp_path,
                                                                                              monkeypatch):
    from pipeline import orchestrate

    monkeypatch.setenv("SYNTHCAT_DATA_DIR", str(tmp_path))  # as docker compose sets it
    settings = orchestrate.load_settings()
    assert settings["out"] == str(tmp_path / "out") and settings["reference_images"].startswith(str(tmp_path))
    assert settings["manifest"] == str(REPO / "examples" / "catalog.csv")
    spec = orchestrate.make_spec({"manifest": "examples/catalog.csv", "config": "examples/job.yaml",
                                  "out": "out/on-demand"}, dag_run_id="manual__d", run_date="2026-11-26")
    assert spec["out"] == str(tmp_path / "out" / "on-demand") and spec["manifest"] == str(EXAMPLE_CATALOG)


def test_a_task_failing_for_a_run_id_says_what_to_do_in_airflow():
    from _synthcat_tasks import _call
    from airflow.sdk.exceptions import AirflowFailException

    from pipeline.errors import BadInputError

    def refused():
        raise BadInputError("run id 'r' is already published (x); use a new --run-id")

    with pytest.raises(AirflowFailException, match=r"--run-id \(in Airflow: clear the whole DAG run"):
        _call(refused)
    with pytest.raises(AirflowFailException, match=r"^bad row$"):
        _call(lambda: (_ for _ in ()).throw(BadInputError("bad row")))
