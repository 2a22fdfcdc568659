"""Executors: run a chain of stages over Arrow tables, in-process or on Ray Data.

Stages declare what they need (`resources`: CPUs, GPUs, actors, batch size); the Ray
executor turns that into `map_batches` options, so the same stages run on a laptop, on a
local Ray, or on a Ray cluster. Results stream back to the caller batch by batch.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Protocol

import pyarrow as pa

from pipeline.config import StageResources
from pipeline.errors import BadInputError, SynthcatError
from pipeline.warm_models import HostedStage, hosted_stages, keep_models_warm

log = logging.getLogger(__name__)

HF_OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
# Calls a model actor runs at once: one runs the stage, the other meanwhile fetches its next
# batch or puts its last output into the object store (50 MB of pixels at batch 64, 512²). The
# stage itself runs one batch at a time (Ray Data's single-threaded UDF; a lock in a host).
CALLS_PER_ACTOR = 2
# A model process that dies (a crash in native code, the kernel's OOM killer) restarts and its
# batch runs again, this many times; then the run fails. Ray's default, forever, loops on a batch
# that kills its process every time (reloading the model each time) and never ends.
MAX_RESTARTS = 3


class Stage(Protocol):
    name: str
    resources: StageResources

    def setup(self) -> None: ...

    def __call__(self, batch: pa.Table) -> pa.Table: ...


def make_batches(items: pa.Table, batch_size: int, group_by: str = "shard_id",
                 also_by: Sequence | None = None) -> list[pa.Table]:
    """Cut items into first-stage batches that never span two groups (shards), nor two runs
    of equal values of `also_by` (one per row) where it is given.

    Float results of batched kernels can differ in the last bit with batch composition;
    fixing each batch's members per shard makes a shard's images identical whether it
    runs alone (a resume, a retry) or among others.
    """
    batches = []
    column = items.column(group_by).to_pylist()
    if also_by is not None:
        column = list(zip(column, also_by, strict=True))
    start = 0
    for end in range(1, len(column) + 1):
        if end == len(column) or column[end] != column[start] or end - start == batch_size:
            batches.append(items.slice(start, end - start))
            start = end
    return batches


def run_local(stages: Sequence[Stage], batches: Sequence[pa.Table]) -> Iterator[pa.Table]:
    """Run every stage in this process: each model loads once (once per run inside
    `keep_models_warm()`), batches flow through in order."""
    if not batches:
        return
    with keep_models_warm() as warm:
        stages = [warm.set_up(stage) for stage in stages]
        for batch in batches:
            for stage in stages:
                batch = stage(batch)
            yield batch


def worker_log() -> logging.Logger:
    """The logger of code running in a Ray worker: INFO lines with a timestamp on the worker's stderr,
    i.e. in Ray's `worker-*.err` files (we start Ray without forwarding worker output to the driver)."""
    logger = logging.getLogger("pipeline.worker")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


class _ActorStage:
    """Ray actor wrapper: the stage's model loads once per actor, in `__init__` (= setup).

    It logs what a run's start-up is made of: the set-up (imports, model load) and the first
    batch (with torch.compile: tracing, and compiling or loading the kernels from the cache).
    """

    def __init__(self, stage: Stage, idle_exit_s: float | None = None) -> None:
        tick = time.perf_counter()
        stage.setup()
        self.stage = stage
        self._first = True
        self._proxies: dict[str, int] = {}  # as a warm model's host: the Ray Data proxies bound, per round
        parts = ", ".join(f"{k} {v:.1f} s" for k, v in (getattr(stage, "setup_s", None) or {}).items())
        worker_log().info("%s: actor set up in %.1f s%s (pid %d)", stage.name, time.perf_counter() - tick,
                          f" ({parts})" if parts else "", os.getpid())
        self._lock, self._used, self._busy, self._ending = threading.Lock(), time.monotonic(), 0, False
        self._running = threading.Lock()  # as a host taking CALLS_PER_ACTOR calls: one batch at a time
        if idle_exit_s:  # a run's named host (pipeline/warm_models.py): it ends itself once left idle
            threading.Thread(target=self._end_when_idle, args=(idle_exit_s,), daemon=True).start()

    def proxies(self, round_id: str) -> int:
        """The proxies of the round `round_id` bound to this host (counted per round: a host that
        restarted, or was made again, would otherwise draw every proxy until it caught up)."""
        return self._proxies.get(round_id, 0)

    def bind(self, expected: int, round_id: str) -> bool:
        """A proxy binds this host if no other proxy of its round did since it read `proxies()`."""
        if self.proxies(round_id) != expected:
            return False
        self._proxies[round_id] = expected + 1
        return True

    def claim(self) -> float | None:
        """A round of the run takes this host up (again): the seconds it sat idle, holding its
        devices, since its last batch or claim (0 while a batch runs); None once it is ending."""
        with self._lock:
            idle, self._used = (0.0 if self._busy else time.monotonic() - self._used), time.monotonic()
            return None if self._ending else idle

    def _end_when_idle(self, idle_s: float) -> None:
        import ray

        while True:
            time.sleep(min(1.0, idle_s / 4))
            with self._lock:
                self._ending = not self._busy and time.monotonic() - self._used > idle_s
            if self._ending:
                worker_log().info("%s: idle for %.0f s, ending (pid %d)", self.stage.name, idle_s, os.getpid())
                ray.kill(ray.get_runtime_context().current_actor, no_restart=True)
                return

    def __call__(self, batch: pa.Table) -> pa.Table:
        with self._lock:
            self._busy += 1
        try:
            with self._running:
                return self._run(batch)
        finally:
            with self._lock:
                self._busy, self._used = self._busy - 1, time.monotonic()

    def _run(self, batch: pa.Table) -> pa.Table:
        if not self._first:
            return self.stage(batch)
        tick = time.perf_counter()
        out = self.stage(batch)
        self._first = False
        from pipeline.stages.engine import compile_counters, compile_seconds

        counters = compile_counters()
        compiled = f"; torch.compile {counters} {compile_seconds()}" if counters.get("stats.unique_graphs") else ""
        worker_log().info("%s: first batch (%d rows) in %.1f s%s", self.stage.name, batch.num_rows,
                          time.perf_counter() - tick, compiled)
        return out


def _stateless(stage: Stage):
    def call(batch: pa.Table) -> pa.Table:
        return stage(batch)

    return call


def init_ray(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Connect to `address`, or start a local in-process Ray; returns True if this call started it.

    An already-initialised Ray (a test session, an Airflow worker) is reused as it is.
    """
    import ray

    if ray.is_initialized():
        return False
    kwargs = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
    if address:
        # A cluster (or the Ray job we run inside) brings its own runtime env and settings.
        _check_reachable(address)
        ray.init(address=address, **kwargs)
    else:
        # The local Ray's workers inherit this process's environment. Set there rather than as a
        # job runtime_env, the idle workers Ray starts with it serve the first tasks and actors; with
        # a job runtime_env they wait for workers started for it (first task 2.0 s, not 0.6 s, here).
        os.environ.update(HF_OFFLINE_ENV)
        ray.init(num_cpus=num_cpus, **kwargs)
    return True


def _check_reachable(address: str, timeout_s: float = 10.0) -> None:
    """A Ray address nothing answers at fails at once, without a traceback: `ray.init` would retry
    a dead GCS for minutes. Exit 1, not 2: a cluster that is down may be up for the task's retry."""
    import socket
    from urllib.parse import urlsplit

    if address == "auto" or address.startswith("local"):
        return
    try:
        parts = urlsplit(address if "://" in address else f"gcs://{address}")
        host, port = parts.hostname, parts.port
    except ValueError:  # a port that is not a number
        raise BadInputError(f"Ray address {address!r} (RAY_ADDRESS or ray_address): not host:port") from None
    if not host or not port:
        return
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as exc:
        raise SynthcatError(f"Ray address {address} (RAY_ADDRESS or ray_address): nothing answers at {host}:{port} "
                            f"({exc.strerror or exc}); start the cluster or correct the address") from None


def _check_gpus(stages: Sequence[Stage], local: bool) -> None:
    """On a Ray we started ourselves, a GPU request that cannot be met would wait forever."""
    import ray

    wanted = max((s.resources.num_gpus for s in stages), default=0)
    have = ray.cluster_resources().get("GPU", 0)
    if local and wanted > have:
        names = ", ".join(f"resources.{s.name}.num_gpus={s.resources.num_gpus:g}"
                          for s in stages if s.resources.num_gpus > have)
        raise BadInputError(f"job config asks for GPUs ({names}) but this Ray has {have:g}; "
                            "set num_gpus: 0 to run on CPU")


def run_ray(stages: Sequence[Stage], batches: Sequence[pa.Table], *, address: str | None = None,
            num_cpus: int | None = None) -> Iterator[pa.Table]:
    """Stream items through the stages on Ray Data; yields output batches as they finish.

    Stages with a model run in an actor pool (`actors` actors, each loading the model
    once); stateless stages (`stateless = True`, e.g. encoding) run as plain CPU tasks,
    so GPU actors never wait on image encoding. On a single-node Ray, model stages run in
    host actors that outlive this execution inside `keep_models_warm()` (pipeline/warm_models.py).
    """
    if not batches:
        return
    import ray
    import ray.data

    init_ray(address, num_cpus)
    # a Ray of this machine (started here, or earlier in this process: a test session, an Airflow
    # worker) will never get a GPU it lacks; a cluster's autoscaler may add one
    _check_gpus(stages, local=not (address or os.environ.get("RAY_ADDRESS")))
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    hosted = hosted_stages(stages)
    # One block per first-stage batch: every actor gets work from the start, and the first
    # stage takes each block whole (batch_size=None), keeping the batches' composition.
    # Ray Data insists on a batch size for GPU stages: there the first stage asks for the
    # largest block, which leaves whole-batch blocks whole (a shard's short tail batch may be
    # topped up from the next block; GPU kernels are not bit-stable across shapes anyway).
    # `from_blocks` reads each block's metadata here; `from_arrow` sends a Ray task per block for
    # it, so the run first waits for worker processes to boot (6 s of a 304-item CPU run) before
    # the generate actors even start. Both keep one block per batch. (A DeveloperAPI of Ray Data.)
    from_blocks = getattr(ray.data, "from_blocks", ray.data.from_arrow)
    with keep_models_warm() as warm:
        ds = from_blocks(list(batches))
        for position, (stage, in_host) in enumerate(zip(stages, hosted)):
            r = stage.resources
            batch_size = r.batch_size if position else None
            if position == 0 and r.num_gpus and not in_host:
                batch_size = max(batch.num_rows for batch in batches)
            if position and getattr(stage, "stateless", False):
                # A CPU task never waits for a second upstream batch: the stream's tail after the
                # last generated batch is then one batch of CPU work, not two.
                batch_size = min(batch_size, stages[0].resources.batch_size)
            options = dict(batch_size=batch_size, batch_format="pyarrow", zero_copy_batch=True,
                           num_cpus=r.num_cpus, num_gpus=r.num_gpus or None)
            if getattr(stage, "stateless", False):
                ds = ds.map_batches(_stateless(stage), **options)
            elif in_host:  # the proxies hold nothing: their hosts hold the stage's CPUs and GPUs
                # A proxy's calls only wait on its host, so they run at once (true threads): the
                # host has its next batch while the proxy still hands on the last one's output.
                pool = ray.data.ActorPoolStrategy(size=r.actors, max_concurrent_calls_per_actor=CALLS_PER_ACTOR,
                                                  enable_true_multi_threading=True)
                ds = ds.map_batches(HostedStage, fn_constructor_args=(warm.hosts_for(stage), uuid.uuid4().hex),
                                    compute=pool,
                                    **{**options, "num_cpus": 0, "num_gpus": None})
            else:
                pool = ray.data.ActorPoolStrategy(size=r.actors, max_concurrent_calls_per_actor=CALLS_PER_ACTOR)
                ds = ds.map_batches(_ActorStage, fn_constructor_args=(stage,), compute=pool, **options,
                                    max_restarts=MAX_RESTARTS, max_task_retries=MAX_RESTARTS)
        # No prefetch: with Ray Data's default (one batch) its iterator holds a finished batch back
        # until the next one is done too, so each shard was written (and the start-up ended) one
        # generation batch late (3.8 s of a CPU run's 20 s start-up). On one machine the blocks are
        # in the local object store already; on a cluster a block's fetch (a batch's encoded images)
        # is no longer overlapped with the last block's shard write: small next to a batch.
        try:
            yield from ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=0)
        except ray.exceptions.RayError as exc:
            if not _died(exc):
                raise
            raise SynthcatError(
                f"a model process died {MAX_RESTARTS + 1} times on the same batch (a crash in native code, or the "
                "kernel's out-of-memory killer: try a smaller resources.<stage>.batch_size); the run stops, its "
                f"finished shards are kept for a resume ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None


def _died(exc: BaseException) -> bool:
    """Whether a Ray error is (or wraps) an actor's death, after its restarts ran out. A death in a
    model host reaches here through its proxy's task, as that task's error text."""
    import ray

    return isinstance(exc, ray.exceptions.RayActorError) or "ray.exceptions.ActorDiedError" in str(exc)


def run_stages(stages: Sequence[Stage], batches: Sequence[pa.Table], *, executor: str,
               ray_address: str | None = None, num_cpus: int | None = None) -> Iterator[pa.Table]:
    """Run `stages` over `batches` (see `make_batches`) with the named executor (`ray` or `local`)."""
    if executor == "local":
        return run_local(stages, batches)
    if executor == "ray":
        return run_ray(stages, batches, address=ray_address, num_cpus=num_cpus)
    raise BadInputError(f"unknown executor {executor!r}; allowed: ray, local")
