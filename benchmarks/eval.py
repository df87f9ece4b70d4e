"""Where the time of `research-r1 eval` goes: generation, retrieval, and the harness's own work.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/eval.py [--questions 500]
        [--batch-sizes 1 16 64] [--methods agent rag direct] [--sft-steps 150] [--threads 1]
        [--gpu]

An evaluation should cost what the model and the search engine cost. Everything else the job
does (prompts, tokenisation, the rollout's parsing and bookkeeping, one trace line per question,
the metrics and result files) runs in Python on one core, gains nothing from an accelerator and
is paid again on every question set and checkpoint. Target: at batch 64, that rest is under 5%
of the run's wall time, for each method (`agent`, `rag`, `direct`).

Each (method, batch size) is one `research-r1 eval` command run in process through the CLI
(`research_r1.cli.main`), on a fresh output folder, with the package's own loaders wrapped:
`load_generator` and `load_retriever` return the real generator and retriever behind thin timing
proxies (time inside `Generator.generate` is generation, inside `Retriever.search` retrieval,
the retriever probe included), and `load_tokenizer`, `load_questions`, `run_dataset` and
`summarize` are timed as they run. A run's wall time is the whole command. Loading the
tokenizer, the model and the index (`load`) is reported apart and left out of the shares: it
is paid once per command, and for a real checkpoint and index it is the disk's and the model's
time, not the harness's. The shares are of the rest, the `run`:

- generation and retrieval, as above;
- rest = run - generation - retrieval, split into the batch loop (`run_dataset` less the
  generation and retrieval inside it: prompts, tokenisation, the rollout's parsing, traces and
  their lines written, the progress bar), reading the questions (`load_questions`), the metrics
  (`summarize`) and the other (the plan, the probe's own work, results.json and results.md).

Questions per second are questions over the run.

The world is the demo's (`research_r1.world`, written by `research_r1.demo.write_world`):
invented people, one fact per passage, BM25 in process, questions from its held-out split
(`--questions` of them: 500 by default, the size of the suites' fixed subsets, so batch 64 plays
eight batches; reading a set and scoring it cost the same whatever its size). The model is the
demo's tiny model (hidden 128, 2 layers) after a short cold start (`research_r1.demo.cold_start`,
`--sft-steps` instead of 700, one transcript per training question): it writes the protocol,
searches and stops as a trained agent does. A random model of the same size writes no tags, so
every turn would run to its budget and be invalid, the agent would never search, and the
retrieval column would measure nothing. The model's card holds the demo recipe's budgets (top-2,
2 searches, 24 new tokens per turn, 256 per episode) and template, as the demo's GRPO model
does, so `eval` runs the episodes the model was trained on. One untimed command (every method,
one batch of the largest size) warms the process first.

`--gpu` adds the same runs on vLLM with a random bf16 model shaped like Qwen2.5-0.5B (the
tiny model's tokenizer, so its vocabulary is the world's words rather than 151,936 ids), run
only when torch sees a GPU and vLLM imports; one vLLM engine serves every run. A random model
never searches and writes every turn to its budget: those rows time generation against the
harness, not an agent's searches.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

from research_r1 import kernels

kernels.pin()  # the demo's kernels, as it runs them: before anything computes with torch

import torch  # noqa: E402
from huggingface_hub import ModelCard, ModelCardData  # noqa: E402
from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM  # noqa: E402

from research_r1 import cli, demo, evaluation  # noqa: E402
from research_r1.evaluation import load, report  # noqa: E402
from research_r1.evaluation import run as playing  # noqa: E402
from research_r1.generation import Generation, Generator  # noqa: E402
from research_r1.protocol import load_template  # noqa: E402
from research_r1.retrieval import Passage, Retriever  # noqa: E402
from research_r1.retrieval.config import load_retriever  # noqa: E402
from research_r1.world import build_world  # noqa: E402

TARGET_BATCH = 64
TARGET_SHARE = 0.05  # of the run's wall time, for everything but generation and retrieval
CARD_BUDGETS = (
    "k",
    "max_turns",
    "max_new_tokens",
    "max_observation_tokens",
    "max_completion_tokens",
)
LOADS = ("tokenizer", "generator", "retriever")  # `load_*` stages: the model and index loads
# The stages timed, each in the module `eval` looks it up in.
STAGES = (
    (evaluation, ("load_tokenizer", "load_questions", "load_generator", "probe")),
    (load, ("load_retriever",)),
    (playing, ("run_dataset",)),
    (report, ("summarize",)),
)
# Qwen2.5-0.5B's shape (its config.json), for the --gpu rows.
QWEN25_05B = dict(
    hidden_size=896,
    intermediate_size=4864,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    rope_theta=1_000_000.0,
    tie_word_embeddings=True,
)


class Clock:
    """Seconds per label, summed over a run; `take` returns them and starts again."""

    def __init__(self) -> None:
        self.seconds: defaultdict[str, float] = defaultdict(float)

    @contextlib.contextmanager
    def __call__(self, label: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[label] += time.perf_counter() - start

    def timed(self, label: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            with self(label):
                return function(*args, **kwargs)

        return run

    def take(self) -> dict[str, float]:
        seconds, self.seconds = dict(self.seconds), defaultdict(float)
        return seconds


class TimedGenerator:
    """A generator whose `generate` calls count as generation."""

    def __init__(self, generator: Generator, clock: Clock) -> None:
        self.generator = generator
        self.clock = clock
        self.collective = getattr(generator, "collective", False)

    def generate(
        self, contexts: Sequence[Sequence[int]], max_new_tokens: Sequence[int], stop: Sequence[str]
    ) -> list[Generation]:
        with self.clock("generation"):
            return self.generator.generate(contexts, max_new_tokens, stop)


class TimedRetriever:
    """A retriever whose `search` calls count as retrieval."""

    def __init__(self, retriever: Retriever, clock: Clock) -> None:
        self.retriever = retriever
        self.clock = clock

    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        with self.clock("retrieval"):
            return self.retriever.search(queries, k)


@contextlib.contextmanager
def timed_eval(clock: Clock) -> Iterator[None]:
    """`evaluation`'s loaders and stages wrapped for `clock`; the generator and retriever behind
    timing proxies. A vLLM engine is built once and kept for every run (building one takes a
    minute and would be the same engine); a transformers model is loaded per run, as `eval`
    does, since its generator takes the run's batch size."""
    real = {name: getattr(module, name) for module, names in STAGES for name in names}
    engines: dict[str, TimedGenerator] = {}

    def load_generator(plan: evaluation.Plan, tokenizer: Any) -> TimedGenerator:
        if plan.backend == "vllm" and plan.model in engines:
            return engines[plan.model]
        generator = TimedGenerator(real["load_generator"](plan, tokenizer), clock)
        if plan.backend == "vllm":
            engines[plan.model] = generator
        return generator

    def retriever(config: Any) -> TimedRetriever:
        return TimedRetriever(real["load_retriever"](config), clock)

    wrapped = {name: clock.timed(name, function) for name, function in real.items()}
    wrapped["load_generator"] = clock.timed("load_generator", load_generator)
    wrapped["load_retriever"] = clock.timed("load_retriever", retriever)
    with contextlib.ExitStack() as patched:
        for module, names in STAGES:
            patched.enter_context(
                mock.patch.multiple(module, **{name: wrapped[name] for name in names})
            )
        yield


@dataclass(frozen=True)
class Run:
    """One `research-r1 eval` command: its wall time, the clock's labels and its results."""

    method: str
    backend: str
    batch_size: int
    questions: int
    wall: float
    seconds: dict[str, float]
    results: dict[str, Any]

    @property
    def load(self) -> float:
        """Loading the tokenizer, the model and the index."""
        return sum(self.seconds.get(f"load_{part}", 0.0) for part in LOADS)

    @property
    def run(self) -> float:
        return self.wall - self.load

    @property
    def generation(self) -> float:
        return self.seconds.get("generation", 0.0)

    @property
    def retrieval(self) -> float:
        return self.seconds.get("retrieval", 0.0)

    @property
    def rest(self) -> float:
        return self.run - self.generation - self.retrieval

    @property
    def parts(self) -> dict[str, float]:
        """The rest, split: the batch loop's own work, reading questions, metrics, the other.
        The probe's time is all its search, which is outside the loop."""
        outside = self.seconds.get("probe", 0.0)
        loop = self.seconds.get("run_dataset", 0.0) - self.generation - self.retrieval + outside
        parts = {
            "batch loop": loop,
            "questions": self.seconds.get("load_questions", 0.0),
            "metrics": self.seconds.get("summarize", 0.0),
        }
        return parts | {"other": self.rest - sum(parts.values())}

    @property
    def passed(self) -> bool:
        return self.rest / self.run < TARGET_SHARE


# ---------------------------------------------------------------------------------------------
# The world, the models, the commands


@dataclass(frozen=True)
class Setup:
    """What every command reads: a model folder, the QA file and the retriever config."""

    model: Path
    questions: Path
    retriever: Path


def build_setup(folder: Path, args: argparse.Namespace) -> Setup:
    """The demo's world (corpus, BM25 index, template, `--questions` held-out questions) and its
    tiny model after a short cold start, with a card that holds the demo recipe's budgets."""
    world = build_world(args.seed, num_test_questions=args.questions)
    paths = demo.write_world(world, folder)
    template = load_template(paths["template"])
    config = demo.rollout_config()
    sft = dataclasses.replace(demo.Settings(), sft_steps=args.sft_steps, sft_variants=1)
    retriever = load_retriever(paths["retriever"])
    model = demo.cold_start(world, folder, retriever, template, config, sft, args.seed)
    # What training writes into a model card and `eval` reads back: template and budgets.
    budgets = config.model_dump(include=set(CARD_BUDGETS))
    metadata = ModelCardData(research_r1={"template": template.as_mapping(), **budgets})
    card = ModelCard(f"---\n{metadata.to_yaml()}\n---\n")
    card.save(model / "README.md")
    return Setup(model, folder / "questions" / "test.jsonl", paths["retriever"])


def qwen_shaped(setup: Setup, folder: Path) -> Setup:
    """A random bf16 model with Qwen2.5-0.5B's shape, the tiny model's tokenizer and card."""
    tokenizer = AutoTokenizer.from_pretrained(setup.model)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        max_position_embeddings=4096,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **QWEN25_05B,
    )
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).to(torch.bfloat16).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "README.md").write_text((setup.model / "README.md").read_text())
    return dataclasses.replace(setup, model=folder)


def gpu_skipped() -> str | None:
    """Why the --gpu rows cannot run here, or None when they can."""
    if not torch.cuda.is_available():
        return "torch sees no GPU"
    try:
        import vllm  # noqa: F401  (only to see whether it imports)
    except ImportError as error:
        return f"vLLM does not import ({error})"
    return None


def play(
    clock: Clock, setup: Setup, methods: Sequence[str], batch_size: int, backend: str, out: Path
) -> dict[str, Any]:
    """One `research-r1 eval` command in process; its clock readings and wall time, and each
    method's results.json. What it prints goes nowhere (its progress bars still show)."""
    argv = [
        *("eval", str(setup.model), "--datasets", f"world={setup.questions}"),
        *("--retriever", str(setup.retriever), "--method", ",".join(methods)),
        *("--batch-size", str(batch_size), "--backend", backend, "--output_dir", str(out)),
    ]
    clock.take()
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        code = cli.main(argv)
    wall = time.perf_counter() - start
    if code:
        sys.exit(f"research-r1 {' '.join(argv)}: exit status {code}")
    results = {m: json.loads((out / m / "results.json").read_text()) for m in methods}
    return {"wall": wall, "seconds": clock.take(), "results": results}


def measure(
    clock: Clock, setup: Setup, args: argparse.Namespace, backend: str, out: Path
) -> list[Run]:
    """An untimed warm-up command (every method, one batch of the largest size), then one
    command per (method, batch size)."""
    largest = max(args.batch_sizes)
    out.mkdir(parents=True)
    warm = dataclasses.replace(setup, questions=out / "warm-up.jsonl")
    lines = setup.questions.read_text().splitlines(keepends=True)[:largest]
    warm.questions.write_text("".join(lines))
    play(clock, warm, args.methods, largest, backend, out / "warm-up")
    runs = []
    for method in args.methods:
        for batch_size in args.batch_sizes:
            played = play(
                clock, setup, [method], batch_size, backend, out / f"{method}-{batch_size}"
            )
            runs.append(
                Run(
                    method=method,
                    backend=backend,
                    batch_size=batch_size,
                    questions=args.questions,
                    wall=played["wall"],
                    seconds=played["seconds"],
                    results=played["results"][method]["results"]["world"],
                )
            )
    return runs


# ---------------------------------------------------------------------------------------------
# Report


def print_table(runs: Sequence[Run], args: argparse.Namespace, device: str) -> None:
    print(
        f"\n`research-r1 eval` on {args.questions} questions of the demo world, one command per "
        f"row after a warm-up; {args.threads} torch threads, {device}. Shares are of the run "
        "(wall time less loading tokenizer, model and index)."
    )
    print(
        "| method | backend | batch | q/s | run s | generation | retrieval | rest | rest ms/q "
        "| rest: batch loop | rest: questions | rest: metrics | rest: other | load s "
        "| searches / q | EM | target |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for run in runs:
        share = {name: f"{seconds / run.run:.1%}" for name, seconds in run.parts.items()}
        judged = "PASS" if run.passed else "FAIL"
        print(
            f"| {run.method} | {run.backend} | {run.batch_size} "
            f"| {run.questions / run.run:.1f} | {run.run:.2f} "
            f"| {run.generation / run.run:.1%} | {run.retrieval / run.run:.1%} "
            f"| {run.rest / run.run:.1%} | {1000 * run.rest / run.questions:.2f} "
            f"| {share['batch loop']} | {share['questions']} "
            f"| {share['metrics']} | {share['other']} | {run.load:.2f} "
            f"| {run.results['searches']:.2f} | {run.results['em']:.3f} "
            f"| {judged if run.batch_size == TARGET_BATCH else ''} |"
        )
    judged_runs = [run for run in runs if run.batch_size == TARGET_BATCH]
    if not judged_runs:
        print(f"\nTarget not judged: batch {TARGET_BATCH} was not run.")
    for run in judged_runs:
        print(
            f"\n{run.method} ({run.backend}): everything but generation and retrieval is "
            f"{run.rest / run.run:.1%} of the run at batch {TARGET_BATCH} (target: under "
            f"{TARGET_SHARE:.0%}): {'PASS' if run.passed else 'FAIL'}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--questions", type=int, default=500, help="held-out questions per run (at most 600)"
    )
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16, TARGET_BATCH])
    parser.add_argument(
        "--methods", nargs="+", choices=evaluation.METHODS, default=list(evaluation.METHODS)
    )
    parser.add_argument(
        "--sft-steps", type=int, default=150, help="cold-start steps of the tiny model"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the world and the model")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the demo's: 1)")
    parser.add_argument(
        "--gpu", action="store_true", help="add vLLM rows with a Qwen2.5-0.5B-shaped model"
    )
    args = parser.parse_args()
    if not 1 <= args.questions <= 600 or min(args.batch_sizes) < 1 or args.sft_steps < 1:
        parser.error("--questions must be 1-600; --batch-sizes and --sft-steps at least 1")
    # The demo's pinned kernels (the CPU still moves its numbers: demo.MEASURED).
    in_force = kernels.in_force()
    torch.set_num_threads(args.threads)
    clock = Clock()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        setup = build_setup(folder / "world", args)
        with timed_eval(clock):
            runs = measure(clock, setup, args, "transformers", folder / "transformers")
            skipped = gpu_skipped() if args.gpu else None
            if args.gpu and skipped is None:
                qwen = qwen_shaped(setup, folder / "qwen2.5-0.5b-shaped")
                runs += measure(clock, qwen, args, "vllm", folder / "vllm")
    print_table(runs, args, f"transformers on {device}, CPU kernels {in_force['aten']}")
    if skipped is not None:
        print(f"\nGPU rows skipped: {skipped}.")


if __name__ == "__main__":
    main()
