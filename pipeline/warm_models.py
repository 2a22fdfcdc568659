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
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import pyarrow as pa


@dataclass
class WarmModels:
    """The set-up model stages of one run: Ray host actors by stage name, and local stages."""

    hosts: dict[str, list] = field(default_factory=dict)
    local: dict[str, object] = field(default_factory=dict)
    round_ended_at: float | None = None  # when the last generation round ended, its models still set up

    def hosts_for(self, stage) -> list:
        """The host actors of `stage` (created on first use; set-up starts at once, in the hosts)."""
        if stage.name not in self.hosts:
            import ray

            from pipeline.executor import _ActorStage

            r = stage.resources
            # Like Ray Data's own pools: a host killed mid-batch restarts (setting the model up
            # again) and the batch it was given runs again; the waiting proxy just waits longer.
            # Binding runs in its own thread ("control"), never queued behind a batch the host runs.
            host = ray.remote(concurrency_groups={"control": 1})(_ActorStage).options(
                num_cpus=r.num_cpus, num_gpus=r.num_gpus or None, max_restarts=-1, max_task_retries=-1)
            self.hosts[stage.name] = [host.remote(stage) for _ in range(r.actors)]
        return self.hosts[stage.name]

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
        gates run meanwhile); `round_s`: a round of that many seconds has just ended, not idle time."""
        now = time.perf_counter()
        idle = 0.0 if self.round_ended_at is None else max(0.0, now - self.round_ended_at - (round_s or 0.0))
        held = round_s is not None and bool(self.hosts or self.local)
        self.round_ended_at = now if held else None
        return idle

    def close(self) -> None:
        if self.hosts:
            import ray

            for host in (h for hosts in self.hosts.values() for h in hosts):
                ray.kill(host)
        self.hosts.clear()
        self.local.clear()


_thread = threading.local()  # a thread's session: two runs in two threads never share models


@contextlib.contextmanager
def keep_models_warm() -> Iterator[WarmModels]:
    """Keep model stages set up until the block ends; nested blocks share the outer session."""
    if warm_session() is not None:
        yield _thread.session
        return
    _thread.session = WarmModels()
    try:
        yield _thread.session
    finally:
        session, _thread.session = _thread.session, None
        session.close()


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

    Each proxy binds the host with the fewest proxies (a compare-and-set on the host, so
    proxies starting together spread one per host); it waits for the host's set-up there.
    """

    def __init__(self, hosts: list) -> None:
        import ray

        tick = time.perf_counter()
        while True:
            counts = ray.get([h.proxies.options(concurrency_group="control").remote() for h in hosts])
            index = min(range(len(hosts)), key=counts.__getitem__)
            if ray.get(hosts[index].bind.options(concurrency_group="control").remote(counts[index])):
                break
        self.host = hosts[index]
        from pipeline.executor import worker_log

        worker_log().info("proxy bound to host %d of %d in %.1f s", index, len(hosts),
                          time.perf_counter() - tick)

    def __call__(self, batch: pa.Table) -> pa.Table:
        import ray

        return ray.get(self.host.__call__.remote(batch))
