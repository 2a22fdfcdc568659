"""Locate the embedded `tiny` preset: the project's own trained tiny diffusion model and CLIP scorer.

The trained weights are committed under `models/tiny/{diffusion,clip}` (see MODEL_CARD.md) and
load through exactly the code path a real Stable Diffusion checkpoint and a real open_clip model
use. When they are missing (a stripped checkout), `ensure_tiny_models` retrains them from scratch.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

IMAGE_SIZE = 64
REQUIRED_FILES = {
    "diffusion": ("model_index.json", "unet/diffusion_pytorch_model.safetensors",
                  "vae/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors",
                  "tokenizer/tokenizer_config.json"),
    "clip": ("open_clip_config.json", "open_clip_model.safetensors"),
}


def write_clip_bpe_vocab(target: Path) -> None:
    """Write vocab.json + merges.txt for `CLIPTokenizer` from open_clip's bundled BPE file.

    open_clip ships the CLIP BPE merges inside its wheel, so the tokenizer is built offline and
    matches open_clip's SimpleTokenizer id for id (same byte alphabet, merges and specials).
    """
    from open_clip.tokenizer import bytes_to_unicode, default_bpe

    with gzip.open(default_bpe(), "rt", encoding="utf-8") as fh:
        merges = fh.read().split("\n")[1 : 49152 - 256 - 2 + 1]
    alphabet = list(bytes_to_unicode().values())
    vocab = alphabet + [v + "</w>" for v in alphabet] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    target.mkdir(parents=True, exist_ok=True)
    (target / "vocab.json").write_text(
        json.dumps({tok: i for i, tok in enumerate(vocab)}, ensure_ascii=False), encoding="utf-8"
    )
    (target / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")


def tiny_models_present(home: Path) -> bool:
    """True when `home/{diffusion,clip}` hold every file the loaders need."""
    return all((home / part / name).is_file() for part, names in REQUIRED_FILES.items() for name in names)


def ensure_tiny_models(root: Path) -> Path:
    """Return `root/tiny`, training the tiny models there first if their weights are missing.

    The committed weights make this a file check; retraining (about 1 h 35 min on 2 CPU
    cores, see MODEL_CARD.md) only happens in a checkout without them.
    """
    home = root / "tiny"
    if not tiny_models_present(home):
        from pipeline.models.train import train_all

        train_all(home)
    return home
