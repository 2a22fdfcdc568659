"""Where campaign work enters a run's stage chain (`pipeline.steps.generate.build_stages`).

generate (+ brand adapters, + inpainting around product photos) -> score -> composite (canvas,
product pixels, palette) -> overlay (copy) -> integrity (product pixels) -> encode. The clip
score is taken on the generated scene, before the copy: the copy is not part of the prompt.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.campaign.generation import CampaignGeneration
from pipeline.config import JobConfig


def campaign_generation(config: JobConfig, generator: dict) -> CampaignGeneration | None:
    """What the generate stage needs for campaign rows (None when the job makes no campaign)."""
    if "campaign" not in config.kinds:
        return None
    return CampaignGeneration(adapters_dir=Path(generator["path"]).parent / "lora", canvas=config.campaign.canvas,
                              strength=config.campaign.background_strength, steps=generator["steps"],
                              guidance_scale=generator["guidance_scale"])


def campaign_stages(config: JobConfig) -> list:
    """The CPU stages between score and encode (none when the job makes no campaign)."""
    if "campaign" not in config.kinds:
        return []
    from pipeline.stages.composite import CompositeStage
    from pipeline.stages.integrity import IntegrityStage
    from pipeline.stages.overlay import OverlayStage

    resources = config.resources.campaign
    return [CompositeStage(config.campaign.canvas, dict(config.campaign.brands), resources=resources),
            OverlayStage(config.campaign.markets_dir, resources=resources),
            IntegrityStage(resources=resources)]
