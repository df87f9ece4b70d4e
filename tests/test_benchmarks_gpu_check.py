"""benchmarks/gpu_check.py without a GPU: its commands, what it reads from a run, its tables, the
random model's confinement to the tokenizer's ids, and main()'s early stop where CUDA is missing.
It has never run on a GPU; nothing here trains."""

from __future__ import annotations

import importlib.util
import io
import itertools
import json
import re
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from helpers import ROOT
from rich.console import Console
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from research_r1.protocol import SEARCH_R1
from research_r1.tiny import build_tokenizer
from research_r1.training.dry_run import dry_run
from research_r1.training.memory import gib
from research_r1.training.reduced import Reduced, read_recipe

RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))


@pytest.fixture(scope="module")
def gpu_check():
    """The script, imported by path (benchmarks/ is no package)."""
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks/gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules["gpu_check"]


def reduced_at(recipe: Path, folder: Path) -> Reduced:
    """What reduce_recipe returns for `recipe` under `folder`, without building it."""
    return Reduced(
        recipe=recipe,
        shipped=read_recipe(recipe),
        model=folder / "model",
        data=folder / "data",
        retriever=folder / "retriever.yaml",
        questions=folder / "questions" / "test.jsonl",
        output_dir=folder / "run",
    )


def pairs(argv: list[str]) -> dict[str, str]:
    """`--key value` pairs of an argv (the last value of a key given twice)."""
    return {key: value for key, value in itertools.pairwise(argv) if key.startswith("--")}


def test_the_gpu_recipes_are_those_not_on_the_cpu(gpu_check):
    found = gpu_check.gpu_recipes()
    assert found and ROOT / "recipes/tiny_cpu_grpo.yaml" not in found
    assert ROOT / "recipes/qwen7b_grpo.yaml" in found
    for recipe in RECIPES:
        assert (recipe in found) == ("\nuse_cpu: true" not in recipe.read_text())
    assert gpu_check.gpu_recipes(["qwen3b_grpo"]) == [ROOT / "recipes/qwen3b_grpo.yaml"]
    with pytest.raises(SystemExit, match="no GPU recipe"):
        gpu_check.gpu_recipes(["tiny_cpu_grpo"])


def test_phase_1_runs_each_gpu_recipe_reduced_on_one_gpu(gpu_check, tmp_path):
    for recipe in gpu_check.gpu_recipes():
        reduced = reduced_at(recipe, tmp_path / recipe.stem)
        argv = gpu_check.phase1_command(reduced)
        assert argv[:7] == [
            sys.executable,
            *("-m", "research_r1.cli", "train", str(recipe)),
            *("--num_processes", "1"),
        ]
        assert argv[7:] == reduced.overrides(max_steps=2)
        keys = pairs(argv)
        assert keys["--model_name_or_path"] == str(tmp_path / recipe.stem / "model")
        assert keys["--max_steps"] == "2"
        assert keys["--max_completion_length"] == "192"


def test_phase_2_keeps_the_recipes_lengths_and_batch_without_the_eval(gpu_check, tmp_path):
    recipe = ROOT / "recipes/qwen7b_grpo.yaml"
    shipped = gpu_check.yaml.safe_load(recipe.read_text())
    copy = gpu_check.without_eval(recipe, tmp_path / "recipe.yaml")
    assert not set(gpu_check.EVAL_KEYS) & set(gpu_check.yaml.safe_load(copy.read_text()))
    full = reduced_at(copy, tmp_path)
    argv = gpu_check.phase2_command(full, shipped)
    keys = pairs(argv)
    assert argv[4:7] == [str(copy), "--num_processes", "1"]
    assert keys["--max_completion_length"] == "3584"
    assert keys["--max_new_tokens_per_turn"] == keys["--max_observation_tokens"] == "500"
    assert keys["--gradient_accumulation_steps"] == "5"  # num_generations, not 80
    assert keys["--max_steps"] == "1"
    assert keys["--save_strategy"] == "no" and keys["--report_to"] == "none"
    assert "--eval_datasets" not in keys
    assert "--per_device_train_batch_size" not in keys  # the recipe's 4


def test_the_estimate_is_the_dry_runs_total(gpu_check, tmp_path, monkeypatch):
    """For the command phase 2 runs (the model's folder holding the full architecture), the
    estimate beside the measured peak is the total `--dry-run` prints."""
    monkeypatch.chdir(ROOT)
    recipe = ROOT / "recipes/qwen7b_grpo.yaml"
    shipped = gpu_check.yaml.safe_load(recipe.read_text())
    architecture = ROOT / "recipes/architectures/Qwen/Qwen2.5-7B"
    full = replace(reduced_at(recipe, tmp_path), model=architecture)
    argv = gpu_check.phase2_command(full, shipped)[4:]
    total = gpu_check.memory_estimate(argv, 80 * 2**30)
    console = Console(file=io.StringIO(), width=250)
    dry_run(argv, "80GiB", console=console)
    printed = re.search(r"verdict: fits: ([\d.]+ GiB)", console.file.getvalue())
    assert printed and gib(total) == printed.group(1)


def test_a_recipe_needing_a_missing_package_is_named(gpu_check):
    def nothing_optional(name: str):
        return None if name in ("vllm", "bitsandbytes") else object()

    found = {
        recipe.stem: gpu_check.missing_packages(recipe, nothing_optional)
        for recipe in gpu_check.gpu_recipes()
    }
    assert found["qwen7b_grpo"] == found["research_qwen7b_grpo"] == ["vllm"]
    assert found["qwen3b_grpo"] == ["vllm"]
    assert found["qwen7b_qlora_grpo"] == ["bitsandbytes"]
    assert (
        gpu_check.missing_packages(ROOT / "recipes/qwen7b_grpo.yaml", lambda name: object()) == []
    )


def test_the_last_steps_time_and_tokens_come_from_trainer_state(gpu_check, tmp_path):
    rows = [
        {"step": 1, "step_time": 10.0, "num_tokens": 1000.0, "completions/mean_length": 100.0},
        {"step": 2, "step_time": 4.0, "num_tokens": 3000.0, "completions/mean_length": 200.0},
        {"step": 2, "train_runtime": 15.0},
    ]
    (tmp_path / "trainer_state.json").write_text(json.dumps({"log_history": rows}))
    stats = gpu_check.read_stats(tmp_path)
    assert stats == gpu_check.Stats(step_s=4.0, tokens_per_s=500.0, completion_tokens=150.0)
    assert gpu_check.read_stats(tmp_path / "missing") == gpu_check.Stats()


def fake_runs(gpu_check):
    Run, Stats = gpu_check.Run, gpu_check.Stats
    phase1 = [
        Run("qwen3b_grpo", "ok", wall_s=81.23, stats=Stats(1.234, 1520.6, 88.0), peak_gib=26.5),
        Run("qwen7b_grpo", "FAIL (exit 1)", wall_s=12.0, peak_gib=0.5, log_tail="Error: boom"),
        Run("qwen7b_qlora_grpo", "skipped: needs bitsandbytes"),
    ]
    phase2 = [
        Run(
            "qwen3b_grpo",
            "ok",
            wall_s=140.0,
            stats=Stats(35.5, 2310.4, 2405.2),
            peak_gib=40.125,
            build_s=20.04,
            estimate_gib=37.0,
        ),
        Run("qwen7b_grpo", "skipped: phase 1 failed"),
    ]
    return phase1, phase2


def test_the_tables_render_from_measurements(gpu_check):
    phase1, phase2 = fake_runs(gpu_check)
    assert gpu_check.table(phase1, full=False) == (
        "| recipe | result | wall s | last step s | tokens/s | peak GiB |\n"
        "|---|---|---|---|---|---|\n"
        "| qwen3b_grpo | ok | 81.2 | 1.23 | 1521 | 26.50 |\n"
        "| qwen7b_grpo | FAIL (exit 1) | 12.0 | - | - | 0.50 |\n"
        "| qwen7b_qlora_grpo | skipped: needs bitsandbytes | - | - | - | - |"
    )
    assert gpu_check.table(phase2, full=True) == (
        "| recipe | result | model build s | wall s | last step s | tokens/s | completion tokens "
        "| peak GiB | estimate GiB |\n"
        "|---|---|---|---|---|---|---|---|---|\n"
        "| qwen3b_grpo | ok | 20.0 | 140.0 | 35.50 | 2310 | 2405 | 40.12 | 37.00 |\n"
        "| qwen7b_grpo | skipped: phase 1 failed | - | - | - | - | - | - | - |"
    )


def test_the_report_holds_the_machine_tables_and_failed_logs(gpu_check):
    phase1, phase2 = fake_runs(gpu_check)
    machine = gpu_check.parse_gpu("NVIDIA H100 80GB HBM3, 81559, 580.159.04\n", cpus=16)
    assert machine == gpu_check.Machine("NVIDIA H100 80GB HBM3", 81559, "580.159.04", 16)
    assert machine.kind == "nvidia-h100-80gb-hbm3"
    assert machine.memory_bytes == 81559 * 2**20
    text = gpu_check.report(machine, "2026-12-01 10:00 UTC", 401.6, {1: phase1, 2: phase2})
    assert text.startswith(
        "# GPU check on NVIDIA H100 80GB HBM3\n\n"
        "`benchmarks/gpu_check.py` on 2026-12-01 10:00 UTC, 402 s in all.\n\n"
        "- machine: NVIDIA H100 80GB HBM3, 81559 MiB, driver 580.159.04; 16 CPU cores\n"
        f"- versions: torch {torch.__version__}, "
    )
    assert gpu_check.table(phase1, full=False) in text
    assert gpu_check.table(phase2, full=True) in text
    assert text.endswith("### Phase 1, qwen7b_grpo: FAIL (exit 1)\n\n```text\nError: boom\n```\n")


@pytest.mark.slow
def test_a_run_is_measured_from_its_exit_code_state_and_memory(gpu_check, tmp_path, monkeypatch):
    """A stand-in for a training command: what it wrote, its exit code, the peak nvidia-smi
    showed (faked here) and, on failure, its log's last lines; a run past its time is killed."""
    monkeypatch.setattr(gpu_check, "memory_used_mib", lambda: 2048)
    recipe = ROOT / "recipes/qwen3b_grpo.yaml"
    state = {"log_history": [{"step": 1, "step_time": 2.0, "num_tokens": 500.0}]}
    output = tmp_path / "run"
    write = (
        f"import pathlib; out = pathlib.Path({str(output)!r}); out.mkdir(); "
        f"(out / 'trainer_state.json').write_text({json.dumps(state)!r})"
    )
    run = gpu_check.measure(recipe, [sys.executable, "-c", write], output, timeout=60)
    assert (run.recipe, run.result, run.peak_gib, run.log_tail) == ("qwen3b_grpo", "ok", 2.0, "")
    assert run.stats == gpu_check.Stats(step_s=2.0, tokens_per_s=250.0)
    fail = [sys.executable, "-c", "print('one'); print('two'); raise SystemExit(3)"]
    run = gpu_check.measure(recipe, fail, tmp_path / "failed", timeout=60)
    assert (run.result, run.log_tail, run.stats) == ("FAIL (exit 3)", "one\ntwo", gpu_check.Stats())
    hang = [sys.executable, "-c", "import time; time.sleep(60)"]
    run = gpu_check.measure(recipe, hang, tmp_path / "hung", timeout=1)
    assert run.result == "FAIL (killed at the time limit, 1 s)" and run.wall_s < 30


def test_a_phase_1_run_is_skipped_when_the_budget_is_spent(gpu_check, tmp_path):
    reduced = reduced_at(ROOT / "recipes/qwen3b_grpo.yaml", tmp_path)
    run = gpu_check.phase1(reduced, deadline=gpu_check.time.monotonic() + 30)
    assert run.result.startswith("skipped: time budget (") and not run.failed


def test_phase_2_builds_a_model_once_per_architecture_and_estimates_its_run(
    gpu_check, tmp_path, monkeypatch
):
    """qwen7b_grpo and qwen7b_qlora_grpo share Qwen2.5-7B and their template: one build. The
    estimate is for the command that runs, on the machine's GPU."""
    monkeypatch.chdir(ROOT)
    builds, commands = [], []

    def build(architecture, tokenizer, out, timeout):
        builds.append(architecture.relative_to(ROOT / "recipes/architectures").as_posix())
        AutoConfig.from_pretrained(architecture).save_pretrained(out)

    def measure(recipe, argv, output_dir, timeout):
        commands.append(argv)
        return gpu_check.Run(recipe.stem, "ok")

    monkeypatch.setattr(gpu_check, "build_in_child", build)
    monkeypatch.setattr(gpu_check, "measure", measure)
    machine = gpu_check.Machine("NVIDIA H100 80GB HBM3", 81559, "580.159.04", 16)
    models, runs = {}, []
    for name in ("qwen7b_grpo", "qwen7b_qlora_grpo"):
        reduced = reduced_at(ROOT / f"recipes/{name}.yaml", tmp_path / name)
        reduced.output_dir.parent.mkdir()
        runs.append(gpu_check.phase2(reduced, machine, gpu_check.time.monotonic() + 400, models))
    assert builds == ["Qwen/Qwen2.5-7B"]
    assert runs[0].build_s is not None and runs[1].build_s is None
    model = str(tmp_path / "qwen7b_grpo" / "full_model")
    assert [pairs(argv)["--model_name_or_path"] for argv in commands] == [model, model]
    console = Console(file=io.StringIO(), width=250)
    dry_run(commands[1][4:], f"{machine.memory_mib}MiB", console=console)
    printed = re.search(r"verdict: fits: ([\d.]+ GiB)", console.file.getvalue())
    assert printed and f"{runs[1].estimate_gib:.2f} GiB" == printed.group(1)


def test_main_runs_the_phases_in_recipe_order_and_writes_the_report(
    gpu_check, tmp_path, monkeypatch, capsys
):
    """main() past its checks, each run faked: a recipe without its package is skipped in both
    phases, one whose phase 1 failed is skipped in phase 2, and a failure makes the exit 1."""
    import research_r1.training.reduced

    monkeypatch.chdir(ROOT)
    machine = gpu_check.Machine("NVIDIA H100 80GB HBM3", 81559, "580.159.04", 16)
    monkeypatch.setattr(gpu_check, "prerequisites", lambda: None)
    monkeypatch.setattr(gpu_check, "read_machine", lambda: machine)
    monkeypatch.setattr(
        gpu_check, "missing_packages", lambda recipe: ["vllm"] * (recipe.stem == "qwen3b_grpo")
    )
    monkeypatch.setattr(research_r1.training.reduced, "reduce_recipe", reduced_at)

    def phase1(reduced, deadline):
        name = reduced.recipe.stem
        return gpu_check.Run(name, "FAIL (exit 1)" if name == "qwen7b_grpo" else "ok")

    monkeypatch.setattr(gpu_check, "phase1", phase1)
    monkeypatch.setattr(
        gpu_check, "phase2", lambda reduced, *_: gpu_check.Run(reduced.recipe.stem, "ok")
    )
    assert gpu_check.main(["--results", str(tmp_path)]) == 1
    text = (tmp_path / "gpu_nvidia-h100-80gb-hbm3.md").read_text()
    rows = [line.split(" | ")[:2] for line in text.splitlines() if line.startswith("| ")]
    assert rows == [
        ["| recipe", "result"],
        ["| qwen3b_grpo", "skipped: needs vllm"],
        ["| qwen7b_grpo", "FAIL (exit 1)"],
        ["| qwen7b_qlora_grpo", "ok"],
        ["| research_qwen7b_grpo", "ok"],
        ["| recipe", "result"],
        ["| qwen3b_grpo", "skipped: needs vllm"],
        ["| qwen7b_grpo", "skipped: phase 1 failed"],
        ["| qwen7b_qlora_grpo", "ok"],
        ["| research_qwen7b_grpo", "ok"],
    ]
    assert text in capsys.readouterr().out


@pytest.mark.slow
def test_the_full_size_model_samples_only_its_tokenizers_plain_ids(gpu_check, tmp_path):
    """build_full_model as phase 2 runs it, on the CPU and at a small width: a vocabulary far
    larger than the tiny tokenizer's, as the real architecture's is; what it samples after a
    save and load is always one of the tokenizer's words, never EOS or a tag."""
    architecture = tmp_path / "architecture"
    Qwen2Config(
        vocab_size=32_768,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=False,
    ).save_pretrained(architecture)
    texts = ["Who was born in Paris?", "Ada Lovelace was born in London."]
    build_tokenizer(texts, SEARCH_R1.tags).save_pretrained(tmp_path / "tokenizer")
    out = tmp_path / "model"
    gpu_check.build_full_model(str(architecture), str(tmp_path / "tokenizer"), str(out), "cpu")
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.dtype == torch.bfloat16 and model.config.vocab_size == 32_768
    assert model.config.eos_token_id == tokenizer.eos_token_id
    prompt = tokenizer(texts[0], return_tensors="pt")
    torch.manual_seed(0)
    sampled = model.generate(**prompt, do_sample=True, max_new_tokens=32)
    new = sampled[0, prompt.input_ids.shape[1] :].tolist()
    assert len(new) == 32
    assert max(new) < len(tokenizer) and not set(new) & set(tokenizer.added_tokens_decoder)


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_confine_keeps_sampling_to_the_tokenizers_ids(gpu_check, tied):
    """Ids past the tokenizer never come out; EOS and tags neither where the head is untied
    (a tied head is also the embedding of the ids the inputs use)."""
    config = Qwen2Config(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=tied,
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    allowed, banned = 100, [0, 1, 7]
    gpu_check.confine(model, allowed, banned, gpu_check.SUPPRESS)
    text = torch.randint(2, allowed, (3, 40))
    with torch.no_grad():
        probs = model(text).logits.softmax(-1)
    assert probs[..., allowed:].sum(-1).max() < 1e-6
    banned_share = probs[..., banned].sum(-1).max()
    assert banned_share < 1e-6 if not tied else banned_share > 1e-4


def test_without_cuda_main_stops_at_once_and_writes_nothing(
    gpu_check, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    work_before = set(Path(tempfile.gettempdir()).glob("gpu_check_*"))
    with pytest.raises(SystemExit) as stop:
        gpu_check.main(["--results", str(tmp_path / "results")])
    message = str(stop.value.code)
    assert message == (
        f"gpu_check: needs a CUDA GPU, and torch {torch.__version__} sees none; "
        "nothing was run or written"
    )
    assert not (tmp_path / "results").exists()
    assert set(Path(tempfile.gettempdir()).glob("gpu_check_*")) == work_before
    assert capsys.readouterr().out == ""


def test_without_trainings_packages_main_names_them_in_one_line(gpu_check, tmp_path, monkeypatch):
    """As on the lent machine's image: an import fails, and setup.cfg's missing requirements
    are listed with it."""

    monkeypatch.setattr(gpu_check, "TRAINING_MODULES", ("research_r1.no_such_module",))
    installed = gpu_check.metadata.version

    def version(name: str) -> str:
        if name in ("trl", "datasets"):
            raise gpu_check.metadata.PackageNotFoundError(name)
        return installed(name)

    monkeypatch.setattr(gpu_check.metadata, "version", version)
    with pytest.raises(SystemExit) as stop:
        gpu_check.main(["--results", str(tmp_path / "results")])
    assert str(stop.value.code) == (
        "gpu_check: needs the packages training imports (research_r1.no_such_module: No module "
        "named 'research_r1.no_such_module'); of setup.cfg's install_requires, not installed: "
        "trl, datasets; nothing was run or written"
    )
    assert not (tmp_path / "results").exists()
