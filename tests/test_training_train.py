"""Training (research_r1.training.train) from the tiny CPU recipe, end to end: a tiny model,
prepared data and a BM25 index built here; LoRA training with checkpoints, a run killed after
its first checkpoint and resumed, pushes to the loopback Hub (one retried, one given up), every
start-up check's message, and a retrieval server that goes away mid-run. Without training: the
recipe's support checks, its rewards, the resume point, and the pushes that are never fatal."""

from __future__ import annotations

import copy
import functools
import json
import re
import shutil
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx2
import pytest
import torch
import yaml
from helpers import ROOT, fake_hub, free_port, write_bm25, write_jsonl
from huggingface_hub import HfApi, ModelCard, SpaceCard, hf_hub_download, snapshot_download
from huggingface_hub.errors import HfHubHTTPError
from live_server import LiveServer
from safetensors.torch import load_file
from trl import GRPOTrainer

from research_r1 import hub as hub_io
from research_r1 import rollout
from research_r1.data import prepare, write_split
from research_r1.errors import InputError
from research_r1.protocol import SEARCH_R1, load_template
from research_r1.retrieval import Passage, RetrievalError, RetrieverUnavailable
from research_r1.rewards import completion_text
from research_r1.rollout import FINAL_TURN_NOTICE
from research_r1.space import push as space
from research_r1.tiny import build_tiny_model
from research_r1.training import train
from research_r1.training.callbacks import HubPushCallback
from research_r1.training.configs import parse_recipe
from research_r1.training.sampler import ZeroStdSkipSampler

TINY_RECIPE = ROOT / "recipes" / "tiny_cpu_grpo.yaml"
QA = [
    ("who wrote hamlet?", "shakespeare"),
    ("capital of france?", "paris"),
    ("tallest mountain?", "everest"),
    ("largest ocean?", "pacific"),
]
PASSAGES = [
    '"Hamlet"\nHamlet is a tragedy written by shakespeare.',
    '"France"\nThe capital of france is paris.',
    '"Everest"\nThe tallest mountain is everest.',
    '"Pacific"\nThe largest ocean is the pacific.',
]
# Logit bonuses that make the random model write tags and EOS often enough for episodes to
# search, answer and stop, and for rewards to differ within a group.
PUSHES = {"<search>": 4.0, "</search>": 4.0, "<answer>": 4.0, "</answer>": 5.0}
EOS_PUSH = 3.0
pytestmark = pytest.mark.usefixtures("one_thread")


class Killed(BaseException):
    """Stands for the process dying: nothing in the trainer catches it."""


def steer_towards_tags(model_dir: Path, pushes: dict[str, float]) -> None:
    """Give tokens a fixed logit bonus that survives save and load (a Qwen2 head has no bias).

    Embedding dimension 0 is set to a constant no layer writes to (row 0 of every output
    projection is zeroed), so after the final norm it is a near-constant feature; an untied
    head reads it only for the pushed tokens.
    """
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    scale = model.config.hidden_size**0.5  # the normalised constant feature's value
    with torch.no_grad():
        embeddings = model.model.embed_tokens.weight
        head = embeddings.detach().clone()
        embeddings[:, 0] = 1.0
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight[0].zero_()
            layer.mlp.down_proj.weight[0].zero_()
        head[:, 0] = 0.0
        for token_id, push in pushes.items():
            head[token_id, 0] = push / scale
    model.config.tie_word_embeddings = False
    model.lm_head.weight = torch.nn.Parameter(head)
    model.save_pretrained(model_dir)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> SimpleNamespace:
    """A QA split from prepare-data, a BM25-indexed corpus and a steered tiny model."""
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("world")
    rows = [{"id": str(i), "question": q, "golden_answers": [a]} for i, (q, a) in enumerate(QA)]
    source = write_jsonl(root / "qa" / "train.jsonl", rows)
    template = load_template("search_r1")
    dataset, _ = prepare([f"toy={source}"], "train", template)
    write_split(dataset, root / "data", "train")

    retriever = write_bm25(root, PASSAGES)

    texts = [m["content"] for p in dataset["prompt"] for m in p]
    texts += [SEARCH_R1.invalid_notice, FINAL_TURN_NOTICE, *PASSAGES]
    model = build_tiny_model(root / "model", texts, SEARCH_R1.tags, chat=True)
    tokenizer = AutoTokenizer.from_pretrained(model)
    pushes = {tokenizer.convert_tokens_to_ids(tag): push for tag, push in PUSHES.items()}
    steer_towards_tags(model, {**pushes, tokenizer.eos_token_id: EOS_PUSH})
    return SimpleNamespace(
        root=root, qa=source, data=root / "data", retriever=retriever, model=model
    )


@pytest.fixture(autouse=True)
def fast(monkeypatch):
    """Hub retries without the back-off wait, and TRL's notice of experimental features off."""
    monkeypatch.setattr(hub_io, "retry", functools.partial(hub_io.retry, backoff_s=0.0))
    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")


def killed_after_first_checkpoint(argv: list[str], monkeypatch) -> None:
    """Train `argv`, the process dying right after it saves its first checkpoint."""
    save = GRPOTrainer._save_checkpoint

    def save_then_die(self, model, trial):
        save(self, model, trial)
        raise Killed

    with monkeypatch.context() as patch, pytest.raises(Killed):
        patch.setattr(GRPOTrainer, "_save_checkpoint", save_then_die)
        train.train(argv)


def recipe(world: SimpleNamespace, output_dir: Path, *overrides: str) -> list[str]:
    """The tiny CPU recipe pointed at the test world: LoRA, 2 prompts x 4 rollouts per step,
    2 steps, a checkpoint every step, a decaying learning rate and a KL term (both restored or
    computed on resume)."""
    return [
        str(TINY_RECIPE),
        *("--model_name_or_path", str(world.model)),
        *("--dataset_name", str(world.data)),
        *("--retriever", str(world.retriever), "--template", "search_r1"),
        *("--output_dir", str(output_dir)),
        *("--use_peft", "true", "--lora_r", "4", "--lora_alpha", "8"),
        *("--reward_funcs", "search_r1_format_em"),
        *("--num_generations", "4", "--per_device_train_batch_size", "8"),
        *("--rollout_batch_size", "8", "--max_new_tokens_per_turn", "12"),
        *("--max_completion_length", "128", "--max_observation_tokens", "24"),
        *("--max_steps", "2", "--save_steps", "1", "--logging_steps", "1"),
        *("--learning_rate", "0.01", "--lr_scheduler_type", "linear", "--beta", "0.001"),
        *overrides,
    ]


def hub_settings(hub, repo_id: str) -> list[str]:
    return [
        *("--push_to_hub", "true", "--hub_model_id", repo_id, "--hub_token", hub.token),
        *("--hub_strategy", "checkpoint"),
    ]


def adapter(output_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(output_dir / "adapter_model.safetensors")


def assert_token_nowhere(token: str, folders: list[Path], *texts: str) -> None:
    for text in texts:
        assert token not in text
    for folder in folders:
        for path in folder.rglob("*"):
            if path.is_file():
                assert token.encode() not in path.read_bytes(), path


@pytest.mark.slow
def test_train_kill_resume_and_push(world, hub, tmp_path, caplog, capsys, monkeypatch):
    caplog.set_level("INFO")
    api = HfApi(token=hub.token)

    # An uninterrupted 2-step run; its first checkpoint push fails once and is retried. Its
    # recipe names an eval, run on the trained model once training ends.
    straight = tmp_path / "straight"
    repo = hub.new_repo_id("tiny-grpo")
    hub.inject_failure("/commit/", status=500, times=1)
    evaluation = [
        *("--eval_suite", "search_r1", "--eval_limit", "3"),
        *("--eval_datasets", f"toy={world.qa}", "--eval_retriever", str(world.retriever)),
    ]
    space_repo = hub.new_repo_id("tiny-grpo-space")
    demo_space = ["--space_repo", space_repo]
    trainer = train.train(
        recipe(world, straight, *hub_settings(hub, repo), *evaluation, *demo_space)
    )

    assert trainer.state.global_step == 2
    assert sorted(p.name for p in straight.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    assert (straight / "reward_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    first = trainer.state.log_history[0]
    for key in (
        "reward",
        "rewards/search_r1_format_em/mean",
        "rewards/em/mean",
        "kl",
        "completions/mean_length",
        "rollout/searches_per_episode",
        "rollout/valid_format_rate",
        "rollout/masked_token_share",
    ):
        assert key in first, key
    assert 0 < first["rollout/masked_token_share"] < 1
    assert first["frac_reward_zero_std"] < 1  # rewards differed within a group: weights moved
    assert "push checkpoint 1 failed (attempt 1/3), retrying" in caplog.text

    files = set(api.list_repo_files(repo))
    assert {"README.md", "adapter_model.safetensors", "reward_curve.png"} <= files
    assert {"eval/agent/results.json", "eval/agent/traces/toy.jsonl"} <= files
    assert "last-checkpoint/optimizer.pt" in files
    assert not any(name.startswith("checkpoint-") for name in files)
    pushed_state = json.loads(
        Path(
            hf_hub_download(repo, "last-checkpoint/trainer_state.json", token=hub.token)
        ).read_text()
    )
    assert pushed_state["global_step"] == 2
    scores = json.loads((straight / "eval" / "agent" / "results.json").read_text())
    toy = scores["results"]["toy"]
    assert scores["config"]["family"] == "research_r1" and toy["n"] == 3  # read from the card
    rollout = scores["config"]["rollout"]
    assert rollout["k"] == 2 and rollout["max_new_tokens"] == 12
    card = ModelCard.load(hf_hub_download(repo, "README.md", token=hub.token))
    assert f"`{world.model}`" in card.text and "search_r1_format_em" in card.text
    assert card.data.library_name == "peft" and "lora_r: 4" in card.text
    assert "max_steps: 2" in card.text and "hub_token: <HUB_TOKEN>" in card.text  # as run
    em = next(r for r in card.data.eval_results if r.metric_type == "exact_match")
    assert (em.dataset_name, em.dataset_split, em.metric_value) == ("toy", "test", toy["em"])
    assert f"| agent | toy | 3 | {toy['em']:.3f} |" in card.text

    # ...and its demo Space: the app for the pushed model, with the recipe's BM25 shipped in it.
    space = Path(snapshot_download(space_repo, repo_type="space", token=hub.token))
    assert json.loads((space / "space_config.json").read_text())["MODEL_ID"] == repo
    assert json.loads((space / "space_config.json").read_text())["TEMPLATE"] == "search_r1"
    assert (space / "app.py").is_file() and (space / "research_r1" / "space" / "app.py").is_file()
    assert (space / "retriever" / "bm25").is_dir()
    assert SpaceCard.load(space / "README.md").data.models == [repo]
    assert SpaceCard.load(space / "README.md").data.sdk == "gradio"
    answered = ask_space(space, "who wrote hamlet?", monkeypatch)
    assert answered[0]["content"][0]["text"] == "who wrote hamlet?" and len(answered) > 1

    # The same run killed right after its first checkpoint...
    resumed = tmp_path / "resumed"
    killed_after_first_checkpoint(recipe(world, resumed), monkeypatch)
    assert [p.name for p in resumed.glob("checkpoint-*")] == ["checkpoint-1"]

    # ...and resumed from the newest checkpoint; its checkpoint push fails for good.
    loaded = {}
    load = GRPOTrainer._load_optimizer_and_scheduler

    def load_and_record(self, checkpoint):
        load(self, checkpoint)
        loaded["optimizer"] = copy.deepcopy(self.optimizer.state_dict()["state"])
        loaded["lr"] = self.lr_scheduler.get_last_lr()

    monkeypatch.setattr(GRPOTrainer, "_load_optimizer_and_scheduler", load_and_record)
    repo_resumed = hub.new_repo_id("tiny-grpo-resumed")
    # Three failures give up the checkpoint push; the fourth fails the final push once.
    hub.inject_failure("/commit/", status=500, times=4)
    trainer = train.train(
        recipe(world, resumed, "--resume_from_checkpoint", *hub_settings(hub, repo_resumed))
    )

    assert trainer.state.global_step == 2
    saved = torch.load(resumed / "checkpoint-1" / "optimizer.pt", weights_only=True)["state"]
    assert loaded["optimizer"].keys() == saved.keys()
    for key, state in saved.items():
        assert int(loaded["optimizer"][key]["step"]) == int(state["step"]) == 1
        assert torch.equal(loaded["optimizer"][key]["exp_avg"], state["exp_avg"])
    assert any(state["exp_avg"].abs().sum() > 0 for state in saved.values())
    scheduler = torch.load(resumed / "checkpoint-1" / "scheduler.pt", weights_only=True)
    assert loaded["lr"] == scheduler["_last_lr"]
    assert set(loaded["lr"]) == {0.005}  # halfway down the linear decay, not the initial 0.01
    # Step, optimizer, scheduler and RNG all restored: the same weights as the straight run.
    reference, result = adapter(straight), adapter(resumed)
    assert reference.keys() == result.keys()
    assert all(torch.equal(reference[name], result[name]) for name in reference)
    assert any(result[name].abs().sum() > 0 for name in result if "lora_B" in name)  # trained

    assert "giving up on pushing checkpoint 2" in caplog.text
    assert f"push {repo_resumed} failed (attempt 1/3), retrying" in caplog.text
    files = set(api.list_repo_files(repo_resumed))
    assert {"README.md", "adapter_model.safetensors"} <= files
    assert not any(name.startswith("last-checkpoint/") for name in files)
    card = Path(hf_hub_download(repo_resumed, "README.md", token=hub.token)).read_text()
    assert "resume_from_checkpoint: latest" in card
    assert "max_new_tokens_per_turn: 12" in card  # the override, not the recipe's 24

    output = capsys.readouterr()
    assert_token_nowhere(hub.token, [straight, resumed], caplog.text, output.out, output.err, card)


@pytest.mark.slow
def test_skipping_zero_std_prompts_logs_its_shares_and_resumes_as_it_ran(
    world, tmp_path, monkeypatch
):
    """`skip_zero_std_prompts` on the 4-question world, 2 prompts a step, 4 steps (two epochs):
    each step logs the share of its groups with zero reward std (TRL's frac_reward_zero_std,
    here per group) and of the prompts skipped; each checkpoint holds the sampler's state; a run
    killed after its first checkpoint and resumed scores the same prompts, with the same
    outcomes, as the uninterrupted run."""
    records: list[tuple[list[int], list[bool]]] = []
    record = ZeroStdSkipSampler.record

    def spy(self, prompts, zero_std):
        records.append((list(prompts), list(zero_std)))
        return record(self, prompts, zero_std)

    monkeypatch.setattr(ZeroStdSkipSampler, "record", spy)
    skip = ("--skip_zero_std_prompts", "true", "--max_steps", "4")
    straight = tmp_path / "straight"
    trainer = train.train(recipe(world, straight, *skip))

    steps = [row for row in trainer.state.log_history if "loss" in row]
    assert [row["step"] for row in steps] == [1, 2, 3, 4]
    for row in steps:
        assert row["sampler/zero_std_groups"] == row["frac_reward_zero_std"]
        assert 0 <= row["sampler/skipped_prompts"] <= 1
    assert any(row["sampler/skipped_prompts"] > 0 for row in steps)  # in epoch 2
    saved = json.loads((straight / "checkpoint-4" / "trainer_state.json").read_text())
    assert saved["log_history"][3]["sampler/skipped_prompts"] == steps[3]["sampler/skipped_prompts"]
    assert (straight / "checkpoint-3" / "sampler_state.json").is_file()  # (save_total_limit 2)
    assert [len(prompts) for prompts, _ in records] == [2, 2, 2, 2]
    assert sorted(p for prompts, _ in records[:2] for p in prompts) == [0, 1, 2, 3]  # epoch 1

    straight_records, records[:] = list(records), []
    resumed = tmp_path / "resumed"
    killed_after_first_checkpoint(recipe(world, resumed, *skip), monkeypatch)
    train.train(recipe(world, resumed, *skip, "--resume_from_checkpoint"))
    assert records == straight_records
    assert (resumed / "checkpoint-4" / "sampler_state.json").read_text() == (
        straight / "checkpoint-4" / "sampler_state.json"
    ).read_text()


def special_tag_model(world: SimpleNamespace, folder: Path) -> Path:
    """The tiny model with `<search>` registered as a special token."""
    shutil.copytree(world.model, folder)
    path = folder / "tokenizer.json"
    spec = json.loads(path.read_text())
    for token in spec["added_tokens"]:
        token["special"] = token["content"] == "<search>" or token["special"]
    path.write_text(json.dumps(spec))
    return folder


def data_without_answers(world: SimpleNamespace, folder: Path) -> Path:
    from datasets import Dataset

    split = Dataset.from_parquet(str(world.data / "train.parquet"))
    write_split(split.remove_columns("golden_answers"), folder, "train")
    return folder


def dead_server(world: SimpleNamespace, folder: Path) -> Path:
    """A remote retriever config whose server is not there."""
    folder.mkdir()
    path = folder / "remote.yaml"
    url = f"http://127.0.0.1:{free_port()}"
    path.write_text(f"type: remote\nurl: {url}\nretries: 0\ntimeout_s: 2\n")
    return path


START_UP_FAILURES = [
    (["--dataset_train_split", "dev"], r"^dataset_name: no dev.parquet \(dataset_train_split\)"),
    (
        ["--dataset_name", data_without_answers],
        r"^dataset_name: split 'train' lacks .*golden_answers",
    ),
    (["--template", "research_base"], r"^template: the recipe says 'research_base'"),
    (["--reward_funcs", "em"], r"^reward_funcs: unknown reward 'em'; known rewards: "),
    (["--reward_weights", "1.0", "0.5"], r"^reward_weights: 2 weights for 1 reward_funcs"),
    (["--model_name_or_path", special_tag_model], r"^model_name_or_path: .*'<search>'"),
    (["--max_completion_length", "4000"], r"^max_completion_length: the longest prompt"),
    (["--max_new_tokens_per_turn", "128"], r"^max_new_tokens_per_turn: 128 leaves no room"),
    (["--retrieval_topk", "0"], r"^retrieval_topk: must be at least 1"),
    (["--probe_query", "zzzz qqqq"], r"^retriever: the probe query 'zzzz qqqq' returned no"),
    (["--retriever", dead_server], r"^retriever: the probe query 'who wrote hamlet\?' failed"),
    (["--load_in_8bit", "true"], r"^load_in_8bit: 8-bit training is not supported"),
    (["--use_peft", "false", "--load_in_4bit", "true"], r"^load_in_4bit: .* set use_peft"),
    (["--load_in_4bit", "true", "--use_vllm", "true"], r"^use_vllm: QLoRA with vLLM"),
    (["--use_vllm", "true", "--vllm_enable_sleep_mode", "true"], r"^vllm_enable_sleep_mode"),
    (["--resume_from_checkpoint", "/no/such/dir"], r"^resume_from_checkpoint: /no/such/dir"),
    (["--push_to_hub", "true"], r"^hub_model_id: required with push_to_hub"),
    (["--eval_suite", "nope"], r"^eval_suite: unknown suite 'nope'; known: search_r1, research"),
    (["--eval_suite", "search_r1", "--eval_limit", "0"], r"^eval_limit: 0; give at least 1"),
    (["--space_repo", "not a repo"], r"^space_repo: 'not a repo' is not a repo id"),
    (["--no_such_key", "1"], r"^recipe: .*--no_such_key"),
    (["--skip_zero_std_decay", "1"], r"^skip_zero_std_decay: must be in \[0, 1\) so skipped"),
    (["--skip_zero_std_by", "kind"], r"^skip_zero_std_by: 'kind' needs skip_zero_std_prompts"),
    (
        ["--skip_zero_std_prompts", "true", "--skip_zero_std_by", "kind"],
        r"^skip_zero_std_by: the training split has no column 'kind' \(it has \['id', ",
    ),
]


@pytest.mark.parametrize(
    ("overrides", "message"),
    START_UP_FAILURES,
    ids=[message.split(":")[0].lstrip("^") for _, message in START_UP_FAILURES],
)
def test_start_up_checks_name_the_recipe_key(world, tmp_path, overrides, message):
    overrides = [str(arg(world, tmp_path / "made")) if callable(arg) else arg for arg in overrides]
    with pytest.raises(InputError, match=message):
        train.train(recipe(world, tmp_path / "out", *overrides))
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_the_retriever_probe_names_retrieval_errors_and_lets_bugs_raise():
    def retriever(error: Exception) -> SimpleNamespace:
        def search(queries, k):
            raise error

        return SimpleNamespace(search=search)

    for error in (
        RetrieverUnavailable("http://retriever: connection refused"),
        RetrievalError("http://retriever refused the request: 422"),
        InputError("k must be at least 1"),
    ):
        with pytest.raises(InputError, match=rf"^retriever: the probe query 'q' failed: {error}"):
            train.check_retriever(retriever(error), "q", 3)
    with pytest.raises(KeyError, match="passages") as raised:  # a bug: raised as it was
        train.check_retriever(retriever(KeyError("passages")), "q", 3)
    assert raised.traceback[-1].name == "search"


# ---------------------------------------------------------------------------------------------
# A retrieval server that goes away mid-run

OUTAGE: dict[str, Any] = {}  # what `reads_and_outage` records and the server it takes down


def reads_and_outage(prompts, completions, completion_ids=None, *, retrieved_ids, **columns):
    """A reward the recipe names by import path (weight 0): it records what each step's episodes
    read, and after the first step (with `OUTAGE["kill"]`) stops the retrieval server,
    restarting it on the same port `OUTAGE["down_s"]` seconds later (never, if None)."""
    OUTAGE["steps"].append((list(retrieved_ids), [completion_text(c) for c in completions]))
    if OUTAGE["kill"] and len(OUTAGE["steps"]) == 1:
        OUTAGE["server"].stop()
        if OUTAGE["down_s"] is not None:
            timer = threading.Timer(OUTAGE["down_s"], OUTAGE["restart"])
            timer.start()
            OUTAGE["timer"] = timer
    return [0.0] * len(completions)


@pytest.fixture(scope="module")
def searcher(world, tmp_path_factory) -> Path:
    """The world's model pushed harder towards searching, so every step searches."""
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("searcher") / "model"
    shutil.copytree(world.model, folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    pushes = {**PUSHES, "<search>": 8.0, "</search>": 8.0}
    pushes = {tokenizer.convert_tokens_to_ids(tag): push for tag, push in pushes.items()}
    steer_towards_tags(folder, {**pushes, tokenizer.eos_token_id: EOS_PUSH})
    return folder


class FirstPassages:
    """The corpus's first k passages for any query, so that even the random model's queries
    ("fi", "") read real passages."""

    def search(self, queries: list[str], k: int) -> list[list[Passage]]:
        top = [Passage(str(i), c, 1.0) for i, c in enumerate(PASSAGES[:k])]
        return [list(top) for _ in queries]


@pytest.fixture
def outage(tmp_path, monkeypatch):
    """A real retrieval server, and a remote config for it that does not retry on its own (the
    rollout's waits, from 0.5 s, are what is tested)."""
    from research_r1.retrieval.server import create_app

    monkeypatch.setattr(rollout, "OUTAGE_FIRST_WAIT_S", 0.5)
    retriever = FirstPassages()
    server = LiveServer(create_app(retriever)).start()
    config = tmp_path / "remote.yaml"
    config.write_text(f"type: remote\nurl: {server.url}\nretries: 0\ntimeout_s: 5\n")

    def restart() -> None:
        OUTAGE["server"] = LiveServer(create_app(retriever), port=server.port).start()

    OUTAGE.update(steps=[], server=server, restart=restart, url=server.url, kill=True)
    yield config
    if "timer" in OUTAGE:
        OUTAGE["timer"].join()
    OUTAGE["server"].stop()
    OUTAGE.clear()


def outage_recipe(
    world, model: Path, output_dir: Path, retriever: Path, *overrides: str
) -> list[str]:
    return recipe(
        world,
        output_dir,
        *("--model_name_or_path", str(model)),
        *("--retriever", str(retriever), "--max_steps", "3"),
        *("--reward_funcs", "search_r1_format_em", f"{__name__}.reads_and_outage"),
        *("--reward_weights", "1.0", "0.0"),
        *overrides,
    )


def assert_every_search_read_real_passages(steps: list) -> None:
    """Every search of every step got the retrieval_topk (2) corpus passages, and each
    `<information>` block holds them (cut to max_observation_tokens), never an error."""
    passages = SEARCH_R1.passages.format(FirstPassages().search(["q"], 2)[0])
    for retrieved_ids, texts in steps:
        assert any(retrieved_ids)  # the step searched
        for episode_ids, text in zip(retrieved_ids, texts, strict=True):
            assert all(ids == ["0", "1"] for ids in episode_ids)
            blocks = re.findall(r"<information>(.*?)</information>", text, re.DOTALL)
            assert len(blocks) == len(episode_ids)
            assert all(block and passages.startswith(block) for block in blocks), blocks


@pytest.mark.slow
@pytest.mark.parametrize("scheduler", ["turn", "continuous"])
def test_a_retriever_outage_costs_time_not_training(
    world, searcher, outage, tmp_path, caplog, scheduler
):
    """The server dies after step 1 and is back 2 s later: step 2 waits for it, and every
    trained step's episodes read real passages, with either rollout scheduler (the continuous
    one searches from its own thread)."""
    OUTAGE["down_s"] = 2.0
    argv = outage_recipe(
        world, searcher, tmp_path / "run", outage, "--rollout_scheduler", scheduler
    )
    trainer = train.train(argv)

    assert trainer.state.global_step == 3
    assert len(OUTAGE["steps"]) == 3
    assert_every_search_read_real_passages(OUTAGE["steps"])
    waits = [r.getMessage() for r in caplog.records if "retriever is unreachable" in r.getMessage()]
    assert waits and all(OUTAGE["url"] in wait for wait in waits)


@pytest.mark.slow
def test_a_retriever_gone_for_good_stops_the_run_and_the_checkpoint_resumes_it(
    world, searcher, outage, tmp_path, capsys
):
    OUTAGE["down_s"] = None
    run = tmp_path / "run"
    argv = outage_recipe(world, searcher, run, outage, "--max_retriever_wait_s", "2")

    assert train.main(argv) == 3
    error = capsys.readouterr().err.splitlines()[-1]  # after the progress bars
    assert error.startswith("stopped: the retriever stayed unreachable for ")
    assert "(max_retriever_wait_s=2): retrieval at " + OUTAGE["url"] in error
    assert "resume the run from its last checkpoint (--resume_from_checkpoint)" in error
    assert [p.name for p in run.glob("checkpoint-*")] == ["checkpoint-1"]
    assert_every_search_read_real_passages(OUTAGE["steps"])

    OUTAGE["restart"]()  # the retriever is back: the same command resumes from checkpoint-1
    OUTAGE.update(steps=[], kill=False)
    trainer = train.train([*argv, "--resume_from_checkpoint"])
    assert trainer.state.global_step == 3
    assert_every_search_read_real_passages(OUTAGE["steps"])


def test_a_failed_space_push_is_logged_and_training_goes_on(tmp_path, caplog, monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("the Hub said no")

    monkeypatch.setattr(train.space, "push_space", refuse)
    script = SimpleNamespace(space_repo="org/demo", retriever="r.yaml", template="search_r1")
    args = SimpleNamespace(
        push_to_hub=True, hub_model_id="org/model", output_dir=str(tmp_path), hub_token=None
    )
    train.publish_space(script, args, pushed=True)
    assert "could not push the Space org/demo: the Hub said no" in caplog.text
    train.publish_space(script, args, pushed=False)
    assert "not pushing the Space org/demo: the model is not on the Hub" in caplog.text


def ask_space(folder: Path, question: str, monkeypatch) -> list[dict]:
    """Start a pushed Space's app from its own files (its folder as the working directory, as
    on the Hub) and ask it one question through gradio_client; the chat it returns."""
    app = pytest.importorskip("research_r1.space.app")
    from gradio_client import Client

    from research_r1.space.settings import load_settings

    monkeypatch.chdir(folder)
    demo = app.load_space(load_settings(folder, {}))
    demo.queue(max_size=4).launch(
        server_name="127.0.0.1", prevent_thread_lock=True, ssr_mode=False, quiet=True
    )
    try:
        _, history = Client(demo.local_url, verbose=False).predict(question, [], api_name="/ask")
    finally:
        demo.close()
    return history


# ---------------------------------------------------------------------------------------------
# Checks and pieces, without training


def test_unsupported_combinations_are_refused_at_start_up(in_repo, bf16_gpu):
    for recipe, overrides, message in [
        ("qwen7b_grpo", ["--load_in_8bit", "true"], "load_in_8bit: 8-bit training is not"),
        ("qwen7b_qlora_grpo", ["--use_vllm", "true"], "use_vllm: QLoRA with vLLM generation"),
        ("qwen7b_grpo", ["--vllm_tensor_parallel_size", "2"], "vllm_tensor_parallel_size: "),
        ("qwen7b_grpo", ["--push_to_hub", "true"], "hub_model_id: required with push_to_hub"),
        ("qwen7b_grpo", ["--dataset_name", ""], "dataset_name: required"),
    ]:
        script, args, model_args = parse_recipe([f"recipes/{recipe}.yaml", *overrides])
        with pytest.raises(InputError) as error:
            train.check_recipe(script, args, model_args)
        assert str(error.value).startswith(message)


def test_a_resume_point_is_the_newest_checkpoint_or_the_one_named(tmp_path):
    def resume(value, output_dir=tmp_path):
        return train.resume_point(
            SimpleNamespace(resume_from_checkpoint=value, output_dir=str(output_dir))
        )

    assert resume("latest") is None  # nothing saved yet: fresh start
    for step in (3, 12, 9):
        (tmp_path / f"checkpoint-{step}").mkdir()
    assert resume("latest") == resume(True) == str(tmp_path / "checkpoint-12")
    assert resume(str(tmp_path / "checkpoint-3"), "x") == str(tmp_path / "checkpoint-3")
    assert resume(None) is None
    with pytest.raises(InputError, match=r"^resume_from_checkpoint: /no/such is not a checkpoint"):
        resume("/no/such")


def test_the_recipe_record_holds_the_keys_set_as_run_with_the_token_masked(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(
        "max_steps: 5\nhub_token: hf_secret\nretriever: r.yaml\nmax_new_tokens_per_turn: 500\n"
        "max_observation_tokens: 400\nuse_cpu: true\nbf16: false\n"
    )
    argv = [
        str(path),
        *("--hub_token", "hf_a", "--seed", "3", "--lr_scheduler_type", "constant"),
        *("--max_new_tokens_per_turn", "64", "--max_observation_tokens=32", "--lora-r", "4"),
    ]

    record = train.recipe_record(argv, parse_recipe(argv))
    assert record == {
        "max_steps": 5,
        "hub_token": "<HUB_TOKEN>",
        "retriever": "r.yaml",
        "max_new_tokens_per_turn": 64,
        "max_observation_tokens": 32,
        "use_cpu": True,
        "bf16": False,
        "seed": 3,
        "lr_scheduler_type": "constant",
        "lora_r": 4,
    }
    assert "hf_" not in yaml.safe_dump(record)


def test_reward_options_and_import_paths_come_from_the_recipe(in_repo, tmp_path):
    path = tmp_path / "r.yaml"
    recipe = yaml.safe_load((ROOT / "recipes" / "tiny_cpu_grpo.yaml").read_text())
    recipe["reward_funcs"] = ["search_r1_format_em", "research_r1.rewards.search_r1_em"]
    recipe["reward_kwargs"] = {"search_r1_format_em": {"retrieval": 0.1, "wrong_valid": 0.3}}
    path.write_text(yaml.safe_dump(recipe))
    script, args, _ = parse_recipe([str(path)])
    format_em, em = train.load_rewards(script, args)
    found_wrong = "<think>a</think><search>q</search><information>Doc 1(Title: Paris) Paris"
    found_wrong += "</information><think>b</think><answer>Lyon</answer>"
    assert format_em(["q"], [found_wrong], None, golden_answers=[["Paris"]]) == [0.3 + 0.1]
    assert em.__name__ == "search_r1_em"

    # A JSON string on the command line, as TRL's own dict keys take it.
    override = '{"search_r1_format_em": {"retrieval": 0.5}}'
    script, args, _ = parse_recipe([str(path), "--reward_kwargs", override])
    format_em, _ = train.load_rewards(script, args)
    assert format_em(["q"], [found_wrong], None, golden_answers=[["Paris"]]) == [0.2 + 0.5]

    for overrides, message in [
        (["--reward_kwargs", "{oops"], "reward_kwargs: not valid JSON"),
        (["--reward_kwargs", '{"research_f1": {}}'], "reward_kwargs: ['research_f1'] are not in"),
        (["--reward_kwargs", '{"search_r1_format_em": 1}'], "reward_kwargs: expected a mapping"),
        (
            ["--reward_kwargs", '{"search_r1_format_em": {"bonus": 1}}'],
            "reward_funcs: reward 'search_r1_format_em' has no options ['bonus']",
        ),
        (
            ["--reward_funcs", "search_r1_format_em", "pkg_missing.reward"],
            "reward_funcs: reward 'pkg_missing.reward': cannot import module 'pkg_missing'",
        ),
    ]:
        with pytest.raises(InputError) as error:
            script, args, _ = parse_recipe([str(path), *overrides])
            train.load_rewards(script, args)
        assert str(error.value).startswith(message), error.value


def test_an_in_process_gpu_index_is_refused_under_several_processes(tmp_path):
    dense = tmp_path / "dense.yaml"
    dense.write_text("type: dense\nindex: idx\ncorpus: c.jsonl\ndevice: cuda:0\n")
    hybrid = tmp_path / "hybrid.yaml"
    hybrid.write_text(
        "type: hybrid\ncorpus: c.jsonl\nbm25: {index: b}\ndense: {index: d, device: auto}\n"
    )
    cpu = tmp_path / "cpu.yaml"
    cpu.write_text("type: dense\nindex: idx\ncorpus: c.jsonl\n")

    for config, device in ((dense, "cuda:0"), (hybrid, "auto")):
        train.check_retriever_placement(str(config), 1)  # one process: its own GPU index is fine
        with pytest.raises(InputError) as error:
            train.check_retriever_placement(str(config), 8)
        assert str(error.value).startswith(
            f"retriever: {config} loads a dense index on device {device!r} in each of the 8 "
            "training processes; serve it once with `research-r1 serve-retriever"
        )
        assert "`type: remote`" in str(error.value)
    train.check_retriever_placement(str(cpu), 8)  # a CPU index is memory-mapped and shared


def test_the_final_push_moves_files_from_the_main_process_only(hub, tmp_path, monkeypatch, caplog):
    """The saved folder is uploaded (checkpoints left out), retried, and a failure is logged,
    never raised; the other processes push nothing and save nothing again (a save is collective
    under FSDP, so a retry of one on the main process alone would hang)."""
    calls = []

    def upload_folder(api, **kwargs):
        keys = ("folder_path", "repo_id", "commit_message", "ignore_patterns")
        calls.append(tuple(kwargs[key] for key in keys))
        response = httpx2.Response(503, request=httpx2.Request("POST", "http://hub/commit"))
        raise HfHubHTTPError(f"service unavailable for {api.token}", response=response)

    fake_hub(monkeypatch, upload_folder)

    def trainer(main: bool) -> SimpleNamespace:
        args = SimpleNamespace(hub_model_id="org/agent", output_dir=str(tmp_path))
        args.hub_private_repo = False
        return SimpleNamespace(args=args, is_world_process_zero=lambda: main)

    assert train.publish(trainer(main=False), hub.token) is False
    assert calls == []
    assert train.publish(trainer(main=True), hub.token) is False
    assert calls == [(tmp_path, "org/agent", "Final model", ["_*", "checkpoint-*"])] * 3
    assert "could not push the final model to org/agent" in caplog.text
    assert hub.token not in caplog.text


# The never-fatal pushes, each as training calls it: the final model, a checkpoint, the Space.


def final_push(tmp_path: Path) -> None:
    args = SimpleNamespace(hub_model_id="org/agent", output_dir=str(tmp_path))
    args.hub_private_repo = False
    train.publish(SimpleNamespace(args=args, is_world_process_zero=lambda: True), None)


def checkpoint_push(tmp_path: Path) -> None:
    (tmp_path / "checkpoint-1").mkdir(exist_ok=True)
    pusher = HubPushCallback("org/agent")
    state = SimpleNamespace(is_world_process_zero=True, global_step=1)
    pusher.on_save(SimpleNamespace(output_dir=str(tmp_path)), state, None)
    pusher.on_train_end(None, None, None)


def space_push(tmp_path: Path) -> None:
    retriever = tmp_path / "remote.yaml"
    retriever.write_text("type: remote\nurl: https://retriever.example.org\n")
    script = SimpleNamespace(space_repo="org/demo", retriever=str(retriever), template="search_r1")
    args = SimpleNamespace(
        push_to_hub=True, hub_model_id="org/agent", output_dir=str(tmp_path), hub_token=None
    )
    train.publish_space(script, args, pushed=True)


def eval_push(tmp_path: Path) -> None:
    """The recipe's eval after training, its evaluation itself stood in for."""
    script = SimpleNamespace(
        eval_suite=None, eval_datasets=None, eval_retriever=None, eval_limit=None
    )
    args = SimpleNamespace(
        output_dir=str(tmp_path), push_to_hub=True, hub_model_id="org/agent", hub_token=None
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train.evaluation, "run_eval", lambda arguments: 0)
        train.evaluate_trained(SimpleNamespace(create_model_card=lambda: None), script, args)


HUB_PUSHES = {
    "final": (final_push, "could not push the final model to org/agent: ", hub_io),
    "eval": (eval_push, "could not push the evaluation to org/agent: ", hub_io),
    "checkpoint": (checkpoint_push, "giving up on pushing checkpoint 1: ", hub_io),
    "space": (space_push, "could not push the Space org/demo: ", space),
}


PUSH_FAILURES = {
    "hub 503": HfHubHTTPError(
        "503 Server Error: Service Unavailable",
        response=httpx2.Response(503, request=httpx2.Request("POST", "https://hub/commit")),
    ),
    "network": httpx2.ConnectError("connection refused"),
    "disk": OSError("no space left on device"),
}


@pytest.mark.parametrize("failure", PUSH_FAILURES, ids=str)
@pytest.mark.parametrize("push", HUB_PUSHES, ids=str)
def test_a_push_that_fails_outside_the_program_is_logged_and_training_goes_on(
    push, failure, tmp_path, monkeypatch, caplog
):
    def upload_folder(api, **kwargs):
        raise PUSH_FAILURES[failure]

    fake_hub(monkeypatch, upload_folder)
    run, logged, _ = HUB_PUSHES[push]
    run(tmp_path)  # returns: training goes on
    assert f"{logged}{PUSH_FAILURES[failure]}" in caplog.text


@pytest.mark.parametrize("push", HUB_PUSHES, ids=str)
def test_a_bug_in_our_packaging_raises_with_its_traceback(push, tmp_path, monkeypatch, caplog):
    """The monkeypatched function is ours: the upload (`hub.push_folder`) of the model, the
    evaluation and the checkpoints, the Space's card (`space.space_card`) of the Space."""

    def buggy(*args, **kwargs):
        raise TypeError("a bug in our packaging")

    run, _, module = HUB_PUSHES[push]
    monkeypatch.setattr(module, "push_folder" if module is hub_io else "space_card", buggy)
    with pytest.raises(TypeError, match="a bug in our packaging") as raised:
        run(tmp_path)
    assert raised.traceback[-1].name == "buggy"
    assert "could not push" not in caplog.text and "giving up" not in caplog.text


def test_a_hub_model_without_network_is_one_line_naming_it(world, no_hub, tmp_path, capsys):
    model = no_hub.new_repo_id("never-fetched")
    argv = recipe(world, tmp_path / "out", "--model_name_or_path", model)
    assert train.main(argv) == 4
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.splitlines()[-1:] == [  # after the progress bars of the split's loading
        f"error: model_name_or_path: cannot reach {no_hub.endpoint} to fetch model repo "
        f"'{model}' (ConnectError: [Errno 111] Connection refused): connect to the network (or "
        "fix HF_ENDPOINT); if it is in the Hub cache (`research-r1 download` puts a model "
        "there), set HF_HUB_OFFLINE=1 to use it"
    ]
    assert not (tmp_path / "out").exists()


def test_a_finished_run_leaves_its_process_group(tmp_path):
    """gloo's threads may still hold a collective's tensors when Python shuts down, which aborts
    a process whose run went well; `main` destroys the group first."""
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1
    )
    assert torch.distributed.is_initialized()
    train.leave_process_group()
    assert not torch.distributed.is_initialized()
    train.leave_process_group()  # nothing to leave: no error
