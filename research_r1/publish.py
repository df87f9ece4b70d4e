"""The model card of a trained search agent: how it was made, and how it scores.

The card records the recipe, base model, training data, rewards and, when `eval_results.json`
sits in the run's folder ({"dataset": {"exact_match": 0.43, ...}}), the results as `model-index`
entries so the Hub shows them on the model page and in leaderboards. The trainer writes it into
the run's folder at every checkpoint and before the final push (`create_model_card`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from research_r1 import hub

EVAL_RESULTS_FILE = "eval_results.json"

_CARD = """---
{{ card_data }}
---

# {{ model_name }}

A search agent trained from `{{ base_model }}` with GRPO and a multi-turn search rollout by
research_r1 (the Search-R1 / ReSearch methods): it reasons in
`<think>`, searches with `<search>`, reads the passages inserted in
`<{{ observation_tag }}>`, and answers in `<answer>`. Inserted tokens were masked out of the loss.

- Base model: `{{ base_model }}`
- Training data: `{{ dataset }}` (prompt template `{{ template }}`)
- Rewards: {{ rewards }}
- Retriever: `{{ retriever }}`

{% if results_table %}## Evaluation

{{ results_table }}
{% endif %}
## Recipe

```yaml
{{ recipe }}
```
"""


def read_eval_results(output_dir: str | Path) -> dict[str, dict[str, float]]:
    path = Path(output_dir) / EVAL_RESULTS_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def results_table(eval_results: dict[str, dict[str, float]]) -> str:
    """A markdown table, one row per dataset, one column per metric (blank where missing)."""
    if not eval_results:
        return ""
    metrics = sorted({metric for scores in eval_results.values() for metric in scores})
    lines = [f"| dataset | {' | '.join(metrics)} |", "|---" * (1 + len(metrics)) + "|"]
    for name, scores in sorted(eval_results.items()):
        cells = [f"{scores[m]:.3f}" if m in scores else "" for m in metrics]
        lines.append(f"| {name} | {' | '.join(cells)} |")
    return "\n".join(lines)


def model_card(
    *,
    model_name: str,
    base_model: str,
    dataset: str,
    template: str,
    observation_tag: str,
    rewards: list[str],
    retriever: str,
    recipe: dict[str, Any],
    eval_results: dict[str, dict[str, float]],
    peft: bool,
    settings: dict[str, Any] | None = None,
) -> ModelCard:
    """The card's metadata names a Hub base model and Hub dataset only: a local path there
    would make the Hub reject the card's metadata. `settings` (the template and rollout budgets
    training used) go into the metadata as `research_r1`, where `research-r1 eval` reads them."""
    results = [
        EvalResult(
            task_type="question-answering",
            dataset_type=name,
            dataset_name=name,
            metric_type=metric,
            metric_value=value,
        )
        for name, metrics in sorted(eval_results.items())
        for metric, value in sorted(metrics.items())
    ]
    on_hub = not Path(base_model).exists() and base_model.count("/") == 1
    data = ModelCardData(
        base_model=base_model if on_hub else None,
        datasets=[hub.parse_uri(dataset).repo_id] if hub.is_hub_uri(dataset) else None,
        library_name="peft" if peft else "transformers",
        tags=["research_r1", "grpo", "search-agent", "trl"],
        model_name=model_name,
        eval_results=results or None,
        research_r1=settings or None,
    )
    return ModelCard.from_template(
        data,
        template_str=_CARD,
        model_name=model_name,
        base_model=base_model,
        dataset=dataset,
        template=template,
        observation_tag=observation_tag.strip("<>"),
        rewards=", ".join(f"`{r}`" for r in rewards),
        retriever=retriever,
        recipe=yaml.safe_dump(recipe, sort_keys=False).strip(),
        results_table=results_table(eval_results),
    )
