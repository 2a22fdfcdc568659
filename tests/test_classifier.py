"""Proof of use: a small classifier trained only on synthetic training rows recognises real renders.

The training rows come from the embedded tiny model (tests/training_run.py: 8 classes, 24
images each, SKUs with random colours); the classifier trains on the `train` and `val` splits
(no model selection happens, so nothing needs a validation set), streamed through the documented
PyTorch loader (examples/consume/torch_stream.py). The evaluation images are renders from
pipeline/models/renderer.py of category x colour x scene combinations the tiny model never saw
in training (`held_out_combos`), so neither side has seen them. Chance is 1/8.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from test_consumption import snippet

# The classes differ by silhouette. At 16 px both sides keep it, while what separates the tiny
# model's blurry, washed-out images from crisp renders mostly goes (at 32 px: ~30% measured).
SIZE = 16
EPOCHS = 30
SEEDS = (0, 1, 2)  # a small ensemble: one model's accuracy varies by a few points with its seed
RENDERS_PER_CLASS = 25
CHANCE = 1 / 8
MIN_ACCURACY = 3 * CHANCE


def _small_cnn(n_classes: int):
    from torch import nn

    def block(c_in, c_out):
        return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]

    return nn.Sequential(*block(3, 16), nn.MaxPool2d(2), *block(16, 32), nn.MaxPool2d(2), *block(32, 64),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(64, n_classes))


def _held_out_renders(classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    from pipeline.models.data import held_out_combos
    from pipeline.models.renderer import RenderSpec, render

    rng = random.Random(20261126)
    combos = held_out_combos()
    rng.shuffle(combos)
    images, labels = [], []
    for index, name in enumerate(classes):
        for _, colour, scene in [c for c in combos if c[0] == name][:RENDERS_PER_CLASS]:
            spec = RenderSpec(name, colour, rng.choice(["plain", "plain", "striped", "dotted"]), scene,
                              rng.randrange(1 << 30))
            image = render(spec, 64).resize((SIZE, SIZE), Image.Resampling.BOX)  # as the loader resizes
            images.append(np.asarray(image, dtype=np.float32) / 255.0)
            labels.append(index)
    return np.stack(images).transpose(0, 3, 1, 2), np.asarray(labels)


def _train(stream, n_classes: int, seed: int):
    import torch
    from torch.nn import functional as F
    from torch.utils.data import DataLoader

    torch.manual_seed(seed)
    generator = random.Random(seed)
    model = _small_cnn(n_classes)
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    for epoch in range(EPOCHS):
        stream.set_epoch(epoch)
        model.train()
        for images, targets in DataLoader(stream, batch_size=32):
            # light augmentation: mirror, shift by a pixel, permute colour channels (colour is not
            # the class; the silhouette is)
            if generator.random() < 0.5:
                images = images.flip(3)
            images = torch.roll(images, (generator.randint(-1, 1), generator.randint(-1, 1)), (2, 3))
            images = images[:, torch.randperm(3)]
            loss = F.cross_entropy(model(images), targets, label_smoothing=0.1)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    return model.eval()


def test_a_classifier_trained_on_synthetic_rows_beats_chance_on_held_out_renders(training_dataset,
                                                                                  record_property):
    import torch

    torch_stream = snippet("torch_stream")
    root = str(training_dataset["root"])
    train = torch_stream.ParquetImageStream(root, split=("train", "val"), size=SIZE, shuffle_seed=0)
    assert len(train.classes) == 8
    models = [_train(train, len(train.classes), seed) for seed in SEEDS]

    def predict(images: torch.Tensor) -> torch.Tensor:
        """Mean class probabilities of the ensemble, over the image and its mirror."""
        with torch.no_grad():
            return sum(torch.softmax(m(x), 1) for m in models for x in (images, images.flip(3)))

    renders, truth = _held_out_renders(train.classes)
    predicted = predict(torch.from_numpy(renders)).argmax(1).numpy()
    accuracy = float((predicted == truth).mean())
    per_class = {name: float((predicted[truth == i] == i).mean()) for i, name in enumerate(train.classes)}

    test = torch_stream.ParquetImageStream(root, split="test", size=SIZE, classes=train.classes)
    pairs = [(predict(image[None]).argmax(1).item(), target) for image, target in test]
    synthetic_test = sum(p == t for p, t in pairs) / max(1, len(pairs))

    record_property("accuracy_on_renders", accuracy)
    record_property("accuracy_on_synthetic_test_split", synthetic_test)
    print(f"\nclassifier: {accuracy:.3f} on {len(truth)} held-out renders (chance {CHANCE:.3f}); "
          f"{synthetic_test:.3f} on {len(pairs)} synthetic test-split images; per class {per_class}")
    assert accuracy >= MIN_ACCURACY, per_class
