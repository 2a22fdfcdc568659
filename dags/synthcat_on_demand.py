"""synthcat_on_demand: a campaign run triggered from the UI, the REST API or the CLI.

Params are typed and checked by JSON schema when the run is triggered; the first task
checks what a schema cannot (files exist, the config and overrides are valid).
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Asset, Param, dag, get_current_context, task

from _synthcat_tasks import spec_for_this_run, wire_run

# Each run publishes where its `out` param says; the event metadata carries that path.
ON_DEMAND_ASSET = Asset(name="synthcat_on_demand")
LOCALE = "^[A-Za-z]{2,3}([-_][A-Za-z]{4})?[-_]([A-Za-z]{2}|[0-9]{3})$"


@dag(
    dag_id="synthcat_on_demand",
    schedule=None,
    catchup=False,
    tags=["synthcat", "on-demand"],
    default_args={"retries": 2, "retry_delay": timedelta(minutes=1)},
    params={
        "manifest": Param("examples/catalog.csv", type="string", minLength=1,
                          description="catalog manifest (CSV, JSONL or Parquet); relative to the project"),
        "config": Param("examples/job.yaml", type="string", minLength=1, description="job config YAML"),
        # a root of its own by default: a run replaces its run_date's partition, so a campaign of a
        # few SKUs into the nightly's dataset, or into another campaign's of the same day, would
        # replace that day's rows
        "out": Param(None, type=["null", "string"], minLength=1,
                     description="output root; empty = out/on-demand/<run id>, this run's own (a run replaces "
                                 "its date's partition of the dataset it publishes to)"),
        "skus": Param([], type="array", items={"type": "string", "minLength": 1}, uniqueItems=True,
                      description="SKUs to run; empty = all"),
        "markets": Param([], type="array", items={"type": "string", "pattern": LOCALE}, uniqueItems=True,
                         description="markets (e.g. de-DE); empty = the job's"),
        "kinds": Param([], type="array", items={"type": "string", "enum": ["campaign", "training"]},
                       uniqueItems=True, description="kinds; empty = the job's"),
        "variants": Param(None, type=["null", "integer"], minimum=1, maximum=100,
                          description="images per item; empty = the job's"),
        "model": Param(None, type=["null", "string"],
                       enum=[None, "tiny", "sd15", "sd-turbo", "sdxl", "sdxl-turbo"],
                       description="model preset; empty = the job's"),
        "dry_run": Param(False, type="boolean", description="check and plan only"),
    },
    doc_md=__doc__,
)
def synthcat_on_demand():
    @task
    def resolve_spec() -> dict:
        """The trigger's params + this DAG run -> the run's spec (paths and ids only)."""
        return spec_for_this_run(dict(get_current_context()["params"]), from_trigger=True)

    wire_run(resolve_spec(), ON_DEMAND_ASSET)


synthcat_on_demand()
