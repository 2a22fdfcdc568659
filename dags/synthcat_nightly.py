"""synthcat_nightly: the catalog run, every night, for the run's logical date.

Manifest, job config, output root and cron come from `dags/synthcat.yaml` (or the file
named by SYNTHCAT_DAGS_SETTINGS). One run at a time; no catch-up of missed nights.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Asset, CronTriggerTimetable, dag, task

from _synthcat_tasks import spec_for_this_run, wire_run
from pipeline import orchestrate

SETTINGS = orchestrate.load_settings()
DATASET_ASSET = Asset(name="synthcat_dataset", uri=orchestrate.dataset_uri(SETTINGS))


@dag(
    dag_id="synthcat_nightly",
    # a trigger timetable, named: its logical date is the night it runs, the run's date, whatever
    # [scheduler] create_cron_data_intervals says (a cron string follows that setting)
    schedule=CronTriggerTimetable(SETTINGS.get("schedule", "0 1 * * *"), timezone="UTC"),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["synthcat", "nightly"],
    default_args={"retries": 2, "retry_delay": timedelta(minutes=5)},
    doc_md=__doc__,
)
def synthcat_nightly():
    @task
    def resolve_spec() -> dict:
        """The settings + this DAG run (run_date = its logical date) -> the run's spec."""
        return spec_for_this_run({k: SETTINGS[k] for k in ("manifest", "config", "out")})

    wire_run(resolve_spec(), DATASET_ASSET, SETTINGS.get("max_shard_groups", 8))


synthcat_nightly()
