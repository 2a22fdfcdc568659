"""`synthcat bench`: naive diffusers loop vs synthcat's engine vs the whole pipeline, same items.

All three run in one process on the same planned items (same prompts and seeds) and do the
same generation work, so their ratios are meaningful on a shared, noisy machine: campaign rows
of a SKU with a product photo get their background inpainted around the product in all three
(the naive loop with diffusers' inpainting pipeline at batch 1, as a plain script would).
Model loading is outside the naive and engine timings (and so is torch.compile's first call,
reported as `compile_warmup_s`); the end-to-end figure includes everything a run does once Ray
is up: the actors importing their libraries and loading their models, Ray Data streaming,
generation, scoring, encoding, gates, validation and the atomic Parquet publish. The engine
runs half its batches before the end-to-end run and half after it, so a machine whose speed
drifts during the benchmark moves both figures alike.
"""

from __future__ import annotations

import gc
import resource
import tempfile
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import Engine, JobConfig
from pipeline.errors import BadInputError

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


def naive_sample(plan: pa.Table, count: int | None) -> pa.Table:
    """`count` of the plan's items for the naive loop, in plan order, with the plan's share of
    product-photo rows (each costs a second, inpainting pass): evenly spaced among the photo rows
    and among the others. The first `count` items would hold whatever the plan's order puts first."""
    n = plan.num_rows
    if not count or count >= n:
        return plan
    photo = [bool(p) for p in plan.column("product_image").to_pylist()]
    with_photo = [i for i in range(n) if photo[i]]
    plain = [i for i in range(n) if not photo[i]]
    k_photo = min(len(with_photo), max(count - len(plain), round(count * len(with_photo) / n)))
    picks = [rows[j * len(rows) // k] for rows, k in ((with_photo, k_photo), (plain, count - k_photo))
             for j in range(k)]
    return plan.take(pa.array(sorted(picks), pa.int64()))


def _unet_evaluations(pipe, steps: int) -> int:
    """UNet calls per image: the scheduler's timesteps for `steps` (PNDM adds one, DPM-Solver none)."""
    scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
    scheduler.set_timesteps(steps)
    return len(scheduler.timesteps)


def _flops_per_image(pipe, steps: int, guidance: float, width: int, height: int) -> tuple[float, int]:
    """UNet evaluations (x2 under guidance) plus one VAE decode, counted by torch's FlopCounterMode.

    Attention is counted as plain matmuls (diffusers' `AttnProcessor`): the counter has no formula
    for the CPU kernel of scaled_dot_product_attention and counts it as 0 (the tiny model: 8.15
    GFLOP where 9.75 are done), while its CUDA kernels are in its table. The processors are put
    back afterwards."""
    from diffusers.models.attention_processor import AttnProcessor

    models = [m for m in (pipe.unet, pipe.vae) if hasattr(m, "set_attn_processor")]
    saved = [m.attn_processors for m in models]
    for model in models:
        model.set_attn_processor(AttnProcessor())
    try:
        return _count_flops(pipe, steps, guidance, width, height)
    finally:
        for model, processors in zip(models, saved):
            model.set_attn_processor(processors)


def _count_flops(pipe, steps: int, guidance: float, width: int, height: int) -> tuple[float, int]:
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
    evaluations = _unet_evaluations(pipe, steps)
    return evaluations * unet_counter.get_total_flops() + vae_counter.get_total_flops(), evaluations


def _peak_tflops(device: str, override: float | None) -> float | None:
    if override:
        return override
    if device != "cuda":
        return None
    import torch

    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


class _DevicePeak:
    """Peak device-wide GPU memory in use above the level at start, sampled every 50 ms: it sees
    the Ray actors' allocations (and CUDA contexts), which `max_memory_allocated` of this
    process cannot."""

    def __init__(self, device: str) -> None:
        self.enabled, self.peak_mb, self._stop = device == "cuda", 0.0, threading.Event()

    def _used(self) -> float:
        import torch

        free, total = torch.cuda.mem_get_info()
        return (total - free) / 2**20

    def __enter__(self) -> _DevicePeak:
        if self.enabled:
            self._base = self._used()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self.peak_mb = max(self.peak_mb, self._used() - self._base)

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self._stop.set()
            self._thread.join()


def _gpu_peak_mb(device: str) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None


def _reset_gpu_peak(device: str) -> None:
    import torch

    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def run_bench(preset: str, models_dir: Path, manifest: Path, *, items: int = 32, batch_size: int = 16,
              num_gpus: float = 0, peak_tflops: float | None = None, naive_items: int | None = None,
              compile: bool | None = None, compile_scope: str = "model", on_partial=None) -> dict:
    """Measure naive, engine and end-to-end images/s on the same items; returns the JSON record.

    `on_partial`, if given, gets the record of the first two measurements before the end-to-end
    run starts (its e2e fields None), so a run cut short still leaves those figures.
    """
    import diffusers
    import numpy as np
    import torch

    from pipeline.campaign.chain import campaign_generation
    from pipeline.campaign.generation import PHOTO_SEED_OFFSET, inpaint_steps, start_and_mask
    from pipeline.campaign.layout import canvas_size
    from pipeline.executor import init_ray
    from pipeline.models.presets import resolve_model, resolve_scorer, weights_sha256
    from pipeline.plan import generation_batches, plan_items
    from pipeline.run import RunRequest, run_job
    from pipeline.stages._torch import limit_threads, pick_device
    from pipeline.stages.engine import compile_counters, compile_seconds
    from pipeline.stages.generate import GenerateStage

    if num_gpus > torch.cuda.device_count():  # else the naive and engine phases ran on the CPU and Ray waited forever
        raise BadInputError(f"--gpus {num_gpus:g}: this machine has {torch.cuda.device_count()} CUDA GPUs; "
                            "leave --gpus out to measure on the CPU")
    model = resolve_model(preset, models_dir)  # random-weight presets are materialised here, untimed
    resolve_scorer(model.scorer, models_dir)
    config = JobConfig(model=preset, markets=("en-US",), shard_size=batch_size * 4,
                       engine=Engine(compile=compile, compile_scope=compile_scope,
                                     compile_min_items=0),  # every phase alike
                       resources={"generate": {"num_gpus": num_gpus, "num_cpus": 1, "batch_size": batch_size},
                                  "score": {"num_gpus": num_gpus, "num_cpus": 0.5, "batch_size": 32}})
    # The e2e run reads a copy of the products from a temporary folder: product photos stay
    # where the manifest put them, so their folder becomes an image root.
    config = config.model_copy(update={"images": config.images.model_copy(
        update={"roots": (*config.images.roots, str(Path(manifest).resolve().parent))})})
    config, products = _bench_job(config, manifest, items)
    plan = plan_items(products, config, run_id="bench", run_date="2026-01-01", width=model.width,
                      height=model.height)
    items, device = plan.num_rows, pick_device(num_gpus)
    # Every measurement gets the same CPU threads as the generate actor of the e2e run.
    limit_threads(config.engine.torch_threads or config.resources.generate.num_cpus)
    compiled_before, seconds_before = compile_counters(), compile_seconds()  # this bench's own compiles only

    # 1. The naive baseline: a plain pipeline (fp16 on a GPU, as diffusers' docs load it),
    #    called once per item at batch 1, PIL out; a product photo's row then inpaints its
    #    background with the inpainting pipeline of the same weights, also at batch 1
    diffusers.utils.logging.disable_progress_bar()
    pipe = getattr(diffusers, model.pipeline_class).from_pretrained(
        str(model.path), local_files_only=True, use_safetensors=True,
        dtype=torch.float16 if device == "cuda" else torch.float32).to(device)
    pipe.set_progress_bar_config(disable=True)
    inpaint = diffusers.AutoPipelineForInpainting.from_pipe(pipe)
    inpaint.set_progress_bar_config(disable=True)
    naive_rows = naive_sample(plan, naive_items).to_pylist()
    _reset_gpu_peak(device)
    tick = time.perf_counter()
    for row in naive_rows:
        generator = torch.Generator(device).manual_seed(row["seed"])
        with torch.inference_mode():
            image = pipe(prompt=row["prompt"], negative_prompt=row["negative_prompt"], generator=generator,
                         num_inference_steps=model.steps, guidance_scale=model.guidance_scale,
                         width=row["width"], height=row["height"], output_type="pil").images[0]
            if row.get("product_image"):
                start, mask = start_and_mask(np.asarray(image), row["product_image"], row["product_image_sha256"],
                                             row["product_box"], canvas_size(row["width"], row["height"],
                                                                             config.campaign.canvas))
                inpaint(prompt=row["prompt"], negative_prompt=row["negative_prompt"], image=start,
                        mask_image=mask, width=row["width"], height=row["height"],
                        strength=config.campaign.background_strength,
                        num_inference_steps=inpaint_steps(model.steps, config.campaign.background_strength),
                        guidance_scale=model.guidance_scale,
                        generator=torch.Generator(device).manual_seed(row["seed"] ^ PHOTO_SEED_OFFSET),
                        output_type="pil")
    _sync(device)
    naive_s, naive_peak = time.perf_counter() - tick, _gpu_peak_mb(device)
    flops, evaluations = _flops_per_image(pipe, model.steps, model.guidance_scale, model.width, model.height)
    del pipe, inpaint

    # 2. The engine: synthcat's generate stage (engine options of the job config), batched,
    #    with the campaign generation (product-photo backgrounds) the run gives it
    campaign = campaign_generation(config, {"path": str(model.path), "steps": model.steps,
                                            "guidance_scale": model.guidance_scale})
    stage = GenerateStage(model.path, model.name, weights_sha256(model.path), model.pipeline_class,
                          model.steps, model.guidance_scale, resources=config.resources.generate,
                          engine=config.engine, campaign=campaign)
    stage.setup()
    setup_s, engine_dtype = stage.setup_s, str(stage._pipe.dtype).removeprefix("torch.")
    batches = generation_batches(plan, batch_size)
    warmup_s = None
    if stage._pad_size:  # compiled: the first call of each shape compiles (cached on disk)
        tick = time.perf_counter()
        stage(batches[0])
        warmup_s = time.perf_counter() - tick
    batch_s = []  # per batch: a recompile or a slow photo-row pass shows as an outlier

    def run_engine(part: list) -> tuple[float, float | None]:
        """(seconds, peak GPU MB) of the engine over `part` of the batches."""
        _reset_gpu_peak(device)
        tick = time.perf_counter()
        for batch in part:
            start = time.perf_counter()
            stage(batch)  # returns host bytes, so each batch's GPU work is done when it returns
            batch_s.append(round(time.perf_counter() - start, 3))
        _sync(device)
        return time.perf_counter() - tick, _gpu_peak_mb(device)

    # The engine runs half its batches before the end-to-end run and half after it: a machine
    # that speeds up or slows down over the minutes of a benchmark then moves both figures alike.
    half = (len(batches) + 1) // 2
    before_s, engine_peak = run_engine(batches[:half])
    before_items = sum(batch.num_rows for batch in batches[:half])
    peak = _peak_tflops(device, peak_tflops)
    bound = peak * 1e12 / flops if peak else None
    engine_img_s, naive_img_s = before_items / before_s, len(naive_rows) / naive_s
    record = {
        "preset": preset, "device": device, "device_name": _device_name(device), "items": items,
        "photo_items": sum(bool(p) for p in plan.column("product_image").to_pylist()),
        "naive_items": len(naive_rows), "naive_photo_items": sum(bool(r.get("product_image")) for r in naive_rows),
        "batch_size": batch_size, "steps": model.steps,
        "unet_evaluations": evaluations, "guidance_scale": model.guidance_scale, "width": model.width,
        "height": model.height, "torch": torch.__version__, "diffusers": diffusers.__version__,
        "engine": config.engine.model_dump(), "engine_dtype": engine_dtype, "engine_setup_s": setup_s,
        "compile_warmup_s": warmup_s,
        "engine_batch_s": batch_s,
        "compile_counters": compile_counters(compiled_before), "compile_s": compile_seconds(seconds_before),
        "naive_img_s": naive_img_s, "engine_img_s": engine_img_s, "engine_vs_naive": engine_img_s / naive_img_s,
        "e2e_img_s": None, "e2e_items": None, "e2e_accepted": None, "e2e_vs_engine": None,
        "e2e_startup_s": None, "e2e_steady_img_s": None, "e2e_steady_vs_engine": None, "e2e_overhead_s": None,
        "steady_flop_bound_share": None,
        "e2e_timings_s": None, "e2e_cost": None,
        "flops_per_image": flops, "peak_tflops": peak, "flop_bound_img_s": bound,
        "engine_flop_bound_share": engine_img_s / bound if bound else None, "flop_bound_share": None,
        "peak_gpu_mb_naive": naive_peak, "peak_gpu_mb_engine": engine_peak, "peak_gpu_mb_e2e": None,
    }
    if on_partial:  # the engine figure of the first half; the final record has both halves
        on_partial(dict(record))

    # 3. End to end: a real run of the same items on Ray (Ray itself started before timing)
    _reset_gpu_peak(device)  # the engine keeps its weights for its second half, not its activations
    init_ray(num_cpus=None)
    with tempfile.TemporaryDirectory() as tmp, _DevicePeak(device) as e2e_peak:
        catalog = Path(tmp) / "catalog.parquet"
        pq.write_table(products.drop_columns(["line"]), catalog)
        e2e_config = config.model_copy(update={"gates": config.gates.model_copy(update={"max_attempts": 1})})
        request = RunRequest(manifest=catalog, config=e2e_config, out=Path(tmp) / "out", run_date="2026-01-01",
                             run_id="bench", models_dir=models_dir, show_progress=False)
        tick = time.perf_counter()
        summary = run_job(request)
        e2e_s = time.perf_counter() - tick
    if summary.items != items:  # the ratios compare the same items, or nothing
        raise RuntimeError(f"bench: the end-to-end run planned {summary.items} items, the engine ran {items}")
    after_s, after_peak = run_engine(batches[half:])
    del stage
    _reset_gpu_peak(device)
    engine_s = before_s + after_s
    engine_img_s = items / engine_s
    engine_peak = max((p for p in (engine_peak, after_peak) if p is not None), default=None)
    record.update({"engine_img_s": engine_img_s, "engine_vs_naive": engine_img_s / naive_img_s,
                   "engine_s_before_after": [round(before_s, 3), round(after_s, 3)],
                   "compile_counters": compile_counters(compiled_before),  # engine_batch_s: the same list, grown
                   "compile_s": compile_seconds(seconds_before),
                   "engine_flop_bound_share": engine_img_s / bound if bound else None,
                   "peak_gpu_mb_engine": engine_peak})

    e2e_img_s = summary.items / e2e_s
    # After start-up (Ray Data, the actor's imports, model load and compile: until the first
    # batch is written), the rate a long run approaches: the rest of the items over the rest.
    startup_s = summary.timings.get("prepare", 0.0) + summary.timings.get("generate_first_batch", 0.0)
    first_rows = min(batch_size, items)
    steady = (items - first_rows) / (e2e_s - startup_s) if items > first_rows and e2e_s > startup_s else None
    record.update({
        "e2e_img_s": e2e_img_s, "e2e_items": summary.items, "e2e_accepted": summary.accepted,
        "e2e_vs_engine": e2e_img_s / engine_img_s, "e2e_startup_s": startup_s, "e2e_steady_img_s": steady,
        "e2e_overhead_s": e2e_s - items / engine_img_s,
        "e2e_steady_vs_engine": steady / engine_img_s if steady else None,
        "steady_flop_bound_share": steady / bound if steady and bound else None,
        "e2e_timings_s": {k: round(v, 3) for k, v in summary.timings.items()}, "e2e_cost": summary.cost,
        "flop_bound_share": e2e_img_s / bound if bound else None,
        "peak_host_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_gpu_mb_e2e": e2e_peak.peak_mb if device == "cuda" else None,
    })
    return record


def _sync(device: str) -> None:
    """Wait for queued GPU work, so a timing ends when the work does."""
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def _device_name(device: str) -> str:
    import platform

    import torch

    return torch.cuda.get_device_name() if device == "cuda" else platform.processor() or platform.machine()
