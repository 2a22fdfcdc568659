"""A real two-node Ray cluster on this machine; a run submitted through the Ray Jobs API."""

from __future__ import annotations

import json
import os
import re
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


def _own_ports() -> list[str]:
    """Every fixed-default port of a node, freshly picked: the suite's local Ray (and the other
    node) already hold the defaults, and a head whose agent cannot bind accepts no jobs."""
    names = ["dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port",
             "runtime-env-agent-port", "node-manager-port", "object-manager-port"]
    return [f"--{name}={_free_port()}" for name in names]


def _start_node(args: list[str], env: dict) -> subprocess.Popen:
    # --block keeps each node in its own process group, so the test stops exactly these
    # nodes (not the suite's local Ray, which `ray stop` would also kill).
    return subprocess.Popen([str(VENV_BIN / "ray"), "start", "--block", *args],
                            env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def _list_jobs(address: str, env: dict) -> list[tuple[str, str]] | None:
    """(submission id, status) of the cluster's jobs, or None while the Jobs API is not up.

    Asked from a fresh process: a Ray client caches the auth token of the first cluster it
    met, and this test process has already met the suite's local Ray.
    """
    code = ("import json, sys; from ray.job_submission import JobSubmissionClient as C; "
            "print(json.dumps([(j.submission_id, j.status.value) for j in C(sys.argv[1]).list_jobs()]))")
    result = subprocess.run([sys.executable, "-c", code, address], capture_output=True, text=True, env=env,
                            timeout=60)
    return [tuple(j) for j in json.loads(result.stdout)] if result.returncode == 0 else None


def _wait_for_jobs_api(address: str, env: dict, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while _list_jobs(address, env) is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the Ray Jobs API at {address} did not come up in {timeout:.0f} s")
        time.sleep(1)


def _wait_for_second_node(gcs_port: int, env: dict, worker: subprocess.Popen,
                          timeout: float = 90) -> tuple[bool, str]:
    """(joined, `ray status` output) once the cluster has two nodes, the worker exited, or time ran out."""
    deadline = time.monotonic() + timeout
    while True:
        out = subprocess.run([str(VENV_BIN / "ray"), "status", f"--address=127.0.0.1:{gcs_port}"],
                             capture_output=True, text=True, env=env)
        if out.stdout.count("node_") >= 2:
            return True, out.stdout
        if worker.poll() is not None or time.monotonic() > deadline:
            return False, out.stdout + out.stderr
        time.sleep(1)


@pytest.fixture
def two_node_cluster(models_dir, monkeypatch):
    # Token authentication on, as on a real cluster: nodes and clients share the token.
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
    temp_dir = Path("/tmp") / f"rayc{os.getpid()}"  # Ray wants a short socket path
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    nodes: list[subprocess.Popen] = []
    try:
        # Ports are picked free, then bound by the nodes: another process (the suite's local Ray
        # starting workers) can take one in between, and a node that cannot bind it dies. So a
        # cluster that does not come up whole is started again, from a new head, once.
        for _ in range(2):
            gcs_port, dashboard_port = _free_port(), _free_port()
            head = _start_node(["--head", f"--port={gcs_port}", f"--dashboard-port={dashboard_port}",
                                "--dashboard-host=127.0.0.1", "--num-cpus=1", "--include-dashboard=true",
                                f"--temp-dir={temp_dir}", f"--ray-client-server-port={_free_port()}",
                                *_own_ports()], env)
            nodes.append(head)
            address = f"http://127.0.0.1:{dashboard_port}"
            _wait_for_jobs_api(address, env)
            worker = _start_node([f"--address=127.0.0.1:{gcs_port}", "--num-cpus=1", *_own_ports()], env)
            nodes.append(worker)
            joined, status = _wait_for_second_node(gcs_port, env, worker)
            if joined:
                break
            while nodes:
                _stop(nodes.pop())
        assert joined, f"the worker node never joined (exit code {worker.poll()}):\n{status}\n{_head_logs(temp_dir)}"
        yield {"address": address, "env": env}
    finally:
        for node in reversed(nodes):
            _stop(node)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _head_logs(temp_dir: Path, lines: int = 20) -> str:
    """The last lines of the head's GCS and raylet logs: the temp folder goes with the fixture."""
    tails = []
    for name in ("gcs_server.out", "raylet.out"):
        for path in sorted(temp_dir.glob(f"session_*/logs/{name}")):
            text = path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
            tails.append(f"--- {path.relative_to(temp_dir)}\n" + "\n".join(text))
    return "\n".join(tails)


def _stop(node: subprocess.Popen) -> None:
    try:
        os.killpg(node.pid, signal.SIGTERM)
        node.wait(timeout=10)
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
    # (attempts: 2, one retry round at most: each round is a Ray job, about 40 s here)
    job.write_text("markets: [en-US]\nvariants: 2\nshard_size: 2\ngeneration: {steps: 4}\ngates: {max_attempts: 2}\n"
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
    first = re.search(r"\[ray job (synthcat-cluster-run-[0-9a-f]{8}-shard-00000-00001)\] submitted", result.stderr)
    assert first, result.stderr
    root = out / "catalog_images"
    tables = [pq.read_table(root / kind, columns=["item_id", "run_id"]) for kind in ("data", "rejects")
              if (root / kind).exists()]
    items = [i for t in tables for i in t.column("item_id").to_pylist()]
    assert len(items) == len(set(items)) == 4  # every item once, accepted or rejected
    assert {r for t in tables for r in t.column("run_id").to_pylist()} == {"cluster-run"}

    # the first attempt's shards in one job; items the gates send back for their next seed
    # (a retry round) in further jobs of the same run
    jobs = dict(_list_jobs(two_node_cluster["address"], env))
    ours = {job_id: status for job_id, status in jobs.items() if job_id.startswith("synthcat-cluster-run-")}
    assert ours[first.group(1)] == "SUCCEEDED"
    assert set(ours.values()) == {"SUCCEEDED"}
