"""A synthcat run's five steps, one module each: prepare -> generate -> gate -> validate -> publish.

Every step reads what it needs from the run's staging folder (`_staging/<run_id>/`, its record
`run.json`: `state.py`) and writes its result there, so each can run in its own process: all in
one `synthcat run` (`pipeline.run.run_job`), as separate Airflow tasks (`pipeline.orchestrate`),
or (the shard step) as a Ray job on a cluster. XCom and job arguments carry paths and counts only.
Nothing here reads environment variables.
"""
