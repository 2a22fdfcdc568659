"""The memorization evaluation: its statistics, and a real run on the embedded model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.cli import main
from pipeline.memorization import roc_auc, tpr_at_fpr


def test_auc_and_tpr_at_fpr_on_known_scores():
    assert roc_auc(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 1.0
    assert roc_auc(np.array([1.0, 2.0]), np.array([3.0, 4.0])) == 0.0
    assert roc_auc(np.array([1.0]), np.array([1.0])) == 0.5
    negatives = np.arange(100, dtype=float)          # threshold: the 99th of 100 -> 99
    tpr, threshold = tpr_at_fpr(np.array([50.0, 99.5, 120.0]), negatives, 0.01)
    assert threshold == 99.0 and tpr == pytest.approx(2 / 3)
    assert (negatives > threshold).mean() <= 0.01


def test_eval_memorization_writes_its_figures(tmp_path, models_dir, capsys):
    target = tmp_path / "mem.json"
    assert main(["eval", "memorization", "--json", str(target), "--seeds", "2", "--ordinary", "12"]) == 0
    result = json.loads(target.read_text())
    assert result["n_planted"] == 10 and result["n_ordinary"] == 12
    assert 0.0 <= result["auc"] <= 1.0 and 0.0 <= result["tpr_at_1pct_fpr"] <= 1.0
    assert result["planted_median"] > 0 and result["ordinary_median"] > 0
