"""The shipped `evaluate` modules (research_r1.metrics) load offline from a clean cache and score
like the rewards and the published agents' metrics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from research_r1.errors import InputError
from research_r1.metrics import METRICS, mean_score, metric_path
from research_r1.rewards import cover_match, exact_match, token_f1

PREDICTIONS = [
    "Paris",
    "the Eiffel tower",
    "Paris, France",
    "yes",
    "Lyon",
    "Pele\u0301",
    None,
]
REFERENCES = [
    ["paris"],
    ["Eiffel Tower in Paris", "Tour Eiffel"],
    ["Paris"],
    ["no"],
    ["Paris", "Lyon"],
    ["Pelé"],
    ["Paris"],
]
# Per example: exact match, cover match, F1.
EXPECTED = {
    "exact_match": [1, 0, 0, 0, 1, 1, 0],
    "cover_match": [1, 0, 1, 0, 1, 1, 0],
    "f1": [1, 2 / 3, 2 / 3, 0, 1, 1, 0],
}
SCORERS = {"qa_exact_match": exact_match, "qa_cover_match": cover_match, "qa_f1": token_f1}
# The first test sets up `offline_results`: a fresh interpreter with a 300 s limit of its own.
pytestmark = pytest.mark.timeout(400)

# Runs in a fresh interpreter so that evaluate reads the offline switches and the empty cache
# directories at import time; a proxy that refuses connections catches any network attempt.
_LOAD_ALL = """
import json, sys
import evaluate
from research_r1.metrics import METRICS, load_metric, metric_path
predictions, references = json.loads(sys.argv[1])
results = {}
for name in METRICS:
    metric = evaluate.load(metric_path(name))
    via_path = metric.compute(predictions=predictions, references=references)
    via_helper = load_metric(name, keep_in_memory=True).compute(
        predictions=predictions, references=references
    )
    results[name] = [via_path, via_helper]
from research_r1.evaluation.scoring import METRICS as UPSTREAM_METRICS
answered = [(p, r) for p, r in zip(predictions, references) if p is not None]
for name in UPSTREAM_METRICS:
    metric = evaluate.load(metric_path("qa_upstream"), config_name=name)
    results["qa_upstream:" + name] = metric.compute(
        predictions=[p for p, _ in answered], references=[r for _, r in answered]
    )
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def offline_results(tmp_path_factory: pytest.TempPathFactory) -> dict:
    home = tmp_path_factory.mktemp("hf_home")
    env = {
        **os.environ,
        "HF_HOME": str(home),
        "HF_MODULES_CACHE": str(home / "modules"),
        "HF_EVALUATE_CACHE": str(home / "evaluate"),
        "HF_METRICS_CACHE": str(home / "metrics"),
        "HF_HUB_OFFLINE": "1",
        "HF_EVALUATE_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HTTP_PROXY": "http://127.0.0.1:9",
        "HTTPS_PROXY": "http://127.0.0.1:9",
    }
    process = subprocess.run(
        [sys.executable, "-c", _LOAD_ALL, json.dumps([PREDICTIONS, REFERENCES])],
        cwd=home,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert process.returncode == 0, process.stderr
    copied = sorted(p.name for p in (home / "modules").rglob("qa_*.py"))
    assert copied == ["qa_cover_match.py", "qa_exact_match.py", "qa_f1.py", "qa_upstream.py"]
    return json.loads(process.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", list(METRICS))
def test_metric_loads_offline_with_exact_value(offline_results: dict, name: str) -> None:
    key = METRICS[name]
    expected = sum(EXPECTED[key]) / len(EXPECTED[key])
    via_path, via_helper = offline_results[name]
    assert list(via_path) == [key]
    assert via_path[key] == pytest.approx(expected, abs=1e-12)
    assert via_helper == via_path


@pytest.mark.parametrize("name", list(METRICS))
def test_metric_matches_the_reward_functions(offline_results: dict, name: str) -> None:
    key = METRICS[name]
    scorer = SCORERS[name]
    per_example = [scorer(p, r) for p, r in zip(PREDICTIONS, REFERENCES, strict=True)]
    assert per_example == pytest.approx(EXPECTED[key], abs=1e-12)
    assert offline_results[name][0][key] == mean_score(scorer, PREDICTIONS, REFERENCES)


def test_metric_path() -> None:
    for name in METRICS:
        path = Path(metric_path(name))
        assert path.is_absolute() and (path / f"{name}.py").is_file()
    with pytest.raises(
        InputError,
        match="unknown metric 'em'; known metrics: qa_exact_match, qa_cover_match, qa_f1",
    ):
        metric_path("em")


def test_mean_score() -> None:
    assert mean_score(exact_match, ["a", "b"], [["a"], ["c"]]) == 0.5
    with pytest.raises(InputError, match="no predictions to score"):
        mean_score(exact_match, [], [])
    with pytest.raises(ValueError):
        mean_score(exact_match, ["a"], [["a"], ["b"]])


# The published agents' metrics on the answered examples above (evaluation's, no NFKC): per
# example, then the module's mean. "Pele" + a combining accent is not "Pelé" without NFKC.
UPSTREAM_EXPECTED = {
    "em": [1, 0, 0, 0, 1, 0],
    "subem": [1, 0, 1, 0, 1, 0],
    "f1": [1, 2 / 3, 2 / 3, 0, 1, 0],
    "f1_flashrag": [1, 2 / 3, 2 / 3, 0, 1, 0],
    "f1_set": [1, 2 / 3, 2 / 3, 0, 1, 0],
    "acc_r": [1, 0, 1, 0, 1, 0],
}


@pytest.mark.parametrize("name", list(UPSTREAM_EXPECTED))
def test_upstream_metrics_load_offline_with_exact_values(offline_results: dict, name: str) -> None:
    from research_r1.evaluation.scoring import score

    answered = [(p, r) for p, r in zip(PREDICTIONS, REFERENCES, strict=True) if p is not None]
    per_example = [score(name, p, r) for p, r in answered]
    assert per_example == pytest.approx(UPSTREAM_EXPECTED[name], abs=1e-12)
    expected = sum(UPSTREAM_EXPECTED[name]) / len(answered)
    assert offline_results[f"qa_upstream:{name}"] == {name: pytest.approx(expected, abs=1e-12)}
