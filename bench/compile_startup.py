"""What torch.compile's start-up costs a generator worker whose compile cache is already warm.

    python bench/compile_startup.py [--preset sd15-arch] [--scope model|blocks] [--backend eager]
                                    [--batch 2] [--latent 8] [--device cpu|cuda] [--json FILE]

A worker that finds inductor's caches warm (FX graph and AOT autograd hits, as the generate
actor's `first batch` log line counts them) still traces each compiled module with dynamo
before it looks the graph up: that time is paid by every worker start, on every device kind.
This script times it on the host, in a fresh process: the engine's own `optimise_pipeline`
(fused QKV and channels_last as on a GPU, `compile_scope` as given), then the first call of
the UNet and of the VAE decoder against the next ones, and the first call's compile split by
dynamo's own timers (`compile_seconds`: tracing, guards, backend). With `--backend eager`
nothing is compiled (no C++ or Triton build): the tracing alone. With `inductor`, run it twice
on one `TORCHINDUCTOR_CACHE_DIR`: cold, then warm. Static shapes: tracing does not depend on
the spatial size, so a small latent (`--latent 8`: 64² images) keeps the runs short on a CPU.
Run each scope in its own process (dynamo's caches are per process).

On a GPU (`--device cuda`: bf16, as the engine runs there) at the engine's shapes (`--batch 32
--latent 64`: 512²), `steady_s` (the median of `--calls` calls after the first) with `--backend
none` is the engine's eager speed, and with `inductor` the compiled one: compile's own speed-up
over the eager path, per scope, which decides `compile_scope` and `compile_min_items`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch


def timed(call, device: str) -> float:
    tick = time.perf_counter()
    with torch.inference_mode():
        call()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - tick


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="sd15-arch")
    parser.add_argument("--scope", choices=["model", "blocks"], default="model")
    parser.add_argument("--backend", choices=["none", "eager", "aot_eager", "inductor"], default="eager",
                        help="none: no torch.compile at all (the engine's eager path)")
    parser.add_argument("--batch", type=int, default=2,
                        help="images per call (the UNet sees twice as many under guidance)")
    parser.add_argument("--latent", type=int, default=8, help="latent side (image side / 8)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--calls", type=int, default=3, help="calls after the first, for steady_s (their median)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    import diffusers

    from pipeline.config import Engine
    from pipeline.models.presets import DEFAULT_MODELS_DIR, resolve_model
    from pipeline.stages.engine import compile_counters, compile_seconds, optimise_pipeline

    tick = time.perf_counter()
    model = resolve_model(args.preset, DEFAULT_MODELS_DIR)
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    pipe = getattr(diffusers, model.pipeline_class).from_pretrained(
        str(model.path), local_files_only=True, use_safetensors=True, dtype=dtype).to(args.device)
    load_s = time.perf_counter() - tick
    engine = Engine(compile=args.backend != "none", compile_scope=args.scope, fuse_qkv=True, channels_last=True,
                    **({} if args.backend == "none" else {"compile_backend": args.backend}))
    pipe = optimise_pipeline(pipe, args.device, engine)
    unet, decoder = pipe.unet, pipe.vae.decoder
    rows = 2 * args.batch

    def tensor(*shape):
        return torch.randn(*shape, device=args.device, dtype=dtype)

    latents = tensor(rows, unet.config.in_channels, args.latent, args.latent).to(memory_format=torch.channels_last)
    context = tensor(rows, 77, unet.config.cross_attention_dim)
    timestep = torch.tensor(999, device=args.device)
    z = tensor(args.batch, pipe.vae.config.latent_channels, args.latent,
               args.latent).to(memory_format=torch.channels_last)

    figures = {"preset": args.preset, "scope": args.scope, "backend": args.backend, "batch": args.batch,
               "latent": args.latent, "device": args.device, "dtype": str(dtype).removeprefix("torch."),
               "load_s": round(load_s, 2), "torch": torch.__version__}
    for name, call in (("unet", lambda: unet(latents, timestep, encoder_hidden_states=context, return_dict=False)),
                       ("decoder", lambda: decoder(z))):
        before = compile_seconds()
        first = timed(call, args.device)
        spent = compile_seconds(before)
        steady = statistics.median(timed(call, args.device) for _ in range(args.calls))
        figures[name] = {"first_s": round(first, 3), "steady_s": round(steady, 4), "compile_s": spent}
    figures["compile_counters"] = compile_counters()
    text = json.dumps(figures, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
