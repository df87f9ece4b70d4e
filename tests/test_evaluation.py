"""`research-r1 eval` (research_r1.evaluation's `run_eval`, the whole pipeline): a run end to
end on the toy world with a scripted policy (exact traces and scores), resume after a crash, a
question that fails on its own (recorded) against a bug (raised), every bad input, the
baselines, results on the Hub and in the model card, runs that cannot be mixed up, and the real
tiny model.

Its steps have test files of their own: test_evaluation_plan.py (the settings a run plays,
`--dry-run`), test_evaluation_run.py (a batch played through failures)."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import torch
from helpers import TOY_SCRIPTS, Scripted
from huggingface_hub import HfApi, ModelCard, hf_hub_download

from research_r1 import evaluation
from research_r1.cli import main as cli_main
from research_r1.cli import parse
from research_r1.errors import InputError
from research_r1.evaluation import load as loading
from research_r1.evaluation.scoring import METRICS
from research_r1.protocol import SEARCH_R1
from research_r1.retrieval import Passage, QueryRejected
from research_r1.tiny import build_tiny_model


def eval_args(world, out: Path, *extra: str) -> list[str]:
    return [
        *("eval", str(world.model), "--template", "search_r1"),
        *("--datasets", f"toy={world.qa}", "--retriever", str(world.retriever)),
        *("--output_dir", str(out), "--batch-size", "2"),
        *extra,
    ]


def results(out: Path, method: str = "agent") -> dict:
    return json.loads((out / method / "results.json").read_text())


def traces(out: Path, method: str = "agent") -> list[dict]:
    path = out / method / "traces" / "toy.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


# ---------------------------------------------------------------------------------------------
# Settings this machine cannot serve


def test_settings_that_cannot_be_served_here_say_what_they_need(toy_world, scripted, capsys):
    google = "Alibaba-NLP/ZeroSearch_google_V2_Qwen2.5_7B"
    assert cli_main(["eval", google, "--dry-run"]) == 0
    config = json.loads(capsys.readouterr().out)
    assert config["suite"] == "zerosearch_google" and config["retriever"] is None
    assert config["setting"] == "zerosearch_google · live Google search (SerpAPI) · top-5"
    assert cli_main(["eval", google, "--datasets", f"toy={toy_world.qa}"]) == 2
    assert "measured on live Google results" in capsys.readouterr().err
    args = [
        "eval",
        google,
        "--datasets",
        f"toy={toy_world.qa}",
        "--retriever",
        str(toy_world.retriever),
    ]
    assert cli_main([*args, "--dry-run"]) == 0
    setting = json.loads(capsys.readouterr().out)["setting"]
    assert setting == f"zerosearch_google · {toy_world.root.name}/corpus.jsonl, BM25 · top-5"
    assert cli_main(["eval", "XXsongLALA/Qwen-2.5-7B-base-RAG-RL", "--dry-run"]) == 0
    assert "R1-Searcher's question files ship" in json.loads(capsys.readouterr().out)["needs"]
    assert cli_main(["eval", "XXsongLALA/Qwen-2.5-7B-base-RAG-RL"]) == 2
    assert "R1-Searcher searched KILT" in capsys.readouterr().err
    assert scripted.plans == []


# ---------------------------------------------------------------------------------------------
# A run, end to end


def test_a_run_writes_exact_traces_results_and_markdown(toy_world, scripted, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli_main(eval_args(toy_world, out)) == 0

    lines = traces(out)
    assert [t["id"] for t in lines] == ["toy-test-q1", "toy-test-q2", "toy-test-q3"]
    first, second, third = lines
    assert (first["question"], first["golden_answers"]) == ("who wrote hamlet?", ["Shakespeare"])
    assert (first["prediction"], first["scores"], first["searches"], first["turns"]) == (
        "Shakespeare",
        {"em": 1.0, "f1": 1.0, "subem": 1.0},
        1,
        2,
    )
    assert first["queries"] == ["hamlet author"] and first["retrieved_ids"] == [["0"]]
    assert first["finish"] == "answered" and first["valid_format"] and first["error"] is None
    assert "<information>Doc 1(Title: Hamlet) Hamlet is a tragedy" in first["transcript"]
    assert (second["prediction"], second["scores"]["em"], second["finish"]) == (
        "Lyon",
        0.0,
        "answered",
    )
    assert (third["prediction"], third["scores"]["em"], third["finish"], third["turns"]) == (
        None,
        0.0,
        "no_answer",
        1,
    )

    record = results(out)
    toy = record["results"]["toy"]
    assert (toy["n"], toy["em"], toy["f1"], toy["subem"]) == (3, 1 / 3, 1 / 3, 1 / 3)
    assert (toy["searches"], toy["errors"], toy["valid_format_rate"]) == (1 / 3, 0, 2 / 3)
    low, high = toy["em_ci95"]
    assert low == 0.0 and high == 1.0  # three questions: the interval is wide, as it should be
    config = record["config"]
    assert config["method"] == "agent" and config["family"] == "custom"
    assert config["setting"] == f"search_r1 · {toy_world.root.name}/corpus.jsonl, BM25 · top-3"
    assert config["metrics"] == {name: METRICS[name].description for name in ("em", "f1", "subem")}
    assert config["version"] and config["date"]
    assert (out / "agent" / "results.md").read_text().splitlines()[4:] == [
        "| dataset | n | em | em 95% CI | f1 | subem | searches | valid format | errors |",
        "|---|---|---|---|---|---|---|---|---|",
        "| toy | 3 | 0.333 | 0.000–1.000 | 0.333 | 0.333 | 0.33 | 67% | 0 |",
    ]
    assert "| toy | 3 | 0.333 |" in capsys.readouterr().out


def test_a_run_killed_mid_way_resumes_to_the_same_results(toy_world, scripted, tmp_path):
    straight = tmp_path / "straight"
    assert cli_main(eval_args(toy_world, straight, "--batch-size", "1")) == 0

    resumed = tmp_path / "resumed"
    scripted.generator = Scripted(
        scripted.generator.tokenizer, TOY_SCRIPTS, fail_on="capital of france?"
    )
    assert cli_main(eval_args(toy_world, resumed, "--batch-size", "1")) == 130  # interrupted
    assert [t["id"] for t in traces(resumed)] == ["toy-test-q1"]
    assert not (resumed / "agent" / "results.json").exists()

    scripted.generator = Scripted(scripted.generator.tokenizer, TOY_SCRIPTS)
    assert cli_main(eval_args(toy_world, resumed, "--batch-size", "1")) == 0
    played = {q for q in TOY_SCRIPTS if any(q in c for c in scripted.generator.contexts)}
    assert played == {"capital of france?", "tallest mountain?"}  # the answered one was skipped
    assert results(resumed)["results"] == results(straight)["results"]
    assert [t["id"] for t in traces(resumed)] == [t["id"] for t in traces(straight)]


class Raising:
    """The BM25 retriever of the toy world, except that one query raises `error`."""

    def __init__(self, inner, query: str, error: type[BaseException]) -> None:
        self.inner, self.query, self.error = inner, query, error

    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        if self.query in queries:
            raise self.error(f"cannot search {self.query!r}")
        return self.inner.search(queries, k)


class RowShort:
    """A generator that returns one row fewer than it was asked for: the rollout's own check
    must catch it."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def generate(self, contexts, max_new_tokens, stop):
        return self.inner.generate(contexts, max_new_tokens, stop)[:-1]


def retrieving(monkeypatch, wrap) -> Callable:
    """Eval's retriever wrapped by `wrap`; the loader it had."""
    real = loading.load_retriever
    monkeypatch.setattr(loading, "load_retriever", lambda config: wrap(real(config)))
    return real


@pytest.mark.parametrize("error", [QueryRejected, torch.OutOfMemoryError, MemoryError])
def test_a_question_that_fails_on_its_own_is_recorded_and_tried_again_on_resume(
    error, toy_world, scripted, tmp_path, monkeypatch
):
    """A query the retriever refuses, or memory its batch ran out of: that question's trace
    says so, the others are played, and a resume plays it again."""
    real = retrieving(monkeypatch, lambda inner: Raising(inner, "hamlet author", error))
    out = tmp_path / "out"
    assert cli_main(eval_args(toy_world, out)) == 0
    first = traces(out)[0]
    assert first["finish"] == "error"
    assert first["error"] == f"{error.__name__}: cannot search 'hamlet author'"
    assert results(out)["results"]["toy"]["errors"] == 1
    assert [t["id"] for t in traces(out)[1:]] == ["toy-test-q2", "toy-test-q3"]  # the run went on

    monkeypatch.setattr(loading, "load_retriever", real)
    scripted.generator = Scripted(scripted.generator.tokenizer, TOY_SCRIPTS)
    assert cli_main(eval_args(toy_world, out)) == 0
    toy = results(out)["results"]["toy"]
    assert (toy["errors"], toy["em"]) == (0, 1 / 3)


def test_a_bug_is_raised_not_recorded_as_a_failed_question(
    toy_world, scripted, tmp_path, monkeypatch
):
    """A bug (a TypeError, here from the retriever) and the rollout's own consistency checks (a
    RuntimeError: the generator returned a row too few) stop the run with their traceback;
    no question is recorded as failed."""
    real = retrieving(monkeypatch, lambda inner: Raising(inner, "hamlet author", TypeError))
    with pytest.raises(TypeError, match="cannot search 'hamlet author'"):
        cli_main(eval_args(toy_world, tmp_path / "bug"))
    monkeypatch.setattr(loading, "load_retriever", real)
    scripted.generator = RowShort(scripted.generator)
    with pytest.raises(RuntimeError, match="generator returned 1 rows for 2"):
        cli_main(eval_args(toy_world, tmp_path / "check"))
    for out in ("bug", "check"):
        assert (tmp_path / out / "agent" / "traces" / "toy.jsonl").read_text() == ""


def test_the_baselines_answer_in_one_turn_rag_with_the_questions_passages(
    toy_world, scripted, tmp_path
):
    scripts = {
        "who wrote hamlet?": ["<answer> Shakespeare </answer>"] * 2,
        "capital of france?": ["<answer> Paris </answer>"] * 2,
        "tallest mountain?": ["<search> everest </search>"] * 2,  # a baseline cannot search
    }
    scripted.generator = Scripted(scripted.generator.tokenizer, scripts)
    out = tmp_path / "out"
    assert cli_main(eval_args(toy_world, out, "--method", "rag,direct")) == 0
    for method in ("rag", "direct"):
        toy = results(out, method)["results"]["toy"]
        assert (toy["em"], toy["searches"]) == (2 / 3, 0.0)
        assert traces(out, method)[2]["finish"] == "no_answer"
    rag, direct = scripted.generator.contexts[:3], scripted.generator.contexts[3:]
    assert "Documents:\nDoc 1(Title: Hamlet) Hamlet is a tragedy written by Shakespeare." in rag[0]
    assert all("Documents" not in context for context in direct)
    assert direct[0].startswith("Answer the given question directly. Put the final answer")


# ---------------------------------------------------------------------------------------------
# Bad input fails before any work


def test_bad_input_fails_before_anything_is_loaded(toy_world, scripted, hub, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1, "question": "q", "golden_answers": ["a"]}\nnot json\n')
    flashrag = tmp_path / "flashrag"
    (flashrag / "nq").mkdir(parents=True)
    (flashrag / "nq" / "test.jsonl").write_text(toy_world.qa.read_text())
    out = tmp_path / "out"
    for argv, message in [
        (["--datasets", "nope", "--source", str(flashrag)], f"{flashrag}: no nope/test.jsonl"),
        (
            ["--datasets", "nq", "--source", str(flashrag), "--split", "dev"],
            f"{flashrag}: no nq/dev.jsonl or",
        ),
        (["--datasets", f"bad={bad}"], f"{bad}: row 2: not valid JSON"),
        (["--template", "nope.yaml"], "template 'nope.yaml' is neither a built-in"),
        (["--method", "agent,greedy"], "--method: ['greedy']; choose from agent, rag, direct"),
    ]:
        args = [*eval_args(toy_world, out), *argv]
        assert cli_main(args) == 2
        assert capsys.readouterr().err.splitlines()[-1].startswith(f"error: {message}"), argv
    missing = tmp_path / "missing-model"
    assert cli_main(["eval", str(missing), "--template", "search_r1", "--datasets", "nq"]) == 2
    assert capsys.readouterr().err.startswith(f"error: model {missing}: ")
    assert cli_main(["eval", "someone/unknown-model", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "no known family" in err and "--template" in err
    assert scripted.plans == [] and not out.exists()


def test_a_dead_retriever_fails_at_once_naming_it(toy_world, scripted, tmp_path, capsys):
    dead = tmp_path / "dead.yaml"
    dead.write_text("type: remote\nurl: http://127.0.0.1:9\nretries: 0\ntimeout_s: 1\n")
    args = eval_args(toy_world, tmp_path / "out")
    args[args.index("--retriever") + 1] = str(dead)
    assert cli_main(args) == 2
    # datasets' "Generating train split" bar comes first when the questions are not cached yet
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: retriever {dead}: the probe failed")
    assert scripted.plans == []


# ---------------------------------------------------------------------------------------------
# The real tiny model


@pytest.mark.slow
def test_the_tiny_model_runs_through_transformers(toy_world, tmp_path):
    out = tmp_path / "out"
    assert cli_main(eval_args(toy_world, out, "--limit", "2")) == 0
    lines = traces(out)
    assert len(lines) == 2 and all(t["error"] is None and t["tokens"] > 0 for t in lines)
    assert all(t["transcript"].startswith("Answer the given question.") for t in lines)
    assert results(out)["results"]["toy"]["n"] == 2


# ---------------------------------------------------------------------------------------------
# Results on the Hub and in the model card


def test_a_run_goes_to_a_results_dataset_the_card_and_the_leaderboard(
    toy_world, scripted, hub, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("HF_TOKEN", hub.token)
    model = tmp_path / "model"
    shutil.copytree(toy_world.model, model)  # the card is written into the model's folder
    repo = hub.new_repo_id("results")
    out = tmp_path / "out"
    args = eval_args(toy_world, out, "--method", "agent,direct", "--push-to-hub", repo)
    args[1] = str(model)
    assert cli_main([*args, "--update-model-card"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote the scores into the model card of {model}" in printed
    where = re.search(rf"pushed the run to hf://datasets/{repo}/(\S+)", printed).group(1)
    assert re.fullmatch(r"runs/model/\d{8}T\d{6}Z", where)

    files = set(HfApi().list_repo_files(repo, repo_type="dataset"))
    for method in ("agent", "direct"):
        assert {f"{where}/{method}/results.json", f"{where}/{method}/traces/toy.jsonl"} <= files
    pushed = json.loads(
        Path(hf_hub_download(repo, f"{where}/agent/results.json", repo_type="dataset")).read_text()
    )
    assert pushed == results(out)

    card = ModelCard.load(model / "README.md")
    setting = f"search_r1 · {toy_world.root.name}/corpus.jsonl, BM25 · top-3"
    assert sorted(
        (r.metric_name, r.dataset_name, r.dataset_split, r.metric_value)
        for r in card.data.eval_results
        if r.metric_type == "exact_match"
    ) == [
        (f"EM (agent; {setting})", "toy", "test", 1 / 3),
        (f"EM (direct; {setting})", "toy", "test", results(out, "direct")["results"]["toy"]["em"]),
    ]
    assert len(card.data.eval_results) == 6  # EM, F1, substring EM per method
    assert cli_main([*args[:-2], "--update-model-card"]) == 0  # again: replaced, not added
    assert len(ModelCard.load(model / "README.md").data.eval_results) == 6

    board = tmp_path / "board"
    assert cli_main(["leaderboard", f"hf://datasets/{repo}", "--output_dir", str(board)]) == 0
    table = (board / "leaderboard.md").read_text()
    ours = table.split(f"## {setting}\n")[1].split("\n## ")[0]  # a table of its own
    rows = [
        line.split(" | ")
        for line in ours.splitlines()
        if line.startswith("| 1 ") or line.startswith("| 2 ")
    ]
    assert [(row[2], row[3], row[4]) for row in rows] == [
        ("agent", "measured", "0.333"),
        ("direct", "measured", "0.000"),
    ]
    assert "## search_r1 · wiki-18, e5-base-v2 · top-3" in table  # the papers', apart
    assert (board / "leaderboard.png").read_bytes()[:4] == b"\x89PNG"


# ---------------------------------------------------------------------------------------------
# Runs that can never be mixed up


def test_another_model_or_setting_never_resumes_from_a_folders_traces(
    toy_world, scripted, tmp_path
):
    """The trained model's folder, then the cold-start model (same files, other weights) or
    another k: refused with what differs and the way out; --overwrite starts afresh."""
    out = tmp_path / "out"
    assert cli_main(eval_args(toy_world, out)) == 0
    first = traces(out)
    assert {t["model"] for t in first} == {str(toy_world.model)}
    assert len({t["run"] for t in first}) == 1

    other = tmp_path / "cold-start"
    build_tiny_model(other, ["x"], SEARCH_R1.tags, hidden_size=64, seed=1)
    args = eval_args(toy_world, out)
    args[1] = str(other)
    with pytest.raises(InputError) as refused:
        evaluation.run_eval(parse(args)[1])
    message = str(refused.value)
    assert message.startswith(f"{out / 'agent'} holds the traces of another run (identity: ")
    assert "model: " in message and message.endswith(
        "give another --output_dir, or --overwrite to replace them"
    )

    with pytest.raises(InputError, match=r"another run \(rollout.k: 3 → 1; setting: "):
        evaluation.run_eval(parse([*eval_args(toy_world, out), "--top_k", "1"])[1])
    assert traces(out) == first  # nothing was written

    assert cli_main([*eval_args(toy_world, out), "--top_k", "1", "--overwrite"]) == 0
    assert results(out)["config"]["rollout"]["k"] == 1
    assert all(t["run"] != first[0]["run"] for t in traces(out))


def test_a_trace_line_of_another_run_is_refused(toy_world, scripted, tmp_path):
    out = tmp_path / "out"
    assert cli_main(eval_args(toy_world, out)) == 0
    path = out / "agent" / "traces" / "toy.jsonl"
    path.write_text(path.read_text() + json.dumps({"id": "x", "run": "0123456789abcdef"}) + "\n")
    with pytest.raises(InputError, match=r"holds traces of another run \(fingerprint 0123"):
        evaluation.run_eval(parse(eval_args(toy_world, out))[1])


def test_batch_size_never_changes_a_trace(toy_world, tmp_path):
    """The real tiny model, greedy, through transformers: questions played one at a time and
    all together give the same traces (budgets, truncation and transcripts are per question)."""
    runs = {}
    for size in ("1", "3"):
        out = tmp_path / f"batch-{size}"
        assert cli_main(eval_args(toy_world, out, "--batch-size", size, "--max-turns", "1")) == 0
        runs[size] = [
            {key: t[key] for key in ("id", "prediction", "transcript", "tokens", "finish")}
            for t in traces(out)
        ]
    assert runs["1"] == runs["3"]
    assert all(t["tokens"] > 0 for t in runs["1"])


def test_a_hub_model_without_network_is_one_line_naming_its_card(no_hub, capsys):
    """A model of no known family: its card is read from the Hub, which cannot be reached;
    that is said, exit 4, not blamed on the model (no family, no card)."""
    model = no_hub.new_repo_id("never-fetched")
    assert cli_main(["eval", model, "--dry-run"]) == 4
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(
        f"error: cannot reach {no_hub.endpoint} to fetch 'README.md' in model repo '{model}' at "
        "revision 'main' (ConnectError: [Errno 111] Connection refused): connect to the network"
    )
    assert line.endswith("set HF_HUB_OFFLINE=1 to use it")
