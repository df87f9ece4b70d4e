"""The demo's synthetic world, its scripted cold-start agent, and a two-step run of the whole
pipeline (world, index, tiny model, SFT, GRPO through research_r1.training.train, evaluation,
report)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from datasets import load_dataset

from research_r1.demo import (
    MEASURED,
    PINNED_KERNELS,
    TEMPLATE,
    Measured,
    against_spread,
    spread,
    vocabulary_texts,
    write_world,
)
from research_r1.protocol import SEARCH_R1, extract_answer, load_template
from research_r1.retrieval.config import load_retriever
from research_r1.retrieval.corpus import split_contents
from research_r1.rollout import RolloutConfig, encode_prompt, run_rollout
from research_r1.tiny import build_tokenizer
from research_r1.training import train
from research_r1.world import FACTS, KINDS, ScriptedAgent, build_world, read_fact

ROOT = Path(__file__).resolve().parents[1]


def passage_texts(world) -> dict[str, set[str]]:
    """Each title's passage texts."""
    texts: dict[str, set[str]] = {}
    for passage in world.passages:
        title, text = split_contents(passage["contents"])
        texts.setdefault(title, set()).add(text)
    return texts


def test_same_seed_same_world_other_seed_other_world():
    first, again = build_world(3, num_people=60), build_world(3, num_people=60)
    other = build_world(4, num_people=60)
    assert first.passages == again.passages
    assert first.train == again.train and first.test == again.test
    assert first.passages != other.passages
    assert [q.question for q in first.test] != [q.question for q in other.test]


def test_world_sizes_and_corpus_rows():
    world = build_world(0, num_people=60, num_test_questions=20)
    assert len(world.passages) == 60 * len(FACTS)
    assert [p["id"] for p in world.passages] == [str(i) for i in range(180)]
    assert all(re.fullmatch(r'"[A-Z][a-z]+"\n.+\.', p["contents"]) for p in world.passages)
    assert len(world.train) == 45 * len(KINDS)  # every kind for every training person
    assert len(world.test) == 20
    assert sorted(q.kind for q in world.test) == sorted(list(KINDS) * 4)  # balanced kinds


def test_every_answer_is_in_the_corpus_and_two_hop_goes_through_the_bridge():
    world = build_world(1, num_people=60)
    texts = passage_texts(world)
    for question in world.train + world.test:
        relations = KINDS[question.kind][1]
        subject = question.chain[0]
        if len(relations) == 1:
            fact = FACTS[relations[0]].format(name=subject, value=question.answer)
            assert fact in texts[subject]
        else:
            bridge = question.chain[1]
            assert FACTS["mentor"].format(name=subject, value=bridge) in texts[subject]
            # The bridge person's own passage holds the final answer.
            assert FACTS[relations[1]].format(name=bridge, value=question.answer) in texts[bridge]


def test_train_and_held_out_questions_share_no_person():
    world = build_world(2, num_people=80)

    def people(questions):
        named = set()
        for q in questions:
            named |= set(q.chain)
            if q.answer in world.people:
                named.add(q.answer)
        return named

    train, test = people(world.train), people(world.test)
    assert train and test and not train & test


def test_read_fact_reads_the_named_persons_passage():
    observation = (
        "Doc 1(Title: Zed) The mentor of Zed is Kal.\nDoc 2(Title: Kal) The mentor of Kal is Mira."
    )
    assert read_fact(observation, "mentor", "Kal") == ("Kal", "Mira")
    assert read_fact(observation, "mentor", None) == ("Zed", "Kal")
    assert read_fact(observation, "born", "Kal") is None


@pytest.fixture(scope="module")
def small_world(tmp_path_factory):
    """A small world with its real BM25 retriever and a word-level tokenizer."""
    out = tmp_path_factory.mktemp("world")
    world = build_world(5, num_people=40, num_test_questions=10)
    paths = write_world(world, out)
    template = load_template(paths["template"])
    assert template.name == TEMPLATE["name"]
    tokenizer = build_tokenizer(vocabulary_texts(world, template), SEARCH_R1.tags)
    return world, out, paths, load_retriever(paths["retriever"]), template, tokenizer


def play(world, tokenizer, retriever, template, behaviour):
    agent = ScriptedAgent(world, tokenizer, seed=0)
    prompts = []
    for question in world.train:
        ids = encode_prompt(template.prompt(question.question), tokenizer)
        agent.plan(ids, question, behaviour)
        prompts.append(ids)
    config = RolloutConfig(k=2, max_turns=2, max_new_tokens=32, max_completion_tokens=256)
    episodes = run_rollout(
        prompts,
        generator=agent,
        tokenizer=tokenizer,
        retriever=retriever,
        protocol=template.protocol,
        config=config,
    )
    answers = [
        extract_answer(tokenizer.decode(e.completion_ids), template.protocol) for e in episodes
    ]
    return episodes, answers


def test_written_splits_follow_prepare_data_layout(small_world):
    world, out, paths, *_ = small_world
    for split, questions in (("train", world.train), ("test", world.test)):
        rows = load_dataset("parquet", data_files=str(paths["data"] / f"{split}.parquet"))["train"]
        assert rows.column_names == [
            "id",
            "question",
            "golden_answers",
            "data_source",
            "prompt",
            "template",
        ]
        assert rows["question"] == [q.question for q in questions]
        assert rows["golden_answers"] == [[q.answer] for q in questions]
        assert set(rows["template"]) == {"demo"}
    assert sum(1 for _ in (out / "corpus.jsonl").open()) == len(world.passages)


def test_scripted_search_answers_every_question_with_the_real_retriever(small_world):
    world, _, _, retriever, template, tokenizer = small_world
    episodes, answers = play(world, tokenizer, retriever, template, "search")
    assert answers == [q.answer for q in world.train]
    assert [e.num_searches for e in episodes] == [len(KINDS[q.kind][1]) for q in world.train]
    # Inserted observations are masked; the agent's own turns are not.
    for episode in episodes:
        assert 0 in episode.env_mask and 1 in episode.env_mask


def test_scripted_flaws(small_world):
    world, _, _, retriever, template, tokenizer = small_world
    episodes, answers = play(world, tokenizer, retriever, template, "guess")
    assert all(e.num_searches == 0 and e.env_mask[-1] == 0 for e in episodes)
    assert all(a is not None for a in answers)

    episodes, answers = play(world, tokenizer, retriever, template, "one_hop")
    two_hop = [i for i, q in enumerate(world.train) if len(q.chain) == 2]
    assert two_hop
    assert [answers[i] for i in two_hop] == [world.train[i].chain[1] for i in two_hop]
    assert all(episodes[i].num_searches == 1 for i in two_hop)

    episodes, _ = play(world, tokenizer, retriever, template, "vague")
    assert all(len(e.queries) == 1 and e.queries[0] in FACTS for e in episodes)


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


def test_the_readme_shows_the_measured_runs_and_their_spread():
    readme = (ROOT / "README.md").read_text()
    for run in MEASURED:
        row = f"| {run.cpu} | {run.kernels} | {run.seed} | {run.sft:.1f}% → {run.grpo:.1f}% |"
        assert row in readme
    figures = spread().split(" (", 1)[1].rstrip(")")
    assert figures in " ".join(readme.split())


def avx2_host() -> bool:
    cpuinfo = Path("/proc/cpuinfo")
    return cpuinfo.is_file() and " avx2" in cpuinfo.read_text()


@pytest.mark.slow
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

    # `research-r1 eval` on the trained model, reading its settings from the model card, plays
    # the demo's greedy episodes (same batches, same pinned kernels): the same scores.
    evaluated = subprocess.run(
        [
            *(sys.executable, "-m", "research_r1.cli", "eval", "outputs/demo/grpo"),
            *("--datasets", "demo=outputs/demo/questions/test.jsonl"),
            *("--retriever", "outputs/demo/retriever.yaml", "--batch-size", "100"),
            *("--out", "outputs/demo/eval"),
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

    monkeypatch.chdir(tmp_path)
    trainer = train.train(["recipes/tiny_cpu_grpo.yaml", "--max_steps", "1"])
    assert trainer.state.global_step == 1
    assert (tmp_path / "outputs" / "tiny_cpu_grpo" / "model.safetensors").is_file()


def test_demo_refuses_bad_counts(capsys):
    from research_r1.cli import main

    assert main(["demo", "--smoke", "--seeds", "0"]) == 2
    assert "--seeds must be at least 1" in capsys.readouterr().err
