"""A run in the DAG's task shape, each task its own process, on one Ray that outlives them.

Start that Ray first (`ray start --head --num-cpus=2`), then:

    python bench/airflow_steps.py --keep-warm-s 120 --out /tmp/steps-120
    python bench/airflow_steps.py --keep-warm-s 0 --out /tmp/steps-0

prints each task's wall time: plan_shards, the mapped generate_shards tasks (one after another,
or `--parallel N` at once, as Airflow's `max_active_tis_per_dagrun` lets them run), then consolidate (the gates and their regeneration rounds), as `airflow dags test` would run
them but each in a fresh process, as a real scheduler does. `--keep-warm-s` is the job's
`engine.keep_warm_s`: 0 makes every task set up its own generator. Last, the run's model hosts
still on the Ray (none: consolidate ended them) and its device record (`held_idle_seconds`);
with `--parallel`, the generate tasks' wall time and the device time the record counts for them.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
TASK = """
import json, sys
from pipeline import orchestrate
spec, task = json.loads(open(sys.argv[1]).read()), sys.argv[2]
if task == "plan":
    print(json.dumps(orchestrate.plan_shards(spec, max_groups=int(sys.argv[3]))))
elif task == "generate":
    orchestrate.generate_shards(spec, json.loads(sys.argv[3]))
elif task == "consolidate":
    orchestrate.consolidate(spec)
else:  # after the run: the named model hosts still on the Ray, and the run's device record
    import ray
    from pipeline.run import read_state
    ray.init(log_to_driver=False)
    left = [e["name"] for e in ray.util.list_named_actors(all_namespaces=True) if e["namespace"] == "synthcat"]
    print(json.dumps({"hosts_left": left, "device": read_state(orchestrate._staging(spec))["device"]}))
"""


def _task(spec: Path, *args: str) -> tuple[float, str]:
    tick = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", TASK, str(spec), *args], cwd=REPO, capture_output=True,
                          text=True, check=True)
    return time.perf_counter() - tick, done.stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep-warm-s", type=float, default=120.0)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--manifest", type=Path, default=REPO / "examples" / "catalog.csv")
    parser.add_argument("--config", type=Path, default=REPO / "examples" / "job.yaml")
    parser.add_argument("--groups", type=int, default=4)
    parser.add_argument("--max-attempts", type=int, help="the job's gates.max_attempts (1: no regeneration round)")
    parser.add_argument("--parallel", type=int, default=1, help="generate tasks at once (the DAG allows 4)")
    args = parser.parse_args(argv)

    from pipeline import orchestrate

    args.out.mkdir(parents=True, exist_ok=True)
    job = yaml.safe_load(args.config.read_text(encoding="utf-8"))
    job.setdefault("engine", {})["keep_warm_s"] = args.keep_warm_s
    if args.max_attempts:
        job.setdefault("gates", {})["max_attempts"] = args.max_attempts
    (args.out / "job.yaml").write_text(yaml.safe_dump(job), encoding="utf-8")
    spec = orchestrate.make_spec({"manifest": str(args.manifest), "config": str(args.out / "job.yaml"),
                                  "out": str(args.out)}, dag_run_id=f"manual__steps-{time.time_ns()}",
                                 run_date="2026-11-27")
    spec_path = args.out / "spec.json"
    spec_path.write_text(json.dumps(spec), encoding="utf-8")
    start = time.perf_counter()
    seconds, groups = _task(spec_path, "plan", str(args.groups))
    print(f"plan_shards      {seconds:6.1f} s")
    tick = time.perf_counter()
    with ThreadPoolExecutor(args.parallel) as pool:  # each task its own process, as Airflow's workers
        done = pool.map(lambda group: _task(spec_path, "generate", json.dumps(group))[0],
                        json.loads(groups.splitlines()[-1]))
        for k, seconds in enumerate(done):
            print(f"generate_shards {k} {seconds:6.1f} s")
    wall = time.perf_counter() - tick
    if args.parallel > 1:
        device = json.loads(_task(spec_path, "after")[1].splitlines()[-1])["device"]
        print(f"generate tasks, {args.parallel} at once: {wall:.1f} s of wall time, "
              f"{device['seconds']:.1f} device-s counted for them ({device['count']:g} devices)")
    print(f"consolidate      {_task(spec_path, 'consolidate')[0]:6.1f} s")
    print(f"keep_warm_s {args.keep_warm_s:g}: {time.perf_counter() - start:.1f} s in all")
    print(f"after the run    {_task(spec_path, 'after')[1].splitlines()[-1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
