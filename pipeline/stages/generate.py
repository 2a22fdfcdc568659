"""Generate: a diffusers text-to-image pipeline turns planned items into raw pixels + lineage."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline.campaign.generation import CampaignGeneration
from pipeline.config import Engine, StageResources
from pipeline.progress import Laps
from pipeline.schema import GENERATION_FIELDS
from pipeline.stages._columns import binary_column
from pipeline.stages.engine import decode, model_dtype, optimise_pipeline, pad_size, padded


@dataclass
class GenerateStage:
    """Run a local diffusers pipeline over items; one `torch.Generator` per image.

    Input columns: prompt, negative_prompt, seed, width, height. Output adds `pixels`
    (HWC uint8 bytes) and the generation lineage. Each image's noise depends only on its own
    prompt and seed, never on which other items share its batch; the kernels' arithmetic may
    (float32 on CPU: a pixel a level apart between batch sizes or thread counts; bfloat16 gave
    identical bytes in every batching tried).
    """

    model_path: Path
    model_id: str
    model_sha256: str
    pipeline_class: str
    steps: int
    guidance_scale: float
    resources: StageResources = field(default_factory=StageResources)
    name: str = "generate"
    holds_model = True  # stays set up across a run's rounds (pipeline/warm_models.py)
    # Campaign rows: brand LoRA adapters and product-photo backgrounds (pipeline/campaign/generation.py)
    campaign: CampaignGeneration | None = None
    # How the model is driven: dtype, channels_last, fused QKV, compile, padding, VAE chunks
    engine: Engine = field(default_factory=Engine)

    def __post_init__(self) -> None:
        self._pipe = None
        self.setup_s: dict[str, float] = {}
        self._current = None  # the pipeline of the row group being generated (base or a brand's)
        self._max_batch: int | None = None  # set when out of memory halved the batch

    def setup(self) -> None:
        """Load the pipeline once per worker (safetensors only, no remote code, no network).

        `setup_s` splits the set-up's seconds (the actor logs them): imports, loading the
        weights on the host, moving them to the device (a GPU's CUDA start included), and the
        engine's options (torch.compile itself happens at the first batch)."""
        tick = time.perf_counter()
        import diffusers
        import torch

        from pipeline.stages._torch import limit_threads, pick_device

        laps = Laps(tick)
        limit_threads(self.engine.torch_threads or self.resources.num_cpus)
        diffusers.utils.logging.disable_progress_bar()  # one bar per load is noise in a batch job
        self._device = pick_device(self.resources.num_gpus)
        dtype = model_dtype(self.engine, self._device, cpu_bf16=True)
        pipeline_cls = getattr(diffusers, self.pipeline_class)
        laps.lap("import")
        pipe = pipeline_cls.from_pretrained(
            str(self.model_path), local_files_only=True, use_safetensors=True, dtype=dtype,
        )
        pipe.set_progress_bar_config(disable=True)
        laps.lap("load")
        pipe = pipe.to(self._device)
        laps.lap("to_device")
        self._pipe = optimise_pipeline(pipe, self._device, self.engine)
        self._pad_size = pad_size(self.engine, self._device, self.resources.batch_size)
        self._torch_version = torch.__version__
        self.setup_s = laps.lap("optimise")

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.generate(batch)[0]

    def generate(self, batch: pa.Table) -> tuple[pa.Table, list]:
        """The batch with its images and lineage, and per row the decoded image still on the
        device (HWC uint8; None for a product-photo row, whose background was repainted since):
        what a scorer in the same worker reads instead of copying the pixels back."""
        if self._pipe is None:
            raise RuntimeError("GenerateStage.setup() must run before the stage is called")
        # 1. Check inputs
        n = batch.num_rows
        prompts = batch.column("prompt").to_pylist()
        negatives = [p or "" for p in batch.column("negative_prompt").to_pylist()]
        seeds = batch.column("seed").to_pylist()
        sizes = list(zip(batch.column("width").to_pylist(), batch.column("height").to_pylist()))
        # Training items may ask for their own (lower, more diverse) guidance; null: the stage's.
        overrides = (batch.column("guidance_override").to_pylist()
                     if "guidance_override" in batch.column_names else [None] * n)
        guidances = [self.guidance_scale if g is None else float(g) for g in overrides]
        # 2. Generate each size group in one call; rows keep their input order
        pixels: list[np.ndarray | None] = [None] * n  # views of each call's images; one copy into Arrow
        on_device: list = [None] * n  # views of each call's decoded tensor, on the device
        gaps: list[float | None] = [None] * n
        adapters = self.campaign.adapter_keys(batch) if self.campaign else [None] * n
        for adapter, size, guidance in sorted(set(zip(adapters, sizes, guidances)), key=repr):
            rows = [i for i in range(n) if sizes[i] == size and adapters[i] == adapter and guidances[i] == guidance]
            self._current = self.campaign.pipe_for(self._pipe, adapter) if self.campaign else self._pipe
            call = padded(rows, self._pad_size)  # one shape per call for compiled models; copies dropped
            images, gap, decoded = self._generate_fitting([prompts[i] for i in call], [negatives[i] for i in call],
                                                          [seeds[i] for i in call], *size, guidance)
            images, gap, decoded = images[:len(rows)], None if gap is None else gap[:len(rows)], decoded[:len(rows)]
            if self.campaign:  # product photos: a new background inpainted around the product
                images = self.campaign.composite(self._current, batch, rows, images, self.engine.vae_decode_chunk)
                for k in self.campaign.photo_rows(batch, rows):
                    decoded[k] = None  # the device copy is the scene before its background was repainted
            for k, (row, image) in enumerate(zip(rows, images)):
                pixels[row], on_device[row] = image, decoded[k]
                gaps[row] = None if gap is None else float(gap[k])
        # 3. Attach lineage
        scheduler = type(self._pipe.scheduler).__name__
        values = {
            "model_id": [self.model_id] * n,
            "model_sha256": [self.model_sha256] * n,
            "scheduler": [scheduler] * n,
            "steps": [self.steps] * n,
            "guidance_scale": guidances,
            "torch_version": [self._torch_version] * n,
            "device": [self._device] * n,
            "mem_cfg_gap": gaps,
        }
        out = batch
        for f in GENERATION_FIELDS:
            array = binary_column(pixels, f.type) if f.name == "pixels" else pa.array(values[f.name], type=f.type)
            out = out.append_column(f, array)
        return out, on_device

    def _generate_fitting(self, prompts, negatives, seeds, width, height,
                          guidance: float | None = None) -> tuple[np.ndarray, np.ndarray | None, list]:
        """`_generate` in chunks that fit: out of memory (CUDA or host) halves the batch and goes on.
        Returns the images on the host, the CFG gaps, and a list of the images on the device.

        Each image keeps its own generator, so a split moves a pixel by a level at most (the last
        float bit of batched kernels); the smaller size sticks for the stage's later batches.
        """
        from pipeline.faults import in_fitting_batches

        parts, self._max_batch = in_fitting_batches(
            lambda a, b: self._generate(prompts[a:b], negatives[a:b], seeds[a:b], width, height, guidance),
            len(prompts), self._max_batch, device=self._device)
        gaps = [gap for _, gap, _ in parts]
        return (parts[0][0] if len(parts) == 1 else np.concatenate([images for images, _, _ in parts]),
                None if any(g is None for g in gaps) else np.concatenate(gaps),
                [image for _, _, decoded in parts for image in decoded.unbind(0)])

    def _generate(self, prompts, negatives, seeds, width, height,
                  guidance: float | None = None):
        """(images on the host, CFG gaps or None, the same images on the device: NHWC uint8)."""
        import torch

        guidance = self.guidance_scale if guidance is None else guidance

        generators = [torch.Generator(self._device).manual_seed(int(s)) for s in seeds]
        first_step: list[torch.Tensor] = []

        def capture(module, args, output) -> None:
            # The first UNet call sees [unconditional; conditional] halves under guidance.
            if not first_step:
                first_step.append(output[0] if isinstance(output, tuple) else output.sample)

        pipe = self._current or self._pipe
        hook = pipe.unet.register_forward_hook(capture)
        try:
            with torch.inference_mode():
                result = pipe(
                    prompt=prompts, negative_prompt=negatives, generator=generators,
                    num_inference_steps=self.steps, guidance_scale=guidance,
                    width=width, height=height, output_type="latent",
                )
                # Decoded in fixed chunks on the device; only uint8 pixels cross to the host.
                decoded = decode(pipe.vae, result.images, self.engine.vae_decode_chunk,
                                 fixed=self._pad_size is not None)
                images = decoded.cpu().numpy()
        finally:
            hook.remove()
        gap = None
        if guidance > 1 and first_step and first_step[0].shape[0] == 2 * len(prompts):
            uncond, cond = first_step[0].float().chunk(2)
            gap = (cond - uncond).flatten(1).norm(dim=1).cpu().numpy()
        return images, gap, decoded
