"""The one entry module the Airflow DAGs call: plain dicts in, plain dicts out (XCom-sized).

A *spec* is everything a task needs to rebuild the run: absolute paths, run id and date,
overrides. Every task function is one call into a step of `pipeline.steps`; this module never imports
Airflow, and the DAG files only wire these functions together. It is an edge like the CLI,
so it may read the environment (RAY_ADDRESS, SYNTHCAT_MODELS_DIR).
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from pathlib import Path

import yaml

from pipeline.config import JobConfig, anchored, parse_job_config
from pipeline.errors import BadInputError

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SETTINGS = REPO / "dags" / "synthcat.yaml"
OVERRIDES = ("markets", "kinds", "variants", "model")


def load_settings(path: str | Path | None = None) -> dict:
    """The DAGs' settings file (manifest, config, out, schedule, ...); relative paths are
    resolved against the file's folder's parent (the project root), `out` and `reference_images`
    (data) against SYNTHCAT_DATA_DIR when that is set."""
    path = Path(path or os.environ.get("SYNTHCAT_DAGS_SETTINGS") or DEFAULT_SETTINGS)
    settings = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    base = path.resolve().parent.parent
    for key in ("manifest", "config", "out", "reference_images"):
        if settings.get(key):
            data = key in ("out", "reference_images")
            settings[key] = str(((_out_base(base) if data else base) / settings[key]).resolve())
    return settings


def dataset_uri(settings: dict) -> str:
    """The Asset URI of the dataset the settings' job publishes (`file:///<out>/<dataset>`)."""
    data = yaml.safe_load(Path(settings["config"]).read_text(encoding="utf-8")) or {}
    dataset = data.get("dataset", JobConfig.model_fields["dataset"].default)
    return Path(settings["out"], dataset).resolve().as_uri()


def airflow_run_id(dag_run_id: str) -> str:
    """A folder-safe run id from Airflow's (`manual__2026-11-26T01:00:00+00:00`); stable per DAG run,
    so a retried task resumes the same staging folder. Where characters had to go (or it was too
    long), a hash of the whole id follows: `xmas:2026` and `xmas+2026` are two runs, two folders."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", dag_run_id).strip("-.")
    if safe == dag_run_id and len(safe) <= 110:
        return safe
    return f"{safe[:110]}-{hashlib.sha256(dag_run_id.encode()).hexdigest()[:8]}".lstrip("-")


def param_roots() -> list[Path]:
    """The folders a trigger's paths may lie under: the project, SYNTHCAT_DATA_DIR, and the folders
    in SYNTHCAT_PARAM_ROOTS (separated by ':')."""
    extra = [p for p in os.environ.get("SYNTHCAT_PARAM_ROOTS", "").split(os.pathsep) if p]
    return [Path(p).resolve() for p in (REPO, *filter(None, [os.environ.get("SYNTHCAT_DATA_DIR")]), *extra)]


def _resolve(path: str, base: Path = REPO) -> str:
    return str((base / path).resolve()) if not Path(path).is_absolute() else path


def _out_base(default: Path) -> Path:
    """Where a relative `out` lands: SYNTHCAT_DATA_DIR when set (docker compose, Kubernetes: the
    folder shared with the Ray job drivers), else `default` (the project root)."""
    return Path(os.environ["SYNTHCAT_DATA_DIR"]) if os.environ.get("SYNTHCAT_DATA_DIR") else default


def _job_config(spec: dict) -> JobConfig:
    config_path = Path(spec["config"])
    try:
        data = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError) as exc:
        raise BadInputError(f"{config_path}: cannot read the job config ({exc})") from None
    overrides = {k: spec[k] for k in OVERRIDES if spec.get(k) not in (None, [], "")}
    data = anchored(data, config_path.parent)  # relative paths in it: from its folder, as the CLI takes them
    if not isinstance(data, dict):  # not a mapping: its own error, naming the file
        return parse_job_config(data, str(config_path))
    try:
        return parse_job_config({**data, **overrides}, str(config_path))
    except BadInputError as exc:
        if not overrides:
            raise
        parse_job_config(data, str(config_path))  # the file alone: its own error names the file's key
        problem = str(exc).removeprefix(f"{config_path}: ")
        raise BadInputError(f"param {' / '.join(f'{k!r}' for k in sorted(overrides))} on the job config "
                            f"{config_path}: {problem}") from None


def make_spec(params: dict, *, dag_run_id: str, run_date: str, clear_number: int = 0,
              triggered_by: str | None = None) -> dict:
    """Check a trigger's params and turn them into a spec; bad params raise BadInputError
    naming the field, before any work.

    `clear_number`: how often the DAG run was cleared. A run cleared after it published runs again
    under `<run id>-c<n>` and replaces its date's partition (Airflow's way to redo a date); a run
    cleared before it published keeps its id and resumes its staging folder.
    `triggered_by`: the DAG whose users chose `params` (the on-demand DAG): its paths must lie under
    the allowed roots (`param_roots`), and its run ids start with its DAG id, so no trigger can take
    another DAG's run id (Airflow lets a trigger name its run `scheduled__…`) and its staging folder."""
    if unknown := sorted(set(params) - {"manifest", "config", "out", "skus", "dry_run", *OVERRIDES}):
        # a misspelt key (`market`) would otherwise be dropped, and the run cover every market
        raise BadInputError(f"param '{unknown[0]}' is not one synthcat takes; known: manifest, config, out, "
                            f"skus, dry_run, {', '.join(OVERRIDES)}")
    run_id = airflow_run_id(f"{triggered_by}-{dag_run_id}" if triggered_by else dag_run_id)
    # a trigger that names no `out` gets a dataset of its own: a run replaces its date's partition,
    # so two campaigns of the same day into one dataset would keep only the second
    out = params.get("out") or (f"out/on-demand/{run_id}" if triggered_by else None)
    if not out:
        raise BadInputError("param 'out': no output folder given")
    own_out = not params.get("out")  # the run's own folder: a dry run leaves none behind
    spec = {
        "manifest": _resolve(params["manifest"]), "config": _resolve(params["config"]),
        "out": _resolve(out, _out_base(REPO)), "skus": list(params.get("skus") or []),
        "dry_run": bool(params.get("dry_run", False)),
        "run_id": run_id,
        "run_date": run_date, "own_out": own_out,
        "ray_address": os.environ.get("RAY_ADDRESS") or None,
        "models_dir": os.environ.get("SYNTHCAT_MODELS_DIR") or None,
    }
    spec.update({k: params.get(k) for k in OVERRIDES})
    if spec["ray_address"] and "@" in spec["ray_address"].split("//", 1)[-1].split("/", 1)[0]:
        # The spec travels as XCom into the UI and task logs: credentials never ride in it.
        raise BadInputError("RAY_ADDRESS carries credentials; give the address alone and the token "
                            "in RAY_AUTH_TOKEN (from a secret)")
    if triggered_by:
        roots = param_roots()
        for field in ("manifest", "config", "out"):
            if not any(Path(spec[field]).resolve().is_relative_to(root) for root in roots):
                raise BadInputError(f"param '{field}': {params.get(field) or spec[field]} is outside the folders a "
                                    "trigger may name "
                                    f"({', '.join(map(str, roots))}; SYNTHCAT_PARAM_ROOTS adds more)")
    for field in ("manifest", "config"):
        if not Path(spec[field]).is_file():
            raise BadInputError(f"param '{field}': file {spec[field]} not found")
    config = _job_config(spec)  # raises with the key at fault
    if clear_number:
        spec["run_id"] = _cleared_run_id(Path(spec["out"]) / config.dataset, spec["run_id"], clear_number)
        spec["cleared"] = clear_number  # its unpublished attempt resumes, or is redone if its inputs changed
    return spec


def _cleared_run_id(dataset_root: Path, base: str, clear_number: int) -> str:
    """The run id of a DAG run cleared `clear_number` times: its latest attempt while that one has not
    published (it resumes its staging), else the next, `<base>-c<n>`."""
    attempts = [base, *(f"{base[:120]}-c{k}" for k in range(1, clear_number))]
    started = [run for run in attempts if (dataset_root / "_staging" / run).is_dir()
               or (dataset_root / "_runs" / run / "manifest.json").is_file()]
    latest = started[-1] if started else base
    if (dataset_root / "_runs" / latest / "manifest.json").is_file():
        return f"{base[:120]}-c{clear_number}"
    return latest


def request_from_spec(spec: dict):
    """The RunRequest a spec stands for."""
    from pipeline.models.presets import DEFAULT_MODELS_DIR
    from pipeline.steps.state import RunRequest

    config = _job_config(spec)
    return RunRequest(
        manifest=Path(spec["manifest"]), config=config, out=Path(spec["out"]),
        run_date=spec["run_date"], run_id=spec["run_id"],
        # as the CLI: the job's own folder, else the deployment's (SYNTHCAT_MODELS_DIR), else the checkout's
        models_dir=Path(config.models_dir or spec["models_dir"] or DEFAULT_MODELS_DIR),
        skus=tuple(spec["skus"]), ray_address=spec["ray_address"], show_progress=False,
    )


def check_manifest(spec: dict) -> dict:
    """Validate the manifest (row problems counted; a bad file or too many bad rows raise)."""
    from pipeline.ingest import check_bad_row_share, read_manifest

    request = request_from_spec(spec)
    result = read_manifest(request.manifest, request.config)
    check_bad_row_share(result, request.config.max_bad_row_share)
    return {"rows": result.total_rows, "bad_rows": result.bad_rows, "problems": result.problems()[:20]}


def plan_shards(spec: dict, max_groups: int = 8) -> list[list[str]]:
    """Prepare the run; return its shards cut into at most `max_groups` groups (one mapped task each)."""
    import shutil

    from pipeline.steps.prepare import ResumeMismatch, prepare

    request = request_from_spec(spec)
    try:
        shards = prepare(request)["shards"]
    except ResumeMismatch:
        if not spec.get("cleared") or any(request.staging.rglob(".replaced-*")):
            raise  # a publish stopped half-way holds published partitions there (publish/): never deleted
        # a DAG run cleared to redo it after its catalog, config or model changed: its unpublished
        # attempt is of the old inputs, and goes
        shutil.rmtree(request.staging)
        shards = prepare(request)["shards"]
    size = max(1, -(-len(shards) // max_groups))
    return [shards[i:i + size] for i in range(0, len(shards), size)]


def _staging(spec: dict) -> Path:
    return request_from_spec(spec).staging


def end_dry_run(spec: dict) -> None:
    """A dry run has checked and planned: its staging folder (the plan) goes, so it leaves nothing
    behind (folders it made and left empty included); the planned shard groups stay in the plan
    task's result."""
    import shutil

    staging = _staging(spec)
    shutil.rmtree(staging, ignore_errors=True)
    # _staging/, the dataset's root, then `out` when it is the run's own (the trigger named none)
    for folder in (staging.parent, staging.parent.parent, *([Path(spec["out"])] if spec.get("own_out") else [])):
        try:
            folder.rmdir()
        except OSError:  # not empty (another run, published data) or already gone
            break


def generate_shards(spec: dict, shards: list[str]) -> dict:
    """Generate, score and encode one group of shards (skipping finished ones) on Ray."""
    from pipeline.steps.generate import generate_shards as run_shards
    from pipeline.steps.state import record_generation

    start = time.time()
    result = run_shards(_staging(spec), shards, ray_address=spec["ray_address"])
    record_generation(_staging(spec), start, time.time(), result.get("generated", 0))  # the run's images/s
    return result


def consolidate(spec: dict) -> dict:
    from pipeline.steps.gate import consolidate as run_consolidate

    return run_consolidate(_staging(spec), ray_address=spec["ray_address"])


def validate_run(spec: dict) -> dict:
    from pipeline.steps.validate import validate

    return validate(_staging(spec))


def publish(spec: dict) -> dict:
    """Publish atomically; returns what the Asset event's metadata carries."""
    from pipeline.steps.publish import publish as run_publish

    summary = run_publish(_staging(spec))
    return {"run_id": summary.run_id, "run_date": summary.run_date, "rows": summary.accepted,
            "rejected": summary.rejected, "path": str(summary.dataset_root),
            "manifest": str(summary.manifest_path), "report": str(summary.report_path)}


def build_reference_index(settings: dict, scorer: str = "tiny") -> dict:
    """Build or refresh the memorization reference index named in the DAG settings."""
    from pipeline.models.presets import DEFAULT_MODELS_DIR, resolve_scorer
    from pipeline.reference import build_reference_index as build

    source = settings.get("reference_images")
    if not source:
        raise BadInputError("dags settings: 'reference_images' names no folder or Parquet file")
    models_dir = Path(os.environ.get("SYNTHCAT_MODELS_DIR") or DEFAULT_MODELS_DIR)
    clip = resolve_scorer(settings.get("reference_scorer", scorer), models_dir)
    index_dir = Path(settings["out"]) / "_reference" / clip.name
    return {**build(Path(source), index_dir, clip.path), "index": str(index_dir)}
