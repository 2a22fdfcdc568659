"""What torch.compile's start-up costs a generator worker whose compile cache is already warm.

    python bench/compile_startup.py [--preset sd15-arch] [--scope model|blocks] [--backend eager]
                                    [--batch 2] [--latent 8] [--json FILE]

A worker that finds inductor's caches warm (FX graph and AOT autograd hits, as the generate
actor's `first batch` log line counts them) still traces each compiled module with dynamo
before it looks the graph up: that time is paid by every worker start, on every device kind.
This script times it on the host, in a fresh process: the engine's own `optimise_pipeline`
(fused QKV and channels_last as on a GPU, `compile_scope` as given), then the first call of
the UNet and of the VAE decoder against the second, and the first call's compile split by
dynamo's own timers (`compile_seconds`: tracing, guards, backend). With `--backend eager`
nothing is compiled (no C++ or Triton build): the tracing alone. With `inductor`, run it twice
on one `TORCHINDUCTOR_CACHE_DIR`: cold, then warm. Static shapes: tracing does not depend on
the spatial size, so a small latent (`--latent 8`: 64² images) keeps the runs short on a CPU.
Run each scope in its own process (dynamo's caches are per process).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def timed(call) -> float:
    tick = time.perf_counter()
    with torch.inference_mode():
        call()
    return time.perf_counter() - tick


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="sd15-arch")
    parser.add_argument("--scope", choices=["model", "blocks"], default="model")
    parser.add_argument("--backend", choices=["eager", "aot_eager", "inductor"], default="eager")
    parser.add_argument("--batch", type=int, default=2, help="images per call (the UNet sees twice as many under guidance)")
    parser.add_argument("--latent", type=int, default=8, help="latent side (image side / 8)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    import diffusers

    from pipeline.config import Engine
    from pipeline.models.presets import DEFAULT_MODELS_DIR, resolve_model
    from pipeline.stages.engine import compile_counters, compile_seconds, optimise_pipeline

    tick = time.perf_counter()
    model = resolve_model(args.preset, DEFAULT_MODELS_DIR)
    pipe = getattr(diffusers, model.pipeline_class).from_pretrained(
        str(model.path), local_files_only=True, use_safetensors=True, dtype=torch.float32)
    load_s = time.perf_counter() - tick
    engine = Engine(compile=True, compile_backend=args.backend, compile_scope=args.scope,
                    fuse_qkv=True, channels_last=True)
    pipe = optimise_pipeline(pipe, "cpu", engine)
    unet, decoder = pipe.unet, pipe.vae.decoder
    rows = 2 * args.batch
    latents = torch.randn(rows, unet.config.in_channels, args.latent, args.latent).to(memory_format=torch.channels_last)
    context = torch.randn(rows, 77, unet.config.cross_attention_dim)
    timestep = torch.tensor(999)
    z = torch.randn(args.batch, pipe.vae.config.latent_channels, args.latent, args.latent).to(memory_format=torch.channels_last)

    figures = {"preset": args.preset, "scope": args.scope, "backend": args.backend, "batch": args.batch,
               "latent": args.latent, "load_s": round(load_s, 2), "torch": torch.__version__}
    for name, call in (("unet", lambda: unet(latents, timestep, encoder_hidden_states=context, return_dict=False)),
                       ("decoder", lambda: decoder(z))):
        before = compile_seconds()
        first = timed(call)
        spent = compile_seconds(before)
        second = timed(call)
        figures[name] = {"first_s": round(first, 2), "second_s": round(second, 2), "compile_s": spent}
    figures["compile_counters"] = compile_counters()
    text = json.dumps(figures, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
