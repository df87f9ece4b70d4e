"""Exact match for open-domain QA, as Search-R1 and FlashRAG ("em") score it.

The normalised prediction must equal one of the normalised gold answers; see
`research_r1.rewards.normalize_answer`.
"""

import evaluate

from research_r1.metrics import mean_score, qa_metric_info
from research_r1.rewards import exact_match


class QAExactMatch(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return qa_metric_info(__doc__)

    def _compute(self, predictions: list, references: list) -> dict[str, float]:
        return {"exact_match": mean_score(exact_match, predictions, references)}
