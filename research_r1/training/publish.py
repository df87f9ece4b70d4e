"""The model card of a trained search agent: how it was made, and how it scores.

The card records the recipe, base model, training data, rewards and, when `research-r1 eval`
runs sit in the run's folder (`eval/{method}/results.json`, what a recipe's `eval_suite` writes),
their scores as `model-index` entries so the Hub shows them on the model page. The trainer
writes it into the run's folder at every checkpoint and before the final push
(`create_model_card`). `update_model_card` writes eval scores into any model's card, local or on
the Hub, keeping the entries of other datasets, methods and settings.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError

from research_r1 import hub
from research_r1.errors import InputError
from research_r1.markdown import markdown_table

EVAL_FOLDER = "eval"  # a training run's `research-r1 eval` output, inside its folder
# results.json key (a `research_r1.evaluation.scoring.METRICS` name) -> (model-index metric type,
# name)
CARD_METRICS = {
    "em": ("exact_match", "EM"),
    "f1": ("f1", "F1"),
    "subem": ("substring_exact_match", "substring EM"),
    "f1_flashrag": ("f1", "F1 (FlashRAG)"),
    "f1_set": ("f1", "F1 over word sets"),
    "acc_r": ("accuracy", "ACC_R (word cover)"),
}

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


def read_evaluations(output_dir: str | Path) -> list[dict[str, Any]]:
    """The eval runs saved in a training run's folder, one `results.json` per method."""
    paths = sorted((Path(output_dir) / EVAL_FOLDER).glob("*/results.json"))
    return [json.loads(path.read_text()) for path in paths]


def card_results(record: Mapping[str, Any]) -> list[EvalResult]:
    """One eval run's scores as model-index entries. The metric name carries the method and the
    setting, so entries measured differently never replace one another."""
    config = record["config"]
    return [
        EvalResult(
            task_type="question-answering",
            dataset_type=name,
            dataset_name=name,
            dataset_split=config["datasets"].get(name),
            metric_type=metric_type,
            metric_name=f"{label} ({config['method']}; {config['setting']})",
            metric_value=scores[key],
        )
        for name, scores in record["results"].items()
        for key, (metric_type, label) in CARD_METRICS.items()
        if key in scores
    ]


def results_table(evaluations: Sequence[Mapping[str, Any]]) -> str:
    """A markdown table of eval runs, one row per method and dataset, with its setting."""
    if not evaluations:
        return ""
    columns = ["setting", "method", "dataset", "n", "EM", "EM 95% CI", "F1", "substring EM"]
    rows = [
        [
            record["config"]["setting"],
            record["config"]["method"],
            name,
            r["n"],
            f"{r['em']:.3f}",
            "{:.3f}–{:.3f}".format(*r["em_ci95"]),
            f"{r['f1']:.3f}",
            f"{r['subem']:.3f}" if "subem" in r else "—",
        ]
        for record in evaluations
        for name, r in record["results"].items()
    ]
    return markdown_table(columns, rows)


def update_model_card(
    model: str, evaluations: Sequence[Mapping[str, Any]], token: str | None = None
) -> ModelCard:
    """Write eval runs' scores into a model's card: the README.md of a local folder, or the card
    of a Hub model (pushed, retried). An entry of the same dataset, split, metric, method and
    setting is replaced; every other entry, and the card's text, is kept."""
    new = [result for record in evaluations for result in card_results(record)]
    folder = Path(model)
    if folder.is_dir():
        readme = folder / "README.md"
        card = ModelCard.load(readme) if readme.is_file() else ModelCard("---\n---\n")
    else:
        try:
            card = hub.retry(lambda: ModelCard.load(model, token=token), what=f"read {model}")
        except RepositoryNotFoundError as error:
            raise InputError(f"model {model}: no such repository on the Hub") from error
        except EntryNotFoundError:
            card = ModelCard("---\n---\n")
    kept = [
        old
        for old in card.data.eval_results or []
        if not any(old.is_equal_except_value(result) for result in new)
    ]
    card.data.eval_results = kept + new
    card.data.model_name = card.data.model_name or folder.name
    if folder.is_dir():
        card.save(folder / "README.md")
    else:
        hub.retry(
            lambda: card.push_to_hub(model, token=token, commit_message="Evaluation results"),
            what=f"push the card of {model}",
        )
    return card


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
    evaluations: Sequence[Mapping[str, Any]],
    peft: bool,
    settings: dict[str, Any] | None = None,
) -> ModelCard:
    """The card's metadata names a Hub base model and Hub dataset only: a local path there
    would make the Hub reject the card's metadata. `settings` (the template and rollout budgets
    training used) go into the metadata as `research_r1`, where `research-r1 eval` reads them."""
    results = [result for record in evaluations for result in card_results(record)]
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
        results_table=results_table(evaluations),
    )
