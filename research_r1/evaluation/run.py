"""`research-r1 eval MODEL`: a checkpoint, ours or published, on a published setting.

    research-r1 eval PeterJinGo/SearchR1-nq_hotpotqa_train-qwen2.5-7b-em-ppo
    research-r1 eval outputs/demo/grpo --datasets demo=outputs/demo/questions/test.jsonl \\
        --retriever outputs/demo/retriever.yaml

The model's family (`research_r1.families`) says how its own evaluation code plays and scores
it: template, protocol, budgets, scoring and metrics, each audited against upstream; the suite
(`research_r1.suites`) gives the question sets and retriever of the setting the papers report.
k, the turn limit, the suite, the retriever and the sets can be overridden for a run, which
changes the run's `setting` string wherever it changes the setting. Three methods: `agent` (the
family's search loop, through the same rollout as training), and the baselines `direct` (answer
without retrieval) and `rag` (top-k passages for the question once, then answer).

The output folder holds, per method, `traces/{dataset}.jsonl` (one line per question, written as
each batch ends, stamped with the run's fingerprint), `run.yaml` (what the traces were played
with), `results.json` (the layout leaderboard Spaces read) and `results.md`. A run that stops
resumes from its traces: questions already answered are skipped, those that failed are tried
again, and traces of another model or setting are refused. Greedy decoding, unless
`--decoding upstream` samples as a family's evaluation did.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import json
import logging
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from huggingface_hub import ModelCard
from huggingface_hub.errors import HfHubHTTPError, HFValidationError
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

import research_r1
from research_r1 import hub
from research_r1.data import ALIASES, FLASHRAG_REPO, check_rows, find_source, load_source
from research_r1.errors import InputError, RunStopped
from research_r1.families import Resolved, families, resolve
from research_r1.generation import Generator, TransformersGenerator, stop_token_ids
from research_r1.generation_vllm import VLLMGenerator, size_cpu_kv_cache, spawn_cpu_workers
from research_r1.metrics import UPSTREAM, load_metric
from research_r1.protocol import (
    Prompt,
    Protocol,
    Template,
    follows_format,
    format_passages,
    render_prompt,
)
from research_r1.publish import update_model_card
from research_r1.retrieval import RetrievalError, Retriever
from research_r1.retrieval.config import (
    BM25Config,
    DenseConfig,
    HybridConfig,
    RemoteConfig,
    load_retriever,
    parse_config,
)
from research_r1.rollout import Episode, RolloutConfig, Watcher, encode_prompt, run_rollout
from research_r1.scoring import METRICS, Scoring
from research_r1.suites import SUITES, Suite, get_suite

logger = logging.getLogger(__name__)

METHODS = ("agent", "rag", "direct")
BOOTSTRAP_SAMPLES = 1000
# Chat models end a turn with these; a base model prompted through the chat template writes them
# too, and their authors' loops stop there (Search-R1: EOS ids 151645 and 151643 for Qwen2.5).
END_OF_TURN_TOKENS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>")

_ANSWER_RULE = (
    "Put the final answer inside <answer> and </answer>, without detailed illustrations. "
    "For example, <answer> Beijing </answer>."
)
_BOXED_RULE = (
    "Put the final answer inside <answer> and </answer>, the exact answer within \\boxed{}. "
    "For example, <answer> The final answer is \\[ \\boxed{Beijing} \\] </answer>."
)
DIRECT_PROMPT = "Answer the given question directly. {rule} Question: {question}\n"
RAG_PROMPT = (
    "Answer the given question using the documents below. {rule}\n\nDocuments:\n{documents}\n\n"
    "Question: {question}\n"
)


# ---------------------------------------------------------------------------------------------
# What a run does: resolved from the command line before anything is loaded


@dataclass(frozen=True)
class Plan:
    """Everything one `eval` command runs with; `describe()` is what `--dry-run` prints and
    every `results.json` records."""

    model: str
    revision: str | None
    family: Resolved
    suite: Suite
    rollout: RolloutConfig
    retriever: Mapping[str, Any] | str | None  # None: the suite's cannot be served here
    retriever_label: str
    datasets: Mapping[str, str]  # name -> `--datasets` entry (a FlashRAG name, file or hf:// URI)
    splits: Mapping[str, str]  # name -> split
    methods: tuple[str, ...]
    backend: str
    decoding: str  # "greedy", or "upstream": sample as the family's evaluation did
    batch_size: int
    tensor_parallel_size: int
    limit: int | None
    skip_bad: bool
    source: str
    out: Path
    identity: str  # the model's content (a local folder) or Hub id and revision

    @property
    def setting(self) -> str:
        """What makes numbers comparable, as one string: runs are ranked together only when
        theirs agree (the retriever's label replaces the suite's when another one was given)."""
        suite = dataclasses.replace(self.suite, retriever_label=self.retriever_label)
        return suite.label(self.rollout.k)

    @property
    def sampling(self) -> dict[str, Any]:
        """The sampling settings of `decoding` (empty: greedy): the family's own evaluation's,
        or what we run for it."""
        chosen = (
            self.family.upstream_decoding if self.decoding == "upstream" else self.family.decoding
        )
        return dict(chosen)

    def describe(self, method: str | None = None) -> dict[str, Any]:
        template = self.family.template
        scoring = self.family.scoring
        config = {
            "model": self.model,
            "revision": self.revision,
            "family": self.family.family,
            "template": template.as_mapping()
            | {"strip_question": template.strip_question, "question_mark": template.question_mark},
            "protocol": dataclasses.asdict(template.protocol),
            "suite": self.suite.name,
            "setting": self.setting,
            "datasets": {name: self.splits[name] for name in self.datasets},
            "rollout": self.rollout.model_dump(exclude={"max_retriever_wait_s"}),
            "scoring": scoring.model_dump(),
            "metrics": {name: METRICS[name].description for name in scoring.reported},
            "retriever": self.retriever,
            "needs": " ".join(filter(None, [self.suite.files, self.suite.needs])) or None,
            "decoding": {
                "mode": self.decoding,
                "sampling": self.sampling,
                "backend": self.backend,
                "batch_size": self.batch_size,
            },
            "subset": self.suite.subset,
            "limit": self.limit,
            "skip_bad": self.skip_bad,
        }
        if self.family.audited is not None:
            audited = self.family.audited
            config["upstream"] = {
                "code": audited.upstream,
                "evaluation": audited.evaluation,
                "audit": audited.audit(),
            }
        return (
            {"methods": list(self.methods), **config}
            if method is None
            else config | {"method": method}
        )

    def result_settings(self, method: str) -> dict[str, Any]:
        """Everything that can change a question's result under `method`: the model's content,
        the template's text and every setting, but not which questions are asked, how many are
        played together (a question's result never depends on its batch) or the audit's sources
        and notes."""
        config = self.describe(method)
        for key in ("datasets", "limit", "subset", "skip_bad", "upstream", "metrics", "needs"):
            config.pop(key, None)
        config["decoding"] = {k: v for k, v in config["decoding"].items() if k != "batch_size"}
        return config | {
            "identity": self.identity,
            "template_text": method_template(method, self.family.template).as_mapping(),
        }

    def dataset_settings(self, name: str) -> dict[str, str]:
        """Where one dataset's questions come from: a trace file holds one such set."""
        return {"entry": self.datasets[name], "split": self.splits[name], "source": self.source}


def make_plan(args: argparse.Namespace) -> Plan:
    """The run the command line asks for, every input checked but nothing heavy loaded."""
    model, _, revision = args.model.partition("@")
    methods = tuple(method.strip() for method in args.method.split(",") if method.strip())
    unknown = sorted(set(methods) - set(METHODS))
    if not methods or unknown:
        raise InputError(f"--method: {unknown or 'none'}; choose from {', '.join(METHODS)}")
    given = args.template is not None or args.family is not None
    known = given or any(f.match(model) for f in families())
    card = None if known else _card_settings(model, revision or None)
    family = resolve(model, card, args.template, args.family)
    suite = get_suite(args.suite or family.suite)
    if args.datasets:
        entries = [entry.strip() for entry in args.datasets.split(",") if entry.strip()]
        datasets = {entry.partition("=")[0] if "=" in entry else entry: entry for entry in entries}
    elif suite.files:  # named by the user; a dry run shows what the suite needs
        datasets = {}
    else:
        datasets = {name: name for name in suite.datasets}
    splits = {
        name: args.split or suite.datasets.get(ALIASES.get(name.lower(), name), "test")
        for name in datasets
    }
    overrides = {
        key: getattr(args, key) for key in ("k", "max_turns") if getattr(args, key) is not None
    }
    rollout = RolloutConfig(**{**family.rollout, **overrides})
    if args.subset is not None:
        suite = dataclasses.replace(suite, subset=args.subset)
    retriever, label = _retriever(suite, args.retriever)
    if args.decoding == "upstream" and not family.upstream_decoding:
        raise InputError(
            f"--decoding upstream: family {family.family} evaluates greedily; there is no other "
            "sampling to reproduce"
        )
    plan = Plan(
        model=model,
        revision=revision or None,
        family=family,
        suite=suite,
        rollout=rollout,
        retriever=retriever,
        retriever_label=label,
        datasets=datasets,
        splits=splits,
        methods=methods,
        backend=_backend(args.backend),
        decoding=args.decoding,
        batch_size=args.batch_size,
        tensor_parallel_size=args.tensor_parallel_size,
        limit=args.limit,
        skip_bad=args.skip_bad,
        source=args.source,
        out=args.out or Path("."),
        identity=model_identity(model, revision or None),
    )
    return plan if args.out else dataclasses.replace(plan, out=default_out(plan))


def _retriever(suite: Suite, given: str | None) -> tuple[Mapping[str, Any] | str | None, str]:
    """The retriever config a run searches with and its label: the suite's, or the one given,
    whose label names it unless it searches exactly as the suite's does."""
    if given is None:
        return suite.retriever, suite.retriever_label
    config = parse_config(given)
    if suite.retriever is not None and _searches(config) == _searches(
        parse_config(suite.retriever)
    ):
        return given, suite.retriever_label
    return given, retriever_label(config)


def agent_plan(args: argparse.Namespace) -> Plan:
    """`eval`'s plan for playing one question at a time with the agent method, as `ask` and the
    Space do: eval's defaults and the options `args` has (model, template, retriever, k,
    max_turns, backend)."""
    parser = argparse.ArgumentParser()
    configure_eval(parser)
    given = argparse.Namespace(**vars(args), method="agent", batch_size=1)
    return make_plan(parser.parse_args(["--", args.model], namespace=given))


def model_identity(model: str, revision: str | None) -> str:
    """What the model is, for telling runs apart: a Hub id with its revision, or for a local
    folder a digest of its files (name, size, first and last MiB of each; the model card is left
    out, since eval writes scores into it), so a folder trained again is another model."""
    folder = Path(model)
    if not folder.is_dir():
        return f"{model}@{revision or 'main'}"
    digest = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.suffix == ".md":
            continue
        size = path.stat().st_size
        digest.update(f"{path.name}\0{size}\0".encode())
        with path.open("rb") as file:
            digest.update(file.read(1 << 20))
            if size > 2 << 20:
                file.seek(-(1 << 20), 2)
                digest.update(file.read())
    return f"sha256:{digest.hexdigest()}"


def fingerprint(settings: Mapping[str, Any]) -> str:
    """A short digest of settings: equal settings, equal fingerprints."""
    text = json.dumps(settings, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def default_out(plan: Plan) -> Path:
    """`eval/<model>-<digest>`: one folder per model and setting, so two runs never share one
    (two checkpoints both called `final` included)."""
    if Path(plan.model).is_dir():
        name = "_".join(Path(plan.model).resolve().parts[-2:])
    else:
        name = plan.model.replace("/", "__") + (f"@{plan.revision}" if plan.revision else "")
    settings = {method: plan.result_settings(method) for method in plan.methods}
    return Path("eval") / f"{name}-{fingerprint(settings)[:8]}"


def _card_settings(model: str, revision: str | None) -> Mapping[str, Any] | None:
    """The `research_r1` metadata of our own checkpoints' model cards, None for any other."""
    readme = Path(model) / "README.md"
    if Path(model).is_dir():
        card = ModelCard.load(readme) if readme.is_file() else None
    elif Path(model).exists():
        raise InputError(f"model {model}: not a folder")
    else:
        try:
            card = ModelCard.load(model, repo_type="model", ignore_metadata_errors=True)
        except (HfHubHTTPError, HFValidationError, OSError):  # no card there: --template decides
            card = None
    settings = card.data.to_dict().get("research_r1") if card is not None else None
    return settings if isinstance(settings, Mapping) else None


def _searches(config: Any) -> dict[str, Any]:
    """What makes two retriever configs return the same passages: all but where they run."""
    return config.model_dump(exclude={"device", "batch_size", "fp16"})


def retriever_label(config: Any) -> str:
    """How a retriever config searches, for the setting string: its corpus (file and folder, so
    two `corpus.jsonl` of different folders differ), and BM25 or the encoder and index."""
    if isinstance(config, RemoteConfig):
        return f"remote {config.url}"
    if isinstance(config, HybridConfig):
        return f"hybrid of {retriever_label(config.bm25)} and {retriever_label(config.dense)}"
    corpus = "/".join(Path(str(config.corpus or config.index)).parts[-2:])
    if isinstance(config, BM25Config):
        return f"{corpus}, BM25"
    assert isinstance(config, DenseConfig)
    encoder, index = Path(str(config.encoder or "dense")).name, Path(config.index).name
    return f"{corpus}, {encoder} ({index})"


def _backend(choice: str) -> str:
    if choice != "auto":
        return choice
    try:
        import vllm  # noqa: F401  (only to see whether the optional extra is installed)
    except ImportError:
        return "transformers"
    return "vllm" if torch.cuda.is_available() else "transformers"


# ---------------------------------------------------------------------------------------------
# Questions


@dataclass(frozen=True)
class Question:
    id: str
    question: str
    golden_answers: list[str]


def load_questions(plan: Plan) -> dict[str, list[Question]]:
    """Every dataset's questions, checked, before any model is loaded: an unknown dataset or
    split, or an unreadable file, fails here and names itself."""
    found = {}
    for name, entry in plan.datasets.items():
        source = find_source(entry, plan.splits[name], plan.source)
        rows, skipped = check_rows(load_source(source), source, skip_bad=plan.skip_bad)
        if skipped:
            logger.warning("%s: skipped %s", name, dict(skipped))
        if plan.suite.subset is not None and name not in plan.suite.whole_sets:
            rows = rows.shuffle(seed=42).select(range(min(plan.suite.subset, len(rows))))
        if plan.limit is not None:
            rows = rows.select(range(min(plan.limit, len(rows))))
        columns = rows.select_columns(["id", "question", "golden_answers"]).to_dict()
        ids, texts, golds = columns["id"], columns["question"], columns["golden_answers"]
        found[name] = [
            Question(i, normalise_question(text, plan), gold)
            for i, text, gold in zip(ids, texts, golds, strict=True)
        ]
    return found


def normalise_question(question: str, plan: Plan) -> str:
    """As the family prepared its questions (stripped, a `?` added, or as they are)."""
    return plan.family.template.question(question)


# ---------------------------------------------------------------------------------------------
# Model, retriever, generator


def stop_ids(plan: Plan, tokenizer: Any) -> list[int]:
    """The ids a turn ends at: for a published family, as vLLM picks them for its checkpoint
    (the tokenizer's EOS and its generation config's) and any its loop adds; for ours, every
    end-of-turn token the vocabulary has, as our training stops there."""
    if plan.family.audited is None:
        vocab = tokenizer.vocab
        ends = [tokenizer.convert_tokens_to_ids(t) for t in END_OF_TURN_TOKENS if t in vocab]
        return sorted({*ends, tokenizer.eos_token_id} - {None})
    try:
        config = GenerationConfig.from_pretrained(plan.model, revision=plan.revision)
    except OSError:  # a checkpoint without generation_config.json
        config = GenerationConfig()
    return stop_token_ids(tokenizer, config.eos_token_id, plan.family.stop_tokens)


def load_generator(plan: Plan, tokenizer: Any) -> Generator:
    """The model, decoding greedily (or, with `--decoding upstream`, sampling as the family's
    evaluation sampled, seeded) and stopping at `stop_ids`."""
    eos = stop_ids(plan, tokenizer)
    sampling = plan.sampling
    if plan.backend == "vllm":
        if (Path(plan.model) / "adapter_config.json").is_file():
            raise InputError(
                f"model {plan.model}: a LoRA adapter, which this vLLM path does not load; merge "
                "it (peft's merge_and_unload) or use --backend transformers"
            )
        from vllm import LLM  # vLLM is an optional extra

        if not torch.cuda.is_available():
            size_cpu_kv_cache()
            spawn_cpu_workers()
        llm = LLM(
            model=plan.model,
            revision=plan.revision,
            tensor_parallel_size=plan.tensor_parallel_size,
            dtype="auto",
            seed=0,
            enforce_eager=not torch.cuda.is_available(),  # CPU: no minutes of compiling first
        )
        return VLLMGenerator(
            llm,
            temperature=sampling.get("temperature", 0.0),
            top_p=sampling.get("top_p", 1.0),
            seed=0 if sampling else None,
            generation_kwargs={"stop_token_ids": eos},
        )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(plan.model, revision=plan.revision, dtype="auto")
    model = model.to(device).eval()
    if sampling:
        torch.manual_seed(0)
    decoding = GenerationConfig(
        do_sample=bool(sampling), **sampling, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id
    )
    return TransformersGenerator(model, tokenizer, decoding, batch_size=plan.batch_size)


def load_tokenizer(plan: Plan) -> Any:
    """The checkpoint's tokenizer: a model that cannot be found fails here, named, before any
    question is read. A LoRA checkpoint (`adapter_config.json`) carries its tokenizer too."""
    try:
        return AutoTokenizer.from_pretrained(plan.model, revision=plan.revision)
    except (OSError, ValueError) as error:
        raise InputError(f"model {plan.model}: {error}") from error


def open_retriever(plan: Plan) -> Retriever:
    """The run's retriever; a suite whose retriever cannot be served here says what it needs."""
    if plan.retriever is None:
        raise InputError(f"suite {plan.suite.name}: {plan.suite.needs}")
    return load_retriever(plan.retriever)


def probe(retriever: Retriever, plan: Plan, question: str) -> None:
    """One search before the first question, so a dead retriever fails at once, named."""
    try:
        retriever.search([question], plan.rollout.k)
    except RetrievalError as error:
        assert plan.retriever is not None
        raise InputError(f"retriever {_name(plan.retriever)}: the probe failed: {error}") from error


def _name(retriever: Mapping[str, Any] | str) -> str:
    return retriever if isinstance(retriever, str) else str(retriever.get("index", retriever))


# ---------------------------------------------------------------------------------------------
# Playing the questions


def method_template(method: str, template: Template) -> Template:
    """The agent's own template, or a baseline's prompt in the agent's answer format (and its
    protocol, so it is read and scored as the agent is)."""
    if method == "agent":
        return template
    rule = _BOXED_RULE if template.protocol.boxed_answer else _ANSWER_RULE
    prompt = DIRECT_PROMPT if method == "direct" else RAG_PROMPT
    user = prompt.replace("{rule}", rule)
    return dataclasses.replace(
        template, name=f"{method}_{template.protocol.name}", user=user, system=None
    )


def play(
    method: str,
    questions: Sequence[Question],
    plan: Plan,
    generator: Generator,
    tokenizer: Any,
    retriever: Retriever,
    watcher: Watcher | None = None,
) -> list[Episode]:
    """One batch of questions: the search loop for `agent`, one turn without search for the
    baselines (`rag` with the question's passages in its prompt). Each episode is played by
    itself: its budgets never depend on the others of its batch. A `watcher` sees the episodes
    as they are played."""
    template = method_template(method, plan.family.template)
    protocol = template.protocol
    prompts: list[Prompt] = [template.prompt(q.question) for q in questions]
    if method == "rag":
        found = retriever.search([q.question for q in questions], plan.rollout.k)
        documents = [format_passages(passages, protocol) for passages in found]
        prompts = [_with_documents(p, d) for p, d in zip(prompts, documents, strict=True)]
    config = plan.rollout
    if method != "agent":
        config = config.model_copy(update={"max_turns": 0, "last_turn": "answer"})
    return run_rollout(
        [encode_prompt(p, tokenizer, special_tokens=protocol.special_tokens) for p in prompts],
        generator=generator,
        tokenizer=tokenizer,
        retriever=retriever,
        protocol=protocol,
        config=config,
        watcher=watcher,
        # a `text` loop continues the prompt's text (the others never read it)
        prompt_texts=[render_prompt(p, tokenizer) for p in prompts]
        if protocol.tokens == "text"
        else None,
    )


def _with_documents(prompt: Prompt, documents: str) -> Prompt:
    if isinstance(prompt, str):
        return prompt.replace("{documents}", documents)
    return [{**m, "content": m["content"].replace("{documents}", documents)} for m in prompt]


def trace(
    question: Question, episode: Episode, tokenizer: Any, plan: Plan, protocol: Protocol
) -> dict[str, Any]:
    """One question's line in `traces/{dataset}.jsonl`: the episode, the prediction read as
    the family's evaluation reads it, and its scores."""
    scoring = plan.family.scoring
    answer = scoring.predict(episode, tokenizer, protocol.invalid_notice)
    if protocol.tokens == "text":
        completion = episode.completion_text
        transcript = episode.prompt_text + completion
    else:
        completion = tokenizer.decode(episode.completion_ids, skip_special_tokens=True)
        transcript = tokenizer.decode(
            episode.prompt_ids + episode.completion_ids, skip_special_tokens=False
        )
    if episode.answered:
        finish = "answered"
    elif episode.truncated or episode.finish == "length":
        finish = "truncated"
    else:
        finish = "no_answer"
    return {
        "id": question.id,
        "question": question.question,
        "golden_answers": question.golden_answers,
        "prediction": answer.prediction,
        "scores": scoring.scores(answer.prediction, question.golden_answers),
        "transcript": transcript,
        "queries": episode.queries,
        "retrieved_ids": episode.retrieved_ids,
        "searches": episode.num_searches,
        "turns": len(episode.turns),
        "tokens": len(episode.completion_ids),
        "finish": finish,
        "valid_format": follows_format(completion, protocol)[0],
        "error": None,
    }


def failed(question: Question, error: Exception, scoring: Scoring) -> dict[str, Any]:
    """The line of a question whose episode raised: recorded, tried again on resume."""
    return {
        "id": question.id,
        "question": question.question,
        "golden_answers": question.golden_answers,
        "prediction": None,
        "scores": scoring.scores(None, question.golden_answers),
        "finish": "error",
        "valid_format": False,
        "searches": 0,
        "error": f"{type(error).__name__}: {error}",
    }


def run_dataset(
    name: str,
    questions: Sequence[Question],
    path: Path,
    batch_size: int,
    play_batch: Callable[[Sequence[Question]], list[dict[str, Any]]],
    stamp: Mapping[str, Any],
    headline: str = "em",
) -> list[dict[str, Any]]:
    """Every question's trace, appended to `path` batch by batch, each line stamped with the
    model and the run's fingerprint (`stamp`); questions already answered there are skipped,
    and a line of another run is refused. A progress bar shows the running `headline` score."""
    done = read_traces(path)
    foreign = sorted({str(t.get("run")) for t in done.values() if t.get("run") != stamp["run"]})
    if foreign:
        raise InputError(
            f"{path} holds traces of another run (fingerprint {', '.join(foreign)}, this run's "
            f"is {stamp['run']}); give another --out, or --overwrite to replace them"
        )
    todo = [q for q in questions if q.id not in done or done[q.id]["error"] is not None]
    path.parent.mkdir(parents=True, exist_ok=True)
    scored = [t["scores"][headline] for t in done.values() if t["error"] is None]
    with path.open("a") as sink, tqdm(total=len(questions), desc=name, unit="q") as bar:
        bar.update(len(questions) - len(todo))
        for start in range(0, len(todo), batch_size):
            for line in play_batch(todo[start : start + batch_size]):
                line = {**line, **stamp}
                sink.write(json.dumps(line) + "\n")
                done[line["id"]] = line
                scored.append(line["scores"][headline])
            sink.flush()
            bar.update(min(batch_size, len(todo) - start))
            bar.set_postfix({headline: f"{sum(scored) / max(1, len(scored)):.3f}"})
    return [done[q.id] for q in questions]


def claim_folder(folder: Path, plan: Plan, method: str, *, overwrite: bool) -> dict[str, Any]:
    """Make `folder` this run's, and return the run's result settings.

    `run.yaml` records what the folder's traces were played with; a run with other settings
    (another model, another k, another file under a dataset's name...) is refused, naming
    what differs, unless `overwrite` clears the folder first."""
    settings = json.loads(json.dumps(plan.result_settings(method)))  # as run.yaml holds them
    datasets = {name: plan.dataset_settings(name) for name in plan.datasets}
    record_path = folder / "run.yaml"
    if overwrite and folder.exists():
        shutil.rmtree(folder)
    if record_path.is_file():
        record = yaml.safe_load(record_path.read_text())
        before = {"settings": record["settings"], "datasets": {}}
        after = {"settings": settings, "datasets": {}}
        for name in datasets.keys() & record["datasets"].keys():
            before["datasets"][name] = record["datasets"][name]
            after["datasets"][name] = datasets[name]
        changed = differences(before, after)
        if changed:
            raise InputError(
                f"{folder} holds the traces of another run ({'; '.join(changed)}); give another "
                "--out, or --overwrite to replace them"
            )
        datasets = record["datasets"] | datasets
    folder.mkdir(parents=True, exist_ok=True)
    record_path.write_text(
        yaml.safe_dump({"settings": settings, "datasets": datasets}, allow_unicode=True)
    )
    return settings


def differences(before: Any, after: Any, key: str = "") -> list[str]:
    """`key: old → new` for every leaf that differs between two JSON-like values."""
    if isinstance(before, Mapping) and isinstance(after, Mapping):
        return [
            line
            for name in sorted(before.keys() | after.keys())
            for line in differences(
                before.get(name), after.get(name), f"{key}.{name}" if key else name
            )
        ]
    if before == after:
        return []
    shown = [json.dumps(value, ensure_ascii=False, default=str) for value in (before, after)]
    return [f"{key.removeprefix('settings.')}: {shown[0][:60]} → {shown[1][:60]}"]


def read_traces(path: Path) -> dict[str, dict[str, Any]]:
    """The traces written so far, the last line of each question winning; a line cut off by a
    crash is dropped (its question is played again)."""
    found: dict[str, dict[str, Any]] = {}
    if not path.is_file():
        return found
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        found[record["id"]] = record
    return found


# ---------------------------------------------------------------------------------------------
# Results


def summarize(traces: Sequence[Mapping[str, Any]], scoring: Scoring) -> dict[str, Any]:
    """One dataset's scores: the family's metrics and the comparison ones through the package's
    `evaluate` module (`qa_upstream`), each with a 95% bootstrap interval, searches per question
    and the share of well-formed runs."""
    # evaluate checks the type of the first prediction only, and a None (no answer) is not a
    # string: the answered come first (a mean does not depend on the order).
    pairs = sorted(
        ((t["prediction"], t["golden_answers"]) for t in traces), key=lambda p: p[0] is None
    )
    predictions, references = [p for p, _ in pairs], [r for _, r in pairs]
    names = scoring.reported
    summary: dict[str, Any] = {
        name: load_metric(UPSTREAM, config_name=name, keep_in_memory=True).compute(
            predictions=predictions, references=references
        )[name]
        if predictions[0] is not None
        else 0.0
        for name in names
    }
    for name in names:
        summary[f"{name}_ci95"] = bootstrap_ci([t["scores"][name] for t in traces])
    return {
        **summary,
        "n": len(traces),
        "searches": float(np.mean([t["searches"] for t in traces])),
        "valid_format_rate": float(np.mean([t["valid_format"] for t in traces])),
        "errors": sum(t["error"] is not None for t in traces),
    }


def bootstrap_ci(values: Sequence[float], samples: int = BOOTSTRAP_SAMPLES) -> list[float]:
    """The 95% percentile bootstrap interval of the mean (fixed seed: reruns agree)."""
    data = np.asarray(values, dtype=float)
    means = np.random.default_rng(0).choice(data, (samples, len(data))).mean(axis=1)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def results_markdown(plan: Plan, method: str, results: Mapping[str, Mapping[str, Any]]) -> str:
    scoring = plan.family.scoring
    headline, names = scoring.headline, scoring.reported
    others = [name for name in names if name != headline]
    decoding = "greedy" if plan.decoding == "greedy" else f"sampled {plan.sampling}"
    lines = [
        f"# {plan.model} · {method}",
        "",
        f"Setting: {plan.setting}. Family {plan.family.family}, template "
        f"`{plan.family.template.name}`, {decoding}, {plan.backend}.",
        "",
        f"| dataset | n | {headline} | {headline} 95% CI | {' | '.join(others)} | searches | "
        "valid format | errors |",
        "|---|---|---|---|" + "---|" * len(others) + "---|---|---|",
    ]
    for name, r in results.items():
        low, high = r[f"{headline}_ci95"]
        values = " | ".join(f"{r[other]:.3f}" for other in others)
        lines.append(
            f"| {name} | {r['n']} | {r[headline]:.3f} | {low:.3f}–{high:.3f} | {values} | "
            f"{r['searches']:.2f} | {r['valid_format_rate']:.0%} | {r['errors']} |"
        )
    return "\n".join(lines) + "\n"


def provenance() -> dict[str, Any]:
    """Which code produced a result: the package version, the git commit of a checkout, when."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(research_r1.__file__).parent,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    return {
        "version": research_r1.__version__,
        "git_commit": commit,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


# ---------------------------------------------------------------------------------------------
# The command


def configure_eval(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Evaluate a checkpoint (a local folder or Hub id, optionally @revision) with its own "
        "template on a published setting: traces, results.json and results.md per method."
    )
    parser.add_argument("model", help="local folder or Hub model id, optionally MODEL@REVISION")
    parser.add_argument(
        "--suite", choices=sorted(SUITES), help="setting (default: the model family's)"
    )
    parser.add_argument(
        "--datasets",
        help="comma-separated, as prepare-data takes them (names, files, NAME=FILE); "
        "default: the suite's",
    )
    parser.add_argument("--split", help="split of every dataset (default: the suite's, or test)")
    parser.add_argument("--source", default=FLASHRAG_REPO, help="where named datasets come from")
    parser.add_argument("--method", default="agent", help=f"comma-separated: {', '.join(METHODS)}")
    parser.add_argument(
        "--family",
        help="play the model as this published family's evaluation does (for a checkpoint "
        "trained with its code under another name)",
    )
    parser.add_argument("--template", help="template (built-in name or YAML) for unknown models")
    parser.add_argument("--retriever", help="retriever config (default: the suite's)")
    parser.add_argument("--k", type=int, help="passages per search (default: the family's)")
    parser.add_argument(
        "--decoding",
        choices=("greedy", "upstream"),
        default="greedy",
        help="greedy, or sample as the family's own evaluation did (seeded) where it sampled",
    )
    parser.add_argument("--max-turns", type=int, help="searches per question")
    parser.add_argument("--subset", type=int, help="a fixed sample per set (Bamboogle whole)")
    parser.add_argument("--limit", type=int, help="the first N questions of each set")
    parser.add_argument("--skip-bad", action="store_true", help="skip bad rows and count them")
    parser.add_argument(
        "--backend", choices=("auto", "transformers", "vllm"), default="auto", help="generation"
    )
    parser.add_argument("--batch-size", type=int, default=16, help="questions played together")
    parser.add_argument("--tensor-parallel-size", type=int, default=1, help="vLLM only")
    parser.add_argument(
        "--out",
        type=Path,
        help="output folder (default: eval/MODEL-DIGEST, one per model and setting)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the traces of another run in --out instead of refusing to mix them",
    )
    parser.add_argument(
        "--push-to-hub",
        metavar="ORG/NAME",
        help="upload the run (results.json, results.md, traces) to this Hub results dataset",
    )
    parser.add_argument(
        "--update-model-card",
        action="store_true",
        help="write the scores into the model card's model-index (local README.md or the Hub)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print the resolved settings and load nothing"
    )


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """`research-r1 eval` arguments, for callers in Python (a recipe's eval after training)."""
    parser = argparse.ArgumentParser(prog="research-r1 eval")
    configure_eval(parser)
    return parser.parse_args(list(argv))


def run_eval(args: argparse.Namespace) -> int:
    plan = make_plan(args)
    if args.dry_run:
        print(json.dumps(plan.describe(), indent=2, ensure_ascii=False))
        return 0
    if plan.retriever is None:
        raise InputError(f"suite {plan.suite.name}: {plan.suite.needs}")
    if not plan.datasets:
        raise InputError(f"--datasets: {plan.suite.files}")
    tokenizer = load_tokenizer(plan)
    questions = load_questions(plan)
    retriever = open_retriever(plan)
    first = next(q for qs in questions.values() for q in qs)
    probe(retriever, plan, first.question)
    generator = load_generator(plan, tokenizer)
    records = []
    for method in plan.methods:
        protocol = method_template(method, plan.family.template).protocol

        def play_batch(
            batch: Sequence[Question], method: str = method, protocol: Protocol = protocol
        ) -> list[dict[str, Any]]:
            return play_robustly(method, batch, plan, generator, tokenizer, retriever, protocol)

        folder = plan.out / method
        settings = claim_folder(folder, plan, method, overwrite=args.overwrite)
        results = {}
        for name, qs in questions.items():
            stamp = {
                "model": plan.model,
                "revision": plan.revision,
                "run": fingerprint({**settings, "dataset": plan.dataset_settings(name)}),
            }
            path = folder / "traces" / f"{name}.jsonl"
            scoring = plan.family.scoring
            traces = run_dataset(
                name, qs, path, plan.batch_size, play_batch, stamp, scoring.headline
            )
            results[name] = summarize(traces, scoring)
        record = {"config": plan.describe(method) | provenance(), "results": results}
        (folder / "results.json").write_text(
            json.dumps(record, indent=2, ensure_ascii=False) + "\n"
        )
        markdown = results_markdown(plan, method, results)
        (folder / "results.md").write_text(markdown)
        print(markdown)
        records.append(record)
    if args.update_model_card:
        update_model_card(plan.model, records)
        print(f"wrote the scores into the model card of {plan.model}")
    if args.push_to_hub:
        where = push_results(plan, args.push_to_hub)
        print(f"pushed the run to hf://datasets/{args.push_to_hub}/{where}")
    return 0


def push_results(plan: Plan, repo_id: str) -> str:
    """Upload each method's folder (results.json, results.md, traces) to a Hub results dataset
    as `runs/{model}/{time}/{method}/`, where `research-r1 leaderboard hf://datasets/ORG/NAME`
    finds it; return that folder. A push that fails after its retries stops with a message:
    the output folder holds everything, and the same command pushes it again at once (every
    question is done)."""
    local = Path(plan.model).exists()
    model = Path(plan.model).resolve().name if local else plan.model.replace("/", "__")
    if plan.revision:
        model += f"@{plan.revision}"
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    where = f"runs/{model}/{stamp}"
    try:
        hub.push_folder(
            plan.out,
            repo_id,
            repo_type="dataset",
            path_in_repo=where,
            allow_patterns=[f"{method}/**" for method in plan.methods],
            commit_message=f"eval {plan.model} ({plan.setting})",
            what=f"push the results to {repo_id}",
        )
    except hub.PUSH_ERRORS as error:
        raise RunStopped(
            f"could not push the results to {repo_id}: {hub.scrub(str(error))}. They are in "
            f"{plan.out}; run the same command again to push them"
        ) from error
    return where


# Exceptions that say the code is wrong, whatever the question.
CODE_ERRORS = (TypeError, AttributeError, NameError, KeyError, IndexError, AssertionError)


def play_robustly(
    method: str,
    batch: Sequence[Question],
    plan: Plan,
    generator: Generator,
    tokenizer: Any,
    retriever: Retriever,
    protocol: Protocol,
) -> list[dict[str, Any]]:
    """The batch's traces; when the batch raises, each question is played alone, and one that
    still raises is recorded with its error. A retriever that stays unreachable stops the run
    (`RunStopped`): the traces so far resume it. An error of the code rather than of a question
    (`CODE_ERRORS`) is raised at once: a bug must not become a column of failed questions."""
    try:
        episodes = play(method, batch, plan, generator, tokenizer, retriever)
        return [
            trace(q, e, tokenizer, plan, protocol) for q, e in zip(batch, episodes, strict=True)
        ]
    except (RunStopped, *CODE_ERRORS):
        raise
    except Exception as error:
        if len(batch) == 1:
            logger.warning("question %s failed: %s", batch[0].id, error)
            return [failed(batch[0], error, plan.family.scoring)]
    return [
        line
        for question in batch
        for line in play_robustly(
            method, [question], plan, generator, tokenizer, retriever, protocol
        )
    ]
