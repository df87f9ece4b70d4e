"""The demo Space: an episode's steps, the Space's settings, and `push-space`.

The app (`research_r1/space/app.py`, run by spaces/search_agent/app.py) plays one episode per
question and shows it step by step: `LiveTurns` holds the steps as they happen, `transcript_turns`
reads them from a finished episode, and `load_settings` reads what the app needs (model, retriever,
template, limits).

`push-space` uploads, in one commit: the app folder; a copy of this package's source, because
research_r1 is not on PyPI and a copy pins the very code the model was trained with (the Space
imports it from its root, next to app.py; requirements.txt lists the package's runtime
dependencies); the retriever config as `retriever.yaml`; the settings as `space_config.json`;
and the README, whose YAML header configures the Space (sdk, sdk_version, app_file, models).
The Hub reads no variables from that header, so settings travel in `space_config.json`; Space
variables of the same names (MODEL_ID, RETRIEVER_CONFIG, TEMPLATE, MAX_TURNS, TOPK, RESULTS: the
Hub results dataset its leaderboard tab reads, and EXAMPLES: a QA file of example questions), set
on the Space's settings page, override it without a new push. Without a model, `push-space`
ships what `make demo` wrote (model, BM25 index, corpus, questions) into the Space itself.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import tempfile
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib.metadata import PackageNotFoundError, version
from itertools import groupby
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from huggingface_hub import SpaceCard
from huggingface_hub.utils import HFValidationError, validate_repo_id
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
)

from research_r1 import hub
from research_r1.errors import InputError, invalid
from research_r1.passages import ShownPassage
from research_r1.protocol import TEMPLATES, Protocol, extract_answer, load_template, split_turn
from research_r1.retrieval import Passage
from research_r1.retrieval.config import TYPES, HybridConfig, RemoteConfig, parse_config
from research_r1.rollout import Episode

SPACE_DIR = Path(__file__).resolve().parents[2] / "spaces" / "search_agent"
SETTINGS_FILE = "space_config.json"
RETRIEVER_FILE = "retriever.yaml"
TEMPLATE_FILE = "template.yaml"
EXAMPLES_FILE = "examples.jsonl"

_LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "::1", "0.0.0.0"}
_SKIP = shutil.ignore_patterns("__pycache__", "*.pyc", ".*")
# What a training run's folder holds beside the model, which a Space does not need: resumable
# checkpoints (optimizer states), the pickled training arguments, logs and eval traces.
_NOT_SHIPPED = shutil.ignore_patterns(
    "checkpoint-*", "training_args.bin", "runs", "eval", "__pycache__", ".*"
)


# ---------------------------------------------------------------------------------------------
# An episode, step by step


@dataclass(frozen=True)
class Turn:
    """One step of an episode as the demo shows it.

    `kind` is "think" (the model's reasoning), "search" (`text` is the query and `passages` the
    (title, text) pairs the model read back, once they are back), "answer" (the final answer),
    or "notice" (other text the environment inserted: the invalid-step or last-turn notice).
    """

    kind: Literal["think", "search", "answer", "notice"]
    text: str
    passages: tuple[ShownPassage, ...] = ()
    pending: bool = False  # a search whose passages have not come back yet


def transcript_turns(episode: Episode, tokenizer: Any, protocol: Protocol) -> list[Turn]:
    """The episode's steps in order, read from its `env_mask` runs: each run of sampled ids is
    one model turn, each run of inserted ids what the environment answered. Passages are read
    from the observation text, so they are what the model saw (cut where the observation was)."""
    turns: list[Turn] = []
    pairs = zip(episode.completion_ids, episode.env_mask, strict=True)
    for sampled, run in groupby(pairs, key=lambda pair: pair[1]):
        text = tokenizer.decode([token for token, _ in run], skip_special_tokens=True)
        if sampled:
            turns += _model_turns(text, protocol)
            continue
        passages, notices = _read_observation(text, protocol)
        if turns and turns[-1].kind == "search" and passages:
            turns[-1] = replace(turns[-1], passages=passages)
        turns += [Turn("notice", notice) for notice in notices]
    return turns


class LiveTurns:
    """A rollout `Watcher` for one episode: its steps so far, a copy of them put on `updates` at
    each change (a search is pending until its passages are back; the player puts None when the
    episode is over), and `stop()`, which ends the episode at its next step (`EpisodeStopped`),
    for a time limit."""

    def __init__(self, protocol: Protocol) -> None:
        self.protocol = protocol
        self.steps: list[Turn] = []
        self.updates: queue.SimpleQueue[list[Turn] | None] = queue.SimpleQueue()
        self._stopped = threading.Event()

    def turn(self, row: int, text: str) -> None:
        self._go_on()
        turns = _model_turns(text, self.protocol)
        self.steps += [replace(t, pending=True) if t.kind == "search" else t for t in turns]
        self.updates.put(list(self.steps))

    def searched(self, row: int, query: str, passages: Sequence[Passage]) -> None:
        self._go_on()
        shown = tuple(ShownPassage(p.title, p.text) for p in passages)
        self.steps[-1] = replace(self.steps[-1], passages=shown, pending=False)
        self.updates.put(list(self.steps))

    def stop(self) -> None:
        self._stopped.set()

    def _go_on(self) -> None:
        if self._stopped.is_set():
            raise EpisodeStopped("the episode was stopped")


class EpisodeStopped(Exception):
    """Raised inside the rollout when a live view stops its episode."""


def _model_turns(text: str, protocol: Protocol) -> list[Turn]:
    """The reasoning before the turn's action (tags removed), then the action itself."""
    thought, action = split_turn(text, protocol)
    turns = [Turn("think", thought)] if thought else []
    if action.kind == "search":
        turns.append(Turn("search", action.content))
    elif action.kind == "answer":
        turns.append(Turn("answer", extract_answer(text, protocol) or action.content))
    return turns


def _read_observation(text: str, protocol: Protocol) -> tuple[tuple[ShownPassage, ...], list[str]]:
    """Passages inside the observation tags, and any other inserted text as notices."""
    head, opened, rest = text.partition(protocol.observation_open)
    if not opened:
        return (), [text.strip()] if text.strip() else []
    body, _, tail = rest.partition(protocol.observation_close)
    passages = protocol.passages.parse(body.strip())
    notices = [part.strip() for part in (head, tail) if part.strip()]
    if not passages and body.strip():
        notices.insert(0, body.strip())
    return passages, notices


# ---------------------------------------------------------------------------------------------
# The app's settings


_NonBlank = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]


class SpaceSettings(BaseModel):
    """What the app loads. Each field is read from the Space variable named by its alias, or
    from the same key in space_config.json; `retriever_config` is a path (or `hf://` URI), or
    the config itself."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    model_id: _NonBlank = Field(alias="MODEL_ID")
    retriever_config: _NonBlank | dict[str, Any] = Field(alias="RETRIEVER_CONFIG")
    # None: the model's own, from its family or its model card (as `eval` resolves them)
    template: str | None = Field(None, alias="TEMPLATE")
    max_turns: int | None = Field(None, alias="MAX_TURNS", ge=0)
    top_k: int | None = Field(None, alias="TOPK", ge=1)
    results: str | None = Field(None, alias="RESULTS")  # hf://datasets/ORG/NAME of eval runs
    examples: str | None = Field(None, alias="EXAMPLES")  # a QA file: its first questions

    @field_validator("retriever_config", mode="before")
    @classmethod
    def _json_object(cls, value: Any) -> Any:
        """A Space variable holds a config as JSON text; an object is the config itself."""
        if not isinstance(value, str) or not value.strip().startswith("{"):
            return value
        try:
            return json.loads(value)
        except json.JSONDecodeError as error:
            raise ValueError(f"not a valid JSON object ({error})") from None


_VARIABLES = tuple(field.alias for field in SpaceSettings.model_fields.values())


def load_settings(
    folder: str | os.PathLike, environ: Mapping[str, str] = os.environ
) -> SpaceSettings:
    """Settings from the variables MODEL_ID, RETRIEVER_CONFIG (a YAML path, `hf://` URI or JSON
    object), TEMPLATE, MAX_TURNS and TOPK, over those `push-space` wrote to
    `folder/space_config.json`. Relative paths are read from `folder`."""
    folder = Path(folder)
    path = folder / SETTINGS_FILE
    values: dict[str, Any] = {}
    if path.is_file():
        try:
            values = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise InputError(f"{path}: not valid JSON ({error})") from error
        if not isinstance(values, dict):
            raise InputError(f"{path}: expected a JSON object of settings")
    values.update({key: environ[key] for key in _VARIABLES if key in environ})
    try:
        settings = SpaceSettings.model_validate(values)
    except ValidationError as error:
        raise _settings_error(error, path, environ) from None
    config, template, examples = settings.retriever_config, settings.template, settings.examples
    return settings.model_copy(
        update={
            "model_id": _local(folder, settings.model_id),
            "retriever_config": config if isinstance(config, dict) else _local(folder, config),
            "template": template if template in (None, *TEMPLATES) else _local(folder, template),
            "examples": examples and _local(folder, examples),
        }
    )


def _settings_error(error: ValidationError, path: Path, environ: Mapping[str, str]) -> InputError:
    """One line for the first problem, naming the file or the variables it came from. Unknown
    keys come first: a misspelt key is why a setting looks unset."""
    problems = error.errors(include_url=False)
    unknown = sorted(str(p["loc"][0]) for p in problems if p["type"] == "extra_forbidden")
    if unknown:
        return InputError(f"{path}: unknown settings {unknown} (known: {list(_VARIABLES)})")
    key = problems[0]["loc"][0]
    if problems[0]["type"] in ("missing", "string_too_short"):
        return InputError(f"{key} is not set: set the Space variable, or push with push-space")
    return invalid(error, "Space variables" if key in environ else str(path))


def _local(folder: Path, value: str) -> str:
    """A relative path that exists in `folder` is read from there; anything else is kept."""
    candidate = folder / value
    return str(candidate) if not Path(value).is_absolute() and candidate.exists() else value


# ---------------------------------------------------------------------------------------------
# push-space


DEMO = Path("outputs/demo")  # what `make demo` writes: the Space's embedded default
SHIP_LIMIT_BYTES = 2**30  # local files a push puts into the Space repo; larger ones go to the Hub


def push_space(
    repo_id: str,
    model: str | None = None,
    retriever_config: str | os.PathLike | None = None,
    *,
    template: str | None = None,
    max_turns: int | None = None,
    top_k: int | None = None,
    results: str | None = None,
    examples: str | os.PathLike | None = None,
    private: bool = False,
    token: str | None = None,
) -> str:
    """Create the Space (gradio SDK) unless it exists and upload the app with its settings in
    one commit, both retried; returns the commit sha. Without a model, the Space runs the
    demo's trained model on its corpus (`make demo`'s output), so a free CPU Space works. A
    local model folder, index or corpus goes into the Space itself (up to 1 GiB in all)."""
    if model is None:
        if not (DEMO / "grpo").is_dir():
            raise InputError(
                f"{DEMO / 'grpo'} does not exist: run `make demo` first, or pass --model"
            )
        model, retriever_config = str(DEMO / "grpo"), retriever_config or DEMO / "retriever.yaml"
        examples = examples or DEMO / "questions" / "test.jsonl"
    if retriever_config is None:
        raise InputError("--retriever-config is needed with --model")
    config_path = Path(retriever_config)
    if not config_path.is_file():
        raise InputError(f"retriever config {config_path} is not a file")
    config = parse_config(config_path)
    shipped = _shipped(model, config, config_path)
    if template is not None:
        load_template(template)
    settings = SpaceSettings(
        model_id="model" if Path(model).exists() else _hub_model(model),
        retriever_config=RETRIEVER_FILE,
        template=template if template in (None, *TEMPLATES) else TEMPLATE_FILE,
        max_turns=max_turns,
        top_k=top_k,
        results=results,
        examples=EXAMPLES_FILE if examples else None,
    )
    with tempfile.TemporaryDirectory(prefix="research-r1-space-") as tmp:
        stage = Path(tmp) / "space"
        shutil.copytree(SPACE_DIR, stage, ignore=_SKIP)
        shutil.copytree(Path(__file__).resolve().parents[1], stage / "research_r1", ignore=_SKIP)
        for source, target in shipped.items():
            if source.is_dir():
                shutil.copytree(source, stage / target, ignore=_NOT_SHIPPED)
            else:
                shutil.copyfile(source, stage / target)
        (stage / RETRIEVER_FILE).write_text(yaml.safe_dump(_relocated(config, shipped)))
        if settings.template == TEMPLATE_FILE:
            shutil.copyfile(template, stage / TEMPLATE_FILE)
        if examples:
            shutil.copyfile(examples, stage / EXAMPLES_FILE)
        (stage / SETTINGS_FILE).write_text(
            json.dumps(settings.model_dump(by_alias=True), indent=2) + "\n"
        )
        space_card(None if settings.model_id == "model" else model).save(stage / "README.md")
        return hub.push_folder(
            stage,
            repo_id,
            repo_type="space",
            commit_message=f"Search agent demo for {model}",
            private=private,
            token=token,
            what=f"push Space {repo_id}",
        )


def _hub_model(model: str) -> str:
    try:
        validate_repo_id(model.partition("@")[0])
    except HFValidationError as error:
        raise InputError(
            f"--model {model!r} is neither a local folder nor a Hub repo id: {error}"
        ) from None
    return model


def _shipped(model: str, config: Any, config_path: Path) -> dict[Path, str]:
    """The local files the Space needs (a model folder, indexes, corpora), each with its name in
    the Space; refuses a loopback retrieval server and more than `SHIP_LIMIT_BYTES`."""
    if isinstance(config, RemoteConfig) and config.token is not None:
        raise InputError(
            f"retriever config {config_path}: key 'token' would be published with the Space: "
            "use token_env and set that variable as a secret of the Space"
        )
    if isinstance(config, RemoteConfig) and urlsplit(config.url).hostname in _LOOPBACK_HOSTS:
        raise InputError(
            f"retriever config {config_path}: key 'url' ({config.url}) is this machine, which "
            "the Space cannot reach: serve the retriever at a public address"
        )
    shipped = {Path(model): "model"} if Path(model).exists() else {}
    for value in _local_paths(config):
        name = f"retriever/{Path(value).name}"
        while name in shipped.values():  # two indexes of one name, from different folders
            name = f"retriever/{len(shipped)}-{Path(value).name}"
        shipped[Path(value)] = name
    for source in shipped:
        if not source.exists():
            raise InputError(f"retriever config {config_path}: {source} does not exist")
    size = sum(_size(source) for source in shipped)
    if size > SHIP_LIMIT_BYTES:
        raise InputError(
            f"{', '.join(map(str, shipped))}: {size / 2**30:.1f} GiB, more than a Space holds "
            "(1 GiB): push the model and the index to the Hub and use their ids and hf:// URIs"
        )
    return shipped


def _local_paths(config: Any) -> list[str]:
    """The index and corpus paths of a config that are not on the Hub."""
    if isinstance(config, RemoteConfig):
        return []
    sections = [config.bm25, config.dense] if isinstance(config, HybridConfig) else [config]
    values = [getattr(section, key) for section in sections for key in ("index", "corpus")]
    if isinstance(config, HybridConfig):
        values.append(config.corpus)
    return [value for value in values if value is not None and not hub.is_hub_uri(value)]


def _relocated(config: Any, shipped: Mapping[Path, str]) -> dict[str, Any]:
    """The config with each shipped path replaced by its place in the Space."""
    moved = {str(source): target for source, target in shipped.items()}

    def move(section: dict[str, Any]) -> dict[str, Any]:
        return {
            key: moved.get(value, value) if key in ("index", "corpus") else value
            for key, value in section.items()
        }

    kind = next(name for name, cls in TYPES.items() if isinstance(config, cls))
    dumped = {"type": kind, **move(config.model_dump(exclude_none=True))}
    for key in ("bm25", "dense"):
        if key in dumped:
            dumped[key] = move(dumped[key])
    return dumped


def _size(path: Path) -> int:
    """Bytes a push ships of `path` (what `_NOT_SHIPPED` leaves out not counted)."""
    if path.is_file():
        return path.stat().st_size
    skipped = _NOT_SHIPPED(str(path), [child.name for child in path.iterdir()])
    return sum(_size(child) for child in path.iterdir() if child.name not in skipped)


def space_card(model_id: str | None) -> SpaceCard:
    """spaces/search_agent/README.md with the header set for this push: the installed gradio
    as `sdk_version` (the version the app was tested with) and the Hub model it shows (none
    when the model is in the Space itself)."""
    try:
        gradio_version = version("gradio")
    except PackageNotFoundError:
        raise InputError(
            "gradio is not installed; the Space's sdk_version is the installed one: "
            'pip install "research-r1[space]"'
        ) from None
    card = SpaceCard.load(SPACE_DIR / "README.md")
    card.data.sdk = "gradio"
    card.data.sdk_version = gradio_version
    card.data.app_file = "app.py"
    card.data.models = [model_id] if model_id else None
    return card


@dataclass
class PushSpaceArguments:
    """Create (or update) a Gradio Space that shows a search agent at work: the app, a copy of
    research_r1, the retriever config and the settings go up in one commit, with any local model
    folder, index or corpus they need (up to 1 GiB). Without --model: the demo's trained model
    and corpus (run `make demo` first). The token comes from HF_TOKEN or `hf auth login`."""

    repo: str = field(metadata={"metavar": "ORG/NAME", "help": "The Space repo."})
    model: str | None = field(
        default=None, metadata={"help": "Hub model id or local folder (default: the demo's)."}
    )
    retriever_config: str | None = field(
        default=None, metadata={"metavar": "FILE", "help": "Retriever YAML (default: the demo's)."}
    )
    template: str | None = field(
        default=None,
        metadata={"help": "Template: a built-in name or a YAML file (default: the model's own)."},
    )
    max_turns: int | None = field(
        default=None, metadata={"help": "Searches per question (default: the model's)."}
    )
    top_k: int | None = field(
        default=None, metadata={"help": "Passages per search (default: the model's)."}
    )
    results: str | None = field(
        default=None,
        metadata={
            "metavar": "hf://datasets/ORG/NAME",
            "help": "Eval runs for the leaderboard tab.",
        },
    )
    examples: str | None = field(
        default=None, metadata={"metavar": "FILE", "help": "A QA file: its first questions."}
    )
    private: bool = field(default=False, metadata={"help": "Create the Space private."})


def run_push_space(args: PushSpaceArguments) -> int:
    sha = push_space(
        args.repo,
        args.model,
        args.retriever_config,
        template=args.template,
        max_turns=args.max_turns,
        top_k=args.top_k,
        results=args.results,
        examples=args.examples,
        private=args.private,
    )
    print(f"pushed Space {args.repo} (commit {sha[:12]})")
    return 0
