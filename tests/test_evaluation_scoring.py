"""The published agents' metrics (research_r1.evaluation.scoring) on known cases: each upstream
normalisation and its edge cases, and an unknown metric refused.

The same metrics as `evaluate` modules, loaded offline, are in test_metrics.py."""

from __future__ import annotations

import pytest

from research_r1.errors import InputError
from research_r1.evaluation.scoring import score


@pytest.mark.parametrize(
    ("name", "prediction", "golds", "expected"),
    [
        ("f1_flashrag", "yes", ["yes"], 1.0),
        ("f1_flashrag", "yes it is", ["yes"], 0.0),  # yes/no only score when identical
        ("f1", "yes it is", ["yes"], 0.5),
        ("f1_set", "paris paris", ["paris"], 2 / 3),  # a set: one common word of two
        ("f1", "paris paris", ["paris"], 2 / 3),
        ("acc_r", "the city of new york", ["New York City"], 1.0),  # any order
        ("acc_r", "Stratford upon Avon", ["Stratford-upon-Avon"], 1.0),
        ("em", "Stratford upon Avon", ["Stratford-upon-Avon"], 0.0),
        ("acc_r", "yes", ["True"], 1.0),
        ("subem", "anything", ["The"], 1.0),  # a gold that normalises to nothing is inside
        ("em", None, ["Paris"], 0.0),
    ],
)
def test_each_metric_on_known_cases(name, prediction, golds, expected) -> None:
    assert score(name, prediction, golds) == pytest.approx(expected, abs=1e-12)
    with pytest.raises(InputError, match="unknown metric 'cover'"):
        score("cover", "a", ["a"])
