"""Ray Jobs API: run a prepared run's shards on a Ray cluster and follow the job to its end.

The submission id is deterministic (run id, staging folder and plan, shard range), so a retried
Airflow task finds its earlier job: a finished one is not run again, a running one is followed,
and a failed one is resubmitted under the next numbered id (`...-r2`, `...-r3`).
"""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

from pipeline.executor import HF_OFFLINE_ENV

_DONE = {"SUCCEEDED", "FAILED", "STOPPED"}


def submission_base(run_id: str, shards: list[str], staging: Path, plan_sha256: str) -> str:
    """`synthcat-<run_id>-<run>-<shards>`: <run> (8 hex digits) stands for the staging folder and the
    plan, so two datasets' runs under one run id, or a run id used again after its staging was
    removed, never follow each other's jobs; a retried task of the same run finds its own."""
    import hashlib

    span = shards[0] if len(shards) == 1 else f"{shards[0]}-{shards[-1].removeprefix('shard-')}"
    run = hashlib.sha256(f"{Path(staging).resolve()}|{plan_sha256}".encode()).hexdigest()[:8]
    return f"synthcat-{run_id}-{run}-{span}"


def _pick_submission(client, base: str) -> tuple[str, bool]:
    """(submission id, already submitted?) — reuse a live or finished job, else the next free id."""
    for attempt in range(1, 100):
        candidate = base if attempt == 1 else f"{base}-r{attempt}"
        try:
            status = str(client.get_job_status(candidate).value)
        except RuntimeError as exc:  # the client's answer for "no such job" (HTTP 404), and for any failure
            if "does not exist" in str(exc) or "status code 404" in str(exc):
                return candidate, False
            raise  # a head that fails to answer (HTTP 500) must not get the same job submitted twice
        if status in ("FAILED", "STOPPED"):
            continue
        return candidate, True
    raise RuntimeError(f"Ray job {base}: 99 failed attempts, giving up")


def _submit_when_ready(client, *, wait_s: float = 120.0, **job) -> None:
    """Submit, waiting out a cluster whose job agents are still starting (HTTP 500, "No available
    agent"): a freshly started or autoscaled head answers that for a while."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            client.submit_job(**job)
            return
        except RuntimeError as exc:
            if "No available agent" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(2)


def submit_shards(address: str, staging: Path, shards: list[str], state: dict, *,
                  poll_s: float = 2.0, timeout_s: float | None = None, out=sys.stderr) -> str:
    """Submit `synthcat shards` for these shards to the cluster at `address`; stream its logs.

    Returns the submission id; raises RuntimeError when the job fails or is stopped.
    """
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(address)
    submission_id, existing = _pick_submission(client, submission_base(state["run_id"], shards, staging,
                                                                            state["plan_sha256"]))
    if not existing:
        entrypoint = (f"python -m pipeline.cli shards {shlex.quote(str(staging))} "
                      f"--shards {','.join(shards)}")
        _submit_when_ready(client, entrypoint=entrypoint, submission_id=submission_id,
                           runtime_env={"env_vars": HF_OFFLINE_ENV},
                           metadata={"synthcat_run_id": state["run_id"], "dataset": state["dataset"]})
    print(f"[ray job {submission_id}] {'following' if existing else 'submitted'} at {address}", file=out)
    printed, started = 0, time.monotonic()
    while True:
        status = str(client.get_job_status(submission_id).value)
        logs = client.get_job_logs(submission_id)
        for line in logs[printed:].splitlines():
            print(f"[ray job {submission_id}] {line}", file=out)
        printed = len(logs)
        if status in _DONE:
            break
        if timeout_s is not None and time.monotonic() - started > timeout_s:
            client.stop_job(submission_id)
            raise RuntimeError(f"Ray job {submission_id} timed out after {timeout_s:.0f} s and was stopped")
        time.sleep(poll_s)
    if status != "SUCCEEDED":
        message = client.get_job_info(submission_id).message
        raise RuntimeError(f"Ray job {submission_id} {status.lower()}: {message}")
    return submission_id
