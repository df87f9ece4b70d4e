"""`research-r1 demo`: proof, on a laptop CPU in minutes, that GRPO teaches a model to search.

Nothing is downloaded. The demo

1. builds a seeded synthetic world (`research_r1.world`): invented people, one fact per passage,
   single- and two-hop questions whose answers are only in the corpus, held-out people apart;
2. writes what a real run reads: the corpus and its BM25 index with a retriever config, the QA
   splits in prepare-data's layout, and a tiny model with its tokenizer built locally;
3. gives that model a short cold start: supervised fine-tuning on transcripts of a scripted agent
   that plays the real search episode (real rollout, real BM25) with flaws that depend on the
   question kind, so the policy knows the protocol but often skips or botches the search;
4. trains it with GRPO through `research_r1.training.train` and `recipes/tiny_cpu_grpo.yaml`, the
same code
   and recipe format as the GPU runs;
5. measures the held-out questions before and after (greedy episodes): exact match, searches per
   question and the share of well-formed transcripts, and writes a summary table, the reward
   curve and an EM chart to the output folder.

The tiny model's input embeddings are random and FROZEN (and tied to the output layer), so the
model cannot learn a representation of any one name: it can only learn to copy names from its
context, which works as well for held-out people it never saw in training. Each random vector
carries a shared direction for its word class (person, city, job), the least a pretrained model
knows about a word, so attention can find "the person in the question" early: with it, copying
appears after 200-300 SFT steps; without it, it had not appeared after 700. Weight decay in the
SFT keeps the model from preferring the names it was trained on when a copy is uncertain.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import random
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from datasets import Dataset
from huggingface_hub import ModelCard
from matplotlib.figure import Figure
from rich.console import Console
from rich.table import Table
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from research_r1 import outputs
from research_r1.data import prepare, write_split
from research_r1.errors import InputError
from research_r1.generation import TransformersGenerator
from research_r1.kernels import in_force
from research_r1.markdown import markdown_table
from research_r1.protocol import (
    FINAL_TURN_NOTICE,
    SEARCH_R1,
    Template,
    extract_answer,
    follows_format,
    load_template,
    render_prompt,
)
from research_r1.retrieval import Passage, Retriever
from research_r1.retrieval.bm25 import build_bm25_index
from research_r1.retrieval.config import load_retriever
from research_r1.retrieval.corpus import load_corpus
from research_r1.rewards import exact_match
from research_r1.rollout import RolloutConfig, encode_prompt, run_episodes, run_rollout
from research_r1.tiny import build_tiny_model
from research_r1.training.callbacks import plot_reward_curve
from research_r1.training.train import train
from research_r1.world import (
    FLAWS,
    JOBS,
    KINDS,
    TURNS,
    Question,
    ScriptedAgent,
    World,
    build_world,
    write_corpus,
    write_questions,
)

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "tiny_cpu_grpo.yaml"
# A model trained from scratch learns the protocol from the cold start, not from instructions,
# so the prompt is the question alone: an instruction would only cost compute at every step.
TEMPLATE = {
    "name": "demo",
    "protocol": "search_r1",
    "chat": False,
    "user": "Question: {question}\n",
}


@dataclass(frozen=True)
class Settings:
    """Sizes of one demo run; `SMOKE` shrinks everything to check the pipeline in seconds."""

    num_people: int = 480
    num_test_questions: int = 400
    hidden_size: int = 128
    num_layers: int = 2
    head_dim: int = 32
    embedding_std: float = 0.2
    class_weight: float = 0.5  # share of each frozen embedding that is its word class
    sft_variants: int = 4  # scripted transcripts per training question
    sft_steps: int = 700
    sft_batch_size: int = 32
    sft_lr: float = 2e-3
    sft_weight_decay: float = 0.1  # keeps the model from favouring names it trained on
    grpo_steps: int | None = None  # None: the recipe's max_steps
    eval_batch_size: int = 100
    threads: int = 1


SMOKE = Settings(
    num_people=24,
    num_test_questions=10,
    hidden_size=64,
    sft_variants=1,
    sft_steps=2,
    sft_batch_size=8,
    grpo_steps=2,
)


@dataclass
class Scores:
    """Greedy episodes on the held-out questions: overall and per question kind."""

    em: float
    searches: float
    valid_format: float
    by_kind: dict[str, dict[str, float]]


# ---------------------------------------------------------------------------------------------
# Artefacts a real run reads: corpus, index, retriever config, QA splits, template


def write_world(world: World, out: Path) -> dict[str, Path]:
    """Corpus, BM25 index, retriever config, template and prepare-data splits under `out`."""
    corpus = write_corpus(world, out / "corpus.jsonl")
    index = build_bm25_index(load_corpus(corpus), out / "bm25", corpus_uri=str(corpus))
    retriever = out / "retriever.yaml"
    retriever.write_text(
        yaml.safe_dump({"type": "bm25", "corpus": str(corpus), "index": str(index)})
    )
    template = out / "template.yaml"
    template.write_text(yaml.safe_dump(TEMPLATE, sort_keys=False, width=200))
    sources = {}
    for split, questions in (("train", world.train), ("test", world.test)):
        sources[split] = write_questions(questions, out / "questions" / f"{split}.jsonl")
        dataset, _ = prepare([f"world={sources[split]}"], split, load_template(template))
        write_split(with_kinds(dataset, questions, split), out / "data", split)
    return {
        "retriever": retriever,
        "template": template,
        "data": out / "data",
        "questions": sources["test"],
    }


def with_kinds(dataset: Dataset, questions: Sequence[Question], split: str) -> Dataset:
    """The split with each question's kind in a `kind` column, beside prepare-data's columns
    (whose ids are `world-{split}-{question id}`): what `skip_zero_std_by: kind` groups by."""
    kinds = {f"world-{split}-{q.id}": q.kind for q in questions}
    return dataset.add_column("kind", [kinds[row_id] for row_id in dataset["id"]])


def name_own_setting(model_dir: Path, paths: dict[str, Path]) -> None:
    """Add the demo's setting to the trained model's card (its `research_r1` metadata, beside
    the template and budgets training wrote): the retriever config and the held-out questions,
    as paths relative to the model folder, so `research-r1 eval` and `ask` on the folder need
    no other flag."""
    readme = model_dir / "README.md"
    card = ModelCard.load(readme)
    settings = dict(card.data.to_dict().get("research_r1") or {})
    settings["setting"] = "demo"
    settings["retriever"] = os.path.relpath(paths["retriever"], model_dir)
    settings["questions"] = {"demo": os.path.relpath(paths["questions"], model_dir)}
    card.data.research_r1 = settings
    card.save(readme)


# ---------------------------------------------------------------------------------------------
# The tiny model and its cold start


def vocabulary_texts(world: World, template: Template) -> list[str]:
    """Every text the model will read or write, so each word becomes one token."""
    texts = [render_prompt(template.prompt(q.question)) for q in world.train + world.test]
    texts += [SEARCH_R1.observation([Passage(p["id"], p["contents"], 0.0)]) for p in world.passages]
    return [*texts, SEARCH_R1.invalid_notice, FINAL_TURN_NOTICE, *TURNS]


def freeze_embeddings(model: Any, tokenizer: Any, world: World, settings: Settings, seed: int):
    """Random input embeddings (tied to the output layer) with a shared direction per word class,
    then frozen: the model can copy a name but never learn one."""
    generator = torch.Generator().manual_seed(seed)
    weight = model.get_input_embeddings().weight
    width = weight.shape[1]
    with torch.no_grad():
        weight.normal_(0.0, settings.embedding_std, generator=generator)
        for words in (sorted(world.people), world.cities, JOBS):
            ids = sorted({i for word in words for i in tokenizer.encode(" " + word)})
            direction = torch.randn(width, generator=generator)
            direction *= settings.embedding_std * width**0.5 / direction.norm()
            share = settings.class_weight
            weight[ids] = (1 - share**2) ** 0.5 * weight[ids] + share * direction
    weight.requires_grad_(False)


def scripted_transcripts(
    world: World,
    tokenizer: Any,
    retriever: Retriever,
    template: Template,
    config: RolloutConfig,
    variants: int,
    seed: int,
) -> list[tuple[list[int], list[int]]]:
    """(ids, labels) of the scripted agent's episodes on the training questions: `variants`
    episodes per question, each with a behaviour drawn from `FLAWS`. Labels are -100 on the
    prompt and on every inserted id (observations, notices), as the GRPO loss masks them."""
    rng = random.Random(seed)
    examples = []
    for variant in range(variants):
        agent = ScriptedAgent(world, tokenizer, seed=seed * 1000 + variant)
        prompts = []
        for question in world.train:
            ids = encode_prompt(template.prompt(question.question), tokenizer)
            flaws = FLAWS[question.kind]
            agent.plan(ids, question, rng.choices(list(flaws), weights=list(flaws.values()))[0])
            prompts.append(ids)
        episodes = run_rollout(
            prompts,
            generator=agent,
            tokenizer=tokenizer,
            retriever=retriever,
            protocol=template.protocol,
            config=config,
        )
        for episode in episodes:
            labels = [-100] * len(episode.prompt_ids) + [
                token if sampled else -100
                for token, sampled in zip(episode.completion_ids, episode.env_mask, strict=True)
            ]
            examples.append((episode.prompt_ids + episode.completion_ids, labels))
    return examples


def supervised_fine_tune(
    model: Any,
    examples: Sequence[tuple[list[int], list[int]]],
    pad_id: int,
    settings: Settings,
    seed: int,
) -> list[float]:
    """A plain AdamW loop over random batches; returns the loss of every step.

    The output layer runs only at labelled positions (about a fifth of the ids), which makes a
    step several times cheaper on a CPU than full-sequence logits.
    """
    rng = random.Random(seed)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        trainable, lr=settings.sft_lr, weight_decay=settings.sft_weight_decay
    )
    warmup = max(1, settings.sft_steps // 50)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))
    losses = []
    model.train()
    progress = tqdm(range(settings.sft_steps), desc="cold-start SFT", unit="step")
    for _ in progress:
        batch = rng.sample(list(examples), min(settings.sft_batch_size, len(examples)))
        width = max(len(ids) for ids, _ in batch)
        ids = torch.tensor([i + [pad_id] * (width - len(i)) for i, _ in batch])
        labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in batch])
        mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i, _ in batch])
        hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state[:, :-1]
        targets = labels[:, 1:]
        chosen = targets != -100
        loss = torch.nn.functional.cross_entropy(model.lm_head(hidden[chosen]), targets[chosen])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        losses.append(loss.item())
        progress.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    return losses


def cold_start(
    world: World,
    out: Path,
    retriever: Retriever,
    template: Template,
    config: RolloutConfig,
    settings: Settings,
    seed: int,
) -> Path:
    """Build the tiny model, fine-tune it on the scripted transcripts, save it to `out/model`."""
    folder = build_tiny_model(
        out / "model",
        vocabulary_texts(world, template),
        SEARCH_R1.tags,
        hidden_size=settings.hidden_size,
        num_layers=settings.num_layers,
        head_dim=settings.head_dim,
        seed=seed,
    )
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    freeze_embeddings(model, tokenizer, world, settings, seed)
    examples = scripted_transcripts(
        world, tokenizer, retriever, template, config, settings.sft_variants, seed
    )
    supervised_fine_tune(model, examples, tokenizer.pad_token_id, settings, seed)
    model.save_pretrained(folder)
    return folder


# ---------------------------------------------------------------------------------------------
# Evaluation


def evaluate(
    model_dir: Path,
    questions: Sequence[Question],
    retriever: Retriever,
    template: Template,
    config: RolloutConfig,
    batch_size: int,
) -> Scores:
    """Greedy episodes on `questions`, scored as the rewards score them.

    A transcript is well formed when it follows Search-R1's grammar once the notice the rollout
    inserts before the last turn ("no searches left") is set aside: that notice is environment
    text, not the model's.
    """
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    return score(model, tokenizer, questions, retriever, template, config, batch_size)


def score(
    model: Any,
    tokenizer: Any,
    questions: Sequence[Question],
    retriever: Retriever,
    template: Template,
    config: RolloutConfig,
    batch_size: int,
) -> Scores:
    """`evaluate` for a model already loaded (in eval mode)."""
    greedy = GenerationConfig(do_sample=False)
    episodes = run_episodes(
        TransformersGenerator(model, tokenizer, greedy, batch_size=batch_size),
        tokenizer,
        retriever,
        [template.prompt(q.question) for q in questions],
        protocol=template.protocol,
        config=config,
        batch_size=batch_size,
    )
    rows: dict[str, list[tuple[float, int, bool]]] = defaultdict(list)
    for question, episode in zip(questions, episodes, strict=True):
        text = tokenizer.decode(episode.completion_ids, skip_special_tokens=True)
        em = exact_match(extract_answer(text, template.protocol), question.answer)
        valid, _ = follows_format(text, template.protocol)
        rows[question.kind].append((em, episode.num_searches, valid))

    def summary(values: list[tuple[float, int, bool]]) -> dict[str, float]:
        n = len(values)
        return {
            "em": sum(v[0] for v in values) / n,
            "searches": sum(v[1] for v in values) / n,
            "valid_format": sum(v[2] for v in values) / n,
            "questions": n,
        }

    overall = summary([row for kind in rows.values() for row in kind])
    return Scores(
        em=overall["em"],
        searches=overall["searches"],
        valid_format=overall["valid_format"],
        by_kind={kind: summary(rows[kind]) for kind in KINDS if kind in rows},
    )


# ---------------------------------------------------------------------------------------------
# GRPO through the training entry point


def grpo(
    paths: dict[str, Path],
    model_dir: Path,
    out: Path,
    steps: int | None,
    seed: int,
    *extra: str,
    callbacks: Sequence[Any] = (),
):
    """Train with `research_r1.training.train` on the recipe as it is, pointed at this run's
    artefacts (the recipe names the default output folder's) and seed; `steps` overrides
    max_steps. `extra` (recipe flags) and `callbacks` are for benchmarks/skip_solved.py."""
    if not RECIPE.is_file():
        raise InputError(f"recipe {RECIPE} not found: run the demo from a source checkout")
    overrides = {
        "model_name_or_path": model_dir,
        "dataset_name": paths["data"],
        "retriever": paths["retriever"],
        "template": paths["template"],
        "output_dir": out / "grpo",
        "seed": seed,
        "log_level": "warning",  # the demo prints its own progress and tables
    }
    if steps is not None:
        overrides["max_steps"] = steps
    argv = [str(RECIPE)]
    for key, value in overrides.items():
        argv += [f"--{key}", str(value)]
    return train([*argv, *extra], extra_callbacks=callbacks)


# ---------------------------------------------------------------------------------------------
# Reporting


COLUMNS = ["kind", "hops", "EM SFT", "EM GRPO", "gain", "searches", "valid"]


def summary_rows(before: Scores, after: Scores) -> list[list[str]]:
    """One row per question kind and one for all: EM before and after, the gain in points,
    and how searches per question and the share of well-formed transcripts moved (SFT→GRPO)."""
    rows = []
    for kind in [*before.by_kind, "all"]:
        b = before.by_kind[kind] if kind != "all" else asdict(before)
        a = after.by_kind[kind] if kind != "all" else asdict(after)
        rows.append(
            [
                kind,
                "-" if kind == "all" else str(len(KINDS[kind][1])),
                f"{b['em']:.1%}",
                f"{a['em']:.1%}",
                f"{(a['em'] - b['em']) * 100:+.1f}",
                f"{b['searches']:.2f}→{a['searches']:.2f}",
                f"{b['valid_format']:.0%}→{a['valid_format']:.0%}",
            ]
        )
    return rows


def print_table(title: str, rows: list[list[str]]) -> None:

    table = Table(title=title)
    for column in COLUMNS:
        table.add_column(column, justify="left" if column == "kind" else "right", no_wrap=True)
    for row in rows:
        table.add_row(*row, style="bold" if row[0] == "all" else None)
    Console().print(table)


# ---------------------------------------------------------------------------------------------
# What to expect: the default run measured over seeds and CPUs


@dataclass(frozen=True)
class Measured:
    """One default run (400 held-out questions, `MEASURED_STEPS` GRPO steps): held-out EM in
    percent after the cold start and after GRPO, as the run printed them."""

    cpu: str
    kernels: str  # which of the PINNED_KERNELS variables were set
    seed: int
    sft: float
    grpo: float

    @property
    def gain(self) -> float:
        return self.grpo - self.sft


# The same code and package versions train to different numbers on different CPUs, pinned
# kernels or not, and GRPO amplifies the difference: these runs, not one table, are what to
# expect. docs/demo.md lists every run (a test holds its table to this one); the README's table
# is the AVX-512 "all three" run. A new CPU or seed measured goes here and there.
MEASURED_STEPS = 60
MEASURED = (
    Measured("AMD EPYC (Zen 3), AVX2", "all three", 0, 40.0, 82.8),
    Measured("AMD EPYC (Zen 3), AVX2", "all three", 1, 34.0, 76.8),
    Measured("AMD EPYC (Zen 3), AVX2", "all three", 2, 37.8, 85.0),
    Measured("AMD EPYC, AVX-512", "none", 0, 33.5, 70.5),
    Measured("AMD EPYC, AVX-512", "ATen and oneDNN, not MKL", 0, 33.8, 76.5),
    Measured("AMD EPYC, AVX-512", "all three", 0, 33.8, 76.5),
    Measured("Intel Xeon, AVX-512", "all three", 0, 34.5, 69.2),
)


def spread(runs: Sequence[Measured] = MEASURED) -> str:
    """The measured runs' spread, in words."""
    after = [run.grpo for run in runs]
    gain = [run.gain for run in runs]
    return (
        f"the spread measured over {len({r.seed for r in runs})} seeds and "
        f"{len({r.cpu for r in runs})} CPUs (after GRPO {min(after):.1f}–{max(after):.1f}%, "
        f"gain {min(gain):+.1f} to {max(gain):+.1f})"
    )


SPREAD_MEANING = {
    "within": "",
    "below": ": GRPO taught this run less than any measured one. A CPU not measured yet can do "
    "that (pinned kernels do not make CPUs agree); so can other package versions or changed code",
    "above": ": GRPO taught this run more than any measured one; add it, with its CPU, to "
    "MEASURED in research_r1/demo.py",
    "outside": ": the run after GRPO and its gain lie on opposite sides of it, from a cold start "
    "unlike any measured one's",
}


def against_spread(sft_em: float, grpo_em: float, runs: Sequence[Measured] = MEASURED) -> str:
    """Where a default run's held-out EM (fractions, after the cold start and after GRPO) falls
    against the measured runs: within their spread, below it, above it, or outside it (one
    figure below, the other above), and what that means. Figures are compared as printed."""
    after, gain = f"{grpo_em:.1%}", f"{(grpo_em - sft_em) * 100:+.1f}"  # as the table prints them
    sides = {
        _side(float(after.rstrip("%")), [run.grpo for run in runs]),
        _side(float(gain), [run.gain for run in runs]),
    } - {"within"}
    where = "within" if not sides else sides.pop() if len(sides) == 1 else "outside"
    return (
        f"held-out EM {sft_em:.1%} → {after} ({gain} points), "
        f"{where} {spread(runs)}{SPREAD_MEANING[where]}"
    )


def _side(value: float, measured: Sequence[float]) -> str:
    """Below, within or above the measured values, to the tenth they are printed to."""
    if value < round(min(measured), 1):
        return "below"
    return "above" if value > round(max(measured), 1) else "within"


def cpu_name() -> str:
    """The CPU's model name as the kernel reports it (lscpu's "Model name"), else the machine."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def plot_em(before: Scores, after: Scores, path: Path) -> Path:
    """Held-out EM per question kind, after SFT and after GRPO."""
    kinds = [*before.by_kind, "all"]
    b = [before.by_kind[k]["em"] if k != "all" else before.em for k in kinds]
    a = [after.by_kind[k]["em"] if k != "all" else after.em for k in kinds]
    figure = Figure(figsize=(7, 4))
    axis = figure.subplots()
    positions = range(len(kinds))
    axis.bar([p - 0.2 for p in positions], b, width=0.4, label="cold-start SFT")
    axis.bar([p + 0.2 for p in positions], a, width=0.4, label="after GRPO")
    axis.set_xticks(list(positions), kinds, rotation=20)
    axis.set_ylim(0, 1)
    axis.set_ylabel("held-out exact match")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    return path


# ---------------------------------------------------------------------------------------------
# One run, and the command


def run_one(
    out: Path, seed: int, settings: Settings, steps: int | None, kernels: dict[str, str]
) -> dict[str, Any]:
    """The whole demo for one seed in `out`; returns what it measured (also in results.json)."""
    console = Console()
    torch.set_num_threads(settings.threads)
    config = rollout_config()
    started = time.monotonic()
    seconds: dict[str, float] = {}

    def done(stage: str, message: str) -> None:
        seconds[stage] = round(time.monotonic() - started - sum(seconds.values()), 1)
        console.print(f"[bold]{stage}[/bold] ({seconds[stage]:.0f} s): {message}")

    world = build_world(
        seed, num_people=settings.num_people, num_test_questions=settings.num_test_questions
    )
    paths = write_world(world, out)
    retriever = load_retriever(paths["retriever"])
    template = load_template(paths["template"])
    done(
        "world",
        f"{len(world.people)} people, {len(world.passages)} passages, {len(world.train)} "
        f"training and {len(world.test)} held-out questions, BM25 index in {out / 'bm25'}",
    )
    model_dir = cold_start(world, out, retriever, template, config, settings, seed)
    before = evaluate(model_dir, world.test, retriever, template, config, settings.eval_batch_size)
    done("cold start", f"tiny model in {model_dir}; held-out EM {before.em:.1%}")
    trainer = grpo(paths, model_dir, out, steps, seed)
    name_own_setting(out / "grpo", paths)
    grpo_steps = trainer.state.global_step
    after = evaluate(
        out / "grpo", world.test, retriever, template, config, settings.eval_batch_size
    )
    done("GRPO", f"{grpo_steps} steps, model in {out / 'grpo'}; held-out EM {after.em:.1%}")

    rows = summary_rows(before, after)
    title = (
        f"seed {seed}: {len(world.test)} held-out questions, {len(world.train)} training "
        f"questions, {grpo_steps} GRPO steps"
    )
    (out / "summary.md").write_text(f"# {title}\n\n{markdown_table(COLUMNS, rows)}\n")
    plot_reward_curve(trainer.state.log_history, out / "reward_curve.png")
    plot_em(before, after, out / "em.png")
    results = {
        "seed": seed,
        "held_out_questions": len(world.test),
        "train_questions": len(world.train),
        "grpo_steps": grpo_steps,
        "sft": asdict(before),
        "grpo": asdict(after),
        "seconds": {**seconds, "total": round(time.monotonic() - started, 1)},
        "settings": asdict(settings),
        "kernels": kernels,
        "cpu": cpu_name(),
    }
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print_table(title, rows)
    console.print(f"summary, reward curve and EM chart in {out}")
    if settings == Settings() and grpo_steps == MEASURED_STEPS:
        console.print(
            f"seed {seed}: {against_spread(before.em, after.em)}", highlight=False, soft_wrap=True
        )
    else:
        console.print(
            f"not compared with {spread()}: that is for the default sizes and "
            f"{MEASURED_STEPS} GRPO steps, and this run's differ",
            highlight=False,
            soft_wrap=True,
        )
    return results


def rollout_config() -> RolloutConfig:
    """The recipe's episode budgets, so evaluation plays the episodes training plays."""
    recipe = yaml.safe_load(RECIPE.read_text())
    return RolloutConfig(
        k=recipe["retrieval_topk"],
        max_turns=recipe["max_turns"],
        max_new_tokens=recipe["max_new_tokens_per_turn"],
        max_observation_tokens=recipe["max_observation_tokens"],
        max_completion_tokens=recipe["max_completion_length"],
    )


@dataclass
class DemoArguments:
    """Build a synthetic world and a tiny model, cold-start it, train it with GRPO and the
    search rollout, and compare held-out exact match before and after. Runs on a CPU."""

    output_dir: Path | None = field(
        default=None, metadata={"help": "output folder (default: outputs/demo)", "metavar": "DIR"}
    )
    seed: int = field(default=0, metadata={"help": "seed of the world and the model"})
    seeds: int = field(
        default=1, metadata={"help": "run this many seeds from --seed, each in OUTPUT_DIR/seed-N"}
    )
    steps: int | None = field(
        default=None, metadata={"help": f"GRPO steps (default: max_steps of {RECIPE.name}, 60)"}
    )
    smoke: bool = field(default=False, metadata={"help": "tiny sizes, 2 steps: a pipeline check"})


def run_demo(args: DemoArguments) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # bm25s logs each empty query (a model's query of stopwords) at INFO, past basicConfig.
    logging.getLogger("bm25s").setLevel(logging.WARNING)
    if args.seeds < 1:
        raise InputError("--seeds must be at least 1")
    settings = SMOKE if args.smoke else Settings()
    steps = settings.grpo_steps if args.steps is None else args.steps
    if steps is not None and steps < 1:
        raise InputError("--steps must be at least 1")
    kernels = in_force()  # pinned by cli.py before this module was imported
    seeds = range(args.seed, args.seed + args.seeds)
    output_dir = Path(args.output_dir or outputs.demo_dir())
    results = []
    for seed in seeds:
        out = output_dir if args.seeds == 1 else output_dir / f"seed-{seed}"
        results.append(run_one(out, seed, settings, steps, kernels))
    if len(results) > 1:
        print_seeds(results)
    return 0


def print_seeds(results: Sequence[dict[str, Any]]) -> None:

    table = Table(title="held-out exact match per seed")
    for column in ("seed", "EM SFT", "EM GRPO", "gain (pts)", "minutes"):
        table.add_column(column, justify="right")
    for r in results:
        gain = (r["grpo"]["em"] - r["sft"]["em"]) * 100
        table.add_row(
            str(r["seed"]),
            f"{r['sft']['em']:.1%}",
            f"{r['grpo']['em']:.1%}",
            f"{gain:+.1f}",
            f"{r['seconds']['total'] / 60:.1f}",
        )
    Console().print(table)
