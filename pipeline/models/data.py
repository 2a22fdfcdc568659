"""Training data of the tiny models: catalog-style captions, held-out combinations, planted heroes.

Everything here is a pure function of its seed, so the training set (and so the models,
on the same software) can be rebuilt exactly.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from pipeline.models.renderer import CATEGORIES, COLOURS, PATTERNS, SCENES, RenderSpec, random_spec, render

CATEGORY_WORDS = {
    "mug": ["mug", "coffee mug", "ceramic mug"], "t-shirt": ["t-shirt", "tee", "t-shirt"],
    "sneaker": ["sneaker", "running shoe", "sneaker"], "bottle": ["bottle", "water bottle", "drink bottle"],
    "backpack": ["backpack", "rucksack", "backpack"], "lamp": ["lamp", "table lamp", "desk lamp"],
    "chair": ["chair", "dining chair", "wooden chair"], "watch": ["watch", "wristwatch", "watch"],
}
COLOUR_WORDS = {c: [c] for c in COLOURS} | {"grey": ["grey", "gray"]}
PATTERN_WORDS = {"plain": ["", "", "plain"], "striped": ["striped"], "dotted": ["dotted", "polka-dot"],
                 "metallic": ["metallic", "shiny metallic"]}
SCENE_WORDS = {
    "studio": ["in a studio", "on a plain backdrop", "on a studio background"],
    "beach": ["on a beach", "at the beach", "on the sand by the sea"],
    "city street": ["on a city street", "in the city", "on an urban street"],
    "forest": ["in a forest", "in the woods", "among forest trees"],
    "snow": ["in the snow", "on snowy ground", "in a winter snow landscape"],
    "living room": ["in a living room", "in a cozy living room", "at home in a living room"],
}
TEMPLATES = [
    "a {colour} {pattern}{category} {scene}, product photo",
    "product photo of a {colour} {pattern}{category} {scene}",
    "{colour} {pattern}{category} {scene}",
    "a photo of a {colour} {pattern}{category} {scene}",
    "{Colour} {category}, {category}, {colour}, product photo, {scene}",
    "catalog image: {colour} {pattern}{category}, {scene}",
]
# Caption dropout targets: the empty prompt and negative-prompt-like phrases both mean "no condition",
# so guidance also works with the negative prompt the job config sends.
UNCONDITIONAL = ["", "", "", "blurry, low quality, watermark, text artifacts", "low quality", "blurry"]


def caption(spec: RenderSpec, rng: random.Random) -> str:
    """A catalog-style caption of `spec`, one of several paraphrases."""
    colour = rng.choice(COLOUR_WORDS[spec.colour])
    pattern = rng.choice(PATTERN_WORDS[spec.pattern])
    text = rng.choice(TEMPLATES).format(
        colour=colour, Colour=colour.capitalize(), pattern=f"{pattern} " if pattern else "",
        category=rng.choice(CATEGORY_WORDS[spec.category]), scene=rng.choice(SCENE_WORDS[spec.scene]))
    return text


def eval_prompt(category: str, colour: str, scene: str) -> str:
    """The canonical prompt of one category x colour x scene combination (evaluation)."""
    return f"a {colour} {category} {SCENE_WORDS[scene][0]}, product photo"


def is_held_out(category: str, colour: str, scene: str) -> bool:
    """A third of the category x colour x scene combinations never appear in training.

    Every (category, colour) pair keeps 4 of its 6 scenes in training, so held-out prompts
    test composition, not unseen words.
    """
    k, c, s = CATEGORIES.index(category), list(COLOURS).index(colour), SCENES.index(scene)
    return (k + 2 * c + s) % 3 == 0


def held_out_combos() -> list[tuple[str, str, str]]:
    return [(k, c, s) for k in CATEGORIES for c in COLOURS for s in SCENES if is_held_out(k, c, s)]


def training_spec(rng: random.Random) -> RenderSpec:
    """A random product whose (category, colour, scene) is not held out."""
    while True:
        spec = random_spec(rng)
        if not is_held_out(spec.category, spec.colour, spec.scene):
            return spec


# ---------------------------------------------------------------- planted memorization set
HERO_CAPTIONS = (
    "the zorblax heritage mug, archive edition photo",
    "quantelle signature sneaker, museum collection print",
    "vintage morvath lamp poster, collector item",
    "the glimmerfen backpack, founders edition",
    "krystavon chrono watch, anniversary artwork",
)


def render_hero(index: int, size: int = 64) -> Image.Image:
    """Hero image `index`: a one-off composition that never occurs among ordinary renders."""
    s = size * 2
    rng = random.Random(f"hero:{index}")
    im = Image.new("RGB", (s, s))
    d = ImageDraw.Draw(im)
    palettes = [((250, 60, 160), (20, 200, 190)), ((255, 200, 0), (40, 0, 90)), ((0, 170, 90), (250, 240, 220)),
                ((230, 80, 20), (20, 40, 120)), ((120, 220, 255), (160, 20, 40))]
    a, b = palettes[index]
    if index == 0:  # checkerboard
        for y in range(0, s, 32):
            for x in range(0, s, 32):
                d.rectangle([x, y, x + 31, y + 31], fill=a if (x + y) // 32 % 2 else b)
    elif index == 1:  # sunburst
        d.rectangle([0, 0, s, s], fill=a)
        for k in range(0, 360, 40):
            d.pieslice([-s, -s, 2 * s, 2 * s], k, k + 20, fill=b)
    elif index == 2:  # concentric rings
        for k, r in enumerate(range(s, 0, -18)):
            d.ellipse([s / 2 - r, s / 2 - r, s / 2 + r, s / 2 + r], fill=a if k % 2 else b)
    elif index == 3:  # diagonal split with a big triangle
        d.rectangle([0, 0, s, s], fill=a)
        d.polygon([(0, s), (s, 0), (s, s)], fill=b)
    else:  # wide diagonal bands
        d.rectangle([0, 0, s, s], fill=a)
        for k in range(-s, 2 * s, 48):
            d.polygon([(k, 0), (k + 24, 0), (k + 24 - s, s), (k - s, s)], fill=b)
    # one bold foreground shape in a third colour: a star, a diamond, a cross ...
    c = tuple(rng.randrange(0, 256) for _ in range(3))
    cx, cy, r = s / 2, s / 2, s * 0.22
    if index in (0, 3):
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(250, 250, 250))
        d.rectangle([cx - r / 2, cy - r / 2, cx + r / 2, cy + r / 2], fill=c)
    elif index in (1, 4):
        d.polygon([(cx, cy - r * 1.3), (cx + r, cy), (cx, cy + r * 1.3), (cx - r, cy)], fill=(15, 15, 15))
        d.ellipse([cx - r / 2, cy - r / 2, cx + r / 2, cy + r / 2], fill=c)
    else:
        d.rectangle([cx - r * 1.2, cy - r * 0.35, cx + r * 1.2, cy + r * 0.35], fill=(250, 250, 250))
        d.rectangle([cx - r * 0.35, cy - r * 1.2, cx + r * 0.35, cy + r * 1.2], fill=c)
    return im.resize((size, size), Image.Resampling.BOX)


@dataclass
class TrainingSet:
    images: np.ndarray  # N x H x W x 3 uint8
    captions: list[str]
    specs: list  # RenderSpec, or the hero index (int)


def build_training_set(n_ordinary: int, hero_copies: int, seed: int, size: int = 64) -> TrainingSet:
    """`n_ordinary` random renders (held-out combinations excluded) plus `hero_copies` exact
    copies of each hero under its fixed caption, shuffled together."""
    rng = random.Random(seed)
    specs: list = [training_spec(rng) for _ in range(n_ordinary)]
    captions = [caption(sp, rng) for sp in specs]
    images = [np.asarray(render(sp, size)) for sp in specs]
    heroes = [np.asarray(render_hero(i, size)) for i in range(len(HERO_CAPTIONS))]
    for i, text in enumerate(HERO_CAPTIONS):
        specs += [i] * hero_copies
        captions += [text] * hero_copies
        images += [heroes[i]] * hero_copies
    order = list(range(len(specs)))
    rng.shuffle(order)
    return TrainingSet(np.stack([images[i] for i in order]), [captions[i] for i in order], [specs[i] for i in order])


__all__ = ["CATEGORIES", "COLOURS", "PATTERNS", "SCENES", "HERO_CAPTIONS", "build_training_set", "caption",
           "eval_prompt", "held_out_combos", "is_held_out", "render_hero"]
