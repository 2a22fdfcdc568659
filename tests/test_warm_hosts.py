"""Warm model hosts under stress: one still setting up while its twin stage idles, and one that
restarted. The stages are test_warm_models.py's (their "model" is a process id and set-up count)."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import pyarrow as pa
import ray
import ray.cloudpickle

from pipeline.config import StageResources
from pipeline.warm_models import HostedStage, keep_models_warm
from test_warm_models import WhoRanIt, _round, _run_state

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


@dataclass
class SlowToSetUp(WhoRanIt):
    def setup(self) -> None:
        time.sleep(4)  # longer than keep_warm_s: the claims must not wait on this host meanwhile

    def __call__(self, batch: pa.Table) -> pa.Table:
        return batch


def test_a_host_still_setting_up_does_not_let_its_twin_stages_idle_host_expire(ray_session):
    with keep_models_warm(_run_state(keep_warm_s=1.0)):
        out = _round("ray", rows=4, stages=[SlowToSetUp(), WhoRanIt(name="score")])
    assert out.num_rows == 4


def test_after_a_host_restarts_each_round_still_spreads_its_proxies_over_both_hosts(ray_session):
    """Proxies are counted per round: a restarted host (its count back at 0) no longer draws every
    proxy of the next rounds while its twin, still holding its device, sits idle."""
    stage = WhoRanIt(resources=StageResources(num_cpus=0.5, actors=2, batch_size=2))
    with keep_models_warm() as warm:
        for _ in range(2):
            _round("ray", rows=8, stage=stage)
        hosts = warm.hosts_for(stage)
        ray.kill(hosts[1], no_restart=False)  # it restarts, setting its model up again
        assert {HostedStage(hosts, "next").host, HostedStage(hosts, "next").host} == set(hosts)
        assert len(set(_round("ray", rows=8, stage=stage).column("setups").to_pylist())) == 1


@dataclass
class DiesOnOneItem(WhoRanIt):
    """Its process dies (as in a native crash or the OOM killer) on every batch holding item i2."""

    def __call__(self, batch: pa.Table) -> pa.Table:
        import os

        if "i2" in batch.column("item_id").to_pylist():
            os._exit(1)
        return batch


def test_a_batch_that_kills_its_model_process_every_time_fails_the_run_instead_of_looping(ray_session):
    import pytest

    from pipeline.errors import SynthcatError
    from pipeline.executor import MAX_RESTARTS

    started = time.monotonic()
    with pytest.raises(SynthcatError, match=f"a model process died {MAX_RESTARTS + 1} times on the same batch"):
        _round("ray", rows=4, stage=DiesOnOneItem())
    assert time.monotonic() - started < 120


def test_a_gpu_this_machines_ray_lacks_is_refused_even_when_ray_was_started_before(ray_session):
    import pytest

    from pipeline.errors import BadInputError

    with pytest.raises(BadInputError, match=r"resources\.generate\.num_gpus=1\) but this Ray has 0"):
        _round("ray", rows=2, stage=WhoRanIt(resources=StageResources(num_cpus=0.5, num_gpus=1, batch_size=2)))
