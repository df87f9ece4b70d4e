"""An eval run's results: each dataset's scores with bootstrap intervals, `results.json` (the
layout leaderboard Spaces read) and `results.md` per method, and where they are published: a
Hub results dataset and the model card's model-index.
"""

from __future__ import annotations

import datetime
import json
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

import research_r1
from research_r1 import hub
from research_r1.errors import RunStopped
from research_r1.evaluation.plan import Plan
from research_r1.evaluation.scoring import Scoring
from research_r1.markdown import markdown_table
from research_r1.metrics import UPSTREAM, load_metric
from research_r1.training.publish import update_model_card

BOOTSTRAP_SAMPLES = 1000


def write_results(
    plan: Plan, method: str, traces: Mapping[str, Sequence[Mapping[str, Any]]]
) -> dict[str, Any]:
    """`method`'s scores per dataset into its folder's `results.json` and `results.md` (printed
    too); the record `results.json` holds."""
    results = {name: summarize(lines, plan.family.scoring) for name, lines in traces.items()}
    record = {"config": plan.describe(method) | provenance(), "results": results}
    folder = plan.output_dir / method
    (folder / "results.json").write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    markdown = results_markdown(plan, method, results)
    (folder / "results.md").write_text(markdown)
    print(markdown)
    return record


def publish(
    plan: Plan, records: Sequence[Mapping[str, Any]], *, update_card: bool, repo_id: str | None
) -> None:
    """The run's scores into the model card's model-index (`update_card`), and its folders to
    the Hub results dataset `repo_id`, as asked."""
    if update_card:
        update_model_card(plan.model, records)
        print(f"wrote the scores into the model card of {plan.model}")
    if repo_id:
        where = push_results(plan, repo_id)
        print(f"pushed the run to hf://datasets/{repo_id}/{where}")


def summarize(traces: Sequence[Mapping[str, Any]], scoring: Scoring) -> dict[str, Any]:
    """One dataset's scores: the family's metrics and the comparison ones through the package's
    `evaluate` module (`qa_upstream`), each with a 95% bootstrap interval, searches per question
    and the share of well-formed runs."""
    # evaluate checks the type of the first prediction only, and a None (no answer) is not a
    # string: the answered come first (a mean does not depend on the order).
    pairs = sorted(
        ((t["prediction"], t["golden_answers"]) for t in traces), key=lambda p: p[0] is None
    )
    predictions, references = [p for p, _ in pairs], [r for _, r in pairs]
    names = scoring.reported
    summary: dict[str, Any] = {
        name: load_metric(UPSTREAM, config_name=name, keep_in_memory=True).compute(
            predictions=predictions, references=references
        )[name]
        if predictions[0] is not None
        else 0.0
        for name in names
    }
    for name in names:
        summary[f"{name}_ci95"] = bootstrap_ci([t["scores"][name] for t in traces])
    return {
        **summary,
        "n": len(traces),
        "searches": float(np.mean([t["searches"] for t in traces])),
        "valid_format_rate": float(np.mean([t["valid_format"] for t in traces])),
        "errors": sum(t["error"] is not None for t in traces),
    }


def bootstrap_ci(values: Sequence[float], samples: int = BOOTSTRAP_SAMPLES) -> list[float]:
    """The 95% percentile bootstrap interval of the mean (fixed seed: reruns agree)."""
    data = np.asarray(values, dtype=float)
    means = np.random.default_rng(0).choice(data, (samples, len(data))).mean(axis=1)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def results_markdown(plan: Plan, method: str, results: Mapping[str, Mapping[str, Any]]) -> str:
    """`results.md`: the run's setting, then a row of scores per dataset."""
    scoring = plan.family.scoring
    headline = scoring.headline
    others = [name for name in scoring.reported if name != headline]
    decoding = "greedy" if plan.decoding == "greedy" else f"sampled {plan.sampling}"
    columns = ["dataset", "n", headline, f"{headline} 95% CI", *others]
    columns += ["searches", "valid format", "errors"]
    rows = []
    for name, r in results.items():
        low, high = r[f"{headline}_ci95"]
        rows.append(
            [
                name,
                r["n"],
                f"{r[headline]:.3f}",
                f"{low:.3f}–{high:.3f}",
                *(f"{r[other]:.3f}" for other in others),
                f"{r['searches']:.2f}",
                f"{r['valid_format_rate']:.0%}",
                r["errors"],
            ]
        )
    heading = (
        f"# {plan.model} · {method}\n\nSetting: {plan.setting}. Family {plan.family.family}, "
        f"template `{plan.family.template.name}`, {decoding}, {plan.backend}."
    )
    return f"{heading}\n\n{markdown_table(columns, rows)}\n"


def provenance() -> dict[str, Any]:
    """Which code produced a result: the package version, the git commit of a checkout, when."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(research_r1.__file__).parent,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    return {
        "version": research_r1.__version__,
        "git_commit": commit,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def push_results(plan: Plan, repo_id: str) -> str:
    """Upload each method's folder (results.json, results.md, traces) to a Hub results dataset
    as `runs/{model}/{time}/{method}/`, where `research-r1 leaderboard hf://datasets/ORG/NAME`
    finds it; return that folder. A push that fails after its retries stops with a message:
    the output folder holds everything, and the same command pushes it again at once (every
    question is done)."""
    local = Path(plan.model).exists()
    model = Path(plan.model).resolve().name if local else plan.model.replace("/", "__")
    if plan.revision:
        model += f"@{plan.revision}"
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    where = f"runs/{model}/{stamp}"
    try:
        hub.push_folder(
            plan.output_dir,
            repo_id,
            repo_type="dataset",
            path_in_repo=where,
            allow_patterns=[f"{method}/**" for method in plan.methods],
            commit_message=f"eval {plan.model} ({plan.setting})",
            what=f"push the results to {repo_id}",
        )
    except hub.PUSH_ERRORS as error:
        raise RunStopped(
            f"could not push the results to {repo_id}: {hub.scrub(str(error))}. They are in "
            f"{plan.output_dir}; run the same command again to push them"
        ) from error
    return where
