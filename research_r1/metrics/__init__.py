"""QA metrics as `evaluate` modules that load offline.

`evaluate.load("exact_match")` fetches its code from the Hub at run time. These modules ship
inside the package instead. `qa_exact_match`, `qa_cover_match` and `qa_f1` score with the same
functions as our rewards (`research_r1.rewards`), so training reports what a correct answer is
as its reward sees it; `qa_upstream` scores as the published agents' evaluation code does
(`research_r1.evaluation.scoring`), the metric named by its configuration, and is what `research-r1
eval` reports:

    import evaluate
    from research_r1.metrics import metric_path
    f1 = evaluate.load(metric_path("qa_f1"))
    f1.compute(predictions=["Paris"], references=[["Paris", "Paris, France"]])  # {"f1": 1.0}
    subem = evaluate.load(metric_path("qa_upstream"), config_name="subem")
    subem.compute(predictions=["Paris, France"], references=[["Paris"]])  # {"subem": 1.0}
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import datasets
import evaluate

from research_r1.errors import InputError

# module name -> the key its result is reported under (our rewards' scores)
METRICS: dict[str, str] = {
    "qa_exact_match": "exact_match",
    "qa_cover_match": "cover_match",
    "qa_f1": "f1",
}
# The published agents' scores, one module whose configuration names the metric
# (`load_metric(UPSTREAM, config_name="em")`, reported under that name).
UPSTREAM = "qa_upstream"

_CITATION = """\
@article{jin2025searchr1,
  title={Search-R1: Training LLMs to Reason and Leverage Search Engines with
         Reinforcement Learning},
  author={Jin, Bowen and Zeng, Hansi and Yue, Zhenrui and others},
  journal={arXiv preprint arXiv:2503.09516},
  year={2025}
}
"""

_INPUTS = """\
Args:
    predictions: list of predicted answers (str, or None for no answer).
    references: list of lists of gold answers, one list per prediction.
Returns:
    the mean score over the predictions, as a float.
"""


def metric_path(name: str) -> str:
    """The directory of a shipped metric module, for `evaluate.load`."""
    if name not in (*METRICS, UPSTREAM):
        known = ", ".join([*METRICS, UPSTREAM])
        raise InputError(f"unknown metric {name!r}; known metrics: {known}")
    return str(Path(__file__).parent / name)


def load_metric(name: str, **kwargs: Any) -> Any:
    """`evaluate.load` of a shipped metric; kwargs go to `evaluate.load` (e.g. keep_in_memory)."""
    return evaluate.load(metric_path(name), **kwargs)


def qa_metric_info(description: str) -> Any:
    """The `evaluate.MetricInfo` the three QA modules share: string predictions, gold lists."""
    return evaluate.MetricInfo(
        description=description,
        citation=_CITATION,
        inputs_description=_INPUTS,
        features=datasets.Features(
            {
                "predictions": datasets.Value("string"),
                "references": datasets.List(datasets.Value("string")),
            }
        ),
    )


def mean_score(
    score: Callable[[str | None, Sequence[str]], float],
    predictions: Sequence[str | None],
    references: Sequence[Sequence[str]],
) -> float:
    """The mean of `score(prediction, golds)` over the examples."""
    if not predictions:
        raise InputError("no predictions to score")
    scores = [score(p, r) for p, r in zip(predictions, references, strict=True)]
    return sum(scores) / len(scores)
