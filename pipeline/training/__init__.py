"""The `training` kind: labelled, class-balanced, diverse synthetic images for downstream ML teams.

prompts.py (vocabulary, facets, prompt composition) · splits.py (train/val/test by SKU) ·
plan.py (per-class quotas -> items) · labels.py (bbox / mask contract for composited products) ·
diversity.py (Vendi score, dataset metrics) · report.py (run report section) · card.py (README.md).
"""

# Training images are not localized: one row per image, not per market. They sit in their own
# partition, `market=global`, with the CLDR "undetermined" locale (`und`), so every row still has
# the partition values and lineage columns that readers and the validation suite expect.
TRAINING_KIND = "training"
TRAINING_MARKET = "global"
TRAINING_LOCALE = "und"
TRAINING_FORMAT = "1:1"
