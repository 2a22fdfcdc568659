"""Task wiring shared by the synthcat run DAGs. Every task is one call into `pipeline.orchestrate`.

Heavy libraries are imported by the pipeline inside the tasks, never at parse time.
Bad input (exit code 2) and failed gates (3) fail the task without retries: retrying
cannot fix them.
"""

from __future__ import annotations

from airflow.sdk import Asset, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

from pipeline import orchestrate


def _call(function, *args):
    from pipeline.errors import SynthcatError

    try:
        return function(*args)
    except SynthcatError as exc:
        if exc.exit_code in (2, 3):
            hint = (" (in Airflow: clear the whole DAG run, which redoes it, under a new run id once it has "
                    "published)" if "--run-id" in str(exc) else "")
            raise AirflowFailException(f"{exc}{hint}") from None
        raise


def spec_for_this_run(params: dict, *, from_trigger: bool = False) -> dict:
    """Inside a task: params + the current DAG run (run_date = its logical date, else when it
    was triggered) -> the run's spec. Bad params fail the task at once. `from_trigger`: the params
    are a trigger's (the on-demand DAG's users chose them), not the deployment's settings."""
    dag_run = get_current_context()["dag_run"]
    run_date = (dag_run.logical_date or dag_run.run_after).date().isoformat()
    return _call(lambda: orchestrate.make_spec(params, dag_run_id=dag_run.run_id, run_date=run_date,
                                               clear_number=getattr(dag_run, "clear_number", 0) or 0,
                                               triggered_by=dag_run.dag_id if from_trigger else None))


@task
def check_manifest(spec: dict) -> dict:
    """Validate the manifest first: a bad file stops the run before any work."""
    return _call(orchestrate.check_manifest, spec)


@task
def plan_shards(spec: dict, manifest_report: dict, max_groups: int = 8) -> list[list[str]]:
    return _call(orchestrate.plan_shards, spec, max_groups)


@task(max_active_tis_per_dagrun=4)
def generate_shards(spec: dict, shards: list[str]) -> dict:
    """One group of shards on Ray; finished shards are skipped, so a retry never duplicates rows."""
    return _call(orchestrate.generate_shards, spec, shards)


@task
def consolidate(spec: dict, generated: list[dict]) -> dict:
    """Cross-shard gates: duplicates and thresholds over the whole run."""
    return _call(orchestrate.consolidate, spec)


@task
def validate_run(spec: dict, gate_report: dict) -> dict:
    """Great Expectations over the accepted rows; failing it publishes nothing."""
    return _call(orchestrate.validate_run, spec)


def publish_task(asset: Asset):
    @task(outlets=[asset])
    def publish(spec: dict, validation: dict) -> dict:
        """Atomic publish; the Asset event carries run_id, rows and path for downstream DAGs."""
        result = _call(orchestrate.publish, spec)
        get_current_context()["outlet_events"][asset].extra = result
        return result

    return publish


@task.short_circuit
def unless_dry_run(spec: dict, groups: list) -> bool:
    """A dry run stops after checking and planning: nothing is generated or published, and
    nothing is left in the dataset's staging area."""
    if spec["dry_run"]:
        _call(orchestrate.end_dry_run, spec)
    return not spec["dry_run"]


def wire_run(spec, asset: Asset, max_groups: int = 8):
    """check -> plan -> generate (mapped) -> consolidate -> validate -> publish."""
    manifest_report = check_manifest(spec)
    groups = plan_shards(spec, manifest_report, max_groups)
    proceed = unless_dry_run(spec, groups)
    generated = generate_shards.partial(spec=spec).expand(shards=groups)
    proceed >> generated
    gate_report = consolidate(spec, generated)
    validation = validate_run(spec, gate_report)
    return publish_task(asset)(spec, validation)
