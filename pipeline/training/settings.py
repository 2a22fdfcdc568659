"""The job config's `training` section (pipeline/config.py holds the rest)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator, model_validator

from pipeline.config_base import Section, fillable

# phrasings to pick from: at least one, none empty (an empty one leaves a hole in the prompt)
Phrases = Annotated[tuple[Annotated[str, Field(min_length=1)], ...], Field(min_length=1)]


class Training(Section):
    """The `training` kind: labelled, class-balanced, diverse images (pipeline/training/).

    A class is a catalog `category`. Every class gets `images_per_class` images (`class_quotas`
    overrides per class, 0 leaves it out), spread round-robin over its SKUs; `split` is drawn
    per SKU with `splits`. Prompts: a template x one value of each facet (scene, viewpoint,
    lighting, material), every facet cycling evenly within the class, plus paraphrases.
    `None` takes the built-in vocabulary (the embedded tiny model's words); `[]` leaves a facet
    out. `guidance_scale` (lower = more diverse) applies to training images only.
    """

    images_per_class: int = Field(8, ge=0, le=1_000_000)
    class_quotas: dict[str, int] = Field(default_factory=dict)
    splits: dict[str, float] = Field(default_factory=lambda: {"train": 0.8, "val": 0.1, "test": 0.1})
    guidance_scale: float | None = Field(None, ge=0)
    templates: tuple[str, ...] | None = None             # fields: see pipeline/training/prompts.py
    class_templates: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    class_words: dict[str, Phrases] = Field(default_factory=dict)  # paraphrases of a class name
    scenes: dict[str, Phrases] | None = None             # scene name -> its phrasings
    viewpoints: tuple[str, ...] = ()                     # e.g. "front view" (the tiny model knows none)
    lighting: tuple[str, ...] = ()                       # e.g. "soft daylight"
    materials: tuple[str, ...] | None = None             # a SKU's own `material` attribute wins
    taxonomy: dict[str, str] = Field(default_factory=dict)  # class -> parent path, "home/kitchen"
    license: str = "other"                               # the dataset card's licence id
    license_note: str | None = None
    intended_use: str | None = None
    limitations: str | None = None

    @field_validator("splits")
    @classmethod
    def _ratios(cls, value: dict[str, float]) -> dict[str, float]:
        from pipeline.training.splits import check_ratios

        return dict(check_ratios(value))

    @field_validator("class_quotas")
    @classmethod
    def _quotas(cls, value: dict[str, int]) -> dict[str, int]:
        bad = {k: v for k, v in value.items() if v < 0}
        if bad:
            raise ValueError(f"quotas must be >= 0, got {bad}")
        return value

    @model_validator(mode="after")
    def _known_template_fields(self) -> "Training":
        from pipeline.training.prompts import TEMPLATE_FIELDS, template_fields

        templates = list(self.templates or ()) + [t for ts in self.class_templates.values() for t in ts]
        for template in templates:
            unknown = [f for f in template_fields(template) if f not in TEMPLATE_FIELDS]
            if unknown:
                allowed = ", ".join("{" + f + "}" for f in TEMPLATE_FIELDS)
                raise ValueError(f"template {template!r} uses unknown field {{{unknown[0]}}}; allowed: {allowed}")
            fillable(template, TEMPLATE_FIELDS)
        return self
