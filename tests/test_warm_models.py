"""Warm models: a run's later generation rounds reuse the model its first round set up; and the
Ray executor hands each finished batch on at once.

The stage here is a real stage for the executors (set-up, batches of Arrow rows, resources) whose
"model" is its process id and set-up count, so each output row tells which process and which
set-up produced it. The executors and Ray are real.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pytest
import ray
import ray.cloudpickle

from pipeline.config import StageResources
from pipeline.executor import make_batches, run_stages
from pipeline.warm_models import NAMESPACE, HostedStage, held_idle, hosted_stages, keep_models_warm, warm_session


@dataclass
class WhoRanIt:
    """Adds the process id and the number of set-ups of the stage object that ran each row."""

    resources: StageResources = field(default_factory=lambda: StageResources(num_cpus=0.5, batch_size=2))
    name: str = "generate"
    meet: str | None = None  # a folder: each process's first batch waits there for a second process
    holds_model = True

    def __post_init__(self) -> None:
        self.setups = 0

    def setup(self) -> None:
        self.setups += 1

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self.meet:  # proxies start one by one: without this, the first could take every batch
            Path(self.meet, str(os.getpid())).touch()
            deadline = time.monotonic() + 60
            while len(list(Path(self.meet).iterdir())) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
        n = batch.num_rows
        return (batch.append_column("pid", pa.array([os.getpid()] * n, pa.int64()))
                .append_column("setups", pa.array([self.setups] * n, pa.int64())))


@dataclass
class WhenRan(WhoRanIt):
    """Also records when each batch ran, and in which thread of its process."""

    def __call__(self, batch: pa.Table) -> pa.Table:
        import threading

        started = time.time()
        time.sleep(0.3)
        n = batch.num_rows
        return (super().__call__(batch).append_column("thread", pa.array([threading.get_ident()] * n, pa.int64()))
                .append_column("started", pa.array([started] * n)).append_column("ended", pa.array([time.time()] * n)))


@dataclass
class PassOn:
    """A CPU stage after the model stage, as encoding is: a plain Ray task."""

    resources: StageResources = field(default_factory=lambda: StageResources(num_cpus=0.5, batch_size=2))
    name: str = "pass_on"
    stateless = True

    def setup(self) -> None:
        pass

    def __call__(self, batch: pa.Table) -> pa.Table:
        return batch


@dataclass
class AfterTheFirstIsSeen(PassOn):
    """Passes the first batch (item i0) on at once; every other batch waits, up to 20 s, until the
    caller has seen a batch (the file `seen` exists), and says whether it gave up waiting."""

    seen: str = ""

    def __call__(self, batch: pa.Table) -> pa.Table:
        first = batch.column("item_id")[0].as_py() == "i0"
        deadline = time.monotonic() + 20
        while not first and not Path(self.seen).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        gave_up = not first and not Path(self.seen).exists()
        return batch.append_column("gave_up", pa.array([gave_up] * batch.num_rows))


ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _round(executor: str, rows: int = 6, stage: WhoRanIt | None = None, stages: list | None = None) -> pa.Table:
    items = pa.table({"item_id": [f"i{k}" for k in range(rows)], "shard_id": ["s0"] * rows})
    return pa.concat_tables(run_stages(stages or [stage or WhoRanIt()], make_batches(items, 2), executor=executor))


def _gone(pid: int, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


def test_rounds_in_one_session_share_one_set_up_model_host_then_it_is_released(ray_session):
    with keep_models_warm():
        first, second = _round("ray"), _round("ray")
    pids = set(first.column("pid").to_pylist()) | set(second.column("pid").to_pylist())
    assert len(pids) == 1 and pids != {os.getpid()}, pids  # one host, in its own worker process
    assert set(first.column("setups").to_pylist()) == set(second.column("setups").to_pylist()) == {1}
    assert _gone(pids.pop()), "the session's host outlived the session"


def test_without_a_session_each_round_sets_its_model_up_again(ray_session):
    first, second = _round("ray"), _round("ray")
    one, two = set(first.column("pid").to_pylist()), set(second.column("pid").to_pylist())
    assert len(one) == len(two) == 1 and one != two
    assert _gone(one.pop())


def test_two_hosts_take_one_proxy_each_and_share_the_batches(ray_session, tmp_path):
    stage = WhoRanIt(resources=StageResources(num_cpus=0.5, actors=2, batch_size=2), meet=str(tmp_path))
    with keep_models_warm() as warm:
        hosts = warm.hosts_for(stage)
        # the compare-and-set on the hosts: two proxies never bind the same host while one is free
        assert {HostedStage(hosts, "r").host, HostedStage(hosts, "r").host} == set(hosts)
        out = _round("ray", rows=16, stage=stage)
    assert len(set(out.column("pid").to_pylist())) == 2
    assert set(out.column("setups").to_pylist()) == {1}


def test_a_host_takes_its_next_batch_while_it_hands_on_the_last_but_runs_one_at_a_time(ray_session):
    """A host takes CALLS_PER_ACTOR calls at once (so it puts one batch's output into the object
    store while the next runs) in as many threads, yet the stage never runs two batches at once."""
    from pipeline.executor import CALLS_PER_ACTOR

    with keep_models_warm():
        out = _round("ray", rows=12, stage=WhenRan())
    runs = sorted({(r["started"], r["ended"], r["thread"]) for r in out.to_pylist()})
    assert len(runs) == 6 and len(set(out.column("pid").to_pylist())) == 1
    assert all(later[0] >= earlier[1] for earlier, later in zip(runs, runs[1:])), runs  # one batch at a time
    assert CALLS_PER_ACTOR == 2 and len({thread for _, _, thread in runs}) == 2  # in the host's two threads


def test_hosts_leave_the_cpu_stages_room_or_the_rounds_run_without_them(ray_session):
    """The suite's Ray has 2 CPUs: a host holding both would starve the CPU stage for good
    (Ray Data frees a finished pool's CPUs, a host keeps them), so that chain is not hosted."""
    fits, too_big = (WhoRanIt(resources=StageResources(num_cpus=cpus, batch_size=2)) for cpus in (1.5, 2))
    assert hosted_stages([fits, PassOn()]) == [True, False]
    assert hosted_stages([too_big, PassOn()]) == [False, False]
    items = pa.table({"item_id": ["i0", "i1", "i2"], "shard_id": ["s0"] * 3})
    with keep_models_warm() as warm:
        out = pa.concat_tables(run_stages([too_big, PassOn()], make_batches(items, 2), executor="ray"))
        assert not warm.hosts  # it ran in Ray Data's own pool, which ends with the round
    assert out.num_rows == 3 and set(out.column("setups").to_pylist()) == {1}


def _run_state(run_id: str = "run-w", keep_warm_s: float = 120.0, **config) -> dict:
    """The parts of a run's staging record (run.json) that name its hosts."""
    from pipeline.config import JobConfig

    config = JobConfig(engine={"keep_warm_s": keep_warm_s}, **config).model_dump(mode="json")
    return {"run_id": run_id, "plan_sha256": "p" * 64, "config": config}


def _named_hosts(run: str) -> list[str]:
    return [e["name"] for e in ray.util.list_named_actors(all_namespaces=True)
            if e["namespace"] == NAMESPACE and e["name"].startswith(f"{run}:")]


# A step of a run in its own process (an Airflow generate task): it connects to the suite's Ray,
# runs one round and exits, leaving the run's host to the next step.
STEP = """
import json, sys
sys.path.insert(0, sys.argv[2])
import ray
from pipeline.executor import run_stages
from pipeline.warm_models import keep_models_warm
import test_warm_models as t
ray.init(address=sys.argv[1], log_to_driver=False)
with keep_models_warm(json.loads(sys.argv[3]), last=False):
    out = t._round("ray")
print(json.dumps(sorted(set(out.column("pid").to_pylist()))))
"""


def test_a_runs_steps_in_other_processes_share_its_host_until_its_last_step_ends(ray_session):
    import json
    import subprocess

    state = _run_state()
    address = ray.get_runtime_context().gcs_address
    # two mapped generate tasks at once: whichever asks first makes the host, the other gets it too
    steps = [subprocess.Popen([sys.executable, "-c", STEP, address, str(Path(__file__).parent), json.dumps(state)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "RAY_ADDRESS": ""}) for _ in range(2)]
    outputs = [step.communicate(timeout=180) for step in steps]
    assert [step.returncode for step in steps] == [0, 0], [err[-3000:] for _, err in outputs]
    pids = {pid for out, _ in outputs for pid in json.loads(out.splitlines()[-1])}
    assert len(pids) == 1, pids
    pid = pids.pop()
    ended = time.perf_counter()
    time.sleep(1.0)  # Airflow schedules the next task: the host holds its devices, idle
    with keep_models_warm(state) as warm:  # the run's last step (consolidate), in this process
        tick = time.perf_counter()
        out = _round("ray")
        idle = held_idle(time.perf_counter() - tick)
        assert set(out.column("pid").to_pylist()) == {pid}  # the host the other process's step left
        assert set(out.column("setups").to_pylist()) == {1}  # set up once, by that step
        # the time it sat idle between the steps is the run's device time too
        assert 1.0 <= idle <= tick - ended + 5.0  # its last batch ran before the steps ended
        run = warm.run
    assert _gone(pid) and _named_hosts(run) == []


# The run's last step (consolidate) in its own process when no item needs regenerating: it runs no
# round, yet takes up the hosts the generate tasks left, so they count as held until it ends them.
LAST = """
import json, sys, time
import ray
from pipeline.warm_models import held_idle, keep_models_warm
with keep_models_warm(json.loads(sys.argv[1])) as warm:
    taken = warm.take_up_left_hosts(sys.argv[2] or None)
    time.sleep(0.5)  # the gate pass: the hosts are still held
    idle = held_idle()
print(json.dumps([taken, idle, ray.is_initialized()]))
"""


def _python(script: str, *args: str, **env: str) -> list:
    """Run `script` in a new Python process with `args` (and `env` over this one's); its last line, as JSON."""
    import json
    import subprocess

    done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=180,
                          env={**os.environ, **env})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


def test_a_last_step_without_a_round_ends_the_hosts_the_run_left_and_counts_their_idle_time(ray_session, tmp_path):
    import json

    from pipeline.warm_models import _run_naming

    state = _run_state(run_id="run-last")
    run, address = _run_naming(state)["run"], ray.get_runtime_context().gcs_address
    started = time.perf_counter()
    pid, = _python(STEP, address, str(Path(__file__).parent), json.dumps(state), RAY_ADDRESS="")
    time.sleep(1.0)  # Airflow schedules consolidate: the host holds its devices, idle
    # a last step finds the run's Ray as ray.init() does (here RAY_ADDRESS; or `ray start`'s)
    taken, idle, connected = _python(LAST, json.dumps(state), "", RAY_ADDRESS=address)
    assert taken == 1 and connected
    assert 1.5 <= idle <= time.perf_counter() - started  # since its last batch, the gate pass included
    assert _gone(pid, timeout=20) and _named_hosts(run) == []  # at once, not keep_warm_s (120 s) later
    # where the steps would each start their own Ray, there is nothing to take up and no Ray to start
    taken, _, connected = _python(LAST, json.dumps(state), "", RAY_ADDRESS="", RAY_TMPDIR=str(tmp_path))
    assert (taken, connected) == (0, False)
    # nor where the run's Ray is reached through the Jobs API (its hosts end after keep_warm_s)
    taken, _, connected = _python(LAST, json.dumps(state), "http://head:8265", RAY_ADDRESS="")
    assert (taken, connected) == (0, False)


def test_a_host_left_idle_longer_than_keep_warm_s_ends_itself_and_the_next_step_makes_a_new_one(ray_session):
    state = _run_state(keep_warm_s=2.0)
    with keep_models_warm(state, last=False) as warm:
        first = set(_round("ray").column("pid").to_pylist())
        run = warm.run
    assert _named_hosts(run) and _gone(first.copy().pop(), timeout=30)  # nobody came back within 2 s
    deadline = time.monotonic() + 10
    while _named_hosts(run) and time.monotonic() < deadline:
        time.sleep(0.1)
    with keep_models_warm(state):
        second = _round("ray")
    assert set(second.column("pid").to_pylist()).isdisjoint(first)
    assert set(second.column("setups").to_pylist()) == {1}
    assert _named_hosts(run) == []


def test_an_open_step_keeps_its_hosts_however_long_its_gates_take(ray_session):
    with keep_models_warm(_run_state(keep_warm_s=1.0)):
        first = _round("ray")
        time.sleep(3)  # a long gate pass between two rounds of one step: the step is still there
        second = _round("ray")
    assert set(first.column("pid").to_pylist()) == set(second.column("pid").to_pylist())
    assert set(second.column("setups").to_pylist()) == {1}


def test_hosts_are_named_after_what_decides_the_runs_images():
    from pipeline.warm_models import _run_naming

    named = _run_naming(_run_state())
    assert named["run"].startswith("run-w-") and named["keep_s"] == 120.0
    assert _run_naming(_run_state()) == named  # the run's every step finds the same hosts
    assert _run_naming(_run_state(model="sd15"))["run"] != named["run"]  # not another config's model
    assert _run_naming({**_run_state(), "plan_sha256": "q" * 64})["run"] != named["run"]
    assert _run_naming(_run_state(keep_warm_s=0)) == {}  # 0: every step's hosts are its own
    assert _run_naming(_run_state(executor="local")) == {}  # in process: no hosts to name


@pytest.mark.parametrize("warm", [True, False])
def test_the_local_executor_keeps_the_set_up_stage_for_the_session(warm):
    stage = WhoRanIt()
    if warm:
        with keep_models_warm():
            rounds = [_round("local", stage=stage), _round("local", stage=WhoRanIt())]
    else:
        rounds = [_round("local", stage=stage), _round("local", stage=stage)]
    setups = [set(r.column("setups").to_pylist()) for r in rounds]
    # warm: the second round's fresh stage object is never set up, the first one runs again
    assert setups == ([{1}, {1}] if warm else [{1}, {2}])
    assert {pid for r in rounds for pid in r.column("pid").to_pylist()} == {os.getpid()}


def _timed(call) -> tuple[float, float, object]:
    before = time.perf_counter()
    result = call()
    return before, time.perf_counter(), result


def test_time_the_models_sit_set_up_between_rounds_is_counted_once():
    """The device record's held-idle time (pipeline/cost.py): from the end of one round to the
    start of the next, and after the last round until the run's gates are done."""
    assert held_idle() == 0.0  # no session: nothing is held between rounds
    with keep_models_warm():
        tick = time.perf_counter()
        _round("local")
        a1, b1, idle = _timed(lambda: held_idle(time.perf_counter() - tick))
        assert idle == 0.0  # nothing was set up before the first round
        time.sleep(0.3)  # the gates run, the generator stays set up
        tick = time.perf_counter()
        _round("local")
        second = time.perf_counter() - tick
        a2, b2, idle = _timed(lambda: held_idle(second))
        assert max(0.3, a2 - b1 - second) <= idle <= b2 - a1 - second  # the round's own time is not idle
        time.sleep(0.2)  # the last gate pass
        a3, b3, idle = _timed(held_idle)
        assert max(0.2, a3 - b2) <= idle <= b3 - a2
        assert held_idle() == 0.0  # counted once
    with keep_models_warm() as warm:  # two stages' hosts that an earlier step left idle 3 s: 3 s, not 6
        warm._adopt("generate", [("host-g", 3.0)]), warm._adopt("score", [("host-s", 2.0), ("host-t", 4.0)])
        idle, _ = held_idle(), warm.hosts.clear()  # (not real hosts: nothing to end)
    assert idle == 3.0


def test_a_session_belongs_to_its_thread_and_ends_with_its_block():
    import threading

    seen = []
    with keep_models_warm() as warm:
        with keep_models_warm() as inner:  # a step inside the run (consolidate in run_job) shares it
            assert inner is warm
        other = threading.Thread(target=lambda: seen.append(warm_session()))
        other.start()
        other.join()
        assert warm_session() is warm
    assert seen == [None] and warm_session() is None


def test_a_finished_batch_reaches_the_caller_before_the_next_is_done(tmp_path, ray_session):
    """The caller writes each shard once its rows are back, and the start-up ends at the first batch:
    Ray Data's default prefetch held each finished batch back until the next one was done too."""
    seen = tmp_path / "seen"
    items = pa.table({"item_id": [f"i{k}" for k in range(6)], "shard_id": ["s0", "s0", "s1", "s1", "s2", "s2"]})
    out = []
    for batch in run_stages([AfterTheFirstIsSeen(seen=str(seen))], make_batches(items, 2), executor="ray"):
        seen.touch()
        out.append(batch)
    table = pa.concat_tables(out).sort_by("item_id")
    assert table.column("item_id").to_pylist() == items.column("item_id").to_pylist()
    assert not any(table.column("gave_up").to_pylist())  # held back, the first batch waits for a second
