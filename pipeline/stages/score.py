"""Score: an open_clip model embeds images and prompts; `clip_score` is their cosine."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline.config import Engine, StageResources
from pipeline.schema import SCORE_FIELDS
from pipeline.stages._columns import binary_views, list_column


@dataclass
class ScoreStage:
    """CLIP alignment of each image with its own prompt.

    `clip_score` = cosine(image embedding, prompt embedding) in [-1, 1]; the
    torchmetrics / CLIPScore convention is max(100 * clip_score, 0). The L2-normalised
    image embedding is kept for deduplication and memorization checks.

    Images go from the `pixels` column to the device as one uint8 tensor per size and are
    resized, cropped and normalised there (no PIL, no PNG). Next to the generator
    (pipeline/stages/fused.py) the scorer takes the decoded images still on the device and
    copies only product-photo rows (repainted since) from the host.
    """

    clip_path: Path
    clip_model: str
    resources: StageResources = field(default_factory=lambda: StageResources(batch_size=32))
    name: str = "score"
    holds_model = True  # stays set up across a run's rounds (pipeline/warm_models.py)
    engine: Engine = field(default_factory=Engine)  # dtype (bf16 on CUDA) and CPU threads

    def __post_init__(self) -> None:
        self._model = None
        self.setup_s: dict[str, float] = {}

    def setup(self) -> None:
        """Build the model on its device; `setup_s`: seconds for the imports and the model."""
        tick = time.perf_counter()
        import open_clip
        import torch

        from pipeline.progress import Laps
        from pipeline.stages._torch import limit_threads, pick_device
        from pipeline.stages.engine import model_dtype

        laps = Laps(tick)
        limit_threads(self.engine.torch_threads or self.resources.num_cpus)
        self._device = pick_device(self.resources.num_gpus)
        source = f"local-dir:{self.clip_path}"
        laps.lap("import")
        # open_clip initialises every weight at random before loading the checkpoint over it: nearly
        # all of the 2.1-2.5 s a ViT-L/14 takes to load on one CPU core. On the GPU that takes no time.
        with torch.device(self._device):
            model = open_clip.create_model(source, device=self._device)
        self._dtype = model_dtype(self.engine, self._device)
        self._model = model.to(self._dtype).eval()
        self._preprocess = tensor_preprocess(open_clip.get_model_preprocess_cfg(model))
        self._tokenizer = open_clip.get_tokenizer(source)
        self.setup_s = laps.lap("load")

    def __call__(self, batch: pa.Table, on_device: list | None = None) -> pa.Table:
        """Score every row. `on_device`: per row, the image already on the scorer's device (HWC
        uint8) or None; those rows are not read from the `pixels` column (a fused generator's)."""
        if self._model is None:
            raise RuntimeError("ScoreStage.setup() must run before the stage is called")
        import torch

        n = batch.num_rows
        if n == 0:
            return _append(batch, [], [], np.zeros((0, 0), np.float32))
        with torch.inference_mode():
            pixels = self._pixels(batch, on_device or [None] * n).to(self._dtype)
            image_emb = self._model.encode_image(pixels, normalize=True).float()
            tokens = self._tokenizer(batch.column("prompt").to_pylist()).to(self._device)
            text_emb = self._model.encode_text(tokens, normalize=True).float()
        scores = (image_emb * text_emb).sum(dim=-1).clamp(-1.0, 1.0).cpu().numpy()
        embeddings = image_emb.cpu().numpy().astype(np.float32)
        return _append(batch, [self.clip_model] * n, scores.tolist(), embeddings)

    def _pixels(self, batch: pa.Table, on_device: list):
        """The model's input for every row, in row order: each size group is preprocessed on the
        device as one tensor; its rows not already there are moved as one uint8 tensor."""
        import torch

        sizes = list(zip(batch.column("width").to_pylist(), batch.column("height").to_pylist()))
        raws = None
        out = [None] * batch.num_rows
        for width, height in sorted(set(sizes)):
            rows = [i for i, s in enumerate(sizes) if s == (width, height)]
            there = {i: on_device[i] for i in rows if on_device[i] is not None}
            todo = [i for i in rows if i not in there]
            if todo:
                if raws is None:
                    raws = binary_views(batch.column("pixels"))  # views of Arrow's buffer: no copy per row
                host = np.stack([raws[i] for i in todo]).reshape(len(todo), height, width, 3)
                moved = torch.from_numpy(host).to(self._device)
                there.update(zip(todo, moved))
            group = moved if len(todo) == len(rows) else torch.stack([there[i] for i in rows])
            images = group.permute(0, 3, 1, 2).float() / 255
            for row, tensor in zip(rows, self._preprocess(images)):
                out[row] = tensor
        return torch.stack(out)


def tensor_preprocess(cfg: dict):
    """open_clip's image transform (resize, centre crop, normalise) on batched float tensors.

    It equals the PIL transform exactly when no resize is needed; when resizing, the
    antialiased bicubic of torch differs from PIL's by well under one grey level.
    """
    from torchvision import transforms as T

    size = cfg["size"] if isinstance(cfg["size"], (tuple, list)) else (cfg["size"], cfg["size"])
    mode = {"bicubic": T.InterpolationMode.BICUBIC, "bilinear": T.InterpolationMode.BILINEAR}
    interpolation = mode.get(cfg.get("interpolation", "bicubic"), T.InterpolationMode.BICUBIC)
    resize_mode = cfg.get("resize_mode", "shortest")
    if resize_mode == "shortest":
        resize = T.Resize(min(size), interpolation=interpolation, antialias=True)
    elif resize_mode == "squash":
        resize = T.Resize(tuple(size), interpolation=interpolation, antialias=True)
    else:
        raise ValueError(f"open_clip resize_mode {resize_mode!r} is not supported (shortest, squash)")
    return T.Compose([resize, T.CenterCrop(tuple(size)), T.Normalize(cfg["mean"], cfg["std"])])


def _append(batch: pa.Table, models, scores, embeddings) -> pa.Table:
    model_f, score_f, emb_f = SCORE_FIELDS
    out = batch.append_column(model_f, pa.array(models, type=model_f.type))
    out = out.append_column(score_f, pa.array(scores, type=score_f.type))
    return out.append_column(emb_f, list_column(embeddings, emb_f.type))
