"""The plan of an eval run: what it plays, resolved from its arguments before anything loads.

The model's family (`research_r1.evaluation.families`) says how its own evaluation code plays and
scores it: template, protocol, budgets, scoring and metrics, each audited against upstream; a model
of no known family is read from its model card (our checkpoints) or played with `--template`. The
suite (`research_r1.evaluation.suites`) gives the question sets and retriever of the setting the
papers report. k, the turn limit, the suite, the retriever and the sets can be overridden for a run,
which changes the run's `setting` string wherever it changes the setting. The baselines `rag`
and `direct` are played with a prompt of their own in the agent's answer format
(`method_template`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import ModelCard
from huggingface_hub.errors import HfHubHTTPError, HFValidationError

from research_r1 import hub, outputs
from research_r1.data import ALIASES
from research_r1.errors import InputError, Unreachable
from research_r1.evaluation.arguments import METHODS, EvalArguments, PlayArguments
from research_r1.evaluation.families import Resolved, families, resolve
from research_r1.evaluation.scoring import METRICS
from research_r1.evaluation.suites import Suite, get_suite
from research_r1.protocol import Template
from research_r1.retrieval.config import (
    BM25Config,
    DenseConfig,
    HybridConfig,
    RemoteConfig,
    parse_config,
)
from research_r1.rollout import RolloutConfig


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
    output_dir: Path
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


def make_plan(args: EvalArguments) -> Plan:
    """The run `args` ask for, every input checked but nothing heavy loaded."""
    model, _, revision = args.model.partition("@")
    methods = tuple(method.strip() for method in args.method.split(",") if method.strip())
    unknown = sorted(set(methods) - set(METHODS))
    if not methods or unknown:
        raise InputError(f"--method: {unknown or 'none'}; choose from {', '.join(METHODS)}")
    given = args.template is not None or args.family is not None
    known = given or any(f.match(model) for f in families())
    card = None if known else _card_settings(model, revision or None)
    family = resolve(model, card, args.template, args.family)
    own = None if args.suite or card is None else _card_setting(model, card)
    suite = own[0] if own else get_suite(args.suite or family.suite)
    if args.datasets:
        entries = [entry.strip() for entry in args.datasets.split(",") if entry.strip()]
        datasets = {entry.partition("=")[0] if "=" in entry else entry: entry for entry in entries}
    elif own:
        datasets = own[1]
    elif suite.files:  # named by the user; a dry run shows what the suite needs
        datasets = {}
    else:
        datasets = {name: name for name in suite.datasets}
    splits = {
        name: args.split or suite.datasets.get(ALIASES.get(name.lower(), name), "test")
        for name in datasets
    }
    given = {"k": args.top_k, "max_turns": args.max_turns}  # the option top_k is the rollout's k
    overrides = {key: value for key, value in given.items() if value is not None}
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
        output_dir=args.output_dir or Path("."),
        identity=model_identity(model, revision or None),
    )
    return plan if args.output_dir else dataclasses.replace(plan, output_dir=default_out(plan))


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


def agent_plan(args: PlayArguments) -> Plan:
    """`eval`'s plan for playing one question at a time with the agent method, as `ask` and the
    Space do: eval's defaults and the options `args` has (model, template, retriever, top_k,
    max_turns, backend...)."""
    shared = {field.name: getattr(args, field.name) for field in dataclasses.fields(PlayArguments)}
    return make_plan(EvalArguments(**shared, method="agent", batch_size=1))


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
    """`outputs/eval/<model>-<digest>`: one folder per model and setting, so two runs never
    share one (two checkpoints both called `final` included)."""
    if Path(plan.model).is_dir():
        name = "_".join(Path(plan.model).resolve().parts[-2:])
    else:
        name = plan.model.replace("/", "__") + (f"@{plan.revision}" if plan.revision else "")
    settings = {method: plan.result_settings(method) for method in plan.methods}
    return outputs.output_dir("eval", f"{name}-{fingerprint(settings)[:8]}")


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
        except (HfHubHTTPError, HFValidationError, OSError) as error:
            unreachable = hub.user_error(error, hub.HubLocation(model, "model", "README.md"))
            if isinstance(unreachable, Unreachable):  # the Hub, not the card, is missing
                raise unreachable from error
            card = None  # no card there: --template decides
    settings = card.data.to_dict().get("research_r1") if card is not None else None
    return settings if isinstance(settings, Mapping) else None


def _card_setting(model: str, card: Mapping[str, Any]) -> tuple[Suite, dict[str, str]] | None:
    """The setting a local checkpoint's card names as its own (the demo's: `setting`,
    `retriever` and `questions`, a name -> file mapping, paths relative to the model folder),
    as a suite and its `--datasets` entries; None when the card names none."""
    if not Path(model).is_dir() or "retriever" not in card or "questions" not in card:
        return None
    where = f"{model}: model card, research_r1"
    questions = card["questions"]
    if not isinstance(questions, Mapping) or not questions:
        raise InputError(f"{where}.questions: expected a mapping of name to question file")

    def local(path: Any) -> str:
        return os.path.normpath(Path(model) / str(path))

    retriever = local(card["retriever"])
    suite = Suite(
        str(card.get("setting", "own")),
        {str(name): "test" for name in questions},
        retriever,
        retriever_label(parse_config(retriever)),
    )
    return suite, {str(name): f"{name}={local(path)}" for name, path in questions.items()}


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


# The baselines' prompts: the agent's answer format, without search.
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
