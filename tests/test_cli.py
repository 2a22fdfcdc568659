"""CLI contracts: exit codes and one-line messages for bad input, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import EXAMPLE_CATALOG, EXAMPLE_JOB
from pipeline.cli import main


def _run(capsys, *args: str) -> tuple[int, str, str]:
    try:
        code = main(list(args))
    except SystemExit as exc:  # argparse usage errors
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_validate_accepts_the_example_catalog(capsys):
    code, out, _ = _run(capsys, "validate", str(EXAMPLE_CATALOG), "--config", str(EXAMPLE_JOB))
    assert code == 0 and "all good" in out


def test_validate_lists_every_bad_row(tmp_path, capsys):
    manifest = tmp_path / "bad.csv"
    manifest.write_text("sku,title,category,markets,attributes\n"
                        "A,Mug,mug,en-US,\n"
                        ",No sku,mug,,\n"
                        "B,Tee,t-shirt,xx-QQ,\n"
                        "C,Lamp,lamp,,{not json\n"
                        " A ,Again,mug,,\n")
    code, _, err = _run(capsys, "validate", str(manifest))
    assert code == 2
    assert "line 3, field 'sku'" in err
    assert "line 4, field 'markets'" in err and "xx-QQ" in err
    assert "line 5, field 'attributes'" in err
    assert "line 6, field 'sku'" in err and "line 2" in err
    assert "4 of 5 rows are bad" in err
    assert "Traceback" not in err


def test_validate_never_writes_its_rejects_over_an_input_or_into_nowhere(tmp_path, capsys):
    manifest = tmp_path / "bad.csv"
    manifest.write_text(text := "sku,title,category\nA,,mug\n")
    for target, says in ((manifest, "is an input of this command"), (tmp_path / "no" / "r.csv", "existing folder"),
                         (tmp_path, "existing folder")):
        code, _, err = _run(capsys, "validate", str(manifest), "--rejects-csv", str(target))
        assert code == 2 and says in err and "Traceback" not in err
    assert manifest.read_text() == text and list(tmp_path.iterdir()) == [manifest]
    code, _, _ = _run(capsys, "validate", str(manifest), "--rejects-csv", str(tmp_path / "r.csv"))
    assert code == 2 and "\"2\",\"A\",\"title\"" in (tmp_path / "r.csv").read_text(encoding="utf-8-sig")


def test_run_refuses_an_out_that_is_a_file(tmp_path, capsys):
    (out := tmp_path / "out").write_text("not a folder")
    code, _, err = _run(capsys, "run", "--manifest", str(EXAMPLE_CATALOG), "--out", str(out))
    assert code == 2 and "is a file, not a folder" in err and "Traceback" not in err


@pytest.mark.parametrize("content, expected", [
    (None, "manifest not found"),
    ("title,category\nMug,mug\n", "sku"),
    ("sku,title,category\n", "no data rows"),
])
def test_run_refuses_bad_files_with_exit_2_before_any_work(tmp_path, capsys, content, expected):
    manifest = tmp_path / "catalog.csv"
    if content is not None:
        manifest.write_text(content)
    out = tmp_path / "out"
    code, _, err = _run(capsys, "run", "--manifest", str(manifest), "--out", str(out))
    assert code == 2
    assert expected in err and "Traceback" not in err
    assert not out.exists()


def test_run_refuses_a_manifest_over_the_bad_row_limit(tmp_path, capsys):
    manifest = tmp_path / "catalog.csv"
    manifest.write_text("sku,title,category\nA,Mug,mug\nB,,mug\nC,,lamp\n")
    code, _, err = _run(capsys, "run", "--manifest", str(manifest), "--out", str(tmp_path / "out"))
    assert code == 2 and "over the job's limit max_bad_row_share" in err
    assert not (tmp_path / "out").exists()


def test_bad_config_names_the_key_and_allowed_values(tmp_path, capsys):
    config = tmp_path / "job.yaml"
    config.write_text(json.dumps({"kinds": ["poster"], "image_format": "gif", "colour": 1, "list_separator": "",
                                  "campaign": {"canvas": 128}}))
    code, _, err = _run(capsys, "run", "--manifest", str(EXAMPLE_CATALOG), "--config", str(config))
    assert code == 2
    assert "key 'kinds.0'" in err and "'campaign'" in err
    assert "key 'image_format'" in err and "'png' or 'webp'" in err
    assert "key 'colour': unknown key" in err
    assert "key 'list_separator'" in err  # "" would split every markets cell at every character
    assert "key 'campaign.canvas'" in err and "256" in err  # no copy fits a smaller creative
    config.write_text(json.dumps({"gates": {"foo": 1}, "campaign": {"brands": {"Acme": {"bogus": 1}}}}))
    code, _, err = _run(capsys, "validate", str(EXAMPLE_CATALOG), "--config", str(config))
    assert code == 2 and "key 'gates.foo': unknown key; allowed keys of gates: min_clip_score," in err
    assert "key 'campaign.brands.Acme.bogus': unknown key; allowed keys of campaign.brands.Acme: adapters," in err


@pytest.mark.parametrize("key, config", [
    ("generation.prompt_template", {"generation": {"prompt_template": "{title:{bogus}}"}}),  # a nested field
    ("generation.prompt_template", {"generation": {"prompt_template": "{title:d}"}}),  # a number's format
    ("training", {"kinds": ["training"], "training": {"templates": ["a {label!z} photo"]}}),  # a conversion
])
def test_a_template_that_text_cannot_fill_is_refused_when_the_config_loads(tmp_path, capsys, key, config):
    (path := tmp_path / "job.yaml").write_text(json.dumps(config))
    code, _, err = _run(capsys, "validate", str(EXAMPLE_CATALOG), "--config", str(path))
    assert code == 2 and f"key '{key}'" in err and "cannot be filled in" in err and "Traceback" not in err


def test_bad_market_in_config_and_unknown_model(tmp_path, capsys):
    config = tmp_path / "job.yaml"
    config.write_text("markets: [en-US, zz-ZZ]\n")
    code, _, err = _run(capsys, "validate", str(EXAMPLE_CATALOG), "--config", str(config))
    assert code == 2 and "key 'markets'" in err and "zz-ZZ" in err
    config.write_text("model: sd99\n")
    code, _, err = _run(capsys, "run", "--manifest", str(EXAMPLE_CATALOG), "--config", str(config),
                        "--out", str(tmp_path / "out"))
    assert code == 2 and "unknown model preset 'sd99'" in err


def test_usage_errors_exit_2(capsys):
    code, _, err = _run(capsys, "run", "--manifest", "x.csv", "--run-date", "26/11/2026")
    assert code == 2 and "not a date" in err
    code, _, _ = _run(capsys, "frobnicate")
    assert code == 2
    code, _, err = _run(capsys, "run", "--manifest", "x.csv", "--run-id", "nightly\n")  # it names a folder
    assert code == 2 and "use letters, digits" in err


def test_models_lists_presets_as_json(capsys, models_dir):
    code, out, _ = _run(capsys, "models", "--json")
    presets = {p["name"]: p for p in json.loads(out)}
    assert code == 0 and {"tiny", "sd15", "sd-turbo", "sdxl"} <= set(presets)
    assert presets["tiny"]["available"] and Path(presets["tiny"]["path"]).is_dir()
    assert Path(presets["tiny"]["clip_path"], "open_clip_config.json").is_file()


def test_console_script_help_runs_in_a_fresh_process():
    result = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", "--help"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "--run-id" in result.stdout


def test_a_run_that_plans_no_items_is_refused_before_any_work(tmp_path, capsys):
    config = tmp_path / "job.yaml"
    config.write_text("kinds: [training]\ntraining: {class_quotas: {mug: 0}}\n", encoding="utf-8")
    out = tmp_path / "out"
    code, _, err = _run(capsys, "run", "--manifest", str(EXAMPLE_CATALOG), "--config", str(config),
                        "--out", str(out), "--skus", "MUG-001")
    assert code == 2 and "plans no items" in err and "Traceback" not in err
    assert not (out / "catalog_images" / "_staging").exists()


def test_outputs_that_cannot_be_written_are_refused_before_the_work(tmp_path, capsys):
    code, _, err = _run(capsys, "run", "--manifest", str(EXAMPLE_CATALOG), "--out", "/proc/synthcat-out",
                        "--skus", "MUG-001")
    assert code == 2 and "--out /proc/synthcat-out: cannot create" in err and "Traceback" not in err
    for args in (["bench", "index", "--sizes", "100", "--json", str(tmp_path / "no" / "x.json")],
                 ["eval", "memorization", "--json", str(tmp_path)],  # a folder
                 ["eval", "memorization", "--calibration", "0"],
                 ["models", "train", "--resume", str(tmp_path / "none")]):
        code, _, err = _run(capsys, *args)
        assert code == 2 and any(s in err for s in ("existing folder", "at least 2", "not a folder")), (args, err)


def test_ray_job_ids_stand_for_the_run_not_only_its_id(tmp_path):
    import re

    from pipeline.jobs import submission_base

    shards = ["shard-00000", "shard-00003"]
    brand_a = submission_base("nightly-1", shards, tmp_path / "brand_a" / "_staging" / "nightly-1", "plan-1")
    assert re.fullmatch(r"synthcat-nightly-1-[0-9a-f]{8}-shard-00000-00003", brand_a)
    assert brand_a == submission_base("nightly-1", shards, tmp_path / "brand_a" / "_staging" / "nightly-1", "plan-1")
    assert brand_a != submission_base("nightly-1", shards, tmp_path / "brand_b" / "_staging" / "nightly-1", "plan-1")
    assert brand_a != submission_base("nightly-1", shards, tmp_path / "brand_a" / "_staging" / "nightly-1", "plan-2")


def test_a_ray_head_that_fails_to_answer_is_not_taken_for_no_such_job():
    from pipeline.jobs import _pick_submission

    class Head:
        def __init__(self, answers: dict):
            self.answers = answers

        def get_job_status(self, job_id):
            answer = self.answers.get(job_id, RuntimeError(f"Request failed with status code 404: Job {job_id} "
                                                           "does not exist."))
            if isinstance(answer, Exception):
                raise answer
            return type("Status", (), {"value": answer})

    assert _pick_submission(Head({}), "synthcat-r") == ("synthcat-r", False)
    assert _pick_submission(Head({"synthcat-r": "RUNNING"}), "synthcat-r") == ("synthcat-r", True)
    assert _pick_submission(Head({"synthcat-r": "FAILED"}), "synthcat-r") == ("synthcat-r-r2", False)
    with pytest.raises(RuntimeError, match="status code 500"):
        _pick_submission(Head({"synthcat-r": RuntimeError("Request failed with status code 500: busy.")}), "synthcat-r")


def test_skus_that_name_no_sku_are_refused(capsys):
    code, _, err = _run(capsys, "run", "--manifest", str(EXAMPLE_CATALOG), "--skus", " , ")
    assert code == 2 and "--skus" in err


@pytest.mark.parametrize("args", [["bench", "--items", "0"], ["bench", "--naive-items", "-1"],
                                  ["bench", "index", "--sizes", "5", "--queries", "0"],
                                  ["bench", "index", "--sizes", "5", "--exact-queries", "0"]])
def test_bench_counts_below_one_are_usage_errors_before_any_work(args, capsys):
    code, _, err = _run(capsys, *args)
    assert code == 2 and "at least 1" in err


@pytest.mark.parametrize("stop", ["interrupt", "full disk after the commit"])
def test_a_run_stopped_early_says_what_it_published_and_how_to_resume(tmp_path, capsys, monkeypatch, stop):
    import errno

    import pipeline.run

    out = tmp_path / "out"

    def stopped(request):
        if stop == "interrupt":
            raise KeyboardInterrupt
        (request.dataset_root / "_runs" / request.run_id).mkdir(parents=True)
        (request.dataset_root / "_runs" / request.run_id / "manifest.json").write_text("{}")  # committed
        raise OSError(errno.ENOSPC, "No space left on device", str(request.dataset_root / "README.md"))

    monkeypatch.setattr(pipeline.run, "run_job", stopped)
    code, _, err = _run(capsys, "run", "--manifest", str(EXAMPLE_CATALOG), "--out", str(out))
    run_id = next(word for word in err.split() if word.startswith("run-"))  # the id it made up
    assert f"resume with --run-id {run_id}" in err and "Traceback" not in err
    if stop == "interrupt":
        assert code == 130 and "nothing was published" in err
    else:
        assert code == 1 and f"run {run_id} is published" in err and "nothing was published" not in err


def test_a_models_folder_without_the_embedded_preset_is_refused_not_retrained(tmp_path, capsys, monkeypatch):
    import pipeline.models.train

    monkeypatch.setattr(pipeline.models.train, "train_all", lambda home: pytest.fail("retrained the tiny models"))
    monkeypatch.setenv("SYNTHCAT_MODELS_DIR", str(tmp_path / "modelz"))  # a typo
    code, _, err = _run(capsys, "run", "--manifest", str(EXAMPLE_CATALOG), "--out", str(tmp_path / "out"),
                        "--skus", "MUG-001")
    assert code == 2 and f"no tiny preset in {tmp_path / 'modelz' / 'tiny'}" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "catalog_images" / "_runs").exists()


def test_bad_arguments_of_every_subcommand_exit_2_naming_them(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (not_a_folder := tmp_path / "index.png").write_bytes(b"x")
    pq.write_table(pa.table({"image": [1, 2]}), ints := tmp_path / "refs.parquet")
    (run_dir := tmp_path / "_runs" / "r").mkdir(parents=True)
    (run_dir / "manifest.json").write_text(json.dumps({k: "x" for k in ("run_id", "run_date", "files", "items", "rows",
                                                                         "reasons", "input", "validation")}))
    for args, says in ((["bench", "--gpus", "-1"], "at least 0"),
                       (["bench", "--gpus", "64", "--items", "1"], "CUDA GPUs"),  # more than any machine here has
                       (["eval", "memorization", "--steps", "0"], "at least 1"),
                       (["index", "build", str(tmp_path), "--out", str(not_a_folder)], "not a folder"),
                       (["index", "build", str(ints), "--out", str(tmp_path / "idx")], "of type int64"),
                       (["models", "eval", "--models", str(tmp_path / "none")], "no diffusion/ or clip/ folder"),
                       (["report", str(run_dir)], "not a list of file records")):
        code, _, err = _run(capsys, *args)
        assert code == 2 and says in err and "Traceback" not in err, (args, err)


def test_skus_of_refused_rows_are_named_with_the_reason(tmp_path, capsys):
    manifest = tmp_path / "catalog.csv"
    rows = "".join(f"S{i},Mug {i},mug,5\n" for i in range(9))  # one bad row in ten: under the job's limit
    manifest.write_text(f"sku,title,category,price\n{rows}C,Cup,mug,abc\n", encoding="utf-8")
    code, _, err = _run(capsys, "run", "--manifest", str(manifest), "--out", str(tmp_path / "out"), "--skus", "C,Z")
    assert code == 2 and "skus not among its good rows: C, Z" in err
    assert "refused: " in err and "line 11, field 'price'" in err and "Traceback" not in err


def test_a_ray_address_nothing_answers_at_fails_at_once_with_a_message(capsys):
    import socket

    from pipeline.errors import BadInputError, SynthcatError
    from pipeline.executor import _check_reachable

    with socket.socket() as free:  # a port nothing listens on
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    for address in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}", f"http://127.0.0.1:{port}"):
        with pytest.raises(SynthcatError, match=f"nothing answers at 127.0.0.1:{port}") as error:
            _check_reachable(address, timeout_s=2)
        assert error.value.exit_code == 1  # a cluster that is down may be up for a retry: not bad input
    with pytest.raises(BadInputError, match="not host:port"):
        _check_reachable("127.0.0.1:ten")
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        _check_reachable(f"127.0.0.1:{listening.getsockname()[1]}")  # something answers: Ray's turn
    _check_reachable("auto")
