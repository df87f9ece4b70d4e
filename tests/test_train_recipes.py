"""Recipes, the `research-r1 train` launcher, rollout metrics and the model card, without
training: every recipe parses and passes the support checks on a machine without a GPU."""

from __future__ import annotations

import functools
import pickle
import re
import subprocess
import sys
import threading
from dataclasses import fields
from pathlib import Path
from types import SimpleNamespace

import httpx2
import pytest
import trl
import yaml
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError

from research_r1 import cli
from research_r1 import hub as hub_io
from research_r1.cli import main as cli_main
from research_r1.errors import InputError
from research_r1.protocol import FINAL_TURN_NOTICE, RESEARCH, SEARCH_R1
from research_r1.retrieval.config import BM25Config, RemoteConfig, parse_config
from research_r1.rollout import Episode
from research_r1.space import push as space
from research_r1.tiny import build_tokenizer
from research_r1.training import launch, train
from research_r1.training.callbacks import TRAINING_STATE_FILES, HubPushCallback
from research_r1.training.configs import RECIPE_DATACLASSES, parse_recipe
from research_r1.training.publish import model_card, results_table
from research_r1.training.trl_rollout import episodes_to_trl, make_episode_metrics

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
GPU_RECIPES = [path for path in RECIPES if path.name != "tiny_cpu_grpo.yaml"]


@pytest.fixture
def in_repo(monkeypatch):
    """Recipes name their files relative to the repository root, where they are run from."""
    monkeypatch.chdir(ROOT)


@pytest.fixture
def bf16_gpu(monkeypatch):
    """Parse GPU recipes as on a GPU machine: TrainingArguments refuses bf16 without one."""
    import transformers.training_args

    monkeypatch.setattr(transformers.training_args, "is_torch_bf16_gpu_available", lambda: True)


@pytest.mark.slow
def test_the_cli_imports_only_the_subcommand_it_runs():
    """`research-r1 --help` imports no job module (TRL alone takes seconds), `research-r1 search`
    only its own."""
    code = (
        "import contextlib, io, sys; from research_r1 import cli\n"
        "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        "    cli.parse({!r})\n"
        "print(' '.join(m for m in ('torch', 'trl', 'research_r1.retrieval.cli', "
        "'research_r1.training.train') if m in sys.modules))"
    )

    def imported(argv: list[str]) -> set[str]:
        run = subprocess.run(
            [sys.executable, "-c", code.format(argv)], capture_output=True, text=True
        )
        assert run.returncode == 0, run.stderr
        return set(run.stdout.split())

    assert imported(["--help"]) == set()
    searched = imported(["search", "--help"])
    assert "research_r1.retrieval.cli" in searched and "research_r1.training.train" not in searched


def test_a_subcommand_that_cannot_import_breaks_only_itself(monkeypatch, capsys):
    monkeypatch.setitem(cli.COMMANDS, "demo", ("research_r1.no_such_module", "broken"))
    with pytest.raises(SystemExit) as done:
        cli_main(["search", "--help"])
    assert done.value.code == 0 and "--config" in capsys.readouterr().out
    with pytest.raises(ModuleNotFoundError, match=r"research_r1\.no_such_module"):
        cli_main(["demo"])


@pytest.mark.parametrize("path", RECIPES, ids=lambda path: path.name)
def test_every_recipe_parses_and_is_supported(path, in_repo, bf16_gpu):
    script, args, model_args = parse_recipe([str(path.relative_to(ROOT))])
    train.check_recipe(script, args, model_args)
    train.load_rewards(script, args)
    parse_config(script.retriever)
    _, config_file = launch.accelerate_config_file(script.accelerate_config)
    assert Path(config_file).is_file()
    assert args.temperature == 1.0
    assert args.generation_batch_size % args.num_generations == 0


@pytest.mark.parametrize("path", GPU_RECIPES, ids=lambda path: path.name)
def test_gpu_recipes_use_the_papers_settings_and_a_lora_learning_rate(path, in_repo, bf16_gpu):
    script, args, model_args = parse_recipe([str(path.relative_to(ROOT))])
    assert (args.num_generations, args.beta, args.epsilon) == (5, 0.001, 0.2)
    assert (args.max_turns, args.retrieval_topk) == (4, 3)
    assert (args.max_new_tokens_per_turn, args.max_observation_tokens) == (500, 500)
    assert model_args.use_peft and model_args.dtype == "bfloat16" and args.bf16
    assert 1e-5 <= args.learning_rate <= 5e-5
    assert model_args.model_name_or_path.startswith("Qwen/Qwen2.5-")
    assert isinstance(parse_config(script.retriever), RemoteConfig)


def test_recipe_specifics(in_repo, bf16_gpu):
    def parse(name: str):
        return parse_recipe([f"recipes/{name}.yaml"])

    script, args, model_args = parse("qwen7b_grpo")
    assert model_args.model_name_or_path == "Qwen/Qwen2.5-7B"
    assert script.reward_funcs == ["search_r1_em"] and script.template == "search_r1"
    assert (args.use_vllm, args.vllm_mode) == (True, "colocate")
    assert script.accelerate_config == "multi_gpu"  # TRL's preset
    prompts_per_step = 8 * args.generation_batch_size // args.num_generations  # 8 GPUs
    assert prompts_per_step == 512

    script, args, model_args = parse("qwen7b_qlora_grpo")
    assert model_args.load_in_4bit and not args.use_vllm
    assert script.accelerate_config == "recipes/accelerate/single_gpu.yaml"

    script, args, model_args = parse("research_qwen7b_grpo")
    assert script.reward_funcs == ["research_f1"] and script.template == "research_instruct"
    assert args.max_completion_length == 8192

    script, _, _ = parse("qwen3b_grpo")
    assert script.accelerate_config == "recipes/accelerate/single_gpu.yaml"

    # The demo's settings (G=8, 8 prompts per step, lr 3e-4 constant, DAPO, no KL, EM, BM25
    # top-2, at most 2 searches of 24 new tokens per turn, 60 steps), on what the demo writes.
    script, args, model_args = parse("tiny_cpu_grpo")
    assert (model_args.model_name_or_path, script.dataset_name, script.template) == (
        "outputs/demo/model",
        "outputs/demo/data",
        "outputs/demo/template.yaml",
    )
    assert script.retriever == "recipes/retrievers/demo_bm25.yaml"
    assert parse_config(script.retriever) == BM25Config(
        index="outputs/demo/bm25", corpus="outputs/demo/corpus.jsonl"
    )
    assert (args.num_generations, args.generation_batch_size // args.num_generations) == (8, 8)
    assert (args.learning_rate, args.lr_scheduler_type.value) == (3e-4, "constant")
    assert (args.loss_type, args.beta, script.reward_funcs) == ("dapo", 0.0, ["search_r1_em"])
    assert (args.retrieval_topk, args.max_turns, args.max_new_tokens_per_turn) == (2, 2, 24)
    assert (args.max_steps, args.use_cpu, args.bf16, model_args.use_peft) == (
        60,
        True,
        False,
        False,
    )


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


def test_any_key_is_overridden_and_a_bare_resume_flag_means_the_latest(in_repo, tmp_path):
    _, args, _ = parse_recipe(
        ["recipes/tiny_cpu_grpo.yaml", "--resume_from_checkpoint", "--max_steps", "7"]
    )
    assert (args.resume_from_checkpoint, args.max_steps) == ("latest", 7)
    _, args, _ = parse_recipe(["recipes/tiny_cpu_grpo.yaml", "--resume_from_checkpoint"])
    assert args.resume_from_checkpoint == "latest"

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

    # Checkpoints pickle the config (training_args.bin).
    assert pickle.loads(pickle.dumps(args)).max_turns == args.max_turns == 2


def test_research_r1_train_hands_every_other_flag_to_accelerate(in_repo, monkeypatch, capsys):
    launched = []
    monkeypatch.setattr(launch, "launch_command", launched.append)
    recipe = "recipes/tiny_cpu_grpo.yaml"

    assert cli_main(["train", recipe, "--max_steps", "3"]) == 0
    (run,) = launched
    assert (run.config_file, run.quiet, run.module, run.training_script) == (
        "recipes/accelerate/cpu.yaml",
        True,
        True,
        "research_r1.training.train",
    )
    assert run.training_script_args == [recipe, "--max_steps", "3"]

    # Any accelerate flag goes to accelerate; recipe keys (and a bare resume flag) to training.
    multi = "recipes/accelerate/multi_node.yaml"
    argv = [
        *("--machine_rank", "1", "--learning_rate", "1e-5", "--main_process_ip=10.0.0.2"),
        *("--num_processes", "16", "--mixed_precision", "bf16", "--resume_from_checkpoint"),
    ]
    assert cli_main(["train", recipe, "--accelerate_config", multi, *argv]) == 0
    run = launched[-1]
    assert (run.config_file, run.machine_rank, run.main_process_ip) == (multi, 1, "10.0.0.2")
    assert (run.num_processes, run.mixed_precision) == (16, "bf16")
    assert run.training_script_args == [
        *(recipe, "--accelerate_config", multi, "--learning_rate", "1e-5"),
        "--resume_from_checkpoint",
    ]

    # A preset by name is TRL's own file, found as `trl grpo --accelerate_config` finds it.
    assert cli_main(["train", recipe, "--accelerate_config", "zero3"]) == 0
    trl_presets = Path(trl.__file__).parent / "accelerate_configs"
    assert launched[-1].config_file == str(trl_presets / "zero3.yaml")

    for argv, message in [
        (["recipes/missing.yaml"], "error: recipe recipes/missing.yaml does not exist"),
        (
            [recipe, "--accelerate_config", "nope.yaml"],
            "error: accelerate_config: nope.yaml is neither a file nor one of TRL's presets "
            "(fsdp1, fsdp2, multi_gpu, single_gpu, zero1, zero2, zero3)",
        ),
        ([recipe, "--no_such_key", "1"], "error: --no_such_key: neither a recipe key nor an"),
    ]:
        capsys.readouterr()
        assert cli_main(["train", *argv]) == 2
        assert capsys.readouterr().err.startswith(message)
    assert len(launched) == 3


def test_train_help_lists_every_recipe_key_and_our_flags(capsys):
    """As `trl grpo --help` does: every key of the recipe's dataclasses, then ours, and where
    any other flag goes."""
    with pytest.raises(SystemExit) as done:
        cli_main(["train", "recipes/qwen7b_grpo.yaml", "--max_steps", "3", "--help"])
    out = capsys.readouterr().out
    assert done.value.code == 0
    keys = [field.name for part in RECIPE_DATACLASSES for field in fields(part) if field.init]
    flags = set(re.findall(r"^  (--\w+)", out, re.MULTILINE))
    assert {f"--{key}" for key in keys} <= flags
    assert {"--max_turns", "--retriever", "--lora_r", "--dry_run", "--gpu_memory"} <= flags
    assert "--dry-run" in out and "--gpu-memory" in out
    assert "Any other --flag goes to `accelerate launch`" in " ".join(out.split())


def test_our_flags_are_read_wherever_they_appear():
    argv, args = launch.parse_train(
        ["r.yaml", "--gpu_memory", "24GiB", "--max_steps", "3", "--dry-run", "--num_processes", "2"]
    )
    assert argv == ["r.yaml", "--max_steps", "3", "--num_processes", "2"]
    assert (args.dry_run, args.gpu_memory) == (True, "24GiB")
    argv, args = launch.parse_train(["r.yaml", "--dry_run", "false", "--resume_from_checkpoint"])
    assert (argv, args.dry_run, args.gpu_memory) == (
        ["r.yaml", "--resume_from_checkpoint"],
        False,
        None,
    )
    with pytest.raises(SystemExit) as done:  # argparse's usage error
        launch.parse_train(["--dry-run", "r.yaml"])
    assert done.value.code == 2


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


@pytest.mark.slow
def test_a_failed_run_through_the_launcher_ends_with_one_line(tmp_path):
    """`research-r1 train` under the real `accelerate launch`: our error, no launcher traceback."""
    run = subprocess.run(
        [
            *(sys.executable, "-m", "research_r1.cli", "train"),
            str(ROOT / "recipes" / "tiny_cpu_grpo.yaml"),
            *("--accelerate_config", str(ROOT / "recipes" / "accelerate" / "cpu.yaml")),
            *("--dataset_name", str(tmp_path / "nothing"), "--template", "search_r1"),
            *("--output_dir", str(tmp_path / "run")),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert run.returncode != 0
    expected = (
        f"error: dataset_name: no train.parquet (dataset_train_split) in {tmp_path / 'nothing'}"
    )
    assert expected in run.stderr
    assert "Traceback" not in run.stderr and "CalledProcessError" not in run.stderr


def episode(tokenizer, parts: list[tuple[str, int]], **fields) -> Episode:
    """An episode from (text, 1 = sampled / 0 = inserted) parts."""
    result = Episode(prompt_ids=[0], **fields)
    for text, sampled in parts:
        ids = tokenizer.encode(text, add_special_tokens=False)
        result.completion_ids += ids
        result.env_mask += [sampled] * len(ids)
    return result


def score_episodes(tokenizer, episodes: list[Episode], protocol, golds: list[list[str]]):
    """Call the episode metrics as GRPOTrainer does (decoded completions, the rollout's
    fields, `log_metric`); returns the EM values and what was logged."""
    logged: dict[str, float] = {}
    columns = episodes_to_trl(episodes)
    texts = tokenizer.batch_decode(columns.pop("completion_ids"), skip_special_tokens=True)
    em = make_episode_metrics(protocol)(
        ["prompt"] * len(episodes),
        texts,
        [e.completion_ids for e in episodes],
        golden_answers=golds,
        log_metric=logged.__setitem__,
        **columns,
    )
    return em, logged


def test_episode_metrics_report_the_batch_through_log_metric():
    tags = (*SEARCH_R1.tags, RESEARCH.observation_open, RESEARCH.observation_close)
    tokenizer = build_tokenizer(["a b c q x doc foo bar \\boxed{x}", FINAL_TURN_NOTICE], tags)
    valid = episode(
        tokenizer,
        [
            ("<think> a </think><search> q </search>", 1),
            ("<information> doc </information>", 0),
            ("<think> b </think><answer> x </answer>", 1),
            (tokenizer.eos_token, 0),
        ],
        num_searches=1,
        answered=True,
    )
    broken = episode(
        tokenizer,
        [("foo", 1), (" bar", 0)],
        num_searches=2,
        truncated=True,
        invalid_steps=1,
    )
    em, logged = score_episodes(tokenizer, [valid, broken], SEARCH_R1, [["x"], ["x"]])

    def length(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False))

    inserted = length("<information> doc </information>") + 1 + length(" bar")
    total = len(valid.completion_ids) + len(broken.completion_ids)
    assert em == [1.0, 0.0]
    assert logged == {
        "rollout/searches_per_episode": 1.5,
        "rollout/answered_rate": 0.5,
        "rollout/truncated_rate": 0.5,
        "rollout/invalid_steps_per_episode": 0.5,
        "rollout/valid_format_rate": 0.5,
        "rollout/masked_token_share": pytest.approx(inserted / total),
    }

    boxed = episode(tokenizer, [("<think> a </think><answer> \\boxed{x} </answer>", 1)])
    em, logged = score_episodes(tokenizer, [boxed], RESEARCH, [["x"]])
    assert em == [1.0]
    assert logged["rollout/valid_format_rate"] == 1.0
    assert logged["rollout/masked_token_share"] == 0.0

    # the notice before the last turn is ours, not the model's: the format still counts as valid
    warned = episode(
        tokenizer,
        [
            ("<think> a </think><search> q </search>", 1),
            ("<information> doc </information>" + FINAL_TURN_NOTICE, 0),
            ("<think> b </think><answer> x </answer>", 1),
        ],
    )
    _, logged = score_episodes(tokenizer, [warned], SEARCH_R1, [["y"]])
    assert logged["rollout/valid_format_rate"] == 1.0


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


COMMIT = SimpleNamespace(oid="0" * 40)  # what HfApi.upload_folder returns


def fake_hub(monkeypatch, upload_folder) -> None:
    """HfApi with repo creation a no-op and `upload_folder(api, **kwargs)` as its upload; Hub
    retries without the back-off wait."""
    monkeypatch.setattr(HfApi, "create_repo", lambda api, *args, **kwargs: None)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    monkeypatch.setattr(hub_io, "retry", functools.partial(hub_io.retry, backoff_s=0.0))


def test_checkpoint_pushes_wait_their_turn_and_only_the_newest_waits(tmp_path, monkeypatch):
    uploads, started, release = [], threading.Event(), threading.Event()

    def upload_folder(api, **kwargs):
        uploads.append((Path(kwargs["folder_path"]).name, kwargs["path_in_repo"], api.token))
        started.set()
        release.wait(timeout=10)
        return COMMIT

    fake_hub(monkeypatch, upload_folder)
    pusher = HubPushCallback("org/run", token="secret")
    args = SimpleNamespace(output_dir=str(tmp_path))
    for step in (1, 2, 3):
        (tmp_path / f"checkpoint-{step}").mkdir()

    pusher.on_save(args, SimpleNamespace(is_world_process_zero=True, global_step=1), None)
    assert started.wait(timeout=10)  # step 1 is uploading...
    for step in (2, 3):  # ...while two more checkpoints are saved
        pusher.on_save(args, SimpleNamespace(is_world_process_zero=True, global_step=step), None)
    release.set()
    pusher.on_train_end(args, None, None)

    assert uploads == [
        ("checkpoint-1", "last-checkpoint", "secret"),
        ("checkpoint-3", "last-checkpoint", "secret"),
    ]
    with pytest.raises(InputError, match=r"^hub_model_id: required with push_to_hub"):
        HubPushCallback(None)


@pytest.mark.parametrize(
    ("strategy", "pushed"),
    [
        ("checkpoint", [("checkpoint-4", "last-checkpoint", None)]),
        ("all_checkpoints", [("checkpoint-4", "checkpoint-4", None)]),
        ("every_save", [("checkpoint-4", None, TRAINING_STATE_FILES)]),
        ("end", []),
    ],
)
def test_checkpoint_pushes_follow_hub_strategy(tmp_path, monkeypatch, strategy, pushed):
    uploads = []

    def upload_folder(api, **kwargs):
        name = Path(kwargs["folder_path"]).name
        uploads.append((name, kwargs["path_in_repo"], kwargs["ignore_patterns"]))
        return COMMIT

    fake_hub(monkeypatch, upload_folder)
    pusher = HubPushCallback("org/run", strategy)
    args = SimpleNamespace(output_dir=str(tmp_path))
    (tmp_path / "checkpoint-4").mkdir()
    pusher.on_save(args, SimpleNamespace(is_world_process_zero=True, global_step=4), None)
    pusher.on_train_end(args, None, None)
    assert uploads == pushed


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


def test_a_deleted_checkpoint_is_skipped(tmp_path, monkeypatch, caplog):
    fake_hub(monkeypatch, lambda api, **kwargs: COMMIT)
    pusher = HubPushCallback("org/run")
    args = SimpleNamespace(output_dir=str(tmp_path))
    pusher.on_save(args, SimpleNamespace(is_world_process_zero=True, global_step=2), None)
    pusher.on_train_end(args, None, None)
    assert "checkpoint 2 was deleted before its push; skipped" in caplog.text


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


PUSHES = {
    "final": (final_push, "could not push the final model to org/agent: ", hub_io),
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
@pytest.mark.parametrize("push", PUSHES, ids=str)
def test_a_push_that_fails_outside_the_program_is_logged_and_training_goes_on(
    push, failure, tmp_path, monkeypatch, caplog
):
    def upload_folder(api, **kwargs):
        raise PUSH_FAILURES[failure]

    fake_hub(monkeypatch, upload_folder)
    run, logged, _ = PUSHES[push]
    run(tmp_path)  # returns: training goes on
    assert f"{logged}{PUSH_FAILURES[failure]}" in caplog.text


@pytest.mark.parametrize("push", PUSHES, ids=str)
def test_a_bug_in_our_packaging_raises_with_its_traceback(push, tmp_path, monkeypatch, caplog):
    """The monkeypatched function is ours: the upload (`hub.push_folder`) of the model and the
    checkpoints, the Space's card (`space.space_card`) of the Space."""

    def buggy(*args, **kwargs):
        raise TypeError("a bug in our packaging")

    run, _, module = PUSHES[push]
    monkeypatch.setattr(module, "push_folder" if module is hub_io else "space_card", buggy)
    with pytest.raises(TypeError, match="a bug in our packaging") as raised:
        run(tmp_path)
    assert raised.traceback[-1].name == "buggy"
    assert "could not push" not in caplog.text and "giving up" not in caplog.text
