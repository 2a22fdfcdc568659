"""The reference index: embeddings of training or protected images, for memorization checks.

Built from a folder of images or a Parquet file with an `image` column (the Hugging Face
`Image` struct or plain bytes), with the run's open_clip scorer, and written as
`<index_dir>/index.parquet` (+ `index.json`, written last). The memorization gate
searches it; this module only builds it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import BadInputError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
INDEX_SCHEMA = pa.schema([
    ("ref_id", pa.string()),        # sha256 of the image bytes: the same image is one entry
    ("source", pa.string()),        # path (folder) or "<file>#<row>" (Parquet)
    ("embedding", pa.list_(pa.float32())),
])


def iter_reference_images(source: Path):
    """(source label, image bytes) for every image in a folder (recursive) or a Parquet file."""
    if source.is_dir():
        for path in sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
            yield str(path.relative_to(source)), path.read_bytes()
    elif source.suffix == ".parquet" and source.is_file():
        table = pq.read_table(source)
        if "image" not in table.column_names:
            raise BadInputError(f"{source}: no `image` column (struct<bytes, path> or binary)")
        for row, value in enumerate(table.column("image").to_pylist()):
            data = value.get("bytes") if isinstance(value, dict) else value
            if data:
                yield f"{source.name}#{row}", data
    else:
        raise BadInputError(f"{source}: not a folder of images or a .parquet file")


def build_reference_index(source: Path, index_dir: Path, clip_path: Path, *, batch_size: int = 64) -> dict:
    """Embed every distinct image of `source`; returns the index's description (index.json)."""
    import open_clip
    import torch
    from PIL import Image, UnidentifiedImageError

    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{clip_path}")
    model.eval()
    rows: dict[str, dict] = {}
    pending: list[tuple[str, str, Image.Image]] = []

    def flush() -> None:
        with torch.inference_mode():
            pixels = torch.stack([preprocess(im) for _, _, im in pending])
            embeddings = model.encode_image(pixels, normalize=True).float().numpy()
        for (ref_id, label, _), emb in zip(pending, embeddings):
            rows[ref_id] = {"ref_id": ref_id, "source": label, "embedding": emb.tolist()}
        pending.clear()

    for label, data in iter_reference_images(source):
        ref_id = hashlib.sha256(data).hexdigest()
        if ref_id in rows or any(p[0] == ref_id for p in pending):
            continue
        try:
            image = Image.open(io.BytesIO(data)).convert("RGB")
        except (UnidentifiedImageError, OSError) as exc:
            raise BadInputError(f"{source}: {label} is not a readable image ({exc})") from None
        pending.append((ref_id, label, image))
        if len(pending) >= batch_size:
            flush()
    if pending:
        flush()
    if not rows:
        raise BadInputError(f"{source}: no images found")

    index_dir.mkdir(parents=True, exist_ok=True)
    (index_dir / "index.json").unlink(missing_ok=True)  # the description is the commit record
    tmp = index_dir / f".index.parquet.tmp-{os.getpid()}"
    pq.write_table(pa.Table.from_pylist(list(rows.values()), schema=INDEX_SCHEMA), tmp)
    os.replace(tmp, index_dir / "index.parquet")
    description = {"source": str(source), "images": len(rows), "clip_path": str(clip_path),
                   "embedding_dim": len(next(iter(rows.values()))["embedding"]),
                   "built_at": datetime.now(timezone.utc).isoformat()}
    tmp = index_dir / f".index.json.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(description, indent=2), encoding="utf-8")
    os.replace(tmp, index_dir / "index.json")
    return description


class ReferenceIndex:
    """A built index loaded for search: exact inner product over L2-normalised embeddings (faiss)."""

    def __init__(self, index_dir: Path, clip_path: Path | None = None) -> None:
        import faiss
        import numpy as np

        description_path = Path(index_dir) / "index.json"
        if not description_path.is_file():
            raise BadInputError(f"{index_dir}: not a reference index (no index.json; run `synthcat index build`)")
        self.description = json.loads(description_path.read_text(encoding="utf-8"))
        built_with = Path(self.description["clip_path"])
        # presets live at <models_dir>/<scorer>/clip: the scorer's name identifies the model
        if clip_path is not None and built_with.parts[-2:] != Path(clip_path).parts[-2:]:
            raise BadInputError(f"{index_dir}: built with {self.description['clip_path']}, "
                                f"but this run scores with {clip_path}; rebuild the index")
        table = pq.read_table(Path(index_dir) / "index.parquet")
        self.ids = table.column("ref_id").to_pylist()
        vectors = np.asarray(table.column("embedding").to_pylist(), dtype=np.float32)
        self._index = faiss.IndexFlatIP(vectors.shape[1])
        self._index.add(np.ascontiguousarray(vectors))

    def nearest(self, embeddings) -> tuple[list[str], list[float]]:
        """The nearest reference image (id, cosine) of every row of `embeddings`."""
        import numpy as np

        if len(embeddings) == 0:
            return [], []
        scores, rows = self._index.search(np.ascontiguousarray(embeddings, dtype=np.float32), 1)
        return [self.ids[r] for r in rows[:, 0]], [float(s) for s in scores[:, 0]]
