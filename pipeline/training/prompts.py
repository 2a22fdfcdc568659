"""Training prompts: templates x facets (scene, viewpoint, lighting, material) x paraphrases.

Diversity is planned, not left to chance: within a class, each facet cycles through all its
values (reshuffled every cycle), so any quota covers every scene, template, ... evenly (counts
differ by at most one), while the pairings between facets vary. Paraphrases of the class name
and of the scene are drawn per item from a generator seeded by the item id. No language model.

The built-in vocabulary is the one the embedded `tiny` model was trained on
(`pipeline/models/data.py`): its category synonyms, its six scenes with their paraphrases and
its surface finishes. Viewpoints and lighting are empty by default (the tiny model knows no such
words); real models take lists such as ["front view", "three-quarter view"] from the job config.
"""

from __future__ import annotations

import json
import random
import re
import string
from dataclasses import dataclass

# Fields a training template may use.
TEMPLATE_FIELDS = ("label", "colour", "material", "scene", "viewpoint", "lighting", "title", "category")

DEFAULT_TEMPLATES = (
    "a {colour} {material} {label} {scene}, {viewpoint}, {lighting}, product photo",
    "product photo of a {colour} {material} {label} {scene}, {viewpoint}, {lighting}",
    "{colour} {material} {label} {scene}, {viewpoint}, {lighting}",
    "a photo of a {colour} {material} {label} {scene}, {viewpoint}, {lighting}",
    "catalog image: {colour} {material} {label}, {scene}, {viewpoint}, {lighting}",
)
# Surface words the tiny model learnt (its render patterns); "" = plain. A SKU's own `material`
# attribute always wins over this list: the images must still show that product.
DEFAULT_MATERIALS = ("", "striped", "dotted", "metallic")


@dataclass(frozen=True)
class Vocabulary:
    """Everything a training prompt is made of; built once per run from the job config."""

    templates: tuple[str, ...]
    class_templates: dict[str, tuple[str, ...]]
    class_words: dict[str, tuple[str, ...]]
    scenes: dict[str, tuple[str, ...]]
    viewpoints: tuple[str, ...]
    lighting: tuple[str, ...]
    materials: tuple[str, ...]

    @classmethod
    def from_config(cls, training) -> Vocabulary:
        """The job's `training` section over the built-in (tiny-model) vocabulary."""
        from pipeline.models.data import CATEGORY_WORDS, SCENE_WORDS

        words = {label: tuple(dict.fromkeys(w)) for label, w in CATEGORY_WORDS.items()}
        return cls(
            templates=tuple(training.templates or DEFAULT_TEMPLATES),
            class_templates={k: tuple(v) for k, v in training.class_templates.items()},
            class_words={**words, **{k: tuple(v) for k, v in training.class_words.items()}},
            scenes={k: tuple(v) for k, v in (SCENE_WORDS if training.scenes is None else training.scenes).items()},
            viewpoints=tuple(training.viewpoints), lighting=tuple(training.lighting),
            materials=tuple(DEFAULT_MATERIALS if training.materials is None else training.materials),
        )

    def templates_for(self, label: str) -> tuple[str, ...]:
        return self.class_templates.get(label) or self.templates


def template_fields(template: str) -> list[str]:
    """The `{field}` names a template uses."""
    return [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]


class FacetCycle:
    """Balanced facet values for the j-th image of one class.

    Each facet walks through a permutation of its values; every full cycle uses a new
    permutation (seeded by class, facet and cycle), so the facets decorrelate over cycles.
    """

    def __init__(self, vocabulary: Vocabulary, label: str) -> None:
        self.label = label
        self.axes = {
            "template": list(range(len(vocabulary.templates_for(label)))),
            "scene": sorted(vocabulary.scenes) or [""],
            "viewpoint": list(vocabulary.viewpoints) or [""],
            "lighting": list(vocabulary.lighting) or [""],
            "material": list(vocabulary.materials) or [""],
        }

    def pick(self, j: int) -> dict:
        """Facet values of the class's j-th image (j = 0, 1, ...)."""
        chosen = {}
        for axis, values in self.axes.items():
            cycle, position = divmod(j, len(values))
            order = list(values)
            random.Random(f"{self.label}|{axis}|{cycle}").shuffle(order)
            chosen[axis] = order[position]
        return chosen


def _tidy(text: str) -> str:
    """Collapse what empty fields leave behind: double spaces, empty comma slots."""
    text = re.sub(r"\s+", " ", text)
    text = re.sub(r"\s*,(\s*,)+", ",", text)
    text = re.sub(r"\s+,", ",", text)
    text = re.sub(r":\s*,", ":", text)
    return text.strip(" ,")


def product_words(attributes_json: str | None) -> tuple[str, str]:
    """The product's own colour and material words from its attributes JSON ("" when absent)."""
    attributes = json.loads(attributes_json or "{}")
    def word(*keys: str) -> str:
        for key in keys:
            value = attributes.get(key)
            if isinstance(value, str) and value.strip():
                return value.strip()
        return ""
    return word("colour", "color"), word("material")


def compose_prompt(vocabulary: Vocabulary, product: dict, facets: dict, rng: random.Random) -> tuple[str, dict]:
    """The prompt of one training image and the facet record stored in the row (`facets`).

    `product`: a PRODUCT_SCHEMA row; `facets`: `FacetCycle.pick`; `rng`: seeded by the item id.
    """
    label = product["category"]
    colour, own_material = product_words(product["attributes"])
    material = own_material or facets["material"]
    scene = facets["scene"]
    scene_text = rng.choice(vocabulary.scenes[scene]) if scene else ""
    values = {
        "label": rng.choice(vocabulary.class_words.get(label) or (label,)),
        "category": label, "title": product["title"], "colour": colour, "material": material,
        "scene": scene_text, "viewpoint": facets["viewpoint"], "lighting": facets["lighting"],
    }
    template = vocabulary.templates_for(label)[facets["template"]]
    record = {"template": facets["template"], "scene": scene, "viewpoint": facets["viewpoint"],
              "lighting": facets["lighting"], "material": material, "colour": colour}
    return _tidy(template.format_map(values)), record
