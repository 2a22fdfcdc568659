"""`synthcat run` SIGKILLed during generation, scoring and publishing, then resumed by its run id.

One chain of real processes: each is killed at a different point and the next one resumes
the same run. At every step the published dataset must still be whole (the earlier run of
the date, untouched); at the end it must hold exactly the rows of an undisturbed run.
"""

from __future__ import annotations

import json
import shutil

from pipeline.cli import main
from pipeline.publish import sha256_file
from reliability_support import (DATASET, clean_run, published_rows, run_args, run_killed,
                                 same_rows_as_clean, write_job)


def _shards(root) -> list[str]:
    return sorted(p.name for p in (root / "_staging" / "crash" / "shards").glob("shard-*.parquet"))


def test_killed_at_every_step_then_resumed_publishes_exactly_the_clean_rows(tmp_path_factory, capsys, monkeypatch):
    clean = clean_run(tmp_path_factory.getbasetemp())
    out = tmp_path_factory.mktemp("crash") / "out"
    shutil.copytree(clean.out, out)  # the date is already published once: a crash must not harm it
    root = out / DATASET
    args = run_args(clean.manifest, clean.config, out, "crash")

    def earlier_run_intact() -> None:
        rows = published_rows(root)
        assert set(rows.column("run_id").to_pylist()) == {"clean"}
        assert rows.column("item_id").to_pylist() == clean.item_ids
        assert not (root / "_runs" / "crash" / "manifest.json").exists()

    # 1. Killed in the middle of generation: the first shard is kept, nothing is published.
    killed = run_killed(args, "generate:2")
    assert killed.returncode == -9 and "SIGKILL at generate:2" in killed.stderr, killed.stderr[-2000:]
    assert len(_shards(root)) == 1
    earlier_run_intact()

    # Resuming with other inputs under the same run id is refused, never mixed: other items, or
    # settings the plan's rows leave out but the images depend on
    for other in ({"variants": 2}, {"engine": {"dtype": "float32"}}, {"campaign": {"background_strength": 0.3}}):
        _, other_config = write_job(tmp_path_factory.mktemp("other"), **other)
        assert main([other_config.as_posix() if a == str(clean.config) else a for a in args]) == 2, other
        assert "different manifest, config or model" in capsys.readouterr().err
    run_date = args[args.index("--run-date") + 1]  # or another date: the message says which changed
    assert main(["2099-01-01" if a == run_date else a for a in args]) == 2
    assert f"was started for run date {run_date}, not 2099-01-01" in capsys.readouterr().err

    # 2. Resumed, and killed while scoring the second shard: still one shard, nothing published.
    killed = run_killed(args, "score:1")
    assert killed.returncode == -9 and "SIGKILL at score:1" in killed.stderr, killed.stderr[-2000:]
    assert len(_shards(root)) == 1
    earlier_run_intact()

    # 3. Resumed, and killed in the middle of publishing: after the accepted rows' partition was
    #    swapped, before the rest and the commit record. Each partition is wholly one run's.
    killed = run_killed(args, "publish:1")
    assert killed.returncode == -9 and "SIGKILL at publish:1" in killed.stderr, killed.stderr[-2000:]
    assert len(_shards(root)) == 2
    visible = published_rows(root)
    assert len(set(visible.column("run_id").to_pylist())) == 1
    assert visible.column("item_id").to_pylist() == clean.item_ids
    assert not (root / "_runs" / "crash" / "manifest.json").exists()

    # 4. Resumed, and killed right after the commit record, before the staging folder went: the
    #    run is published, and its own resume finishes it (another run under its id: refused).
    killed = run_killed(args, "commit:1")
    assert killed.returncode == -9 and "SIGKILL at commit:1" in killed.stderr, killed.stderr[-2000:]
    assert (root / "_runs" / "crash" / "manifest.json").is_file() and (root / "_staging" / "crash").is_dir()
    report = (root / "_runs" / "crash" / "report.html").read_bytes()

    # 5. Resumed to the end (the dead process's publish lock died with it), the manifest's path
    #    spelt another way (the same file: relative, from its folder).
    monkeypatch.chdir(clean.manifest.parent)
    assert main([clean.manifest.name if a == str(clean.manifest) else a for a in args]) == 0
    assert "resumed shards 2" in capsys.readouterr().out
    assert (root / "_runs" / "crash" / "report.html").read_bytes() == report  # the published one, kept
    assert main(args) == 2 and "already published" in capsys.readouterr().err
    rows = published_rows(root)
    same_rows_as_clean(rows, clean)
    assert set(rows.column("run_id").to_pylist()) == {"crash"}
    manifest = json.loads((root / "_runs" / "crash" / "manifest.json").read_text())
    assert manifest["rows"]["accepted"] == 2
    for record in manifest["files"]:  # the commit record describes the files readers see
        assert sha256_file(root / record["path"]) == record["sha256"]
    assert not (root / "_staging" / "crash").exists()
