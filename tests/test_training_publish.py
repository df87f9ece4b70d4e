"""The trained model's card (research_r1.training.publish): its metadata and results table, and
an evaluation's scores written into a card on the Hub without losing its text or other
entries."""

from __future__ import annotations

import pytest
from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData

from research_r1.errors import InputError
from research_r1.training.publish import update_model_card


def test_a_hub_model_card_keeps_its_text_and_other_entries(hub):
    repo = hub.new_repo_id("published")
    HfApi().create_repo(repo, token=hub.token)
    other = EvalResult(
        task_type="question-answering",
        dataset_type="nq",
        dataset_name="nq",
        metric_type="exact_match",
        metric_value=0.4,
    )
    ModelCard.from_template(
        ModelCardData(model_name="published", eval_results=[other]),
        template_str="---\n{{ card_data }}\n---\n# Published\n\nThe authors' text.\n",
    ).push_to_hub(repo, token=hub.token)
    record = {
        "config": {"method": "agent", "setting": "search_r1 · top-3", "datasets": {"nq": "test"}},
        "results": {"nq": {"em": 0.38, "f1": 0.45, "subem": 0.5}},
    }
    update_model_card(repo, [record], token=hub.token)
    card = ModelCard.load(repo)
    assert "The authors' text." in card.text
    assert sorted((r.metric_name or "", r.metric_value) for r in card.data.eval_results) == [
        ("", 0.4),
        ("EM (agent; search_r1 · top-3)", 0.38),
        ("F1 (agent; search_r1 · top-3)", 0.45),
        ("substring EM (agent; search_r1 · top-3)", 0.5),
    ]
    with pytest.raises(InputError, match="no such repository"):
        update_model_card(hub.new_repo_id("missing"), [record], token=hub.token)
