"""Every shipped GPU recipe, run through `research-r1 train` on the CPU at reduced shape
(`research_r1.training.reduced`): the model shrunk, the demo world's data, 2-3 steps, the CPU's
device and precision flags, the loopback Hub; every other key as shipped. The recipes that generate
with vLLM run as shipped in `tests_vllm/test_vllm_recipes.py` (vLLM's CPU build has its own
virtualenv); here they run with two processes, DDP and FSDP2, generating with transformers.

- QLoRA for real: bitsandbytes NF4 layers, a frozen quantised base, LoRA gradients, a checkpoint
  that reloads and generates the same tokens.
- Two processes over gloo with the DDP config and the FSDP2 config: train, checkpoint, be killed,
  resume to the same losses, push the final model with the first upload failing, with a timeout
  that fails the test on a hang; the FSDP run's pushed weights equal the unsharded run's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from huggingface_hub import HfApi, hf_hub_download
from safetensors.torch import load_file

from research_r1.training.reduced import CPU_FLAGS, Reduced, read_recipe, reduce_recipe

ROOT = Path(__file__).resolve().parents[1]
GPU_RECIPES = sorted(
    path for path in (ROOT / "recipes").glob("*.yaml") if not read_recipe(path).get("use_cpu")
)
# The two-process runs' accelerate configs: the recipe's own (TRL's multi_gpu preset), and FSDP2.
ACCELERATE_CONFIGS = {"ddp": "multi_gpu", "fsdp": "recipes/accelerate/fsdp.yaml"}
# Narrow heads: this suite has no vLLM, whose CPU kernels need 64.
HEAD_DIM = 32
# The 4-bit model's heads: bitsandbytes' CPU kernel, on a CPU with AVX512-BF16, repacks each NF4
# weight for inference in blocks of 64 input features (its quantisation blocksize) and fails on
# 7 heads of 32 (224 features); the shipped 7B's 3,584 are a multiple of 64, as 7 heads of 64 are.
QLORA_HEAD_DIM = 64
TIMEOUT_S = 900
# What must repeat exactly after a resume (losses, and the episodes behind them).
REPLAYED = ("loss", "reward", "completions/mean_length", "kl")
# Each training subprocess has TIMEOUT_S of its own, which fails a hang with the run's output; the
# first test to ask for `two_process_runs` waits on its five runs (setup.cfg's 300 s is per test).
pytestmark = pytest.mark.timeout(6 * TIMEOUT_S)


def uses_vllm(recipe: Path) -> bool:
    return bool(read_recipe(recipe).get("use_vllm"))


def train_argv(recipe: Path, reduced: Reduced, *flags: str, **keys: Any) -> list[str]:
    return [
        *(sys.executable, "-m", "research_r1.cli", "train", str(recipe.relative_to(ROOT))),
        *reduced.overrides(**keys),
        *flags,
        *CPU_FLAGS,
    ]


def run(argv: list[str]) -> subprocess.CompletedProcess:
    """A training run from the repository root (recipes name their files relative to it); a
    hang fails the test at the timeout."""
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return done


def run_until_killed(argv: list[str], checkpoint: Path) -> None:
    """Start a run and SIGKILL all its processes once `checkpoint` is complete (its last file,
    the trainer state, written), while the next step is under way."""
    process = subprocess.Popen(
        argv,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while not (checkpoint / "trainer_state.json").is_file():
            assert process.poll() is None, process.stderr.read()[-6000:]
            assert time.monotonic() < deadline, "no checkpoint before the timeout"
            time.sleep(0.2)
        time.sleep(2.0)  # the checkpoint's files are flushed; the next step has begun
        assert process.poll() is None, "the run ended before it could be killed"
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        process.stderr.close()


def log(output_dir: Path) -> dict[int, dict[str, float]]:
    state = json.loads((output_dir / "trainer_state.json").read_text())
    return {entry["step"]: entry for entry in state["log_history"] if "loss" in entry}


def replayed(history: dict[int, dict[str, float]], steps: range) -> list[float]:
    return [history[step][key] for step in steps for key in REPLAYED]


def pushed_adapter(hub, repo_id: str, path: str = "adapter_model.safetensors"):
    return load_file(hf_hub_download(repo_id, path, token=hub.token))


def assert_same(weights: dict[str, torch.Tensor], other: dict[str, torch.Tensor], atol=0.0):
    assert weights.keys() == other.keys()
    for name, tensor in weights.items():
        assert tensor.shape == other[name].shape, name
        torch.testing.assert_close(tensor, other[name], atol=atol, rtol=0.0 if not atol else 1e-4)


def test_every_gpu_recipe_is_run_by_one_of_the_two_suites():
    """vLLM recipes run as shipped in the vLLM suite (which globs them the same way); the others
    here. A new recipe lands in one of them without editing either."""
    assert {path.name for path in GPU_RECIPES} >= {
        "qwen7b_grpo.yaml",
        "qwen7b_qlora_grpo.yaml",
        "qwen3b_grpo.yaml",
        "research_qwen7b_grpo.yaml",
    }
    assert [path.name for path in GPU_RECIPES if not uses_vllm(path)] == ["qwen7b_qlora_grpo.yaml"]


@pytest.mark.parametrize(
    "recipe", [path for path in GPU_RECIPES if not uses_vllm(path)], ids=lambda path: path.stem
)
def test_the_recipe_trains_checkpoints_pushes_and_evaluates(recipe, hub, tmp_path):
    """As shipped but the reduced shape: checkpoints pushed as hub_strategy says, the final
    model pushed with its card, the recipe's eval after training."""
    reduced = reduce_recipe(recipe, tmp_path, head_dim=HEAD_DIM)
    repo_id = hub.new_repo_id(recipe.stem)
    keys = {"push_to_hub": True, "hub_model_id": repo_id, "hub_token": hub.token}
    run(train_argv(recipe, reduced, max_steps=2, **keys))

    output_dir = reduced.output_dir
    assert sorted(log(output_dir)) == [1, 2]
    files = HfApi(token=hub.token).list_repo_files(repo_id)
    shipped = read_recipe(recipe)
    if shipped.get("hub_strategy") == "checkpoint":
        assert "last-checkpoint/trainer_state.json" in files
    assert {"README.md", "adapter_model.safetensors", "adapter_config.json"} <= set(files)
    assert not any(name.startswith("checkpoint-") for name in files)
    assert_same(pushed_adapter(hub, repo_id), load_file(output_dir / "adapter_model.safetensors"))
    if shipped.get("eval_suite"):
        assert (output_dir / "eval").is_dir()
    card = (output_dir / "README.md").read_text()
    assert hub.token not in card and str(shipped["model_name_or_path"]) not in ("", None)


@pytest.mark.parametrize(
    "recipe",
    [path for path in GPU_RECIPES if read_recipe(path).get("load_in_4bit")],
    ids=lambda path: path.stem,
)
def test_qlora_is_4bit_for_real(recipe, tmp_path):
    """The recipe's model as training builds it (one step, in process): NF4 `Linear4bit` layers
    under LoRA, the quantised base frozen, non-zero gradients on the adapters only; the saved
    checkpoint reloads on a fresh 4-bit base and generates the same tokens."""
    import bitsandbytes as bnb
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import get_quantization_config

    from research_r1.training import train
    from research_r1.training.configs import parse_recipe
    from research_r1.training.launch import launch_args

    reduced = reduce_recipe(recipe, tmp_path, head_dim=QLORA_HEAD_DIM)
    cwd = Path.cwd()
    os.chdir(ROOT)
    try:  # the flags `research-r1 train` hands to the training process
        flags = [str(recipe), *reduced.overrides(max_steps=1), *CPU_FLAGS]
        argv = launch_args(flags).training_script_args
        trainer = train.train(argv)
    finally:
        os.chdir(cwd)

    model = trainer.model
    quantised = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    shipped = read_recipe(recipe)
    per_layer = len(shipped["lora_target_modules"])
    assert len(quantised) == per_layer * 2  # every targeted linear of both blocks
    assert all(layer.weight.quant_type == "nf4" for layer in quantised)
    assert all(not layer.weight.requires_grad for layer in quantised)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)

    tokenizer = AutoTokenizer.from_pretrained(reduced.model)
    ids = tokenizer("Where was the mentor of someone born?", return_tensors="pt").input_ids
    model.zero_grad()
    model(input_ids=ids, labels=ids).loss.backward()
    gradients = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert all(g is not None for g in gradients.values())
    assert sum(float(g.abs().sum()) for g in gradients.values()) > 0

    # A fresh 4-bit base with the saved adapter generates what the trained model generates.
    _, args, model_args = parse_recipe(argv)
    base = AutoModelForCausalLM.from_pretrained(
        reduced.model,
        quantization_config=get_quantization_config(model_args),
        **train.trainer_config(args, model_args, 1).model_init_kwargs,
    )
    reloaded = PeftModel.from_pretrained(base, reduced.output_dir / "checkpoint-1")
    settings = {"max_new_tokens": 12, "do_sample": False, "pad_token_id": tokenizer.pad_token_id}
    model.eval()
    with torch.no_grad():
        expected = model.generate(input_ids=ids, **settings)
        assert torch.equal(reloaded.generate(input_ids=ids, **settings), expected)


@pytest.fixture(scope="module")
def two_process_runs(hub, tmp_path_factory) -> dict[str, Any]:
    """The DDP recipe with two processes: an uninterrupted DDP run whose final push fails once;
    then, with the DDP config and the FSDP2 config, a run killed after its first checkpoint and
    resumed, pushing its checkpoints and final model."""
    recipe = ROOT / "recipes" / "qwen7b_grpo.yaml"
    reduced = reduce_recipe(recipe, tmp_path_factory.mktemp("reduced"), head_dim=HEAD_DIM)
    two = ["--num_processes", "2", "--use_vllm", "false"]
    runs: dict[str, Any] = {"reduced": reduced}

    reference = reduced.output_dir.with_name("reference")
    repo_id = hub.new_repo_id("ddp-reference")
    hub.inject_failure(f"/api/models/{repo_id}/commit/", status=503, times=1)
    keys = {"push_to_hub": True, "hub_model_id": repo_id, "hub_token": hub.token}
    run(
        train_argv(
            recipe, reduced, *two, max_steps=3, output_dir=reference, hub_strategy="end", **keys
        )
    )
    runs["reference"] = (reference, repo_id)

    for config, accelerate_config in ACCELERATE_CONFIGS.items():
        output_dir = reduced.output_dir.with_name(config)
        repo_id = hub.new_repo_id(f"{config}-resumed")
        argv = train_argv(
            recipe,
            reduced,
            *two,
            "--accelerate_config",
            accelerate_config,
            max_steps=3,
            output_dir=output_dir,
            push_to_hub=True,
            hub_model_id=repo_id,
            hub_token=hub.token,
        )
        run_until_killed(argv, output_dir / "checkpoint-1")
        assert not (output_dir / "trainer_state.json").exists()  # it did not finish
        run([*argv, "--resume_from_checkpoint"])
        runs[config] = (output_dir, repo_id)
    return runs


@pytest.mark.parametrize("config", ["ddp", "fsdp"])
def test_two_processes_resume_to_the_same_losses(two_process_runs, config):
    reference, _ = two_process_runs["reference"]
    output_dir, _ = two_process_runs[config]
    expected, resumed = log(reference), log(output_dir)
    assert sorted(resumed) == [1, 2, 3]
    assert any(resumed[step]["loss"] != 0 for step in resumed)  # something was learned
    if config == "ddp":
        assert replayed(resumed, range(1, 4)) == replayed(expected, range(1, 4))
    else:  # sharded: the same sums in another order
        assert replayed(resumed, range(1, 4)) == pytest.approx(
            replayed(expected, range(1, 4)), rel=1e-4, abs=1e-6
        )
    for rank in (0, 1):
        assert (output_dir / "checkpoint-1" / f"rng_state_{rank}.pth").is_file()


def test_the_final_push_survives_a_failed_upload_and_holds_the_unsharded_weights(
    two_process_runs, hub
):
    reference, reference_repo = two_process_runs["reference"]
    local = load_file(reference / "adapter_model.safetensors")
    assert_same(pushed_adapter(hub, reference_repo), local)  # the first commit failed
    _, ddp_repo = two_process_runs["ddp"]
    assert_same(pushed_adapter(hub, ddp_repo), local)
    fsdp_dir, fsdp_repo = two_process_runs["fsdp"]
    assert_same(pushed_adapter(hub, fsdp_repo), load_file(fsdp_dir / "adapter_model.safetensors"))
    assert_same(pushed_adapter(hub, fsdp_repo), local, atol=1e-6)  # gathered whole, not shards
    files = HfApi(token=hub.token).list_repo_files(fsdp_repo)
    assert "last-checkpoint/adapter_model.safetensors" in files
