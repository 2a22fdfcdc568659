"""`synthcat bench` runs its three measurements on the same items and reports every figure."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from conftest import EXAMPLE_CATALOG
from pipeline.bench import naive_sample
from pipeline.cli import main
from pipeline.stages.engine import cpu_has_native_bf16


def test_the_naive_sample_has_the_plans_share_of_photo_rows():
    # photo rows bunched at the end, as a plan's order may put them: the first 10 would have none
    photos = [None] * 36 + ["p.png"] * 4
    plan = pa.table({"item": list(range(40)), "product_image": photos})
    sample = naive_sample(plan, 10)
    assert sample.num_rows == 10
    assert sum(p is not None for p in sample.column("product_image").to_pylist()) == 1
    items = sample.column("item").to_pylist()
    assert items == sorted(items) and items[0] == 0 and max(items[:-1]) > 30  # spread, plan order
    assert naive_sample(plan, None) is plan and naive_sample(plan, 40) is plan
    assert naive_sample(plan, 38).column("product_image").null_count == 34  # every photo row fits


def test_bench_writes_ratios_for_the_same_items(tmp_path, models_dir, ray_session, capsys):
    target = tmp_path / "bench.json"
    # the first 7 products: the 7th has a product photo, so every phase inpaints its background
    assert main(["bench", "--preset", "tiny", "--items", "7", "--batch-size", "4",
                 "--json", str(target), "--manifest", str(EXAMPLE_CATALOG)]) == 0
    record = json.loads(target.read_text())
    assert record["items"] == record["e2e_items"] == record["naive_items"] >= 7
    assert record["photo_items"] == record["naive_photo_items"] >= 1
    for key in ("naive_img_s", "engine_img_s", "e2e_img_s", "flops_per_image", "peak_host_rss_mb"):
        assert record[key] > 0, key
    assert record["engine_vs_naive"] == pytest.approx(record["engine_img_s"] / record["naive_img_s"])
    assert record["flop_bound_share"] is None  # no known peak for a CPU
    # DPM-Solver++: one UNet evaluation per step; CPU: no compile, no GPU memory figures
    assert record["unet_evaluations"] == record["steps"] == 20
    assert record["compile_warmup_s"] is None and record["peak_gpu_mb_e2e"] is None
    # the engine's set-up, split (its imports ran in this process before: near 0 here)
    assert list(record["engine_setup_s"]) == ["import", "load", "to_device", "optimise"]
    assert all(v >= 0 for v in record["engine_setup_s"].values()) and record["engine_setup_s"]["load"] > 0
    assert record["compile_counters"]["stats.unique_graphs"] == record["compile_counters"]["recompiles"] == 0
    assert record["compile_s"] == {"total": 0.0, "dynamo_tracing": 0.0, "guards": 0.0, "backend": 0.0}
    # the generator's dtype as resolved here: bf16 where this CPU has native bf16 instructions
    assert record["engine_dtype"] == ("bfloat16" if cpu_has_native_bf16() else "float32")
    # one time per engine batch (batches of 4, never spanning a shard), adding up to the engine phase
    assert len(record["engine_batch_s"]) >= record["items"] / 4
    rounding = 0.0005 * len(record["engine_batch_s"])  # each time is rounded to the millisecond
    # half the engine's batches ran before the end-to-end run, half after it
    before, after = record["engine_s_before_after"]
    assert before > 0 and after > 0
    assert before + after == pytest.approx(record["items"] / record["engine_img_s"], abs=0.002)
    assert sum(record["engine_batch_s"]) <= record["items"] / record["engine_img_s"] + rounding
    assert set(record["e2e_timings_s"]) >= {"prepare", "generate", "generate_first_batch", "validate", "publish"}
    # start-up ends at the first written batch; the rest of the items over the rest of the run
    assert 0 < record["e2e_startup_s"] < record["items"] / record["e2e_img_s"]
    # what the run costs beyond the engine's own time for the same items
    assert record["e2e_overhead_s"] == pytest.approx(record["items"] / record["e2e_img_s"]
                                                     - record["items"] / record["engine_img_s"])
    assert record["e2e_steady_img_s"] > 0 and record["e2e_steady_vs_engine"] == pytest.approx(
        record["e2e_steady_img_s"] / record["engine_img_s"])
    cost = record["e2e_cost"]  # the run's own cost record: CPU core-seconds held by generation
    assert cost["device"] == "cpu" and cost["device_seconds"] > 0
    assert cost["usd_per_1000_accepted"] == pytest.approx(
        cost["device_seconds"] / 3600 * cost["hour_usd"] / record["e2e_accepted"] * 1000, rel=1e-2)
    # the first two figures were announced (and written) before the end-to-end run began
    assert "bench: naive" in capsys.readouterr().err


def test_engine_figures_survive_an_end_to_end_run_cut_short(tmp_path, models_dir, monkeypatch, capsys):
    def cut_short(*args, **kwargs):
        raise KeyboardInterrupt  # what a timeout's signal leaves: no end-to-end figure

    monkeypatch.setattr("pipeline.executor.init_ray", cut_short)
    target = tmp_path / "bench.json"
    assert main(["bench", "--preset", "tiny", "--items", "2", "--batch-size", "2", "--naive-items", "1",
                 "--json", str(target), "--manifest", str(EXAMPLE_CATALOG)]) != 0
    assert "interrupted" in capsys.readouterr().err
    record = json.loads(target.read_text())
    assert record["naive_img_s"] > 0 and record["engine_img_s"] > 0 and record["e2e_img_s"] is None


def test_flops_count_attention_on_every_device_and_leave_the_pipeline_as_it_was(models_dir):
    import diffusers
    import torch
    from diffusers.models.attention_processor import AttnProcessor
    from torch.utils.flop_counter import FlopCounterMode

    from pipeline.bench import _flops_per_image

    pipe = diffusers.StableDiffusionPipeline.from_pretrained(str(models_dir / "tiny" / "diffusion"),
                                                             local_files_only=True, use_safetensors=True)
    before = {name: type(p) for name, p in pipe.unet.attn_processors.items()}
    flops, evaluations = _flops_per_image(pipe, 20, 7.5, 64, 64)
    assert {name: type(p) for name, p in pipe.unet.attn_processors.items()} == before  # put back
    # counted by hand: the same calls, attention as plain matmuls
    pipe.unet.set_attn_processor(AttnProcessor())
    pipe.vae.set_attn_processor(AttnProcessor())
    side = 64 // pipe.vae_scale_factor
    latents = torch.zeros(2, pipe.unet.config.in_channels, side, side)
    context = torch.zeros(2, pipe.tokenizer.model_max_length, pipe.unet.config.cross_attention_dim)
    with torch.inference_mode(), FlopCounterMode(display=False) as unet:
        pipe.unet(latents, 500, encoder_hidden_states=context)
    with torch.inference_mode(), FlopCounterMode(display=False) as vae:
        pipe.vae.decode(latents[:1] / pipe.vae.config.scaling_factor)
    assert flops == evaluations * unet.get_total_flops() + vae.get_total_flops()
    # the attention is in it: on CPU, scaled_dot_product_attention's kernel alone counts as 0
    pipe.unet.set_attn_processor({name: p() for name, p in before.items()})
    with torch.inference_mode(), FlopCounterMode(display=False) as fused:
        pipe.unet(latents, 500, encoder_hidden_states=context)
    assert unet.get_total_flops() > fused.get_total_flops()
