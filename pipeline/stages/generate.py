"""Generate: a diffusers text-to-image pipeline turns planned items into raw pixels + lineage."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline.config import StageResources
from pipeline.schema import GENERATION_FIELDS


@dataclass
class GenerateStage:
    """Run a local diffusers pipeline over items; one `torch.Generator` per image.

    Input columns: prompt, negative_prompt, seed, width, height. Output adds `pixels`
    (HWC uint8 bytes) and the generation lineage. Each image depends only on its own
    prompt and seed, never on which other items share its batch.
    """

    model_path: Path
    model_id: str
    model_sha256: str
    pipeline_class: str
    steps: int
    guidance_scale: float
    resources: StageResources = field(default_factory=StageResources)
    name: str = "generate"

    def __post_init__(self) -> None:
        self._pipe = None

    def setup(self) -> None:
        """Load the pipeline once per worker (safetensors only, no remote code, no network)."""
        import diffusers
        import torch

        from pipeline.stages._torch import limit_threads, pick_device

        limit_threads(self.resources.num_cpus)
        diffusers.utils.logging.disable_progress_bar()  # one bar per load is noise in a batch job
        self._device = pick_device(self.resources.num_gpus)
        dtype = torch.float16 if self._device == "cuda" else torch.float32
        pipeline_cls = getattr(diffusers, self.pipeline_class)
        pipe = pipeline_cls.from_pretrained(
            str(self.model_path), local_files_only=True, use_safetensors=True, dtype=dtype,
        )
        pipe.set_progress_bar_config(disable=True)
        self._pipe = pipe.to(self._device)
        self._torch_version = torch.__version__

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self._pipe is None:
            raise RuntimeError("GenerateStage.setup() must run before the stage is called")
        # 1. Check inputs
        n = batch.num_rows
        prompts = batch.column("prompt").to_pylist()
        negatives = [p or "" for p in batch.column("negative_prompt").to_pylist()]
        seeds = batch.column("seed").to_pylist()
        sizes = list(zip(batch.column("width").to_pylist(), batch.column("height").to_pylist()))
        # 2. Generate each size group in one call; rows keep their input order
        pixels: list[bytes | None] = [None] * n
        gaps: list[float | None] = [None] * n
        for size in sorted(set(sizes)):
            rows = [i for i in range(n) if sizes[i] == size]
            images, gap = self._generate([prompts[i] for i in rows], [negatives[i] for i in rows],
                                         [seeds[i] for i in rows], *size)
            for k, (row, image) in enumerate(zip(rows, images)):
                pixels[row] = image.tobytes()
                gaps[row] = None if gap is None else float(gap[k])
        # 3. Attach lineage
        scheduler = type(self._pipe.scheduler).__name__
        values = {
            "pixels": pixels,
            "model_id": [self.model_id] * n,
            "model_sha256": [self.model_sha256] * n,
            "scheduler": [scheduler] * n,
            "steps": [self.steps] * n,
            "guidance_scale": [self.guidance_scale] * n,
            "torch_version": [self._torch_version] * n,
            "device": [self._device] * n,
            "mem_cfg_gap": gaps,
        }
        out = batch
        for f in GENERATION_FIELDS:
            out = out.append_column(f, pa.array(values[f.name], type=f.type))
        return out

    def _generate(self, prompts, negatives, seeds, width, height) -> tuple[np.ndarray, np.ndarray | None]:
        import torch

        generators = [torch.Generator(self._device).manual_seed(int(s)) for s in seeds]
        first_step: list[torch.Tensor] = []

        def capture(module, args, output) -> None:
            # The first UNet call sees [unconditional; conditional] halves under guidance.
            if not first_step:
                first_step.append(output[0] if isinstance(output, tuple) else output.sample)

        hook = self._pipe.unet.register_forward_hook(capture)
        try:
            with torch.inference_mode():
                result = self._pipe(
                    prompt=prompts, negative_prompt=negatives, generator=generators,
                    num_inference_steps=self.steps, guidance_scale=self.guidance_scale,
                    width=width, height=height, output_type="np",
                )
        finally:
            hook.remove()
        gap = None
        if self.guidance_scale > 1 and first_step and first_step[0].shape[0] == 2 * len(prompts):
            uncond, cond = first_step[0].float().chunk(2)
            gap = (cond - uncond).flatten(1).norm(dim=1).cpu().numpy()
        # NaN pixels (a diverged fp16 VAE) become black, which the sanity gate rejects.
        images = np.nan_to_num(result.images, nan=0.0)
        return (np.clip(images, 0.0, 1.0) * 255).round().astype(np.uint8), gap
