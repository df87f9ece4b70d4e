"""Cover match for open-domain QA, FlashRAG's "acc" (cover exact match).

A prediction scores 1 when a normalised gold answer appears inside the normalised prediction;
see `research_r1.rewards.cover_match`.
"""

import evaluate

from research_r1.metrics import mean_score, qa_metric_info
from research_r1.rewards import cover_match


class QACoverMatch(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return qa_metric_info(__doc__)

    def _compute(self, predictions: list, references: list) -> dict[str, float]:
        return {"cover_match": mean_score(cover_match, predictions, references)}
