"""`synthcat bench` runs its three measurements on the same items and reports every figure."""

from __future__ import annotations

import json

import pytest

from conftest import EXAMPLE_CATALOG
from pipeline.cli import main


def test_bench_writes_ratios_for_the_same_items(tmp_path, models_dir, ray_session, capsys):
    target = tmp_path / "bench.json"
    assert main(["bench", "--preset", "tiny", "--items", "2", "--batch-size", "2", "--json", str(target),
                 "--manifest", str(EXAMPLE_CATALOG)]) == 0
    record = json.loads(target.read_text())
    assert record["items"] == record["e2e_items"] == 2
    for key in ("naive_img_s", "engine_img_s", "e2e_img_s", "flops_per_image", "peak_host_rss_mb"):
        assert record[key] > 0, key
    assert record["engine_vs_naive"] == pytest.approx(record["engine_img_s"] / record["naive_img_s"])
    assert record["flop_bound_share"] is None  # no known peak for a CPU
