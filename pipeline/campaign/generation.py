"""What the generate stage does for campaign rows: brand adapters and product-photo backgrounds.

`GenerateStage` (pipeline/stages/generate.py) holds one of these when the job makes campaign
creative. Rows are generated with their brand's fused LoRA pipeline (`pipe_for`); rows of a
SKU with a product photo then get a new background by inpainting around the product
(`composite`): the model's scene with the cut-out pasted in is the starting image, the mask
repaints everything but the product (white = repaint), and the pipeline is
`AutoPipelineForInpainting.from_pipe` of the same weights (a plain 4-channel UNet works: the
pipeline blends the known region's noised latents back at each step). The product's exact
pixels are pasted back later at the canvas size (`pipeline.stages.composite`).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image

from pipeline.campaign.layout import canvas_size
from pipeline.campaign.photo import load_cutout
from pipeline.stages._columns import column_lists

PHOTO_SEED_OFFSET = 0x5EED  # the inpainting noise differs from the scene's, and is just as fixed


@dataclass
class CampaignGeneration:
    """Brand adapters (under `adapters_dir`) and product-photo inpainting for GenerateStage."""

    adapters_dir: Path
    canvas: int
    strength: float
    steps: int
    guidance_scale: float
    _pipes: dict = field(default_factory=dict, init=False, repr=False)
    _inpaint: dict = field(default_factory=dict, init=False, repr=False)

    def adapter_keys(self, batch: pa.Table) -> list[tuple[str, str, float] | None]:
        """Per row: (adapter name, sha256, scale), or None for the base pipeline."""
        if "brand_adapter" not in batch.column_names:
            return [None] * batch.num_rows
        rows = zip(batch.column("brand_adapter").to_pylist(), batch.column("brand_adapter_sha256").to_pylist(),
                   batch.column("brand_adapter_scale").to_pylist())
        return [(name, sha, float(scale)) if name else None for name, sha, scale in rows]

    def pipe_for(self, base, key: tuple[str, str, float] | None):
        """`base`, or the brand's fused copy of it (built once per worker)."""
        if key is None:
            return base
        if key not in self._pipes:
            from pipeline.campaign.brand import fused_pipeline

            name, sha256, scale = key
            self._pipes[key] = fused_pipeline(base, self.adapters_dir, name, scale, sha256)
        return self._pipes[key]

    def photo_rows(self, batch: pa.Table, rows: list[int]) -> list[int]:
        """The positions k in `rows` whose row has a product photo: those `composite` repaints."""
        if "product_image" not in batch.column_names:
            return []
        paths = batch.column("product_image").to_pylist()
        return [k for k, row in enumerate(rows) if paths[row]]

    def composite(self, pipe, batch: pa.Table, rows: list[int], images: np.ndarray,
                  decode_chunk: int = 8) -> np.ndarray:
        """`images` (one per row of `rows`, HWC uint8) with a new background around each product
        photo; rows without a photo come back unchanged.

        A batch has any number of photo rows, and a compiled UNet would recompile for each new
        count (about a minute each at 512² on an H200). Under torch.compile this pass runs in
        dynamo's `eager_on_recompile` stance: a pass of as many rows as the generation call that
        compiled the UNet (a whole batch of photo rows, as `pipeline.plan.generation_batches`
        cuts them) fits the compiled graph's guards and runs it; any other count runs the same
        weights eagerly and compiles nothing. It decodes through the engine's fixed-shape chunks, which the compiled
        decoder has already seen."""
        todo = self.photo_rows(batch, rows)
        if not todo:
            return images
        paths = batch.column("product_image").to_pylist()
        import torch
        from diffusers import AutoPipelineForInpainting

        from pipeline.stages.engine import decode, encode, has_compiled_parts

        col = column_lists(batch, ("product_image_sha256", "product_box", "prompt", "negative_prompt", "seed"))
        height, width = images.shape[1:3]
        starts, masks = [], []
        for k in todo:
            row = rows[k]
            start, mask = start_and_mask(images[k], paths[row], col["product_image_sha256"][row],
                                          col["product_box"][row], canvas_size(width, height, self.canvas))
            starts.append(start)
            masks.append(mask)
        if id(pipe) not in self._inpaint:  # the same weights (a compiled UNet too), built once per pipeline
            inpaint = AutoPipelineForInpainting.from_pipe(pipe)
            inpaint.set_progress_bar_config(disable=True)
            self._inpaint[id(pipe)] = (inpaint, has_compiled_parts(pipe.unet), has_compiled_parts(pipe.vae.decoder))
        inpaint, compiled_unet, fixed_decode = self._inpaint[id(pipe)]
        device = pipe.device
        generators = [torch.Generator(device).manual_seed(int(col["seed"][rows[k]]) ^ PHOTO_SEED_OFFSET) for k in todo]
        with torch.inference_mode():
            # diffusers encodes each start image alone, and the masked image too, which only a
            # 9-channel inpainting UNet reads (`from_pipe` of text-to-image weights has 4): here one
            # batched encode, the same draw from each row's generator, and the latents handed over.
            pixels = inpaint.image_processor.preprocess(starts, height=height, width=width).to(device)
            latents = encode(pipe.vae, pixels, generators, decode_chunk)
            # (`set_stance(...)` takes effect when called, so it is called in the `with` itself.)
            with torch.compiler.set_stance("eager_on_recompile") if compiled_unet else nullcontext():
                result = inpaint(prompt=[col["prompt"][rows[k]] for k in todo],
                                 negative_prompt=[col["negative_prompt"][rows[k]] or "" for k in todo],
                                 image=latents, masked_image_latents=torch.zeros_like(latents),
                                 mask_image=masks, height=height, width=width, strength=self.strength,
                                 num_inference_steps=inpaint_steps(self.steps, self.strength),
                                 guidance_scale=self.guidance_scale, generator=generators, output_type="latent")
            done = decode(pipe.vae, result.images, decode_chunk, fixed=fixed_decode).cpu().numpy()
        out = images.copy()
        for k, image in zip(todo, done):
            out[k] = image
        return out


def inpaint_steps(steps: int, strength: float) -> int:
    """The inpainting pass's `num_inference_steps`: the model's, or more where the model's would leave
    no step at this strength (diffusers runs int(steps * strength) of them; a one-step model such as
    SD-Turbo at strength 0.9 would run none, and diffusers refuses that call)."""
    n = steps
    while int(n * strength) < 1:
        n += 1
    return n


def start_and_mask(scene: np.ndarray, path: str, sha256: str, box: list[int],
                   canvas: tuple[int, int]) -> tuple[Image.Image, Image.Image]:
    """At the model's size: the scene with the product pasted in, and the repaint mask."""
    height, width = scene.shape[:2]
    sx, sy = width / canvas[0], height / canvas[1]
    small_box = (round(box[0] * sx), round(box[1] * sy), round(box[2] * sx), round(box[3] * sy))
    size = (max(1, small_box[2] - small_box[0]), max(1, small_box[3] - small_box[1]))
    product = load_cutout(path, sha256).resize(size, Image.Resampling.LANCZOS)
    start = Image.fromarray(scene)
    start.paste(product.convert("RGB"), small_box[:2], product.getchannel("A"))
    keep = Image.new("L", (width, height), 0)
    keep.paste(product.getchannel("A").point(lambda a: 255 if a > 0 else 0), small_box[:2])
    return start, keep.point(lambda a: 0 if a else 255)  # white = repaint the background
