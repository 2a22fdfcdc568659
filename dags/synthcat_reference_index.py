"""synthcat_reference_index: (re)build the memorization reference index.

Scheduled on the reference-images Asset: whenever a producer (a curation DAG, an upload
job) emits an event for the folder of training / protected images, the index is rebuilt.
It can also be triggered by hand.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from airflow.sdk import Asset, dag, task

from _synthcat_tasks import _call
from pipeline import orchestrate

SETTINGS = orchestrate.load_settings()
# Without `reference_images` in the settings there is nothing to watch: the DAG runs when triggered,
# and its task says what is missing.
REFERENCE_IMAGES = (Asset(name="synthcat_reference_images",
                          uri=Path(SETTINGS["reference_images"]).resolve().as_uri())
                    if SETTINGS.get("reference_images") else None)
REFERENCE_INDEX = Asset(name="synthcat_reference_index",
                        uri=(Path(SETTINGS["out"]) / "_reference").resolve().as_uri())


@dag(
    dag_id="synthcat_reference_index",
    schedule=[REFERENCE_IMAGES] if REFERENCE_IMAGES else None,
    catchup=False,
    max_active_runs=1,
    tags=["synthcat", "reference-index"],
    default_args={"retries": 2, "retry_delay": timedelta(minutes=5)},
    doc_md=__doc__,
)
def synthcat_reference_index():
    @task(outlets=[REFERENCE_INDEX])
    def build_index() -> dict:
        """Embed every reference image with the scorer; the new index replaces the old at once."""
        return _call(orchestrate.build_reference_index, SETTINGS)  # bad settings: failed, not retried

    build_index()


synthcat_reference_index()
