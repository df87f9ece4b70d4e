"""Does every GPU recipe train on a GPU? First at reduced shape, then at its real shapes.

    python3 benchmarks/gpu_check.py [--budget 450] [--recipes qwen7b_grpo ...] [--phases 1 2]
        [--results benchmarks/results]

Never run yet: no GPU has been lent to this project so far.

The GPU recipes are every `recipes/*.yaml` without `use_cpu: true`. Each run is
`research-r1 train RECIPE --num_processes 1 --key value ...` (one GPU, one process; the recipe's
accelerate config otherwise as shipped), started from the repository root, whose files the
recipes name.

- Phase 1, reduced shape: `research_r1.training.reduced.reduce_recipe` builds the recipe's own
  architecture at 2 layers of 64-wide heads (random weights, a tiny tokenizer), the demo world's
  data and an in-process BM25 retriever; 2 steps with its overrides. The recipe's whole path runs:
  vLLM colocate or 4-bit loading, LoRA, checkpoints, the eval after training.
- Phase 2, real shapes: the recipe's full architecture (`recipes/architectures/ORG/NAME`) with
  random bf16 weights, built on the GPU in a child process (so this process never holds GPU
  memory) and saved with safetensors, with phase 1's tokenizer, data and retriever (its ids are
  all below the real vocabulary size). One step with the recipe's own batch and lengths; only
  gradient_accumulation_steps is cut, to num_generations, and the eval after training is left
  out (the recipe is copied without its eval_* keys: at real lengths it would take minutes). The
  weights are bent (`confine`) so the model never samples an id its tokenizer lacks, nor, where
  the head is untied, EOS or a tag: every turn runs to max_new_tokens_per_turn, so episodes are
  as long as the turn budget lets them be. A tied head (Qwen2.5-3B) samples EOS and tags as drawn.
  Beside the measured peak: `research_r1.training.memory`'s estimate for the same command and GPU,
  the total `research-r1 train ... --dry-run` prints.

Measured per run: exit code; wall time of the command (start-up and model loading included);
the last step's seconds and tokens per second (OUTPUT_DIR/trainer_state.json: `step_time`, and
the step's share of the cumulative `num_tokens`; the first step also warms up); the mean
completion length; the peak GPU memory in use, from nvidia-smi every 0.5 s (every process on the
GPU, CUDA contexts included: training runs in child processes, whose torch counters this process
cannot read).

Time: the whole script is held to `--budget` seconds (default 450, under 8 minutes): a run may
use what is left of it (a phase-1 run at most 240 s), and a recipe whose turn comes with too
little left is skipped, as its row says. A recipe needing a package that is not installed
(vllm for vLLM generation, bitsandbytes for 4-bit weights) is skipped too, nothing installed.

Writes `RESULTS/gpu_<GPU name>.md` (e.g. `gpu_nvidia-h100-80gb-hbm3.md`): machine, date,
versions, both tables and the last lines of each failed run's log; prints the tables. Exits 1
when a run failed (after writing), and stops before anything runs, writing nothing, with a
one-line message, where torch sees no CUDA GPU or a package training imports is missing.

On the lent device machine (one H100 or H200, no network), through the device tool's `run`:
the main `.venv` cannot travel (2.2 GB of CPU-only torch for Python 3.11, where 64 MiB may), so
the image's `python3` runs it. It has torch with CUDA, transformers, accelerate and peft, but, as
listed in November 2026, a dozen of setup.cfg's install_requires were missing (trl, datasets,
bm25s, PyStemmer, evaluate, faiss-cpu, httpx2, pydantic, ...; this script's stop names them all),
and vllm and bitsandbytes. They travel as wheels in the ignored `.whl` folder, within the 64 MiB
(vllm's wheels are far larger: its recipes are skipped there). Not tried yet:

    carry: [".whl"]   timeout_s: 540   command:
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 \
        && python3 benchmarks/gpu_check.py --results $OUT

and the report comes back from $OUT; copy it into benchmarks/results/.
"""

from __future__ import annotations

import argparse
import configparser
import contextlib
import importlib
import json
import multiprocessing
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from importlib import metadata
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:  # research_r1 and torch are imported where used, so that a machine without
    # training's packages gets main()'s one-line message instead of an ImportError
    import torch

    from research_r1.training.reduced import Reduced

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
RESULTS = ROOT / "benchmarks" / "results"
ONE_GPU = ("--num_processes", "1")
PHASE1_STEPS, PHASE2_STEPS = 2, 1
BUDGET_S = 450.0
PHASE1_LIMIT_S = 240.0  # one reduced run: vLLM's start-up and compile included
PHASE1_MIN_S = 60.0  # left in the budget to start a phase-1 run
PHASE2_MIN_S = 150.0  # to start a phase-2 recipe: its model build, load and one full step
MARGIN_S = 10.0  # kept back from the last run for writing the report
POLL_S = 0.5
SUPPRESS = 30.0  # logit drop for the ids `confine` bans: each e^-30 as likely as an allowed one
EVAL_KEYS = ("eval_suite", "eval_limit", "eval_datasets", "eval_retriever")
# The packages a recipe needs beyond training's own, by the recipe key that asks for them.
OPTIONAL = {"use_vllm": "vllm", "load_in_4bit": "bitsandbytes"}
VERSIONS = ("torch", "transformers", "trl", "vllm", "bitsandbytes")
# What training imports (research_r1's own modules, after setup.cfg's install_requires).
TRAINING_MODULES = (
    "research_r1.training.reduced",
    "research_r1.training.train",
    "research_r1.training.dry_run",
)
LOG_TAIL_LINES = 30
GiB = 1024**3


@dataclass(frozen=True)
class Machine:
    """The GPU as nvidia-smi names it, and this machine's CPU count."""

    gpu: str
    memory_mib: int
    driver: str
    cpus: int

    @property
    def memory_bytes(self) -> int:
        return self.memory_mib * 2**20

    @property
    def kind(self) -> str:
        """The GPU's name as a file name: `NVIDIA H100 80GB HBM3` -> `nvidia-h100-80gb-hbm3`."""
        return re.sub(r"[^a-z0-9]+", "-", self.gpu.lower()).strip("-")


@dataclass(frozen=True)
class Stats:
    """What a run's trainer_state.json says of its last step."""

    step_s: float | None = None
    tokens_per_s: float | None = None
    completion_tokens: float | None = None


@dataclass(frozen=True)
class Run:
    """One row of a table: a recipe's run in one phase, or why it did not run."""

    recipe: str
    result: str  # "ok", "FAIL (...)" or "skipped: ..."
    wall_s: float | None = None
    stats: Stats = Stats()
    peak_gib: float | None = None
    build_s: float | None = None  # phase 2: building and saving the random model; None: reused
    estimate_gib: float | None = None  # phase 2: research_r1.training.memory's total
    log_tail: str = ""

    @property
    def failed(self) -> bool:
        return self.result.startswith("FAIL")


# ---------------------------------------------------------------------------------------------
# Recipes, packages, commands


def gpu_recipes(names: Sequence[str] | None = None, folder: Path = RECIPES) -> list[Path]:
    """Every recipe in `folder` not marked `use_cpu: true`, or those of them named."""
    found = [
        path
        for path in sorted(folder.glob("*.yaml"))
        if not (yaml.safe_load(path.read_text()) or {}).get("use_cpu")
    ]
    if not names:
        return found
    by_name = {path.stem: path for path in found}
    unknown = [name for name in names if name not in by_name]
    if unknown:
        raise SystemExit(f"gpu_check: --recipes: no GPU recipe {unknown} (known: {list(by_name)})")
    return [by_name[name] for name in names]


def missing_packages(recipe: Path, installed: Callable[[str], Any] = find_spec) -> list[str]:
    """The packages `recipe` asks for (vllm, bitsandbytes) that `installed` cannot find."""
    keys = yaml.safe_load(recipe.read_text()) or {}
    wanted = [package for key, package in OPTIONAL.items() if keys.get(key)]
    return [package for package in wanted if installed(package) is None]


def missing_requirements(setup_cfg: Path = ROOT / "setup.cfg") -> list[str]:
    """setup.cfg's install_requires that are not installed, all named at once."""
    from packaging.requirements import Requirement

    config = configparser.ConfigParser()
    config.read(setup_cfg)
    lines = config["options"]["install_requires"].strip().splitlines()
    missing = []
    for line in lines:
        name = Requirement(line).name
        try:
            metadata.version(name)
        except metadata.PackageNotFoundError:
            missing.append(name)
    return missing


def prerequisites() -> str | None:
    """Why nothing can run here (a package training imports, a CUDA GPU, nvidia-smi), or None.
    An import that fails names one module; setup.cfg's requirements not installed are named
    with it, so that one try lists what to bring."""
    for module in TRAINING_MODULES:
        try:
            importlib.import_module(module)
        except ImportError as error:
            text = f"needs the packages training imports ({module}: {error})"
            missing = missing_requirements()
            if missing:
                text += f"; of setup.cfg's install_requires, not installed: {', '.join(missing)}"
            return text
    import torch

    if not torch.cuda.is_available():
        return f"needs a CUDA GPU, and torch {torch.__version__} sees none"
    if shutil.which("nvidia-smi") is None:
        return "needs nvidia-smi, which reads the GPU's memory while runs train"
    return None


def train_command(recipe: Path, overrides: Sequence[str]) -> list[str]:
    """`research-r1 train RECIPE --num_processes 1 ...`, by this interpreter."""
    return [sys.executable, "-m", "research_r1.cli", "train", str(recipe), *ONE_GPU, *overrides]


def phase1_command(reduced: Reduced) -> list[str]:
    return train_command(reduced.recipe, reduced.overrides(max_steps=PHASE1_STEPS))


def phase2_command(full: Reduced, shipped: dict[str, Any]) -> list[str]:
    """The reduced overrides pointed at the full model, with the recipe's own values of the keys
    reduction shrinks (lengths, batches), and no checkpoints or reports."""
    from research_r1.training.reduced import SHAPE

    own = {key: shipped[key] for key in SHAPE if key in shipped}
    keys = own | {"save_strategy": "no", "report_to": "none"}
    return train_command(full.recipe, full.overrides(max_steps=PHASE2_STEPS, **keys))


def without_eval(recipe: Path, out: Path) -> Path:
    """A copy of `recipe` without its eval after training."""
    keys = yaml.safe_load(recipe.read_text()) or {}
    out.write_text(yaml.safe_dump({k: v for k, v in keys.items() if k not in EVAL_KEYS}))
    return out


def memory_estimate(argv: Sequence[str], gpu_bytes: int) -> int:
    """research_r1.training.memory's total for `RECIPE --key value ...` (what --dry-run prints),
    read from the folder of model_name_or_path. Run from the repository root."""
    from research_r1.training.dry_run import key_sources, model_config, parsed_as_on_gpu
    from research_r1.training.launch import parse_launch
    from research_r1.training.memory import Architecture, distribution, estimate, setup_for

    with parsed_as_on_gpu():
        (_, args, model_args), launch = parse_launch(list(argv))
    config, _ = model_config(model_args, args, hub=False)
    arch = Architecture.from_config(config)
    accelerate = yaml.safe_load(Path(launch.config_file).read_text()) if launch.config_file else {}
    processes, sharding = distribution(accelerate, launch.num_processes)
    batch_set = "generation_batch_size" in key_sources(list(argv))
    setup = setup_for(args, model_args, arch, processes, sharding, batch_set)
    return estimate(arch, setup, gpu_bytes).total


# ---------------------------------------------------------------------------------------------
# Measuring


def parse_gpu(text: str, cpus: int) -> Machine:
    """nvidia-smi's `name,memory.total,driver_version` (csv, no header, no units), first GPU."""
    name, memory, driver = (field.strip() for field in text.strip().splitlines()[0].split(","))
    return Machine(gpu=name, memory_mib=int(memory), driver=driver, cpus=cpus)


def read_machine() -> Machine:
    query = ["--query-gpu=name,memory.total,driver_version", "--format=csv,noheader,nounits"]
    text = subprocess.run(["nvidia-smi", *query], capture_output=True, text=True, check=True)
    return parse_gpu(text.stdout, os.cpu_count() or 0)


def memory_used_mib() -> int:
    """GPU 0's memory in use, every process's."""
    query = ["-i", "0", "--query-gpu=memory.used", "--format=csv,noheader,nounits"]
    return int(subprocess.run(["nvidia-smi", *query], capture_output=True, text=True).stdout)


class PeakMemory:
    """The most GPU memory in use while the block runs, polled with nvidia-smi."""

    def __init__(self, interval: float = POLL_S) -> None:
        self.interval = interval
        self.peak_mib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while True:
            with contextlib.suppress(ValueError):  # nvidia-smi briefly unreadable: poll again
                self.peak_mib = max(self.peak_mib, memory_used_mib())
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_command(argv: Sequence[str], log: Path, timeout: float) -> tuple[int | None, float]:
    """Run `argv` from the repository root, its output into `log`; its exit code (None when
    killed at `timeout`, with every process it started) and wall seconds."""
    env = os.environ | {"PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    with log.open("w") as out:
        process = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            code: int | None = process.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # accelerate's workers and vLLM's too
            process.wait()
            code = None
    return code, time.perf_counter() - start


def read_stats(output_dir: Path) -> Stats:
    """The last step's seconds and tokens per second, and the mean completion length over the
    steps, from OUTPUT_DIR/trainer_state.json; empty when the run wrote none."""
    path = output_dir / "trainer_state.json"
    if not path.is_file():
        return Stats()
    steps = [row for row in json.loads(path.read_text())["log_history"] if "step_time" in row]
    if not steps:
        return Stats()
    last = steps[-1]
    before = steps[-2]["num_tokens"] if len(steps) > 1 else 0.0
    lengths = [row["completions/mean_length"] for row in steps if "completions/mean_length" in row]
    return Stats(
        step_s=last["step_time"],
        tokens_per_s=(last["num_tokens"] - before) / last["step_time"],
        completion_tokens=statistics.mean(lengths) if lengths else None,
    )


def measure(recipe: Path, argv: Sequence[str], output_dir: Path, timeout: float) -> Run:
    """Run one training command and read what it measured."""
    log = output_dir.parent / f"{output_dir.name}.log"
    with PeakMemory() as peak:
        code, wall = run_command(argv, log, timeout)
    if code == 0:
        result = "ok"
    elif code is None:
        result = f"FAIL (killed at the time limit, {timeout:.0f} s)"
    else:
        result = f"FAIL (exit {code})"
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:])
    return Run(
        recipe=recipe.stem,
        result=result,
        wall_s=wall,
        stats=read_stats(output_dir),
        peak_gib=peak.peak_mib * 2**20 / GiB,
        log_tail=tail if result != "ok" else "",
    )


# ---------------------------------------------------------------------------------------------
# The full-size random model


def confine(model: torch.nn.Module, allowed: int, banned: Sequence[int], push: float) -> None:
    """Make a random model sample only ids below `allowed` (its tokenizer's), and never `banned`
    where its head is untied, in the weights so vLLM sees it too; as `reduced.steer` does:
    dimension 0 of every embedding becomes a constant no block writes to, which the head's rows
    of those ids read with a large negative weight. A tied head is the embedding, where only
    rows no input uses (ids past the tokenizer) may change."""
    import torch

    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    rows = list(range(allowed, head.shape[0]))
    if head.data_ptr() != embed.data_ptr():
        rows += list(banned)
    with torch.no_grad():
        embed[:, 0] = 1.0
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight[0].zero_()
            layer.mlp.down_proj.weight[0].zero_()
        text = torch.randint(0, allowed, (4, 64), device=embed.device)
        feature = model.model(text).last_hidden_state[..., 0].float().mean()
        head[torch.tensor(rows, device=head.device), 0] = -push / feature.item()


def build_full_model(architecture: str, tokenizer_dir: str, out: str, device: str = "cuda") -> None:
    """The architecture at full size, random bf16 weights built on `device`, `confine`d to the
    tokenizer's ids with EOS and its added tokens (tags, roles) banned; saved with the tokenizer.
    Runs in a child process."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = AutoConfig.from_pretrained(architecture)
    config.bos_token_id = None
    config.eos_token_id, config.pad_token_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    confine(model, len(tokenizer), sorted(tokenizer.added_tokens_decoder), SUPPRESS)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def build_in_child(architecture: Path, tokenizer: Path, out: Path, timeout: float) -> str | None:
    """`build_full_model` in a spawned process, which frees the GPU when it ends; why it
    failed, or None."""
    process = multiprocessing.get_context("spawn").Process(
        target=build_full_model, args=(str(architecture), str(tokenizer), str(out))
    )
    process.start()
    process.join(max(1.0, timeout))
    if process.is_alive():
        process.kill()
        process.join()
        return f"killed at the time limit, {timeout:.0f} s"
    return None if process.exitcode == 0 else f"exit {process.exitcode}"


# ---------------------------------------------------------------------------------------------
# The phases


def phase1(reduced: Reduced, deadline: float) -> Run:
    left = deadline - time.monotonic()
    if left < PHASE1_MIN_S:
        return Run(reduced.recipe.stem, f"skipped: time budget ({left:.0f} s left)")
    timeout = min(PHASE1_LIMIT_S, left - MARGIN_S)
    return measure(reduced.recipe, phase1_command(reduced), reduced.output_dir, timeout)


def phase2(
    reduced: Reduced, machine: Machine, deadline: float, models: dict[tuple[str, str], Path]
) -> Run:
    """One step at the recipe's real shapes; the random model is built once per architecture
    and template (the tokenizer's)."""
    from research_r1.training.reduced import ARCHITECTURES

    name = reduced.recipe.stem
    left = deadline - time.monotonic()
    if left < PHASE2_MIN_S:
        return Run(name, f"skipped: time budget ({left:.0f} s left)")
    shipped = yaml.safe_load(reduced.recipe.read_text())
    key = (shipped["model_name_or_path"], shipped.get("template", "search_r1"))
    build_s = None
    if key not in models:
        out = reduced.output_dir.parent / "full_model"
        start = time.perf_counter()
        error = build_in_child(ARCHITECTURES / key[0], reduced.model, out, left - MARGIN_S)
        build_s = time.perf_counter() - start
        if error:
            return Run(name, f"FAIL (model build: {error})", build_s=build_s)
        models[key] = out
    full = replace(
        reduced,
        recipe=without_eval(reduced.recipe, reduced.output_dir.parent / "recipe_no_eval.yaml"),
        shipped={key: value for key, value in shipped.items() if key not in EVAL_KEYS},
        model=models[key],
        output_dir=reduced.output_dir.parent / "full_run",
    )
    argv = phase2_command(full, shipped)
    estimate = memory_estimate(argv[4:], machine.memory_bytes)
    run = measure(reduced.recipe, argv, full.output_dir, deadline - time.monotonic() - MARGIN_S)
    return replace(run, build_s=build_s, estimate_gib=estimate / GiB)


# ---------------------------------------------------------------------------------------------
# The report

PHASE1_COLUMNS = ("recipe", "result", "wall s", "last step s", "tokens/s", "peak GiB")
PHASE2_COLUMNS = (
    *("recipe", "result", "model build s", "wall s", "last step s", "tokens/s"),
    *("completion tokens", "peak GiB", "estimate GiB"),
)


TITLES = {
    1: f"Phase 1: reduced shape (2 layers, random weights), {PHASE1_STEPS} steps",
    2: f"Phase 2: real shapes (random bf16 weights), {PHASE2_STEPS} step",
}
NOTE = (
    "wall s: the whole command (start-up, loading, vLLM's start; in phase 1 the eval after "
    "training too); last step s and tokens/s: trainer_state.json's last step (with one step, "
    "it warms up too); peak GiB: the most memory nvidia-smi showed in use on the GPU, CUDA "
    "contexts included; estimate GiB: research_r1.training.memory's total for the same command "
    "on this "
    "GPU, which leaves out CUDA contexts and fragmentation (often 1-2 GiB); model build s: '-' "
    "where an earlier row's model was reused."
)


def number(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(runs: Sequence[Run], full: bool) -> str:
    """A phase's markdown table (`full`: phase 2's columns)."""
    columns = PHASE2_COLUMNS if full else PHASE1_COLUMNS
    lines = [f"| {' | '.join(columns)} |", f"|{'---|' * len(columns)}"]
    for run in runs:
        cells = [run.recipe, run.result]
        cells += [number(run.build_s, 1)] if full else []
        cells += [number(run.wall_s, 1), number(run.stats.step_s, 2)]
        cells += [number(run.stats.tokens_per_s, 0)]
        cells += [number(run.stats.completion_tokens, 0)] if full else []
        cells += [number(run.peak_gib, 2)]
        cells += [number(run.estimate_gib, 2)] if full else []
        lines.append(f"| {' | '.join(cells)} |")
    return "\n".join(lines)


def versions() -> str:
    found = []
    for name in VERSIONS:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(f"{name} not installed")
    return ", ".join(found)


def report(machine: Machine, when: str, seconds: float, runs: dict[int, list[Run]]) -> str:
    """The results file: the machine, date and versions, each phase's table, the failed runs'
    last log lines."""
    gpu = f"{machine.gpu}, {machine.memory_mib} MiB, driver {machine.driver}"
    lines = [
        f"# GPU check on {machine.gpu}",
        "",
        f"`benchmarks/gpu_check.py` on {when}, {seconds:.0f} s in all.",
        "",
        f"- machine: {gpu}; {machine.cpus} CPU cores",
        f"- versions: {versions()}",
    ]
    for phase, found in runs.items():
        lines += ["", f"## {TITLES[phase]}", "", table(found, full=phase == 2)]
    lines += ["", NOTE]
    for phase, found in runs.items():
        for run in found:
            if run.failed and run.log_tail:
                lines += ["", f"### Phase {phase}, {run.recipe}: {run.result}", "", "```text"]
                lines += [run.log_tail, "```"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--budget", type=float, default=BUDGET_S, help=f"seconds in all (default {BUDGET_S:.0f})"
    )
    parser.add_argument("--recipes", nargs="+", help="recipe names (default: every GPU recipe)")
    parser.add_argument(
        "--phases", nargs="+", type=int, choices=(1, 2), default=[1, 2], help="(default: 1 2)"
    )
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder for gpu_<GPU>.md")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    start = time.monotonic()
    args = parse_args(argv)
    recipes = gpu_recipes(args.recipes)
    blocked = {recipe: missing_packages(recipe) for recipe in recipes}
    problem = prerequisites()
    if problem:
        raise SystemExit(f"gpu_check: {problem}; nothing was run or written")
    from research_r1.training.reduced import reduce_recipe

    machine = read_machine()
    deadline = start + args.budget
    results = args.results.resolve()
    os.chdir(ROOT)  # where the recipes' relative paths (accelerate config, templates) resolve
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    runs: dict[int, dict[Path, Run]] = {phase: {} for phase in args.phases}
    models: dict[tuple[str, str], Path] = {}
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as work:
        built = {}
        for recipe in recipes:
            if blocked[recipe]:
                skipped = Run(recipe.stem, f"skipped: needs {', '.join(blocked[recipe])}")
                for found in runs.values():
                    found[recipe] = skipped
            else:
                built[recipe] = reduce_recipe(recipe, Path(work) / recipe.stem)
        for recipe, reduced in built.items():
            if 1 in runs:
                runs[1][recipe] = progress(1, phase1(reduced, deadline))
        for recipe, reduced in built.items():
            if 2 not in runs:
                break
            if recipe in runs.get(1, {}) and runs[1][recipe].failed:
                runs[2][recipe] = Run(recipe.stem, "skipped: phase 1 failed")
            else:
                runs[2][recipe] = progress(2, phase2(reduced, machine, deadline, models))
    ordered = {phase: [found[r] for r in recipes] for phase, found in runs.items()}
    text = report(machine, when, time.monotonic() - start, ordered)
    results.mkdir(parents=True, exist_ok=True)
    path = results / f"gpu_{machine.kind}.md"
    path.write_text(text)
    print(f"\n{text}\nwritten: {path}")
    return 1 if any(run.failed for found in runs.values() for run in found.values()) else 0


def progress(phase: int, run: Run) -> Run:
    print(f"phase {phase}, {run.recipe}: {run.result}", flush=True)
    return run


if __name__ == "__main__":
    sys.exit(main())
