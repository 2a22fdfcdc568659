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
