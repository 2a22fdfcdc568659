"""The reference index: embeddings of training or protected images, for memorization checks.

Built from a folder of images or a Parquet file with an `image` column (the Hugging Face
`Image` struct or plain bytes), with the run's open_clip scorer, and written as
`<index_dir>/index-<build>.parquet` (id, source, embedding, 64 px thumbnail for the pixel copy
check), `index-<build>.faiss` (the trained search index, see `vector_index`) and `index.json`
(written last: the commit record, naming the build's files). The memorization gate searches it.

A rebuild (the reference DAG, while runs are going on) never takes the index away: its files
get new names, `index.json` switches to them at once, and the files of the build before stay, so
a run that read the old `index.json` still finds them; only older builds are removed. Indexes
built before builds were named (`index.parquet`, `index.faiss`) are read as they are.
"""

from __future__ import annotations

import hashlib
import io
import json
import secrets
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import BadInputError
from pipeline.fsops import fsync, locked, sha256_file, write_json
from pipeline.vector_index import BuiltIndex, build_index, embedding_rows

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
INDEX_SCHEMA = pa.schema([
    ("ref_id", pa.string()),        # sha256 of the image bytes: the same image is one entry
    ("source", pa.string()),        # path (folder) or "<file>#<row>" (Parquet)
    ("embedding", pa.list_(pa.float32())),
    ("thumbnail", pa.binary()),     # 64x64 PNG for the tiled pixel-L2 copy check (copy_detection)
])
ROW_GROUP = 1024  # the copy check reads thumbnails of a few rows: small row groups, small reads
LEGACY_FILES = {"parquet": "index.parquet", "faiss": "index.faiss"}  # indexes built before builds were named


def iter_reference_images(source: Path):
    """(source label, image bytes) for every image in a folder (recursive) or a Parquet file."""
    if source.is_dir():
        for path in sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
            yield str(path.relative_to(source)), path.read_bytes()
    elif source.suffix == ".parquet" and source.is_file():
        try:
            parquet = pq.ParquetFile(source)
        except (pa.ArrowException, OSError) as exc:
            raise BadInputError(f"{source}: not a readable Parquet file ({exc})") from None
        schema = parquet.schema_arrow
        kind = schema.field("image").type if "image" in schema.names else None
        if not (kind is not None and (pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or (
                pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0
                and pa.types.is_binary(kind.field("bytes").type)))):
            found = f"an `image` column of type {kind}" if kind is not None else "no `image` column"
            raise BadInputError(f"{source}: {found}; give struct<bytes: binary, path: string> or binary")
        yield from _parquet_images(source, parquet)
    else:
        raise BadInputError(f"{source}: not a folder of images or a .parquet file")


def _parquet_images(source: Path, parquet: pq.ParquetFile):
    row = 0
    try:
        for batch in parquet.iter_batches(batch_size=64, columns=["image"]):  # a few images in memory at once
            for value in batch.column(0).to_pylist():
                data = value.get("bytes") if isinstance(value, dict) else value
                if data:
                    yield f"{source.name}#{row}", data
                row += 1
    except (pa.ArrowException, OSError) as exc:  # a damaged page past the footer
        raise BadInputError(f"{source}: not a readable Parquet file ({exc})") from None


def build_reference_index(source: Path, index_dir: Path, clip_path: Path, *, batch_size: int = 64) -> dict:
    """Embed every distinct image of `source`; returns the index's description (index.json)."""
    return build_index_from_images(iter_reference_images(source), str(source), index_dir, clip_path,
                                   batch_size=batch_size)


def build_index_from_images(images, source: str, index_dir: Path, clip_path: Path, *, batch_size: int = 64,
                            extra: dict | None = None) -> dict:
    """Embed every distinct image of `images` ((label, encoded bytes) pairs) into `index_dir`;
    `source` names them in index.json, `extra` adds to it. Returns the description."""
    import open_clip
    import torch
    from PIL import Image

    from pipeline.copy_detection import thumbnail_png

    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{clip_path}")
    model.eval()
    rows: dict[str, dict] = {}
    pending: list[tuple[str, str, torch.Tensor, bytes]] = []  # one decoded image at a time: photos can be large

    def flush() -> None:
        with torch.inference_mode():
            embeddings = model.encode_image(torch.stack([p[2] for p in pending]), normalize=True).float().numpy()
        for (ref_id, label, _, thumbnail), emb in zip(pending, embeddings):
            rows[ref_id] = {"ref_id": ref_id, "source": label, "embedding": emb.tolist(), "thumbnail": thumbnail}
        pending.clear()

    for label, data in images:
        ref_id = hashlib.sha256(data).hexdigest()
        if ref_id in rows or any(p[0] == ref_id for p in pending):
            continue
        try:
            with Image.open(io.BytesIO(data)) as opened:  # over Pillow's limit (178 M pixels): refused unread
                image = opened.convert("RGB")
        except Exception as exc:  # Pillow's decoders also raise ValueError, SyntaxError, struct.error ...
            raise BadInputError(f"{source}: {label} is not a readable image ({type(exc).__name__}: {exc})") from None
        pending.append((ref_id, label, preprocess(image), thumbnail_png(image)))
        del image
        if len(pending) >= batch_size:
            flush()
    if pending:
        flush()
    if not rows:
        raise BadInputError(f"{source}: no images found")

    index_dir.mkdir(parents=True, exist_ok=True)
    # two builds at once (the DAG and `synthcat index build`) take turns: a build's clean-up must
    # not delete the files another has not committed yet
    with locked(index_dir / ".build.lock"):
        return _commit_build(index_dir, rows, source, clip_path, extra)


def _commit_build(index_dir: Path, rows: dict, source: str, clip_path: Path, extra: dict | None) -> dict:
    import faiss

    now = datetime.now(timezone.utc)
    build = f"{now:%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"
    files = {"parquet": f"index-{build}.parquet", "faiss": f"index-{build}.faiss"}
    table = pa.Table.from_pylist(list(rows.values()), schema=INDEX_SCHEMA)
    pq.write_table(table, index_dir / files["parquet"], row_group_size=ROW_GROUP)
    built = build_index(embedding_matrix(table))
    faiss.write_index(built.index, str(index_dir / files["faiss"]))
    for name in files.values():
        fsync(index_dir / name)
    previous = _files(index_dir)
    from pipeline.models.presets import weights_sha256

    description = {"source": source, "images": len(rows), "clip_path": str(clip_path),
                   "clip_sha256": weights_sha256(Path(clip_path)),  # the scorer is matched by its weights
                   "embedding_dim": len(next(iter(rows.values()))["embedding"]),
                   "search": built.describe(), "built_at": now.isoformat(), "files": files,
                   "sha256": sha256_file(index_dir / files["parquet"]), **(extra or {})}
    write_json(index_dir / "index.json", description)  # the commit: readers switch to the new files
    for old in index_dir.glob("index*.*"):  # builds older than the one before
        if old.suffix in (".parquet", ".faiss") and old.name not in {*files.values(), *(previous or {}).values()}:
            old.unlink(missing_ok=True)
    return description


def _check_scorer(index_dir: Path, description: dict, clip_path: Path) -> None:
    """An index is searched only with the scorer that embedded it: the same weights (an index built
    before they were recorded: the same preset folder and embedding size). Other weights give
    cosines between unrelated spaces, another size fails the search."""
    from pipeline.models.presets import weights_sha256

    built_with, recorded = Path(description["clip_path"]), description.get("clip_sha256")
    if recorded is not None:
        same = recorded == weights_sha256(clip_path)
    else:  # presets live at <models_dir>/<scorer>/clip: the scorer's name identifies the model
        same = built_with.parts[-2:] == clip_path.parts[-2:] and \
            description.get("embedding_dim") in (None, _embedding_dim(clip_path))
    if not same:
        raise BadInputError(f"{index_dir}: built with the scorer in {built_with} ({description.get('embedding_dim')}-d "
                            f"embeddings), but this run scores with other weights ({clip_path}); rebuild the index "
                            "with `synthcat index build` and this run's scorer")


def _embedding_dim(clip_path: Path) -> int | None:
    """The embedding size an open_clip folder's config names, None where it names none."""
    try:
        return int(json.loads((clip_path / "open_clip_config.json").read_text(encoding="utf-8"))["model_cfg"]["embed_dim"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _files(index_dir: Path) -> dict | None:
    """The files the committed index.json names (a build before names: the fixed ones); None without one."""
    path = Path(index_dir) / "index.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8")).get("files") or dict(LEGACY_FILES)


def embedding_matrix(table: pa.Table) -> np.ndarray:
    """The `embedding` list column as an N x dim float32 matrix, without Python lists."""
    vectors, _ = embedding_rows(table.column("embedding"))  # every reference row has one
    return np.zeros((0, 0), np.float32) if vectors is None else vectors


class ReferenceIndex:
    """A built index loaded for search: inner product over L2-normalised embeddings (faiss),
    exact for small indexes and IVF above (`vector_index`), plus the thumbnails of the images."""

    def __init__(self, index_dir: Path, clip_path: Path | None = None, files: dict | None = None) -> None:
        """`files`: the build a run resolved when it was prepared, while a rebuild keeps it; else
        the build `index.json` names now (`self.files` says which was loaded)."""
        import faiss

        self.index_dir = Path(index_dir)
        self.description = self.describe(self.index_dir, clip_path)
        if not files or not all((self.index_dir / name).is_file() for name in files.values()):
            files = self.description.get("files") or dict(LEGACY_FILES)
        self.files = dict(files)
        self._parquet = pq.ParquetFile(self.index_dir / files["parquet"])
        table = self._parquet.read(columns=["ref_id", "embedding"])
        self.ids = table.column("ref_id").to_pylist()
        saved = self.index_dir / files["faiss"]
        if saved.is_file():
            index = faiss.read_index(str(saved))
            kind = "ivf" if isinstance(index, faiss.IndexIVF) else "flat"
            self._index = BuiltIndex(index, kind, getattr(index, "nlist", None), getattr(index, "nprobe", None))
        else:  # an index built before index.faiss existed: build the search index now
            self._index = build_index(embedding_matrix(table))
        if self._index.index.ntotal != len(self.ids):
            raise BadInputError(f"{index_dir}: {files['faiss']} holds {self._index.index.ntotal} vectors, "
                                f"{files['parquet']} {len(self.ids)}; rebuild the index")

    def lineage(self) -> dict:
        """What a run's manifest records of the build it searched (`models.reference`)."""
        return {"source": self.description["source"], "images": self.description["images"], "files": self.files,
                "sha256": (self.description.get("sha256") if self.files == self.description.get("files")
                           else sha256_file(self.index_dir / self.files["parquet"]))}

    @staticmethod
    def describe(index_dir: Path, clip_path: Path | None = None) -> dict:
        """index.json of a built index, checked as the constructor does, without loading it."""
        index_dir = Path(index_dir)
        path = index_dir / "index.json"
        if not path.is_file():
            raise BadInputError(f"{index_dir}: not a reference index (no index.json; run `synthcat index build`)")
        description = json.loads(path.read_text(encoding="utf-8"))
        if clip_path is not None:
            _check_scorer(index_dir, description, Path(clip_path))
        return description

    def neighbours(self, embeddings, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """(rows, scores), each len(embeddings) x k: the k nearest reference rows by cosine."""
        k = max(1, min(k, len(self.ids)))
        scores, rows = self._index.search(np.asarray(embeddings, dtype=np.float32), k)
        return rows, scores

    def nearest(self, embeddings) -> tuple[list[str], list[float]]:
        """The nearest reference image (id, cosine) of every row of `embeddings`."""
        if len(embeddings) == 0:
            return [], []
        rows, scores = self.neighbours(embeddings, 1)
        return [self.ids[r] for r in rows[:, 0]], [float(s) for s in scores[:, 0]]

    def thumbnails(self, rows) -> dict[int, bytes | None]:
        """{row: 64 px PNG} for the given rows, reading only the row groups that hold them."""
        wanted = sorted({int(r) for r in rows if r >= 0})
        if "thumbnail" not in self._parquet.schema_arrow.names:
            return {r: None for r in wanted}  # an index built before thumbnails were stored
        out: dict[int, bytes | None] = {}
        starts = np.cumsum([0] + [self._parquet.metadata.row_group(g).num_rows
                                  for g in range(self._parquet.num_row_groups)])
        rows = np.asarray(wanted, dtype=np.int64)
        groups = np.searchsorted(starts, rows, side="right") - 1  # sorted, as `wanted` is
        for members in np.split(np.arange(len(rows)), np.flatnonzero(np.diff(groups)) + 1) if len(rows) else ():
            group = int(groups[members[0]])  # each group read once, its own rows taken: no scan per group
            column = self._parquet.read_row_group(group, columns=["thumbnail"]).column(0)
            out.update(zip(wanted[members[0]:members[-1] + 1],
                           column.take(pa.array(rows[members] - starts[group])).to_pylist()))
        return out
