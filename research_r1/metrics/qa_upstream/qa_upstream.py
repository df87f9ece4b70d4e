"""Open-domain QA scores as the published search agents' evaluation code computes them.

The configuration names the metric (`evaluate.load(path, config_name="subem")`): exact match,
substring match, SQuAD F1, FlashRAG's F1, PiCA's set F1 or R1-Searcher's word cover, each with
the normaliser its authors use (`research_r1.evaluation.scoring.METRICS`). A prediction of None (no
answer) scores 0 under every metric.
"""

import evaluate

from research_r1.evaluation.scoring import METRICS, score
from research_r1.metrics import mean_score, qa_metric_info


class QAUpstream(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        if self.config_name not in METRICS:
            raise ValueError(
                f"unknown metric {self.config_name!r}; known metrics: {', '.join(METRICS)}"
            )
        return qa_metric_info(f"{METRICS[self.config_name].description}. {__doc__}")

    def _compute(self, predictions: list, references: list) -> dict[str, float]:
        name = self.config_name
        return {name: mean_score(lambda p, r: score(name, p, r), predictions, references)}
