"""The generation engine: how the generate stage drives a diffusers pipeline on its device.

Everything here is chosen by the job's `engine:` config (pipeline/config.py `Engine`). The GPU
options (bf16, channels_last, fused QKV projections, torch.compile) default to on for CUDA and
off for CPU, where they do not pay or only move the images' last bits. What holds everywhere:
images come back as uint8 tensors decoded by the VAE in fixed chunks (no PIL, and a batch of
32 at 512² never holds 32 decoder activations at once), and with compiled models every call
has the same shape (the last batch is padded and the padding dropped), so nothing recompiles.
"""

from __future__ import annotations

import logging

from pipeline.config import Engine, JobConfig

log = logging.getLogger(__name__)

def engine_for(config: JobConfig, items: int | None = None) -> Engine:
    """The job's engine options for a round of `items` items, safe for its brand adapters.

    With `compile` unset (on for CUDA), a round shorter than `compile_min_items` runs eagerly:
    the compile would cost more than it saves.

    Brand LoRA adapters are fused into copies of the base UNet when a worker first needs them
    (pipeline/campaign/brand.py): fused QKV projections computed before would keep the weights
    without the adapter, and the copies would be copies of a compiled wrapper, not of the
    module the adapter loader expects. So a job whose brands have adapters for its model runs
    without those two (bf16 and channels_last stay on).
    """
    engine = config.engine
    if engine.compile is None and items is not None and items < engine.compile_min_items:
        log.info("engine: %d items, fewer than compile_min_items=%d: no torch.compile", items,
                 engine.compile_min_items)
        engine = engine.model_copy(update={"compile": False})
    if not any(config.model in brand.adapters for brand in config.campaign.brands.values()):
        return engine
    if engine.fuse_qkv or engine.compile:
        log.warning("brand adapters: fused QKV projections and torch.compile are off for this job")
    return engine.model_copy(update={"fuse_qkv": False, "compile": False})


def wants(option: bool | None, device: str) -> bool:
    """An engine switch: `None` means on for CUDA and off for CPU; True/False force it."""
    return device == "cuda" if option is None else option


def model_dtype(engine: Engine, device: str, cpu_bf16: bool = False):
    """The weights' dtype: `auto` is bf16 on CUDA (fp16's range overflows some VAEs) and fp32 on a
    CPU, or with `cpu_bf16` (the generator) bf16 there too where the CPU has native bf16
    instructions (AVX512-BF16 or AMX); elsewhere bf16 would be emulated and slower. The scorer
    keeps fp32 on a CPU: its embeddings meet reference indexes built in fp32 and the gates'
    thresholds, and it costs a few ms an image there."""
    import torch

    if engine.dtype == "auto":
        bf16 = device == "cuda" or (device == "cpu" and cpu_bf16 and cpu_has_native_bf16())
        return torch.bfloat16 if bf16 else torch.float32
    return getattr(torch, engine.dtype)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes in bf16 natively (oneDNN's AVX512-BF16 or AMX kernels)."""
    import torch

    checks = (getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    return any(check() for check in checks if check is not None)


def optimise_pipeline(pipe, device: str, engine: Engine):
    """Apply the engine's options to a loaded pipeline already on `device`; returns it.

    Attention already runs through PyTorch's SDPA (diffusers' default processor on torch 2).
    """
    import torch

    if wants(engine.fuse_qkv, device):
        # One matmul for Q, K and V instead of three (UNet and VAE self-attention).
        pipe.fuse_qkv_projections()
    if wants(engine.channels_last, device):
        # Convolutions in NHWC: the layout tensor cores' kernels want.
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    if wants(engine.compile, device):
        # Inductor caches compiled graphs on disk (FX graph cache), so a worker that
        # compiled these shapes before starts from the cache. Hooks on the compiled
        # wrapper (the CFG-gap capture) stay outside the graph.
        options = dict(mode=engine.compile_mode, backend=engine.compile_backend, fullgraph=True)
        if engine.compile_scope == "blocks":  # compiled in place: `pipe.unet` stays the module
            pipe.unet.compile_repeated_blocks(**options)
        else:
            pipe.unet = torch.compile(pipe.unet, **options)
        pipe.vae.decoder = torch.compile(pipe.vae.decoder, **options)
    return pipe


def has_compiled_parts(module) -> bool:
    """Whether `module` is torch.compile's wrapper or holds sub-modules compiled in place."""
    return hasattr(module, "_orig_mod") or any(getattr(m, "_compiled_call_impl", None) is not None
                                               for m in module.modules())


def pad_size(engine: Engine, device: str, batch_size: int) -> int | None:
    """The fixed number of images per call (the stage's batch size) when padding is on, else None."""
    pad = wants(engine.compile, device) if engine.pad_batches is None else engine.pad_batches
    return batch_size if pad else None


def padded(rows: list[int], size: int | None) -> list[int]:
    """`rows` followed by copies of its last row up to a multiple of `size` (None: unchanged).

    The copies have their own generators seeded like the last row; their images are dropped.
    """
    if not size or not rows or len(rows) % size == 0:
        return rows
    return rows + [rows[-1]] * (size - len(rows) % size)


def to_uint8(images):
    """Decoded images in [-1, 1] (NCHW, any float dtype) -> NHWC uint8, exactly like diffusers'
    `output_type="np"` then `round(clip(x, 0, 1) * 255)`: NaN (a diverged VAE) becomes black,
    which the sanity gate rejects."""
    import torch

    scaled = torch.nan_to_num(images.float() / 2 + 0.5, nan=0.0).clamp(0.0, 1.0) * 255
    return scaled.round().to(torch.uint8).permute(0, 2, 3, 1)


def decode(vae, latents, chunk: int, fixed: bool = False):
    """VAE-decode `latents` `chunk` images at a time into NHWC uint8 on the same device.

    Peak decoder memory follows `chunk`, not the batch (the decoder's activations at 512²
    are about 1 GiB per image in bf16). With `fixed`, a short last chunk is padded with
    copies so a compiled decoder always sees one shape.
    """
    import torch

    out = []
    for part in latents.split(chunk):
        n = part.shape[0]
        if fixed and n < chunk:
            part = torch.cat([part, part[-1:].expand(chunk - n, *part.shape[1:])])
        image = vae.decode(part / vae.config.scaling_factor, return_dict=False)[0]
        out.append(to_uint8(image[:n]))
    return torch.cat(out)


def encode(vae, images, generators: list, chunk: int):
    """VAE-encode `images` (NCHW in [-1, 1], on the VAE's device) `chunk` at a time into scaled
    latents, each row sampling its latent with its own generator: what diffusers' img2img and
    inpainting pipelines do one image at a time (`_encode_vae_image`), in batched calls."""
    import torch

    out = []
    for start in range(0, images.shape[0], chunk):
        part = images[start:start + chunk].to(dtype=vae.dtype)
        dist = vae.encode(part).latent_dist
        out.append(dist.sample(generator=generators[start:start + chunk]) * vae.config.scaling_factor)
    return torch.cat(out)


def compile_counters(since: dict[str, int] | None = None) -> dict[str, int]:
    """torch.compile's counters in this process: graphs traced, recompiles, on-disk cache hits,
    misses and bypasses (FX graphs and AOT autograd; a bypass is a graph the cache would not
    take); zeros where nothing was compiled, empty where torch._dynamo was never imported.
    `since`: an earlier reading, subtracted (the counters are process-wide)."""
    import sys

    if "torch._dynamo" not in sys.modules:
        return {}
    from torch._dynamo.utils import counters

    wanted = [("stats", "unique_graphs"), ("aot_autograd", "autograd_cache_hit"),
              ("aot_autograd", "autograd_cache_miss"), ("aot_autograd", "autograd_cache_bypass"),
              ("inductor", "fxgraph_cache_hit"), ("inductor", "fxgraph_cache_miss"),
              ("inductor", "fxgraph_cache_bypass")]
    found = {f"{group}.{key}": counters[group][key] for group, key in wanted}
    found["recompiles"] = sum(counters["recompiles"].values())
    return {key: value - (since or {}).get(key, 0) for key, value in found.items()}


# dynamo's own timers (torch._dynamo.utils.compile_times), by what they split of a compile's seconds
_COMPILE_TIMERS = {"total": "_compile.compile_inner", "dynamo_tracing": "bytecode_tracing",
                   "guards": "build_guards", "backend": "OutputGraph.call_user_compiler"}


def compile_seconds(since: dict[str, float] | None = None) -> dict[str, float]:
    """Seconds torch.compile spent in this process: in all, in dynamo's bytecode tracing and
    guards, and in the backend (AOT autograd and inductor: a cold compile, or on a warm cache
    the lookups and loads). A warm worker still traces every compiled module before it finds
    the graph in the cache, so this splits a start-up's compile into what a cache saves and what
    it cannot. Empty where torch._dynamo was never imported; `since` is subtracted as in
    `compile_counters`."""
    import sys

    if "torch._dynamo" not in sys.modules:
        return {}
    from torch._dynamo.utils import compile_times

    names, values = compile_times(repr="csv", aggregate=True)
    seconds = dict(zip(names, (float(v) for v in values)))
    return {key: round(seconds.get(timer, 0.0) - (since or {}).get(key, 0.0), 3)
            for key, timer in _COMPILE_TIMERS.items()}
