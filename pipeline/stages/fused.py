"""Generate and score in one worker, when both would run on the same kind of device.

A separate score actor costs a second process importing torch and open_clip and loading its
model (seconds on a CPU), a second CUDA context on a GPU, and a Ray hop for every batch of raw
pixels. Scoring in the generator's worker removes all three; on a GPU it is about 1% of the
generator's time (CLIP image tower vs a diffusion sampler), so little is lost by not overlapping it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pyarrow as pa

from pipeline.config import Engine, StageResources
from pipeline.stages.generate import GenerateStage
from pipeline.stages.score import ScoreStage


@dataclass
class GenerateScoreStage:
    """`score(generate(batch))` in one worker; the scorer shares the generator's device and threads."""

    generate: GenerateStage
    score: ScoreStage
    name: str = "generate"  # it takes the generate stage's resources (resources.generate.*)
    holds_model = True  # stays set up across a run's rounds (pipeline/warm_models.py)

    @property
    def resources(self) -> StageResources:
        return self.generate.resources

    def setup(self) -> None:
        """Load both models once per worker, the scorer on the generator's device."""
        self.generate.setup()
        self.score.setup()
        self.setup_s = {**self.generate.setup_s, **{f"score_{k}": v for k, v in self.score.setup_s.items()}}

    def __call__(self, batch: pa.Table) -> pa.Table:
        # The scorer reads the decoded images where the generator left them (on its GPU), not the
        # pixels column: no copy back to the device, no stacking of host rows.
        return self.score(*self.generate.generate(batch))


def generate_and_score(generate: GenerateStage, score: ScoreStage, engine: Engine) -> list:
    """The two stages as the executor should run them: fused when `engine.fuse_score` is on and
    both ask for the same kind of device (both GPUs or both CPUs), else one after the other."""
    same_device = (generate.resources.num_gpus > 0) == (score.resources.num_gpus > 0)
    if not (engine.fuse_score and same_device):
        return [generate, score]
    return [GenerateScoreStage(generate, dataclasses.replace(score, resources=generate.resources))]
