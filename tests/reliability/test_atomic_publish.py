"""Atomic publish: readers never see a partial run, a failed publish keeps the earlier data, and
two runs publishing into one dataset at once both succeed or one fails cleanly (the lock).

These need no model: small real tables in the published layout (tests/helpers.py).
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helpers import make_output_table
from pipeline import publish
from pipeline.errors import SynthcatError
from pipeline.publish import publish_run, read_published, stage_run
from pipeline.schema import REJECTED

D1 = "2026-11-26"
TESTS = Path(__file__).resolve().parents[1]


def rejected_rows(n: int, run_id: str, seed: int = 99) -> pa.Table:
    table = make_output_table(n, run_id=run_id, seed=seed)
    table = table.set_column(table.schema.get_field_index("gate_status"), "gate_status",
                             pa.array([REJECTED] * n, pa.string()))
    return table.set_column(table.schema.get_field_index("gate_reasons"), "gate_reasons",
                            pa.array([["clip_score_below_threshold"]] * n, pa.list_(pa.string())))


def publish_tables(root: Path, run_id: str, accepted: pa.Table, rejected: pa.Table, **kwargs) -> dict:
    staging = root / "_staging" / run_id
    stage_run(staging, accepted, rejected, run_id)
    return publish_run(root, staging, run_id, [D1], {}, **kwargs)


def item_ids(table: pa.Table) -> list[str]:
    return sorted(table["item_id"].to_pylist())


@pytest.mark.parametrize("failing_step", ["second swap", "manifest", "interrupt"])
def test_a_failure_mid_publish_leaves_the_published_data_as_it_was_and_can_be_retried(tmp_path, monkeypatch,
                                                                                       failing_step):
    old = make_output_table(6, run_id="run-a", seed=1)
    old_manifest = publish_tables(tmp_path, "run-a", old, rejected_rows(2, "run-a"))
    new = make_output_table(4, run_id="run-b", seed=2)
    staging = tmp_path / "_staging" / "run-b"
    stage_run(staging, new, make_output_table(0), "run-b")

    calls, swap = [], publish._swap_in

    def failing_swap(**kwargs):
        calls.append(kwargs)
        if len(calls) == 2:
            raise OSError("disk gone")
        return swap(**kwargs)

    def failing_write(path, value):
        raise KeyboardInterrupt if failing_step == "interrupt" else OSError("disk gone")

    if failing_step == "second swap":
        monkeypatch.setattr(publish, "_swap_in", failing_swap)
    else:
        monkeypatch.setattr(publish, "_write_json", failing_write)
    with pytest.raises(KeyboardInterrupt if failing_step == "interrupt" else OSError):
        publish_run(tmp_path, staging, "run-b", [D1], {})
    monkeypatch.undo()

    # Not committed, so every partition is swapped back: the published run whole, its files as listed.
    assert not (tmp_path / "_runs" / "run-b" / "manifest.json").exists()
    assert item_ids(read_published(tmp_path)) == item_ids(old)
    assert pq.read_table(tmp_path / "rejects").num_rows == 2
    for record in old_manifest["files"]:
        assert publish.sha256_file(tmp_path / record["path"]) == record["sha256"]

    # A retry with the same staging folder finishes the job.
    manifest = publish_run(tmp_path, staging, "run-b", [D1], {})
    assert item_ids(read_published(tmp_path)) == item_ids(new)
    assert not (tmp_path / "rejects" / f"run_date={D1}").exists()
    assert manifest["rows"] == {"accepted": 4, "rejected": 0}
    for record in manifest["files"]:
        assert publish.sha256_file(tmp_path / record["path"]) == record["sha256"]


def test_a_second_publisher_waits_for_the_lock_or_fails_cleanly(tmp_path):
    first = make_output_table(4, run_id="run-a", seed=1)
    publish_tables(tmp_path, "run-a", first, make_output_table(0))
    staging = tmp_path / "_staging" / "run-b"
    stage_run(staging, make_output_table(3, run_id="run-b", seed=5), make_output_table(0), "run-b")
    lock = open(tmp_path / "_runs" / ".publish.lock", "a+")
    fcntl.flock(lock, fcntl.LOCK_EX)  # another publisher holds the dataset
    with pytest.raises(SynthcatError, match="another run is publishing"):
        publish_run(tmp_path, staging, "run-b", [D1], {}, lock_timeout_s=0.5)
    assert item_ids(read_published(tmp_path, D1)) == item_ids(first)  # nothing changed
    threading.Timer(0.5, lambda: fcntl.flock(lock, fcntl.LOCK_UN)).start()
    manifest = publish_run(tmp_path, staging, "run-b", [D1], {}, lock_timeout_s=30)  # waits, then succeeds
    assert manifest["rows"]["accepted"] == 3 and read_published(tmp_path, D1).num_rows == 3
    lock.close()


# Two real processes: each stages its own run, waits for "go", then publishes the same date.
PUBLISHER = r"""
import sys, time, pathlib
sys.path.insert(0, sys.argv[1])
from helpers import make_output_table
from pipeline.errors import SynthcatError
from pipeline.publish import publish_run, stage_run
root, sync, run_id, seed, timeout = (pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3]), sys.argv[4],
                                     int(sys.argv[5]), float(sys.argv[6]))
staging = root / "_staging" / run_id
stage_run(staging, make_output_table(6, run_id=run_id, seed=seed), make_output_table(0), run_id)
(sync / run_id).touch()
while not (sync / "go").exists():
    time.sleep(0.005)
try:
    publish_run(root, staging, run_id, ["2026-11-26"], {}, lock_timeout_s=timeout)
except SynthcatError as exc:
    print(exc, file=sys.stderr)
    sys.exit(1)
"""


def _race(root: Path, sync: Path, runs: dict[str, int], timeout_s: float) -> dict[str, subprocess.Popen]:
    sync.mkdir()
    procs = {run: subprocess.Popen([sys.executable, "-c", PUBLISHER, str(TESTS), str(root), str(sync), run,
                                    str(seed), str(timeout_s)], stderr=subprocess.PIPE, text=True)
             for run, seed in runs.items()}
    deadline = time.monotonic() + 120
    while not all((sync / run).exists() for run in runs):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs.values()), \
            [p.stderr.read() for p in procs.values() if p.poll() is not None]
        time.sleep(0.02)
    (sync / "go").touch()
    for proc in procs.values():
        proc.wait(timeout=120)
    return procs


@pytest.mark.parametrize("timeout_s", [30.0, 0.0], ids=["waiting", "impatient"])
def test_two_processes_publishing_one_dataset_at_once(tmp_path, timeout_s):
    root = tmp_path / "dataset"
    earlier = make_output_table(5, run_id="run-a", seed=1)
    publish_tables(root, "run-a", earlier, make_output_table(0))
    runs = {"run-b": 2, "run-c": 3}
    procs = _race(root, tmp_path / "sync", runs, timeout_s)

    succeeded = [run for run, proc in procs.items() if proc.returncode == 0]
    for run, proc in procs.items():
        if proc.returncode != 0:  # only the clean refusal is allowed, and only without patience
            assert timeout_s == 0 and proc.returncode == 1, proc.stderr.read()
            assert "another run is publishing" in proc.stderr.read()
            assert not (root / "_runs" / run / "manifest.json").exists()
    assert succeeded and (len(succeeded) == 2 or timeout_s == 0)
    # The date holds exactly the rows of the run that committed last: whole, never mixed.
    manifests = {run: json.loads((root / "_runs" / run / "manifest.json").read_text()) for run in succeeded}
    last = max(succeeded, key=lambda run: manifests[run]["published_at"])
    visible = read_published(root, D1)
    assert set(visible["run_id"].to_pylist()) == {last}
    assert item_ids(visible) == item_ids(make_output_table(6, run_id=last, seed=runs[last]))
    for record in manifests[last]["files"]:
        assert publish.sha256_file(root / record["path"]) == record["sha256"]
    assert not list((root / "_runs").glob("*/.manifest.json.tmp*"))


def test_a_reader_during_publishes_sees_one_whole_run_or_retries(tmp_path):
    """A reader polling the dataset while runs replace the date sees one run's rows, never a mix."""
    root = tmp_path / "dataset"
    tables = {f"run-{i}": make_output_table(40, run_id=f"run-{i}", seed=i) for i in range(6)}
    publish_tables(root, "run-0", tables["run-0"], make_output_table(0))
    allowed = {tuple(item_ids(t)) for t in tables.values()}
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    if not publish._exchange(tmp_path / "a", tmp_path / "b"):  # rename-aside: briefly no rows, never a mix
        allowed.add(())
    seen, retries, stop = [], [], threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                table = pq.read_table(root / "data", columns=["item_id", "run_id"])
            except (OSError, pa.ArrowInvalid):  # a file listed just before its partition was swapped out
                retries.append(1)
                continue
            seen.append((tuple(item_ids(table)), frozenset(table["run_id"].to_pylist())))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for run in list(tables)[1:]:
            publish_tables(root, run, tables[run], make_output_table(0))
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(timeout=60)
    assert seen, "the reader never got a result"
    for ids, run_ids in seen:
        assert ids in allowed and len(run_ids) == 1, "a reader saw a mix of two runs"
    assert item_ids(read_published(root)) == item_ids(tables["run-5"])


KILL_AT = {  # the child process kills itself right after this step of a partition's swap
    "after the exchange": "real = publish._exchange\n"
                          "def step(a, b):\n    done = real(a, b)\n    os.kill(os.getpid(), signal.SIGKILL)\n"
                          "publish._exchange = step\n",
    "between the two renames": "publish._exchange = lambda a, b: False\nreal = os.rename\n"
                               "def step(a, b):\n    real(a, b)\n    os.kill(os.getpid(), signal.SIGKILL)\n"
                               "os.rename = step\n",
}


@pytest.mark.parametrize("point", KILL_AT)
def test_a_publish_killed_mid_swap_then_retried_publishes_exactly_the_new_run(tmp_path, point):
    """A retry after a kill at any step of the swap ends with the new run's files, and only them,
    in place; the retry does not swap back what the killed try had already swapped in."""
    old = make_output_table(6, run_id="run-a", seed=1)
    publish_tables(tmp_path, "run-a", old, rejected_rows(2, "run-a"))
    new = make_output_table(4, run_id="run-b", seed=2)
    staging = tmp_path / "_staging" / "run-b"
    stage_run(staging, new, make_output_table(0), "run-b")
    child = (f"import os, signal, sys\nsys.path[:0] = [{str(TESTS)!r}, {str(TESTS.parent)!r}]\n"
             "from pathlib import Path\nfrom pipeline import publish\n" + KILL_AT[point] +
             f"publish.publish_run(Path({str(tmp_path)!r}), Path({str(staging)!r}), 'run-b', [{D1!r}], {{}})\n")
    assert subprocess.run([sys.executable, "-c", child], timeout=120).returncode == -9

    manifest = publish_run(tmp_path, staging, "run-b", [D1], {})
    assert item_ids(read_published(tmp_path)) == item_ids(new) and manifest["rows"]["accepted"] == 4
    assert not list(tmp_path.rglob("part-run-a-*.parquet"))  # the old run's files: gone, not swapped back
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.parquet")) == \
        sorted(record["path"] for record in manifest["files"])


def test_a_run_id_that_begins_another_runs_id_still_replaces_its_date(tmp_path):
    """Run `nightly` after `nightly-a` on the same date: the date's rejects, which only the first
    had, go; `nightly-a`'s files are not taken for `nightly`'s."""
    publish_tables(tmp_path, "nightly-a", make_output_table(3, run_id="nightly-a", seed=1),
                   rejected_rows(2, "nightly-a"))
    manifest = publish_tables(tmp_path, "nightly", make_output_table(0), rejected_rows(1, "nightly", seed=5))
    assert read_published(tmp_path).num_rows == 0 and not (tmp_path / "data").joinpath(f"run_date={D1}").exists()
    rejects = pq.read_table(tmp_path / "rejects")
    assert set(rejects["run_id"].to_pylist()) == {"nightly"} and manifest["rows"] == {"accepted": 0, "rejected": 1}


def test_a_resumed_publish_that_stages_fewer_partitions_removes_the_earlier_attempts(tmp_path, monkeypatch):
    """Attempt 1 swaps in accepted rows and rejects, then dies before its manifest; the resumed
    attempt re-gates to no rejects and stages again: the rejects attempt 1 swapped in go."""
    staging = tmp_path / "_staging" / "run-b"
    stage_run(staging, make_output_table(4, run_id="run-b", seed=2), rejected_rows(2, "run-b"), "run-b")
    monkeypatch.setattr(publish, "_write_json", lambda path, value: (_ for _ in ()).throw(OSError("killed")))
    monkeypatch.setattr(publish, "_swap_back_all", lambda swaps, cause: None)  # killed: nothing is swapped back
    with pytest.raises(OSError):
        publish_run(tmp_path, staging, "run-b", [D1], {})
    monkeypatch.undo()
    assert pq.read_table(tmp_path / "rejects").num_rows == 2  # attempt 1's rejects are live

    stage_run(staging, make_output_table(4, run_id="run-b", seed=2), make_output_table(0), "run-b")
    manifest = publish_run(tmp_path, staging, "run-b", [D1], {})
    assert not (tmp_path / "rejects" / f"run_date={D1}").exists() and manifest["rows"]["rejected"] == 0
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.parquet")) == \
        sorted(record["path"] for record in manifest["files"])


class _Killed(BaseException):
    """A SIGKILL, as far as the code can tell: it ends the call, and nothing is swapped back."""


@pytest.mark.parametrize("fails_at", ["manifest", "first swap"])  # where the resumed publish fails
@pytest.mark.parametrize("restaged", ["same bytes", "other bytes"])  # e.g. a newer pyarrow writes the files
@pytest.mark.parametrize("exchange, kill_at", [
    *((True, point) for point in ("rename:1", "rename:2", "manifest")),  # data: aside + exchange; rejects: aside
    *((False, point) for point in ("rename:1", "rename:2", "rename:3", "rename:4", "rename:5", "manifest")),
])
def test_a_killed_publish_resumed_restaged_and_failing_again_leaves_the_published_data(tmp_path, monkeypatch,
                                                                                       exchange, kill_at, restaged,
                                                                                       fails_at):
    """A resumed run stages its files again (`stage_run` clears the staged partitions) before it
    publishes: if that publish fails too, the previous data must come back all the same."""
    if not exchange:
        monkeypatch.setattr(publish, "_exchange", lambda a, b: False)
    old_manifest = publish_tables(tmp_path, "run-a", make_output_table(6, run_id="run-a", seed=1),
                                  rejected_rows(2, "run-a"))
    new = make_output_table(4, run_id="run-b", seed=2)
    staging = tmp_path / "_staging" / "run-b"
    stage_run(staging, new, make_output_table(0), "run-b")

    renames, rename = [], os.rename

    def rename_then_die(a, b):
        rename(a, b)
        renames.append(b)
        if kill_at == f"rename:{len(renames)}":
            raise _Killed

    def die(path, value):
        raise _Killed

    with monkeypatch.context() as killed:
        killed.setattr(publish, "_swap_back_all", lambda swaps, cause: None)
        killed.setattr(os, "rename", rename_then_die)
        if kill_at == "manifest":
            killed.setattr(publish, "_write_json", die)
        with pytest.raises(_Killed):
            publish_run(tmp_path, staging, "run-b", [D1], {})

    if restaged == "other bytes":
        new = make_output_table(4, run_id="run-b", seed=3)
    stage_run(staging, new, make_output_table(0), "run-b")  # the resumed run stages again
    def disk_full(*args, **kwargs):
        raise OSError(28, "disk full")

    with monkeypatch.context() as full:
        if fails_at == "manifest":
            full.setattr(publish, "_write_json", disk_full)
        else:  # before it reaches the partitions the killed attempt swapped: they are put back all the same
            full.setattr(publish, "_swap_in", disk_full)
        with pytest.raises(OSError, match="disk full"):
            publish_run(tmp_path, staging, "run-b", [D1], {})
    live = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.glob("[dr]*/**/*.parquet"))
    assert live == sorted(record["path"] for record in old_manifest["files"])  # run-a's files, and no others
    for record in old_manifest["files"]:
        assert publish.sha256_file(tmp_path / record["path"]) == record["sha256"]

    manifest = publish_run(tmp_path, staging, "run-b", [D1], {})  # space again: it commits
    assert item_ids(read_published(tmp_path)) == item_ids(new) and manifest["rows"]["rejected"] == 0
    assert not (tmp_path / "rejects").exists()
