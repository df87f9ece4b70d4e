"""The trained model's card (research_r1.training.publish): its metadata and results table, and
an evaluation's scores written into a card on the Hub without losing its text or other
entries."""

from __future__ import annotations

import pytest
from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData

from research_r1.errors import InputError
from research_r1.training.publish import model_card, results_table, update_model_card


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


def eval_record(method: str, setting: str, results: dict[str, tuple[float, float]]) -> dict:
    """A `research-r1 eval` results.json record: dataset -> (EM, F1) on 100 questions."""
    return {
        "config": {
            "method": method,
            "setting": setting,
            "datasets": {name: "test" for name in results},
        },
        "results": {
            name: {"n": 100, "em": em, "f1": f1, "subem": f1, "em_ci95": [em - 0.1, em + 0.1]}
            for name, (em, f1) in results.items()
        },
    }


def test_model_card_metadata_and_results():
    common = dict(
        template="search_r1",
        observation_tag="<information>",
        rewards=["search_r1_em"],
        retriever="recipes/retrievers/remote.yaml",
        recipe={"learning_rate": 2e-5},
    )
    setting = "search_r1 · wiki-18, e5-base-v2 · top-3"
    evaluations = [
        eval_record("agent", setting, {"nq": (0.48, 0.55), "hotpotqa": (0.43, 0.5)}),
        eval_record("direct", setting, {"nq": (0.2, 0.25)}),
    ]
    card = model_card(
        model_name="agent",
        base_model="Qwen/Qwen2.5-7B",
        dataset="hf://datasets/org/nq_hotpotqa@v1",
        evaluations=evaluations,
        peft=True,
        **common,
    )
    assert card.data.base_model == "Qwen/Qwen2.5-7B"
    assert card.data.datasets == ["org/nq_hotpotqa"]
    assert card.data.library_name == "peft"
    assert sorted(
        (r.dataset_name, r.dataset_split, r.metric_type, r.metric_name, r.metric_value)
        for r in card.data.eval_results
        if r.metric_type == "exact_match"
    ) == [
        ("hotpotqa", "test", "exact_match", f"EM (agent; {setting})", 0.43),
        ("nq", "test", "exact_match", f"EM (agent; {setting})", 0.48),
        ("nq", "test", "exact_match", f"EM (direct; {setting})", 0.2),
    ]
    assert len(card.data.eval_results) == 9  # EM, F1 and substring EM for each
    assert "<information>" in card.text and "learning_rate: 2.0e-05" in card.text
    assert results_table(evaluations).splitlines() == [
        "| setting | method | dataset | n | EM | EM 95% CI | F1 | substring EM |",
        "|---|---|---|---|---|---|---|---|",
        f"| {setting} | agent | nq | 100 | 0.480 | 0.380–0.580 | 0.550 | 0.550 |",
        f"| {setting} | agent | hotpotqa | 100 | 0.430 | 0.330–0.530 | 0.500 | 0.500 |",
        f"| {setting} | direct | nq | 100 | 0.200 | 0.100–0.300 | 0.250 | 0.250 |",
    ]
    assert results_table(evaluations) in card.text

    local = model_card(
        model_name="tiny",
        base_model="/tmp",
        dataset="data/x",
        evaluations=[],
        peft=False,
        **common,
    )
    assert local.data.base_model is None and local.data.datasets is None
    assert local.data.eval_results is None and "## Evaluation" not in local.text
    assert "`/tmp`" in local.text
