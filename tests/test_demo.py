"""`research-r1 demo` (research_r1.demo): the world written in prepare-data's layout, a run
placed against the measured spread, the README's table of measured runs, and a two-step run of
the whole pipeline (world, index, tiny model, SFT, GRPO through research_r1.training.train,
evaluation, report).

The synthetic world and its scripted agent are in test_world.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from datasets import load_dataset
from helpers import ROOT

from research_r1 import evaluation
from research_r1.demo import (
    MEASURED,
    Measured,
    against_spread,
    spread,
)
from research_r1.kernels import PINNED_KERNELS
from research_r1.training import train
from research_r1.world import KINDS


def test_written_splits_follow_prepare_data_layout(demo_world):
    world, out, paths = demo_world.world, demo_world.out, demo_world.paths
    for split, questions in (("train", world.train), ("test", world.test)):
        rows = load_dataset("parquet", data_files=str(paths["data"] / f"{split}.parquet"))["train"]
        assert rows.column_names == [
            "id",
            "question",
            "golden_answers",
            "data_source",
            "prompt",
            "template",
            "kind",  # beside prepare-data's columns: what `skip_zero_std_by: kind` groups by
        ]
        assert rows["question"] == [q.question for q in questions]
        assert rows["kind"] == [q.kind for q in questions]
        assert rows["golden_answers"] == [[q.answer] for q in questions]
        assert set(rows["template"]) == {"demo"}
    assert sum(1 for _ in (out / "corpus.jsonl").open()) == len(world.passages)


SPREAD = "the spread measured over 3 seeds and 3 CPUs (after GRPO 69.2–85.0%, gain +34.7 to +47.2)"


@pytest.mark.parametrize(
    ("sft", "grpo", "message"),
    [
        (0.4, 0.8275, f"held-out EM 40.0% → 82.8% (+42.8 points), within {SPREAD}"),
        # The spread's edges are inside: the Intel host's run, and seed 2's.
        (0.345, 0.6925, f"held-out EM 34.5% → 69.2% (+34.8 points), within {SPREAD}"),
        (0.3775, 0.85, f"held-out EM 37.8% → 85.0% (+47.2 points), within {SPREAD}"),
        (
            0.3,
            0.6,
            f"held-out EM 30.0% → 60.0% (+30.0 points), below {SPREAD}: GRPO taught this run "
            "less than any measured one. A CPU not measured yet can do that (pinned kernels do "
            "not make CPUs agree); so can other package versions or changed code",
        ),
        # A cold start as good as any measured, but the gain short of the spread: below.
        (
            0.4,
            0.74,
            f"held-out EM 40.0% → 74.0% (+34.0 points), below {SPREAD}: GRPO taught this run "
            "less than any measured one. A CPU not measured yet can do that (pinned kernels do "
            "not make CPUs agree); so can other package versions or changed code",
        ),
        (
            0.4,
            0.9,
            f"held-out EM 40.0% → 90.0% (+50.0 points), above {SPREAD}: GRPO taught this run "
            "more than any measured one; add it, with its CPU, to MEASURED in research_r1/demo.py",
        ),
        (
            0.6,
            0.9,
            f"held-out EM 60.0% → 90.0% (+30.0 points), outside {SPREAD}: the run after GRPO "
            "and its gain lie on opposite sides of it, from a cold start unlike any measured one's",
        ),
    ],
)
def test_a_run_is_placed_against_the_measured_spread(sft, grpo, message):
    assert against_spread(sft, grpo) == message


def test_the_spread_comes_from_the_runs_it_is_given():
    runs = [Measured("a", "all three", 0, 30.0, 60.0), Measured("b", "none", 1, 40.0, 80.0)]
    assert spread(runs) == (
        "the spread measured over 2 seeds and 2 CPUs (after GRPO 60.0–80.0%, gain +30.0 to +40.0)"
    )
    assert against_spread(0.3, 0.6, runs).startswith(
        "held-out EM 30.0% → 60.0% (+30.0 points), within"
    )


def test_the_docs_show_the_measured_runs_and_the_readme_their_spread():
    demo_doc = (ROOT / "docs" / "demo.md").read_text()
    for run in MEASURED:
        row = f"| {run.cpu} | {run.kernels} | {run.seed} | {run.sft:.1f}% → {run.grpo:.1f}% |"
        assert row in demo_doc
    figures = spread().split(" (", 1)[1].rstrip(")")
    for text in (demo_doc, (ROOT / "README.md").read_text()):
        assert figures in " ".join(text.split())


def avx2_host() -> bool:
    cpuinfo = Path("/proc/cpuinfo")
    return cpuinfo.is_file() and " avx2" in cpuinfo.read_text()


@pytest.mark.slow
# Two subprocesses of up to 600 s each (their own limits), then a training step.
@pytest.mark.timeout(1500)
def test_smoke_run_of_the_whole_demo_then_the_recipe_on_its_output(tmp_path, monkeypatch):
    """`research-r1 demo` in a fresh process, from a folder holding the repository's recipes
    (as a checkout does), writing the default outputs/demo; then the tiny recipe, unchanged,
    trains on what it wrote."""
    shutil.copytree(ROOT / "recipes", tmp_path / "recipes")
    env = {k: v for k, v in os.environ.items() if k not in PINNED_KERNELS}
    run = subprocess.run(
        [sys.executable, "-m", "research_r1.cli", "demo", "--smoke"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    out = tmp_path / "outputs" / "demo"
    for name in ("summary.md", "reward_curve.png", "em.png", "results.json", "model", "grpo"):
        assert (out / name).exists(), name
    results = json.loads((out / "results.json").read_text())
    assert results["grpo_steps"] == 2 and results["held_out_questions"] == 10
    for stage in ("sft", "grpo"):
        scores = results[stage]
        assert sorted(scores["by_kind"]) == sorted(KINDS)
        assert sum(k["questions"] for k in scores["by_kind"].values()) == 10
        assert 0.0 <= scores["em"] <= 1.0 and 0.0 <= scores["valid_format"] <= 1.0
    # The kernels were pinned before torch started, so any x86 host runs AVX2 ones.
    assert {k: results["kernels"][k] for k in PINNED_KERNELS} == PINNED_KERNELS
    if avx2_host():
        assert results["kernels"]["aten"] == "AVX2"
    summary = (out / "summary.md").read_text()
    assert "| all |" in summary and all(f"| {kind} |" in summary for kind in KINDS)
    assert (out / "reward_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert "EM GRPO" in run.stdout
    assert f"not compared with {spread()}: that is for the default sizes" in run.stdout
    assert results["cpu"]

    # The model card names the demo's retriever and held-out questions: eval and ask need no
    # other flag.
    monkeypatch.chdir(tmp_path)
    plan = evaluation.make_plan(evaluation.EvalArguments(model="outputs/demo/grpo", dry_run=True))
    assert plan.datasets == {"demo": "demo=outputs/demo/questions/test.jsonl"}
    assert plan.retriever == "outputs/demo/retriever.yaml" and plan.suite.name == "demo"
    played = evaluation.agent_plan(evaluation.PlayArguments(model="outputs/demo/grpo"))
    assert played.retriever == "outputs/demo/retriever.yaml"

    # `research-r1 eval` on the trained model, reading its settings from the model card, plays
    # the demo's greedy episodes (same batches, same pinned kernels): the same scores.
    evaluated = subprocess.run(
        [
            *(sys.executable, "-m", "research_r1.cli", "eval", "outputs/demo/grpo"),
            *("--batch-size", "100", "--output_dir", "outputs/demo/eval"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env | PINNED_KERNELS,
        timeout=600,
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    record = json.loads((out / "eval" / "agent" / "results.json").read_text())
    assert record["config"]["family"] == "research_r1"
    measured, reported = record["results"]["demo"], results["grpo"]
    assert measured["n"] == 10
    assert measured["em"] == pytest.approx(reported["em"], abs=1e-9)
    assert measured["searches"] == pytest.approx(reported["searches"], abs=1e-9)
    assert measured["valid_format_rate"] == pytest.approx(reported["valid_format"], abs=1e-9)

    trainer = train.train(["recipes/tiny_cpu_grpo.yaml", "--max_steps", "1"])
    assert trainer.state.global_step == 1
    assert (tmp_path / "outputs" / "tiny_cpu_grpo" / "model.safetensors").is_file()


def test_demo_refuses_bad_counts(capsys):
    from research_r1.cli import main

    assert main(["demo", "--smoke", "--seeds", "0"]) == 2
    assert "--seeds must be at least 1" in capsys.readouterr().err
