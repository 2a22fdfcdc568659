"""Score: an open_clip model embeds images and prompts; `clip_score` is their cosine."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline.config import StageResources
from pipeline.schema import SCORE_FIELDS


@dataclass
class ScoreStage:
    """CLIP alignment of each image with its own prompt.

    `clip_score` = cosine(image embedding, prompt embedding) in [-1, 1]; the
    torchmetrics / CLIPScore convention is max(100 * clip_score, 0). The L2-normalised
    image embedding is kept for deduplication and memorization checks.
    """

    clip_path: Path
    clip_model: str
    resources: StageResources = field(default_factory=lambda: StageResources(batch_size=32))
    name: str = "score"

    def __post_init__(self) -> None:
        self._model = None

    def setup(self) -> None:
        import open_clip

        from pipeline.stages._torch import limit_threads, pick_device

        limit_threads(self.resources.num_cpus)
        self._device = pick_device(self.resources.num_gpus)
        source = f"local-dir:{self.clip_path}"
        model, _, self._preprocess = open_clip.create_model_and_transforms(source, device=self._device)
        self._model = model.eval()
        self._tokenizer = open_clip.get_tokenizer(source)

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self._model is None:
            raise RuntimeError("ScoreStage.setup() must run before the stage is called")
        import torch
        from PIL import Image

        n = batch.num_rows
        if n == 0:
            return _append(batch, [], [], [])
        widths = batch.column("width").to_pylist()
        heights = batch.column("height").to_pylist()
        images = [
            Image.frombytes("RGB", (w, h), raw)
            for raw, w, h in zip(batch.column("pixels").to_pylist(), widths, heights)
        ]
        with torch.inference_mode():
            pixels = torch.stack([self._preprocess(im) for im in images]).to(self._device)
            image_emb = self._model.encode_image(pixels, normalize=True).float()
            tokens = self._tokenizer(batch.column("prompt").to_pylist()).to(self._device)
            text_emb = self._model.encode_text(tokens, normalize=True).float()
        scores = (image_emb * text_emb).sum(dim=-1).clamp(-1.0, 1.0).cpu().numpy()
        embeddings = image_emb.cpu().numpy().astype(np.float32)
        return _append(batch, [self.clip_model] * n, scores.tolist(), list(embeddings))


def _append(batch: pa.Table, models, scores, embeddings) -> pa.Table:
    model_f, score_f, emb_f = SCORE_FIELDS
    out = batch.append_column(model_f, pa.array(models, type=model_f.type))
    out = out.append_column(score_f, pa.array(scores, type=score_f.type))
    return out.append_column(emb_f, pa.array([e.tolist() for e in embeddings], type=emb_f.type))
