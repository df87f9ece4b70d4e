"""`research-r1 eval`: the families' settings and prompts, byte for byte; a run end to end on a
tiny local world with a scripted policy (exact traces and scores), resume after a crash, a
question that fails on its own (recorded) against a bug or an outage (raised), every bad input,
the baselines, and the real tiny model."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData, hf_hub_download
from toy import Scripted, write_bm25

from research_r1 import evaluation, rollout
from research_r1.cli import main as cli_main
from research_r1.cli import parse
from research_r1.errors import InputError, RunStopped
from research_r1.evaluation import EvalArguments
from research_r1.evaluation import load as loading
from research_r1.evaluation.families import families, get_family
from research_r1.evaluation.plan import DIRECT_PROMPT, RAG_PROMPT, method_template
from research_r1.evaluation.run import per_question, play_robustly
from research_r1.evaluation.scoring import METRICS
from research_r1.protocol import FINAL_TURN_NOTICE, SEARCH_R1, TEMPLATES, render_prompt
from research_r1.retrieval import Passage, QueryRejected, RetrieverUnavailable
from research_r1.tiny import EOS, build_tiny_model, build_tokenizer
from research_r1.training.publish import model_card, update_model_card

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"
QA = [
    ("q1", "who wrote hamlet", ["Shakespeare"]),
    ("q2", "capital of france?", ["Paris"]),
    ("q3", "tallest mountain", ["Everest"]),
]
CORPUS = [
    '"Hamlet"\nHamlet is a tragedy written by Shakespeare.',
    '"France"\nThe capital of France is Paris.',
    '"Everest"\nThe tallest mountain is Everest.',
]
# What the scripted policy writes for each question, turn by turn.
SCRIPTS = {
    "who wrote hamlet?": [
        "<think> I need to search </think><search> hamlet author </search>",
        "<think> found it </think><answer> Shakespeare </answer>",
    ],
    "capital of france?": ["<think> I know it </think><answer> Lyon </answer>"],
    "tallest mountain?": ["<think> no idea </think>" + EOS],
}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> SimpleNamespace:
    """A QA file, a BM25 corpus and its config, and a tiny model with its tokenizer."""
    root = tmp_path_factory.mktemp("eval")
    qa = root / "toy.jsonl"
    qa.write_text(
        "".join(json.dumps({"id": i, "question": q, "golden_answers": a}) + "\n" for i, q, a in QA)
    )
    retriever = write_bm25(root, CORPUS)
    texts = [TEMPLATES["search_r1"].user, *CORPUS, *(t for ts in SCRIPTS.values() for t in ts)]
    texts += [q for _, q, _ in QA] + [DIRECT_PROMPT, RAG_PROMPT]
    model = build_tiny_model(root / "model", texts, SEARCH_R1.tags, hidden_size=64, seed=0)
    return SimpleNamespace(root=root, qa=qa, retriever=retriever, model=model)


@pytest.fixture
def scripted(world, monkeypatch):
    """The scripted policy in place of the model's generation; `load_generator` calls counted."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(world.model)
    policy = SimpleNamespace(loads=0, generator=Scripted(tokenizer, SCRIPTS))

    def load_generator(plan, tokenizer):
        policy.loads += 1
        return policy.generator

    monkeypatch.setattr(evaluation, "load_generator", load_generator)
    return policy


def eval_args(world, out: Path, *extra: str) -> list[str]:
    return [
        *("eval", str(world.model), "--template", "search_r1"),
        *("--datasets", f"toy={world.qa}", "--retriever", str(world.retriever)),
        *("--out", str(out), "--batch-size", "2"),
        *extra,
    ]


def results(out: Path, method: str = "agent") -> dict:
    return json.loads((out / method / "results.json").read_text())


def traces(out: Path, method: str = "agent") -> list[dict]:
    path = out / method / "traces" / "toy.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


# ---------------------------------------------------------------------------------------------
# Families and prompts


# owner/repo@commit:path:line[-line], or a PyPI release's file (pypi/package@version:path:line)
CITATION = re.compile(
    r"^([\w.-]+/[\w.-]+@[0-9a-f]{40}|pypi/[\w.-]+@[\w.]+):"  # a commit, or a PyPI release
    r"(\S+:\d+(-\d+)?|\S+\.(jpg|png|pdf))$"  # a file's lines, or a figure
)


@pytest.mark.parametrize(
    ("family", "model"),
    [(f.name, example) for f in families() for pattern in f.models for example in pattern.examples],
)
def test_dry_run_shows_each_familys_upstream_setting_with_sources(family, model, capsys):
    """Every published id resolves to its family without loading anything, and the plan shows
    every audited value with a full citation, and what we run where we knowingly differ."""
    assert cli_main(["eval", model, "--dry-run"]) == 0
    config = json.loads(capsys.readouterr().out)
    audited = get_family(family)
    assert config["family"] == family and config["methods"] == ["agent"]
    assert config["upstream"]["code"] == audited.upstream
    assert config["template"]["user"] == audited.template.user
    assert config["rollout"]["k"] == audited.rollout["k"]
    audit = config["upstream"]["audit"]
    assert audit and all(entry["source"] for entry in audit.values())
    for name, entry in audit.items():
        assert all(CITATION.match(source) for source in entry["source"]), (name, entry)
        assert ("ours" in entry) == ("why" in entry), name
        assert "why" not in entry or len(entry["why"]) > 20, name  # a deviation is argued
    suite = config["suite"]
    assert config["setting"].startswith(f"{suite} · ")
    assert config["metrics"].keys() >= {"em", "f1", audited.scoring.headline}


def test_the_search_r1_family_plays_its_papers_setting(capsys):
    model = "PeterJinGo/SearchR1-nq_hotpotqa_train-qwen2.5-3b-em-ppo"
    assert cli_main(["eval", model, "--dry-run"]) == 0
    config = json.loads(capsys.readouterr().out)
    assert config["datasets"] == {
        "nq": "test",
        "triviaqa": "test",
        "popqa": "test",
        "hotpotqa": "dev",
        "2wikimultihopqa": "dev",
        "musique": "dev",
        "bamboogle": "test",
    }
    rollout = config["rollout"]
    assert (rollout["k"], rollout["max_turns"], rollout["last_turn"]) == (3, 4, "answer")
    assert (rollout["max_new_tokens"], rollout["max_observation_tokens"]) == (500, 500)
    assert (rollout["max_context"], rollout["context"], rollout["max_completion_tokens"]) == (
        4096,
        "keep_last",
        None,
    )
    assert config["template"]["question_mark"] is True
    assert config["protocol"]["passage_format"] == "Doc {i}(Title: {title_line}) {text}"
    assert config["scoring"]["min_matches"] == 2 and config["scoring"]["text"] == "prompt+response"
    assert config["setting"] == "search_r1 · wiki-18, e5-base-v2 · top-3"
    assert config["retriever"]["encoder"] == "intfloat/e5-base-v2"
    assert config["decoding"] == {
        "mode": "greedy",
        "sampling": {},
        "backend": "transformers",
        "batch_size": 16,
    }
    decoding = config["upstream"]["audit"]["generation.decoding"]
    assert decoding["upstream"] == {"temperature": 1.0, "top_p": 0.95} and decoding["ours"] == {}
    assert cli_main(["eval", model, "--dry-run", "--decoding", "upstream"]) == 0
    sampled = json.loads(capsys.readouterr().out)["decoding"]
    assert sampled["sampling"] == {"temperature": 1.0, "top_p": 0.95}


def test_settings_that_cannot_be_served_here_say_what_they_need(world, scripted, capsys):
    google = "Alibaba-NLP/ZeroSearch_google_V2_Qwen2.5_7B"
    assert cli_main(["eval", google, "--dry-run"]) == 0
    config = json.loads(capsys.readouterr().out)
    assert config["suite"] == "zerosearch_google" and config["retriever"] is None
    assert config["setting"] == "zerosearch_google · live Google search (SerpAPI) · top-5"
    assert cli_main(["eval", google, "--datasets", f"toy={world.qa}"]) == 2
    assert "measured on live Google results" in capsys.readouterr().err
    args = ["eval", google, "--datasets", f"toy={world.qa}", "--retriever", str(world.retriever)]
    assert cli_main([*args, "--dry-run"]) == 0
    setting = json.loads(capsys.readouterr().out)["setting"]
    assert setting == f"zerosearch_google · {world.root.name}/corpus.jsonl, BM25 · top-5"
    assert cli_main(["eval", "XXsongLALA/Qwen-2.5-7B-base-RAG-RL", "--dry-run"]) == 0
    assert "R1-Searcher's question files ship" in json.loads(capsys.readouterr().out)["needs"]
    assert cli_main(["eval", "XXsongLALA/Qwen-2.5-7B-base-RAG-RL"]) == 2
    assert "R1-Searcher searched KILT" in capsys.readouterr().err
    assert scripted.loads == 0


def test_the_setting_names_the_retriever_only_when_it_is_not_the_suites(tmp_path, capsys):
    """The suite's own index given as a config is the suite's setting (where it runs does not
    count); any other index, or a corpus of another folder, is a setting of its own."""
    model = "PeterJinGo/SearchR1-nq_hotpotqa_train-qwen2.5-7b-em-ppo"
    flat = yaml.safe_load((ROOT / "recipes/retrievers/e5_wiki18_flat.yaml").read_text())
    configs = {
        "same.yaml": flat | {"device": "cuda:1", "batch_size": 8, "fp16": False},
        "hnsw.yaml": flat | {"index": "hf://datasets/PeterJinGo/wiki-18-e5-index-HNSW64"},
        "a.yaml": {"type": "bm25", "index": "a/bm25", "corpus": "a/corpus.jsonl"},
        "b.yaml": {"type": "bm25", "index": "b/bm25", "corpus": "b/corpus.jsonl"},
    }
    settings = []
    for name, config in configs.items():
        (tmp_path / name).write_text(yaml.safe_dump(config))
        assert cli_main(["eval", model, "--retriever", str(tmp_path / name), "--dry-run"]) == 0
        settings.append(json.loads(capsys.readouterr().out)["setting"])
    assert settings == [
        "search_r1 · wiki-18, e5-base-v2 · top-3",
        "search_r1 · wiki-18-corpus/wiki-18.jsonl.gz, e5-base-v2 (wiki-18-e5-index-HNSW64) · top-3",
        "search_r1 · a/corpus.jsonl, BM25 · top-3",
        "search_r1 · b/corpus.jsonl, BM25 · top-3",
    ]


def test_our_checkpoints_are_read_back_from_their_model_card(world, hub, tmp_path, capsys):
    """Training writes the template and budgets into the card; eval reads them back, from a
    folder or from the Hub."""
    model = tmp_path / "ours"
    model.mkdir()
    card = model_card(
        model_name="ours",
        base_model="Qwen/Qwen2.5-3B",
        dataset="data",
        template="demo",
        observation_tag="<information>",
        rewards=["search_r1_em"],
        retriever="r.yaml",
        recipe={},
        evaluations=[],
        peft=False,
        settings={
            "template": {
                "name": "demo",
                "protocol": "search_r1",
                "user": "Q: {question}\n",
                "chat": False,
            },
            "k": 2,
            "max_turns": 2,
            "max_new_tokens": 24,
            "max_observation_tokens": 96,
            "max_completion_tokens": 256,
        },
    )
    card.save(model / "README.md")
    repo = hub.new_repo_id("ours")
    HfApi().create_repo(repo, token=hub.token)
    card.push_to_hub(repo, token=hub.token)
    for where in (str(model), repo):
        assert cli_main(["eval", where, "--datasets", f"toy={world.qa}", "--dry-run"]) == 0
        config = json.loads(capsys.readouterr().out)
        template, rollout = config["template"], config["rollout"]
        assert (config["family"], template["name"], rollout["k"]) == ("research_r1", "demo", 2)
    assert (template["chat"], rollout["max_turns"], rollout["max_new_tokens"]) == (False, 2, 24)
    assert (rollout["max_completion_tokens"], rollout["max_context"]) == (256, None)
    assert rollout["final_turn_notice"] == FINAL_TURN_NOTICE and "upstream" not in config
    assert config["datasets"] == {"toy": "test"}


def qwen_tokenizer():
    """A tiny tokenizer with Qwen2.5's public chat template (tests/fixtures)."""
    tokenizer = build_tokenizer(["x"], SEARCH_R1.tags, chat=True)
    tokenizer.chat_template = (FIXTURES / "qwen2_5_chat_template.jinja").read_text()
    return tokenizer


def test_search_r1_prompt_through_qwens_chat_template_is_the_original_byte_for_byte():
    """The fixture is `make_prefix` of Search-R1's scripts/data_process/nq_search.py
    (template_type "base"), copied verbatim."""
    question = "who wrote hamlet?"
    prefix = (FIXTURES / "search_r1_base_prefix.txt").read_text().format(question=question)
    expected = (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
        f"<|im_end|>\n<|im_start|>user\n{prefix}<|im_end|>\n<|im_start|>assistant\n"
    )
    assert render_prompt(TEMPLATES["search_r1"].prompt(question), qwen_tokenizer()) == expected


def test_research_prompts_are_the_originals_byte_for_byte():
    """The fixtures are ReSearch's base-model template (filled with `.format(prompt=...)`) and
    its instruct system prompt, copied verbatim from its FlashRAG pipeline."""
    question = "who wrote hamlet?"
    base = (FIXTURES / "research_base_template.txt").read_text().format(prompt=question)
    system = (FIXTURES / "research_system_prompt.txt").read_text()
    tokenizer = qwen_tokenizer()
    assert render_prompt(TEMPLATES["research_base"].prompt(question), tokenizer) == base
    assert render_prompt(TEMPLATES["research_instruct"].prompt(question), tokenizer) == (
        f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


# ---------------------------------------------------------------------------------------------
# A run, end to end


def test_a_run_writes_exact_traces_results_and_markdown(world, scripted, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli_main(eval_args(world, out)) == 0

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
    assert config["setting"] == f"search_r1 · {world.root.name}/corpus.jsonl, BM25 · top-3"
    assert config["metrics"] == {name: METRICS[name].description for name in ("em", "f1", "subem")}
    assert config["version"] and config["date"]
    assert (out / "agent" / "results.md").read_text().splitlines()[4:] == [
        "| dataset | n | em | em 95% CI | f1 | subem | searches | valid format | errors |",
        "|---|---|---|---|---|---|---|---|---|",
        "| toy | 3 | 0.333 | 0.000–1.000 | 0.333 | 0.333 | 0.33 | 67% | 0 |",
    ]
    assert "| toy | 3 | 0.333 |" in capsys.readouterr().out


def test_a_run_killed_mid_way_resumes_to_the_same_results(world, scripted, tmp_path):
    straight = tmp_path / "straight"
    assert cli_main(eval_args(world, straight, "--batch-size", "1")) == 0

    resumed = tmp_path / "resumed"
    scripted.generator = Scripted(
        scripted.generator.tokenizer, SCRIPTS, fail_on="capital of france?"
    )
    assert cli_main(eval_args(world, resumed, "--batch-size", "1")) == 130  # interrupted
    assert [t["id"] for t in traces(resumed)] == ["toy-test-q1"]
    assert not (resumed / "agent" / "results.json").exists()

    scripted.generator = Scripted(scripted.generator.tokenizer, SCRIPTS)
    assert cli_main(eval_args(world, resumed, "--batch-size", "1")) == 0
    played = {q for q in SCRIPTS if any(q in c for c in scripted.generator.contexts)}
    assert played == {"capital of france?", "tallest mountain?"}  # the answered one was skipped
    assert results(resumed)["results"] == results(straight)["results"]
    assert [t["id"] for t in traces(resumed)] == [t["id"] for t in traces(straight)]


class Raising:
    """The BM25 retriever of the world, except that one query raises `error`."""

    def __init__(self, inner, query: str, error: type[BaseException]) -> None:
        self.inner, self.query, self.error = inner, query, error

    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        if self.query in queries:
            raise self.error(f"cannot search {self.query!r}")
        return self.inner.search(queries, k)


class Outage:
    """The BM25 retriever of the world, unreachable for its first `failures` searches (for
    every one when None)."""

    def __init__(self, inner, failures: int | None = None) -> None:
        self.inner, self.failures, self.calls = inner, failures, 0

    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        self.calls += 1
        if self.failures is None or self.calls <= self.failures:
            raise RetrieverUnavailable("retrieval at http://127.0.0.1:9/retrieve failed: refused")
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


def batch_of_the_world(world, method: str, max_retriever_wait_s: float = 600.0):
    """The plan, tokenizer, questions and protocol `eval` plays the world's set with, for
    playing one batch by hand."""
    args = EvalArguments(
        model=str(world.model),
        template="search_r1",
        datasets=f"toy={world.qa}",
        retriever=str(world.retriever),
        method=method,
    )
    plan = evaluation.make_plan(args)
    waiting = {"max_retriever_wait_s": max_retriever_wait_s}
    plan = dataclasses.replace(plan, rollout=plan.rollout.model_copy(update=waiting))
    [questions] = loading.load_questions(plan).values()
    protocol = method_template(method, plan.family.template).protocol
    return plan, loading.load_tokenizer(plan), questions, protocol


@pytest.mark.parametrize("error", [QueryRejected, torch.OutOfMemoryError, MemoryError])
def test_a_question_that_fails_on_its_own_is_recorded_and_tried_again_on_resume(
    error, world, scripted, tmp_path, monkeypatch
):
    """A query the retriever refuses, or memory its batch ran out of: that question's trace
    says so, the others are played, and a resume plays it again."""
    real = retrieving(monkeypatch, lambda inner: Raising(inner, "hamlet author", error))
    out = tmp_path / "out"
    assert cli_main(eval_args(world, out)) == 0
    first = traces(out)[0]
    assert first["finish"] == "error"
    assert first["error"] == f"{error.__name__}: cannot search 'hamlet author'"
    assert results(out)["results"]["toy"]["errors"] == 1
    assert [t["id"] for t in traces(out)[1:]] == ["toy-test-q2", "toy-test-q3"]  # the run went on

    monkeypatch.setattr(loading, "load_retriever", real)
    scripted.generator = Scripted(scripted.generator.tokenizer, SCRIPTS)
    assert cli_main(eval_args(world, out)) == 0
    toy = results(out)["results"]["toy"]
    assert (toy["errors"], toy["em"]) == (0, 1 / 3)


def test_a_prompt_longer_than_the_models_context_is_a_failure_of_its_question():
    """vLLM refuses such a prompt with a `VLLMValidationError` (vLLM 0.32's input processor's
    type and message; a class of that name stands for it, as vLLM is not installed here). Its
    other validation errors (a request we built wrong) are not a question's."""

    class VLLMValidationError(Exception):
        pass

    too_long = VLLMValidationError(
        "The decoder prompt (length 5000) is longer than the maximum model length of 4096. "
        "Make sure that `max_model_len` is no smaller than the number of text tokens."
    )
    assert per_question(too_long)
    assert not per_question(VLLMValidationError("The decoder prompt cannot be empty"))
    assert not per_question(ValueError(str(too_long)))


def test_a_bug_is_raised_not_recorded_as_a_failed_question(world, scripted, tmp_path, monkeypatch):
    """A bug (a TypeError, here from the retriever) and the rollout's own consistency checks (a
    RuntimeError: the generator returned a row too few) stop the run with their traceback;
    no question is recorded as failed."""
    real = retrieving(monkeypatch, lambda inner: Raising(inner, "hamlet author", TypeError))
    with pytest.raises(TypeError, match="cannot search 'hamlet author'"):
        cli_main(eval_args(world, tmp_path / "bug"))
    monkeypatch.setattr(loading, "load_retriever", real)
    scripted.generator = RowShort(scripted.generator)
    with pytest.raises(RuntimeError, match="generator returned 1 rows for 2"):
        cli_main(eval_args(world, tmp_path / "check"))
    for out in ("bug", "check"):
        assert (tmp_path / out / "agent" / "traces" / "toy.jsonl").read_text() == ""


@pytest.mark.parametrize("method", ["agent", "rag"])
def test_a_retriever_that_stays_unreachable_stops_the_run(method, world, scripted, monkeypatch):
    """Waited for (here up to 0.1 s), then the run stops with the outage as the cause: no
    question is recorded as failed, and the traces so far resume it."""
    monkeypatch.setattr(rollout, "OUTAGE_FIRST_WAIT_S", 0.01)
    plan, tokenizer, questions, protocol = batch_of_the_world(world, method, 0.1)
    retriever = Outage(loading.load_retriever(plan.retriever))
    with pytest.raises(RunStopped, match="stayed unreachable") as stopped:
        play_robustly(method, questions, plan, scripted.generator, tokenizer, retriever, protocol)
    assert isinstance(stopped.value.__cause__, RetrieverUnavailable)
    assert retriever.calls > 1  # waited for


def test_rag_waits_out_a_short_outage(world, scripted, monkeypatch):
    """The baseline's one search per question waits for the retriever as the agent's do."""
    monkeypatch.setattr(rollout, "OUTAGE_FIRST_WAIT_S", 0.01)
    plan, tokenizer, questions, protocol = batch_of_the_world(world, "rag")
    retriever = Outage(loading.load_retriever(plan.retriever), failures=2)
    lines = play_robustly(
        "rag", questions, plan, scripted.generator, tokenizer, retriever, protocol
    )
    assert retriever.calls == 3
    assert [line["error"] for line in lines] == [None, None, None]
    assert "Doc 1(Title: Hamlet) Hamlet is a tragedy" in scripted.generator.contexts[0]


def test_the_baselines_answer_in_one_turn_rag_with_the_questions_passages(
    world, scripted, tmp_path
):
    scripts = {
        "who wrote hamlet?": ["<answer> Shakespeare </answer>"] * 2,
        "capital of france?": ["<answer> Paris </answer>"] * 2,
        "tallest mountain?": ["<search> everest </search>"] * 2,  # a baseline cannot search
    }
    scripted.generator = Scripted(scripted.generator.tokenizer, scripts)
    out = tmp_path / "out"
    assert cli_main(eval_args(world, out, "--method", "rag,direct")) == 0
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


def test_bad_input_fails_before_anything_is_loaded(world, scripted, hub, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1, "question": "q", "golden_answers": ["a"]}\nnot json\n')
    flashrag = tmp_path / "flashrag"
    (flashrag / "nq").mkdir(parents=True)
    (flashrag / "nq" / "test.jsonl").write_text(world.qa.read_text())
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
        args = [*eval_args(world, out), *argv]
        assert cli_main(args) == 2
        assert capsys.readouterr().err.splitlines()[-1].startswith(f"error: {message}"), argv
    missing = tmp_path / "missing-model"
    assert cli_main(["eval", str(missing), "--template", "search_r1", "--datasets", "nq"]) == 2
    assert capsys.readouterr().err.startswith(f"error: model {missing}: ")
    assert cli_main(["eval", "someone/unknown-model", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "no known family" in err and "--template" in err
    assert scripted.loads == 0 and not out.exists()


def test_a_dead_retriever_fails_at_once_naming_it(world, scripted, tmp_path, capsys):
    dead = tmp_path / "dead.yaml"
    dead.write_text("type: remote\nurl: http://127.0.0.1:9\nretries: 0\ntimeout_s: 1\n")
    args = eval_args(world, tmp_path / "out")
    args[args.index("--retriever") + 1] = str(dead)
    assert cli_main(args) == 2
    assert capsys.readouterr().err.startswith(f"error: retriever {dead}: the probe failed")
    assert scripted.loads == 0


# ---------------------------------------------------------------------------------------------
# The real tiny model


@pytest.mark.slow
def test_the_tiny_model_runs_through_transformers(world, tmp_path):
    out = tmp_path / "out"
    assert cli_main(eval_args(world, out, "--limit", "2")) == 0
    lines = traces(out)
    assert len(lines) == 2 and all(t["error"] is None and t["tokens"] > 0 for t in lines)
    assert all(t["transcript"].startswith("Answer the given question.") for t in lines)
    assert results(out)["results"]["toy"]["n"] == 2


# ---------------------------------------------------------------------------------------------
# Results on the Hub and in the model card


def test_a_run_goes_to_a_results_dataset_the_card_and_the_leaderboard(
    world, scripted, hub, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("HF_TOKEN", hub.token)
    model = tmp_path / "model"
    shutil.copytree(world.model, model)  # the card is written into the model's folder
    repo = hub.new_repo_id("results")
    out = tmp_path / "out"
    args = eval_args(world, out, "--method", "agent,direct", "--push-to-hub", repo)
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
    setting = f"search_r1 · {world.root.name}/corpus.jsonl, BM25 · top-3"
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
    assert cli_main(["leaderboard", f"hf://datasets/{repo}", "--out", str(board)]) == 0
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


# ---------------------------------------------------------------------------------------------
# Runs that can never be mixed up


def test_another_model_or_setting_never_resumes_from_a_folders_traces(world, scripted, tmp_path):
    """The trained model's folder, then the cold-start model (same files, other weights) or
    another k: refused with what differs and the way out; --overwrite starts afresh."""
    out = tmp_path / "out"
    assert cli_main(eval_args(world, out)) == 0
    first = traces(out)
    assert {t["model"] for t in first} == {str(world.model)}
    assert len({t["run"] for t in first}) == 1

    other = tmp_path / "cold-start"
    build_tiny_model(other, ["x"], SEARCH_R1.tags, hidden_size=64, seed=1)
    args = eval_args(world, out)
    args[1] = str(other)
    with pytest.raises(InputError) as refused:
        evaluation.run_eval(parse(args)[1])
    message = str(refused.value)
    assert message.startswith(f"{out / 'agent'} holds the traces of another run (identity: ")
    assert "model: " in message and message.endswith(
        "give another --out, or --overwrite to replace them"
    )

    with pytest.raises(InputError, match=r"another run \(rollout.k: 3 → 1; setting: "):
        evaluation.run_eval(parse([*eval_args(world, out), "--k", "1"])[1])
    assert traces(out) == first  # nothing was written

    assert cli_main([*eval_args(world, out), "--k", "1", "--overwrite"]) == 0
    assert results(out)["config"]["rollout"]["k"] == 1
    assert all(t["run"] != first[0]["run"] for t in traces(out))


def test_a_trace_line_of_another_run_is_refused(world, scripted, tmp_path):
    out = tmp_path / "out"
    assert cli_main(eval_args(world, out)) == 0
    path = out / "agent" / "traces" / "toy.jsonl"
    path.write_text(path.read_text() + json.dumps({"id": "x", "run": "0123456789abcdef"}) + "\n")
    with pytest.raises(InputError, match=r"holds traces of another run \(fingerprint 0123"):
        evaluation.run_eval(parse(eval_args(world, out))[1])


def test_the_default_folder_is_one_per_model_and_setting(world, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    finals = []
    for run in ("a", "b"):
        final = tmp_path / "runs" / run / "final"
        shutil.copytree(world.model, final)
        finals.append(final)
    (finals[1] / "config.json").write_text((finals[1] / "config.json").read_text() + "\n")

    def out(model: Path | str, **options) -> Path:
        args = EvalArguments(
            model=str(model), template="search_r1", datasets=f"toy={world.qa}", **options
        )
        return evaluation.make_plan(args).out

    a, b = out(finals[0]), out(finals[1])
    assert a.parent == b.parent == Path("eval") and a != b
    assert a.name.startswith("a_final-") and b.name.startswith("b_final-")
    assert out(finals[0], k=1) != a
    assert out(finals[0], batch_size=64, limit=2) == a  # no result changes
    hub_id = out("PeterJinGo/SearchR1-nq_hotpotqa_train-qwen2.5-7b-em-ppo@v1")
    assert hub_id.name.startswith("PeterJinGo__SearchR1-nq_hotpotqa_train-qwen2.5-7b-em-ppo@v1-")


def test_dataset_aliases_get_the_suites_split(capsys):
    model = "PeterJinGo/SearchR1-nq_hotpotqa_train-qwen2.5-7b-em-ppo"
    assert cli_main(["eval", model, "--datasets", "2wiki,hotpot,nq", "--dry-run"]) == 0
    config = json.loads(capsys.readouterr().out)
    assert config["datasets"] == {"2wiki": "dev", "hotpot": "dev", "nq": "test"}


def test_batch_size_never_changes_a_trace(world, tmp_path):
    """The real tiny model, greedy, through transformers: questions played one at a time and
    all together give the same traces (budgets, truncation and transcripts are per question)."""
    runs = {}
    for size in ("1", "3"):
        out = tmp_path / f"batch-{size}"
        assert cli_main(eval_args(world, out, "--batch-size", size, "--max-turns", "1")) == 0
        runs[size] = [
            {key: t[key] for key in ("id", "prediction", "transcript", "tokens", "finish")}
            for t in traces(out)
        ]
    assert runs["1"] == runs["3"]
    assert all(t["tokens"] > 0 for t in runs["1"])


@pytest.mark.parametrize("name", ["search_r1", "research_base", "research_instruct"])
def test_our_checkpoints_are_scored_as_our_rewards_read_answers(name):
    """Our own templates' answers are read as the training rewards read them: Search-R1's last
    answer block, ReSearch's first one and the `\\boxed{}` in it."""
    from research_r1.evaluation.families import resolve
    from research_r1.protocol import extract_answer

    resolved = resolve("ours", template=name)
    protocol = resolved.template.protocol
    for text in (
        "<answer> Lyon </answer> then <answer> Paris </answer>",
        "<answer> it is \\boxed{Lyon} </answer><answer> \\boxed{Paris} </answer>",
        "<think> no answer </think>",
    ):
        assert resolved.scoring.extract(text) == extract_answer(text, protocol), text


def test_a_turn_limit_of_zero_is_a_setting_not_a_default(capsys):
    model = "PeterJinGo/SearchR1-nq_hotpotqa_train-qwen2.5-7b-em-ppo"
    assert cli_main(["eval", model, "--max-turns", "0", "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["rollout"]["max_turns"] == 0
