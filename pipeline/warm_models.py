"""Warm models: a stage's model stays loaded across a run's generation rounds.

Ray Data's actor pools end with their execution, so every regeneration round of a run would
start a new generator: a new process importing torch and diffusers, loading the weights (and
the compiled kernels) again; 6 s of a 60 s `make run` per round on this project's CPU box.

Inside `keep_models_warm()`, the executors keep each model stage (`holds_model = True`) set up
for the next round instead:
- on Ray, the stage runs in a *host* actor that the session owns: Ray Data's actor pool for it
  holds thin proxies, one per host, that hand each batch to their host and return its result;
- in process (`executor: local`), the set-up stage object itself is kept.

Only on a single-node Ray (a local Ray, one machine): there a proxy and its host share the
node's object store, and a batch's pixels are copied once more in memory. On a cluster the
proxies could land on other nodes than their hosts and every image would cross the network
twice, so there Ray Data's per-round actor pools stay (a round's start-up is small next to a
cluster-sized round). The same when the hosts would hold so many CPUs that the CPU stages could
not run beside them (`hosted_stages`). A session is one run's: stages are matched by name.

A run's steps may be separate processes (Airflow's mapped `generate_shards` tasks, then
`consolidate`). Given the run's staging record, a session names its hosts after the run and
what decides its images (detached actors in the `synthcat` namespace), so on a Ray that
outlives the tasks (`ray start`) each step takes up the hosts the first one set up. The last
step (consolidate, or `run_job`) ends them, also when it runs no round of its own
(`take_up_left_hosts`: their idle time until then is the run's device time too). While a step
is open it keeps claiming its hosts;
a host no open step claimed for `engine.keep_warm_s` ends itself, so a run that stops half-way
does not hold its devices for long.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import pyarrow as pa


@dataclass
class WarmModels:
    """The set-up model stages of one run: Ray host actors by stage name, and local stages."""

    hosts: dict[str, list] = field(default_factory=dict)
    local: dict[str, object] = field(default_factory=dict)
    round_ended_at: float | None = None  # when the last generation round ended, its models still set up
    carried_idle: float = 0.0  # idle time of hosts an earlier step (process) left, found by this one
    run: str | None = None  # a run's session: its hosts are named, shared by the run's steps (processes)
    keep_s: float = 0.0     # how long a run's named host, left idle, waits for the run's next step
    last: bool = True       # the run's last step (or the whole run): closing ends the run's hosts
    _closed: threading.Event = field(default_factory=threading.Event, repr=False)
    _claiming: bool = field(default=False, repr=False)
    _id: str = field(default_factory=lambda: uuid.uuid4().hex, repr=False)

    @property
    def holder(self) -> str:
        """Who holds this session's devices, for the run's device record (pipeline/cost.py): the
        run's named hosts, shared by every step that takes them up (steps at the same time hold
        them once), else this session's own workers."""
        return f"hosts:{self.run}" if self.run and self.hosts else f"session:{self._id}"

    def hosts_for(self, stage) -> list:
        """The host actors of `stage` (created on first use; set-up starts at once, in the hosts).

        A run's session takes up the run's named hosts when an earlier step (an Airflow task on
        the same Ray) left them, and claims them again for each round: a host left idle longer
        than `keep_s` ends itself, and is then made again."""
        import ray

        from pipeline.executor import CALLS_PER_ACTOR, MAX_RESTARTS, _ActorStage

        hosts = self.hosts.get(stage.name)
        if hosts and (not self.run or all(_claimed(host) is not None for host in hosts)):
            return hosts
        r = stage.resources
        # A host killed mid-batch restarts (setting the model up again) and the batch it was given
        # runs again; the waiting proxy just waits longer. MAX_RESTARTS times: a batch that kills
        # its host every time then fails the run (pipeline/executor.py).
        # Binding runs in its own thread ("control"), never queued behind a batch the host runs.
        # Batches: CALLS_PER_ACTOR threads, the stage one batch at a time (a lock in the host), so
        # the host puts one batch's output into the object store while it runs the next.
        host = ray.remote(max_concurrency=CALLS_PER_ACTOR, concurrency_groups={"control": 1})(_ActorStage)
        options = dict(num_cpus=r.num_cpus, num_gpus=r.num_gpus or None, max_restarts=MAX_RESTARTS,
                       max_task_retries=MAX_RESTARTS)
        if not self.run:
            self.hosts[stage.name] = [host.options(**options).remote(stage) for _ in range(r.actors)]
        else:
            self._start_claiming()
            self._adopt(stage.name, [self._named(host, options, stage, f"{self.run}:{stage.name}:{k}")
                                     for k in range(r.actors)])
        return self.hosts[stage.name]

    def _adopt(self, stage: str, found: list[tuple[object, float]]) -> None:
        """`stage`'s hosts, with the seconds each sat idle since an earlier step's last batch: held
        time, counted with this step's next reading. A wall time, as the record multiplies it by
        all the model stages' devices: per host on average, and the run's stages sat idle over the
        same time (the longest of them, not their sum)."""
        self.hosts[stage] = [host for host, _ in found]
        self.carried_idle = max(self.carried_idle, sum(idle for _, idle in found) / len(found))

    def take_up_left_hosts(self, address: str | None = None) -> int:
        """The run's last step: take up the hosts its earlier steps left on a Ray that outlives them,
        whether or not this step runs a round; returns how many.

        Without this, a last step that needs no regeneration round never connects to Ray, and the
        hosts hold their devices, idle, for `keep_s` after the run (a next run waiting for the GPU
        waits as long). Taken up, they count as held from their last batch until closing ends them.
        `address`: the run's Ray address (None: the one `ray.init()` finds, as the steps did)."""
        if not (self.run and self.last):
            return 0
        import ray

        from pipeline.executor import init_ray

        if not ray.is_initialized():
            if not _outliving_ray(address):
                return 0  # each step started its own Ray, and its hosts ended with it
            init_ray(address)  # connects as the steps did (a `ray start` cluster's token included)
        known = {f"{self.run}:{stage}:{k}" for stage, hosts in self.hosts.items() for k in range(len(hosts))}
        left: dict[str, list[tuple[int, str]]] = {}
        for name in set(_run_hosts(self.run)) - known:
            stage, k = name[len(self.run) + 1:].rsplit(":", 1)
            left.setdefault(stage, []).append((int(k), name))
        taken = 0
        for stage, names in left.items():
            if hosts := [found for _, name in sorted(names) if (found := _take_up(name))]:
                self._adopt(stage, hosts)
                taken += len(hosts)
        if taken:  # held from now on too, while this step's gates run (held_idle counts it)
            self.round_ended_at = time.perf_counter()
            self._start_claiming()
        return taken

    def _start_claiming(self) -> None:
        """While this step runs, its hosts never count as idle (gates can be long)."""
        if not self._claiming:
            self._claiming = True
            threading.Thread(target=self._keep_claiming, daemon=True).start()

    def _keep_claiming(self) -> None:
        """Claims every host each keep_s / 3 without waiting on any: a host still setting up (or
        restarting) answers only then, and its twin stages' idle hosts must not expire meanwhile."""
        import ray

        pending: dict = {}  # host -> its claim not yet answered (one at a time per host)
        while not self._closed.wait(max(0.1, self.keep_s / 3)):
            current = [h for hosts in list(self.hosts.values()) for h in hosts]
            pending = {host: ref for host, ref in pending.items() if host in current}  # hosts made again: dropped
            for host in current:
                if host in pending and not ray.wait([pending[host]], timeout=0)[0]:
                    continue
                with contextlib.suppress(ray.exceptions.RayActorError):  # it ended: the next round makes it again
                    if host in pending:
                        ray.get(pending.pop(host))
                pending[host] = host.claim.options(concurrency_group="control").remote()

    def _named(self, host, options: dict, stage, name: str) -> tuple[object, float]:
        """The run's host `name` and its idle seconds: the one there (claimed), else a new one
        (which another step may be making at the same moment: Ray gives both the same actor)."""
        import ray

        deadline = time.monotonic() + 60
        while True:
            try:
                found = ray.get_actor(name, namespace=NAMESPACE)
            except ValueError:  # none: make it; set-up starts at once, the proxies wait for it
                return host.options(**options, name=name, namespace=NAMESPACE, lifetime="detached",
                                    get_if_exists=True).remote(stage, self.keep_s), 0.0
            if (idle := _claimed(found)) is not None:
                return found, idle
            if time.monotonic() > deadline:
                raise RuntimeError(f"the warm model host {name!r} neither ended nor took the run up")
            time.sleep(0.2)  # it is ending itself: its name is free once it is gone

    def set_up(self, stage):
        """In process: a model stage set up by an earlier round of this run, else `stage`, set up now."""
        if not holds_model(stage):
            stage.setup()
            return stage
        if stage.name not in self.local:
            stage.setup()
            self.local[stage.name] = stage
        return self.local[stage.name]

    def held_idle(self, round_s: float | None = None) -> float:
        """Seconds the set-up models sat idle since the last round ended, holding their devices (the
        gates run meanwhile), plus what hosts an earlier step left had sat idle before this step
        found them; `round_s`: a round of that many seconds has just ended, not idle time."""
        now = time.perf_counter()
        idle = 0.0 if self.round_ended_at is None else max(0.0, now - self.round_ended_at - (round_s or 0.0))
        idle, self.carried_idle = idle + self.carried_idle, 0.0
        held = round_s is not None and bool(self.hosts or self.local)
        self.round_ended_at = now if held else None
        return idle

    def close(self) -> None:
        """End the session's hosts; a run's step that is not its last leaves them to the next step."""
        self._closed.set()
        if self.run and self.last:
            release_run(self.run)
        elif self.hosts and not self.run:
            import ray

            for host in (h for hosts in self.hosts.values() for h in hosts):
                ray.kill(host)
        self.hosts.clear()
        self.local.clear()


NAMESPACE = "synthcat"  # the Ray namespace of runs' named hosts


def _claimed(host) -> float | None:
    """The host's idle seconds, now claimed; None when it is ending or gone."""
    import ray

    try:
        return ray.get(host.claim.options(concurrency_group="control").remote())
    except ray.exceptions.RayActorError:  # it ended itself, or its node went away
        return None


def _take_up(name: str) -> tuple[object, float] | None:
    """The run's named host `name` and its idle seconds, claimed; None when it is ending or gone."""
    import ray

    try:
        host = ray.get_actor(name, namespace=NAMESPACE)
    except ValueError:  # it ended meanwhile
        return None
    idle = _claimed(host)
    return None if idle is None else (host, idle)


def release_run(run: str) -> None:
    """End every named host of `run` on the connected Ray, whichever step made it."""
    import ray

    if not ray.is_initialized():  # no round ran in this process: the hosts end when left idle
        return
    for name in _run_hosts(run):
        with contextlib.suppress(ValueError):
            ray.kill(ray.get_actor(name, namespace=NAMESPACE))


def _run_hosts(run: str) -> list[str]:
    """The names of `run`'s hosts on the connected Ray, whichever step made them."""
    import ray

    return [entry["name"] for entry in ray.util.list_named_actors(all_namespaces=True)
            if entry["namespace"] == NAMESPACE and entry["name"].startswith(f"{run}:")]


def _outliving_ray(address: str | None) -> bool:
    """Whether a run's steps connect to a Ray that outlives them: `address`, or what `ray.init()`
    finds (RAY_ADDRESS, or the cluster `ray start` runs on this machine); not when each step
    starts its own Ray, nor when the run's Ray is reached through the Jobs API."""
    if address:
        return not address.startswith(("http://", "https://"))
    try:  # ray.init()'s own lookup (a private module: if it moves, the hosts end by expiry instead)
        from ray._private.services import canonicalize_bootstrap_address

        return canonicalize_bootstrap_address(None) is not None
    except (ImportError, ConnectionError, ValueError):
        return False


_thread = threading.local()  # a thread's session: two runs in two threads never share models


@contextlib.contextmanager
def keep_models_warm(run: dict | None = None, last: bool = True) -> Iterator[WarmModels]:
    """Keep model stages set up until the block ends; nested blocks share the outer session.

    `run`: a run's staging record (run.json). Its hosts are then named after the run and what
    decides its images, so the run's steps in other processes on the same Ray (Airflow's mapped
    generate tasks, then consolidate) take them up; `last=False` leaves them to the next step,
    and each ends itself after `engine.keep_warm_s` seconds left idle."""
    if warm_session() is not None:
        yield _thread.session
        return
    _thread.session = WarmModels(**(_run_naming(run) if run else {}), last=last)
    try:
        yield _thread.session
    finally:
        session, _thread.session = _thread.session, None
        session.close()


def _run_naming(state: dict) -> dict:
    import hashlib
    import json

    from pipeline.config import parse_job_config

    # the plan's fingerprint covers the weights, steps, guidance and items; the config the rest
    decides = json.dumps([state["plan_sha256"], state["config"]], sort_keys=True, default=str)
    run = f"{state['run_id']}-{hashlib.sha256(decides.encode()).hexdigest()[:12]}"
    config = parse_job_config(state["config"])
    keep_s = config.engine.keep_warm_s if config.executor == "ray" else 0.0  # in process: nothing to name
    return {"run": run, "keep_s": keep_s} if keep_s else {}  # 0: each step's hosts are its own


def warm_session() -> WarmModels | None:
    return getattr(_thread, "session", None)


def held_idle(round_s: float | None = None) -> float:
    """This thread's session's `WarmModels.held_idle` (0 without a session): device time to count."""
    session = warm_session()
    return session.held_idle(round_s) if session else 0.0


def holds_model(stage) -> bool:
    return bool(getattr(stage, "holds_model", False))


def hosted_stages(stages: Sequence) -> list[bool]:
    """Which stages run in warm hosts: the model stages, on a single-node Ray, when the CPUs the
    hosts hold leave the CPU stages (encode) room to run. Ray Data frees a pool's CPUs once its
    stage has no more input; a host keeps them until the run's last round, and a CPU stage
    that can never start would stall the run there."""
    import ray

    wanted = [holds_model(stage) for stage in stages]
    held = sum(s.resources.num_cpus * s.resources.actors for s, w in zip(stages, wanted) if w)
    room = max((s.resources.num_cpus for s, w in zip(stages, wanted) if not w), default=0)
    alive = [node for node in ray.nodes() if node.get("Alive")]
    if len(alive) != 1 or held + room > alive[0].get("Resources", {}).get("CPU", 0):
        return [False] * len(stages)
    return wanted


class HostedStage:
    """Ray Data's actor for a warm stage: a proxy that runs each batch on one of the stage's hosts.

    Each proxy binds the host with the fewest proxies of its round (`round_id`: one Ray Data
    execution; a compare-and-set on the host, so proxies starting together spread one per host);
    it waits for the host's set-up there.
    """

    def __init__(self, hosts: list, round_id: str) -> None:
        import ray

        tick = time.perf_counter()
        while True:
            counts = ray.get([h.proxies.options(concurrency_group="control").remote(round_id) for h in hosts])
            index = min(range(len(hosts)), key=counts.__getitem__)
            if ray.get(hosts[index].bind.options(concurrency_group="control").remote(counts[index], round_id)):
                break
        self.host = hosts[index]
        from pipeline.executor import worker_log

        worker_log().info("proxy bound to host %d of %d in %.1f s", index, len(hosts),
                          time.perf_counter() - tick)

    def __call__(self, batch: pa.Table) -> pa.Table:
        import ray

        return ray.get(self.host.__call__.remote(batch))
