"""Token F1 for open-domain QA, as FlashRAG and ReSearch score it.

SQuAD token F1 on normalised answers, the best over the gold answers; yes/no/noanswer score
only by matching exactly. See `research_r1.rewards.token_f1`.
"""

import evaluate

from research_r1.metrics import mean_score, qa_metric_info
from research_r1.rewards import token_f1


class QAF1(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return qa_metric_info(__doc__)

    def _compute(self, predictions: list, references: list) -> dict[str, float]:
        return {"f1": mean_score(token_f1, predictions, references)}
