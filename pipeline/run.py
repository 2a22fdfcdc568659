"""One synthcat run, its five steps in one process (`run_job`): what `synthcat run` calls.

The steps are in `pipeline/steps/` (prepare, generate, gate, validate, publish), one module each,
so that each can also run in its own process (the Airflow DAG's tasks); they are importable from
here as well.
"""

from __future__ import annotations

import importlib
import threading
import time
from pathlib import Path

from pipeline.steps.gate import consolidate
from pipeline.steps.generate import build_stages, generate_shards
from pipeline.steps.prepare import prepare
from pipeline.steps.publish import publish
from pipeline.steps.state import RunRequest, RunSummary, editing_state, read_state
from pipeline.steps.validate import validate
from pipeline.warm_models import keep_models_warm

__all__ = ["RunRequest", "RunSummary", "build_stages", "consolidate", "generate_shards", "prepare", "publish",
           "read_state", "run_job", "validate"]


def run_job(request: RunRequest) -> RunSummary:
    """Run one job end to end and publish it; raises SynthcatError subclasses for users' errors."""
    started = time.perf_counter()
    prepared = prepare(request)
    staging = Path(prepared["staging"])
    # Great Expectations takes seconds to import: once the first batch is back, not while the workers
    # start (the import holds the GIL the driver's Ray Data start-up needs: ~3 s later actors).
    load_ge = threading.Thread(target=importlib.import_module, args=("great_expectations",), daemon=True)
    with keep_models_warm(read_state(staging)):  # the regeneration rounds reuse the models generation loaded
        generated = generate_shards(staging, ray_address=request.ray_address, ray_num_cpus=request.ray_num_cpus,
                                    show_progress=request.show_progress, on_first_batch=load_ge.start)
        with editing_state(staging) as state:
            state["timings"].update(generate=generated.get("seconds", 0.0),
                                    generate_first_batch=generated.get("first_batch_s") or 0.0)
            state["generated"] = generated.get("generated", 0)  # a failed run's report gives its images/s
        consolidate(staging, ray_address=request.ray_address, ray_num_cpus=request.ray_num_cpus)
    validate(staging)
    seconds = generated.get("seconds") or 0.0
    rate = generated["generated"] / seconds if generated["generated"] and seconds else 0.0
    summary = publish(staging, {**generated, "images_per_s": rate})
    summary.seconds = time.perf_counter() - started
    return summary
