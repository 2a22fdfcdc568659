"""Train the tiny CLIP contrastively on renders; convert its text tower to transformers' CLIPTextModel.

The text tower is what the tiny diffusion model is conditioned on (frozen), so the scorer and
the generator read prompts the same way.
"""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path

IMAGE_SIZE = 64
# The image tower is open_clip's ModifiedResNet (CLIP's RN50 design: a 3-conv stem, bottleneck
# stages, attention pooling) at width 16, one block per stage: on 64 px renders it learns
# categories several times faster per step than a ViT of 8 px patches (MODEL_CARD.md).
CLIP_CONFIG = {
    "model_cfg": {
        "embed_dim": 64,
        "vision_cfg": {"image_size": IMAGE_SIZE, "layers": [1, 1, 1, 1], "width": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
    },
    "preprocess_cfg": {
        "mean": [0.48145466, 0.4578275, 0.40821073],
        "std": [0.26862954, 0.26130258, 0.27577711],
        "interpolation": "bicubic",
        "resize_mode": "shortest",
    },
}


def normalize_images(images_uint8, mean=CLIP_CONFIG["preprocess_cfg"]["mean"], std=CLIP_CONFIG["preprocess_cfg"]["std"]):
    """N x H x W x 3 uint8 (numpy or tensor) -> the N x 3 x H x W tensor open_clip's transform gives."""
    import torch

    x = torch.as_tensor(images_uint8).permute(0, 3, 1, 2).float() / 255
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


TEXT_TOWER = ("token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection")


def with_new_image_tower(model, seed: int):
    """A CLIP of `CLIP_CONFIG` (a freshly initialised image tower) holding `model`'s text tower and
    temperature: the image round trains the new tower against that text tower, locked."""
    import open_clip
    import torch

    torch.manual_seed(seed)
    new = open_clip.CLIP(**CLIP_CONFIG["model_cfg"])
    kept = {k: v for k, v in model.state_dict().items() if k.startswith(TEXT_TOWER) or k == "logit_scale"}
    missing = [k for k in new.state_dict() if k.startswith(TEXT_TOWER) and k not in kept]
    if missing:
        raise ValueError(f"the CLIP to go on from has no {missing[0]}: not an open_clip text tower")
    new.load_state_dict(kept, strict=False)
    return new


def train_clip(data, spec_captioner, *, steps: int, batch_size: int = 256, lr: float = 2e-3,
               seed: int = 0, model=None, lock_text: bool = False, log=print):
    """Contrastive training; `spec_captioner(spec, rng)` draws a fresh caption paraphrase per step.

    `model`: go on from these weights (default: a new model). `lock_text`: train the image tower
    (and the temperature) only, against the frozen text tower: the text tower is the diffusion
    model's text encoder, so this sharpens the scorer without moving what the generator reads.
    """
    import open_clip
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    rng = random.Random(seed)
    model = model if model is not None else open_clip.CLIP(**CLIP_CONFIG["model_cfg"])
    tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=77)
    cache: dict[str, torch.Tensor] = {}
    frozen_text: dict[str, torch.Tensor] = {}
    if lock_text:
        for name, param in model.named_parameters():
            param.requires_grad_(not name.startswith(TEXT_TOWER))

    def tokens(texts):
        missing = [t for t in set(texts) if t not in cache]
        if missing:
            for t, ids in zip(missing, tokenizer(missing)):
                cache[t] = ids
        return torch.stack([cache[t] for t in texts])

    def text_features(texts):
        if not lock_text:
            return model.encode_text(tokens(texts), normalize=True)
        missing = sorted(set(texts) - frozen_text.keys())
        if missing:  # a frozen tower gives each caption one embedding: compute it once
            with torch.no_grad():
                frozen_text.update(zip(missing, model.encode_text(tokens(missing), normalize=True)))
        return torch.stack([frozen_text[t] for t in texts])

    images = normalize_images(data.images)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.05,
                            betas=(0.9, 0.98))
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(i, steps) / steps)))
    n = len(data.captions)
    start = time.time()
    model.train()
    for step in range(steps):
        idx = rng.sample(range(n), batch_size)
        texts = [data.captions[i] if isinstance(data.specs[i], int) else spec_captioner(data.specs[i], rng)
                 for i in idx]
        img = images[idx]
        if rng.random() < 0.5:  # products face either way
            img = img.flip(3)
        img_f = model.encode_image(img, normalize=True)
        txt_f = text_features(texts)
        logits = model.logit_scale.exp().clamp(max=100) * img_f @ txt_f.T
        # identical captions in one batch are not negatives of each other
        same = torch.tensor([[a == b for b in texts] for a in texts], dtype=torch.bool)
        target = same.float() / same.float().sum(1, keepdim=True)
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target.T)) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"clip step {step}/{steps} loss {loss.item():.3f} scale {model.logit_scale.exp().item():.1f} "
                f"{time.time() - start:.0f}s")
    return model.eval().requires_grad_(False)


def load_clip(source: Path):
    """The open_clip model saved by `save_clip` (safetensors through open_clip's own loader)."""
    import open_clip

    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{source}")
    return model.eval()


def save_clip(model, target: Path) -> None:
    """open_clip `local-dir:` layout: open_clip_config.json + open_clip_model.safetensors."""
    from safetensors.torch import save_file

    target.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()
             if k != "attn_mask"}
    save_file(state, str(target / "open_clip_model.safetensors"))
    (target / "open_clip_config.json").write_text(json.dumps(CLIP_CONFIG, indent=2), encoding="utf-8")


def text_tower_to_transformers(model):
    """The open_clip model's text tower as a transformers `CLIPTextModel` (same weights, same outputs).

    open_clip's fused attention `in_proj` splits into q/k/v; ln_1/ln_2 -> layer_norm1/2;
    mlp.c_fc/c_proj -> fc1/fc2; ln_final -> final_layer_norm.
    """
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIP_CONFIG["model_cfg"]["text_cfg"]
    width = cfg["width"]
    config = CLIPTextConfig(
        vocab_size=cfg["vocab_size"], hidden_size=width, intermediate_size=4 * width,
        num_hidden_layers=cfg["layers"], num_attention_heads=cfg["heads"],
        max_position_embeddings=cfg["context_length"], projection_dim=CLIP_CONFIG["model_cfg"]["embed_dim"],
        hidden_act="gelu", layer_norm_eps=1e-5, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
    )
    state = {
        "text_model.embeddings.token_embedding.weight": model.token_embedding.weight,
        "text_model.embeddings.position_embedding.weight": model.positional_embedding,
        "text_model.final_layer_norm.weight": model.ln_final.weight,
        "text_model.final_layer_norm.bias": model.ln_final.bias,
    }
    for i, block in enumerate(model.transformer.resblocks):
        pre = f"text_model.encoder.layers.{i}."
        qw, kw, vw = block.attn.in_proj_weight.chunk(3)
        qb, kb, vb = block.attn.in_proj_bias.chunk(3)
        state |= {
            pre + "self_attn.q_proj.weight": qw, pre + "self_attn.q_proj.bias": qb,
            pre + "self_attn.k_proj.weight": kw, pre + "self_attn.k_proj.bias": kb,
            pre + "self_attn.v_proj.weight": vw, pre + "self_attn.v_proj.bias": vb,
            pre + "self_attn.out_proj.weight": block.attn.out_proj.weight,
            pre + "self_attn.out_proj.bias": block.attn.out_proj.bias,
            pre + "layer_norm1.weight": block.ln_1.weight, pre + "layer_norm1.bias": block.ln_1.bias,
            pre + "layer_norm2.weight": block.ln_2.weight, pre + "layer_norm2.bias": block.ln_2.bias,
            pre + "mlp.fc1.weight": block.mlp.c_fc.weight, pre + "mlp.fc1.bias": block.mlp.c_fc.bias,
            pre + "mlp.fc2.weight": block.mlp.c_proj.weight, pre + "mlp.fc2.bias": block.mlp.c_proj.bias,
        }
    text = CLIPTextModel(config)
    # transformers 5 keeps the text model's parameters at the top level (no `text_model.` prefix)
    prefix = "text_model." if any(k.startswith("text_model.") for k in text.state_dict()) else ""
    state = {prefix + k.removeprefix("text_model."): v.detach().clone() for k, v in state.items()}
    missing, unexpected = text.load_state_dict(state, strict=False)
    missing = [k for k in missing if "position_ids" not in k]
    if missing or unexpected:
        raise RuntimeError(f"text tower conversion: missing {missing}, unexpected {unexpected}")
    return text.eval().to(torch.float32)


def open_clip_text_hidden_states(model, token_ids):
    """open_clip's per-token text features after ln_final (what CLIPTextModel calls last_hidden_state)."""
    x = model.token_embedding(token_ids) + model.positional_embedding
    x = model.transformer(x, attn_mask=model.attn_mask)
    return model.ln_final(x)
