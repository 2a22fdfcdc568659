"""`synthcat bench`: naive diffusers loop vs synthcat's engine vs the whole pipeline, same items.

All three run in one process on the same planned items (same prompts and seeds), so their
ratios are meaningful on a shared, noisy machine. Model loading is outside every timing;
the end-to-end figure includes everything a run does after that (Ray Data streaming,
scoring, encoding, gates, validation, the atomic Parquet publish).
"""

from __future__ import annotations

import json
import resource
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import JobConfig

# Dense bf16/fp16 tensor throughput used for the FLOP bound (NOTES.md: 790 TFLOP/s on H100).
PEAK_TFLOPS = {"H100": 790.0, "H200": 790.0, "A100": 312.0, "L4": 121.0}


def _bench_job(config: JobConfig, manifest: Path, count: int) -> tuple[JobConfig, pa.Table]:
    """Whole products, enough variants for about `count` items: the e2e run plans exactly these."""
    from pipeline.ingest import read_manifest

    products = read_manifest(manifest, config).products
    if products.num_rows >= count:
        return config.model_copy(update={"variants": 1}), products.slice(0, count)
    variants = -(-count // products.num_rows)
    return config.model_copy(update={"variants": variants}), products


def _flops_per_image(pipe, steps: int, guidance: float, width: int, height: int) -> float:
    """UNet evaluations (x2 under guidance) plus one VAE decode, counted by torch's FlopCounterMode."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    scale = pipe.vae_scale_factor
    batch = 2 if guidance > 1 else 1
    latents = torch.zeros(batch, pipe.unet.config.in_channels, height // scale, width // scale,
                          device=pipe.device, dtype=pipe.unet.dtype)
    context = torch.zeros(batch, pipe.tokenizer.model_max_length, pipe.unet.config.cross_attention_dim,
                          device=pipe.device, dtype=pipe.unet.dtype)
    with torch.inference_mode():
        with FlopCounterMode(display=False) as unet_counter:
            pipe.unet(latents, 500, encoder_hidden_states=context)
        with FlopCounterMode(display=False) as vae_counter:
            pipe.vae.decode(latents[:1] / pipe.vae.config.scaling_factor)
    return steps * unet_counter.get_total_flops() + vae_counter.get_total_flops()


def _peak_tflops(device: str, override: float | None) -> float | None:
    if override:
        return override
    if device != "cuda":
        return None
    import torch

    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def run_bench(preset: str, models_dir: Path, manifest: Path, *, items: int = 32, batch_size: int = 16,
              num_gpus: float = 0, peak_tflops: float | None = None) -> dict:
    """Measure naive, engine and end-to-end images/s on the same items; returns the JSON record."""
    import torch

    from pipeline.executor import init_ray, make_batches
    from pipeline.models.presets import resolve_model, weights_sha256
    from pipeline.run import RunRequest, run_job
    from pipeline.stages.generate import GenerateStage

    model = resolve_model(preset, models_dir)
    config = JobConfig(model=preset, markets=("en-US",), shard_size=batch_size * 4, resources={
        "generate": {"num_gpus": num_gpus, "num_cpus": 1, "batch_size": batch_size},
        "score": {"num_gpus": num_gpus, "num_cpus": 0.5, "batch_size": 32}})
    from pipeline.plan import plan_items

    config, products = _bench_job(config, manifest, items)
    plan = plan_items(products, config, run_id="bench", run_date="2026-01-01", width=model.width,
                      height=model.height)
    items = plan.num_rows

    # 1. The engine: synthcat's generate stage, batched, one generator per image
    stage = GenerateStage(model.path, model.name, weights_sha256(model.path), model.pipeline_class,
                          model.steps, model.guidance_scale, resources=config.resources.generate)
    stage.setup()
    pipe, device = stage._pipe, stage._device
    batches = make_batches(plan, batch_size)
    tick = time.perf_counter()
    for batch in batches:
        stage(batch)
    engine_s = time.perf_counter() - tick

    # 2. The naive baseline: the same pipeline object called once per item (batch 1), PIL out
    tick = time.perf_counter()
    for row in plan.to_pylist():
        generator = torch.Generator(device).manual_seed(row["seed"])
        with torch.inference_mode():
            pipe(prompt=row["prompt"], negative_prompt=row["negative_prompt"], generator=generator,
                 num_inference_steps=model.steps, guidance_scale=model.guidance_scale,
                 width=row["width"], height=row["height"], output_type="pil")
    naive_s = time.perf_counter() - tick
    flops = _flops_per_image(pipe, model.steps, model.guidance_scale, model.width, model.height)
    del stage, pipe

    # 3. End to end: a real run of the same items on Ray (Ray itself started before timing)
    init_ray(num_cpus=None)
    with tempfile.TemporaryDirectory() as tmp:
        catalog = Path(tmp) / "catalog.parquet"
        pq.write_table(products.drop_columns(["line"]), catalog)
        e2e_config = config.model_copy(update={"gates": config.gates.model_copy(update={"max_attempts": 1})})
        request = RunRequest(manifest=catalog, config=e2e_config, out=Path(tmp) / "out", run_date="2026-01-01",
                             run_id="bench", models_dir=models_dir, show_progress=False)
        tick = time.perf_counter()
        summary = run_job(request)
        e2e_s = time.perf_counter() - tick
    e2e_items = summary.items

    peak = _peak_tflops(device, peak_tflops)
    bound = peak * 1e12 / flops if peak else None
    e2e_img_s = e2e_items / e2e_s
    record = {
        "preset": preset, "device": device, "items": items, "batch_size": batch_size,
        "steps": model.steps, "guidance_scale": model.guidance_scale, "width": model.width,
        "height": model.height, "torch": torch.__version__,
        "naive_img_s": items / naive_s, "engine_img_s": items / engine_s,
        "e2e_img_s": e2e_img_s, "e2e_items": e2e_items,
        "engine_vs_naive": naive_s / engine_s, "e2e_vs_engine": e2e_img_s / (items / engine_s),
        "flops_per_image": flops, "peak_tflops": peak,
        "flop_bound_img_s": bound, "flop_bound_share": e2e_img_s / bound if bound else None,
        "peak_host_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None,
    }
    return record
