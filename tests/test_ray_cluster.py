"""A real two-node Ray cluster on this machine; a run submitted through the Ray Jobs API."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import EXAMPLE_CATALOG, REPO

VENV_BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_node(args: list[str], env: dict) -> subprocess.Popen:
    # --block keeps each node in its own process group, so the test stops exactly these
    # nodes (not the suite's local Ray, which `ray stop` would also kill).
    return subprocess.Popen([str(VENV_BIN / "ray"), "start", "--block", *args],
                            env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def _wait_for_jobs_api(address: str, timeout: float = 90) -> None:
    from ray.job_submission import JobSubmissionClient

    deadline = time.monotonic() + timeout
    while True:
        try:
            JobSubmissionClient(address).list_jobs()
            return
        except Exception:  # noqa: BLE001 - any failure means "not up yet" until the deadline
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


@pytest.fixture
def two_node_cluster(models_dir, monkeypatch):
    # Token authentication on, as on a real cluster: nodes and clients share the token.
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
    temp_dir = Path("/tmp") / f"rayc{os.getpid()}"  # Ray wants a short socket path
    gcs_port, dashboard_port = _free_port(), _free_port()
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    head = _start_node(["--head", f"--port={gcs_port}", f"--dashboard-port={dashboard_port}",
                        "--dashboard-host=127.0.0.1", "--num-cpus=1", "--include-dashboard=true",
                        f"--temp-dir={temp_dir}"], env)
    nodes = [head]
    try:
        address = f"http://127.0.0.1:{dashboard_port}"
        _wait_for_jobs_api(address)
        nodes.append(_start_node([f"--address=127.0.0.1:{gcs_port}", "--num-cpus=1"], env))
        deadline = time.monotonic() + 60
        while True:  # wait until the worker node has joined
            out = subprocess.run([str(VENV_BIN / "ray"), "status", f"--address=127.0.0.1:{gcs_port}"],
                                 capture_output=True, text=True, env=env)
            if out.stdout.count("node_") >= 2 or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert out.stdout.count("node_") >= 2, out.stdout + out.stderr
        yield {"address": address, "env": env}
    finally:
        for node in reversed(nodes):
            _stop(node)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _stop(node: subprocess.Popen) -> None:
    try:
        os.killpg(node.pid, signal.SIGTERM)
        node.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(node.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_run_submitted_through_the_jobs_api_to_a_two_node_cluster(two_node_cluster, tmp_path):
    catalog = tmp_path / "catalog.csv"
    catalog.write_text("".join(EXAMPLE_CATALOG.read_text().splitlines(keepends=True)[:3]))
    job = tmp_path / "job.yaml"
    # two actors of one CPU each: the generate pool spans both nodes
    job.write_text("markets: [en-US]\nvariants: 2\nshard_size: 2\ngeneration: {steps: 4}\n"
                   "resources:\n  generate: {num_cpus: 0.5, actors: 2, batch_size: 2}\n"
                   "  score: {num_cpus: 0.25}\n  encode: {num_cpus: 0.25}\n")
    out = tmp_path / "out"
    env = {**two_node_cluster["env"], "RAY_ADDRESS": two_node_cluster["address"]}
    result = subprocess.run(
        [str(VENV_BIN / "synthcat"), "run", "--manifest", str(catalog), "--config", str(job),
         "--out", str(out), "--run-date", "2026-11-26", "--run-id", "cluster-run", "--no-progress"],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[ray job synthcat-cluster-run-shard-00000-00001] submitted" in result.stderr
    table = pq.read_table(out / "catalog_images" / "data")
    assert table.num_rows == 4 and set(table.column("run_id").to_pylist()) == {"cluster-run"}

    from ray.job_submission import JobSubmissionClient

    jobs = JobSubmissionClient(two_node_cluster["address"]).list_jobs()
    assert [j.status.value for j in jobs if j.submission_id.startswith("synthcat-cluster-run")] == ["SUCCEEDED"]
