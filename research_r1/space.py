"""The demo Space: a chat UI that shows a trained search agent at work, and `push-space`.

The app (spaces/search_agent/app.py) plays one episode per question with the project's own
rollout and shows it step by step; `transcript_turns` splits the episode into those steps, and
`load_settings` reads what the app needs (model, retriever, template, limits).

`push-space` uploads, in one commit: the app folder; a copy of this package's source, because
research_r1 is not on PyPI and a copy pins the very code the model was trained with (the Space
imports it from its root, next to app.py; requirements.txt lists the package's runtime
dependencies); the retriever config as `retriever.yaml`; the settings as `space_config.json`;
and the README, whose YAML header configures the Space (sdk, sdk_version, app_file, models).
The Hub reads no variables from that header, so settings travel in `space_config.json`; Space
variables of the same names (MODEL_ID, RETRIEVER_CONFIG, TEMPLATE, MAX_TURNS, TOPK, and RESULTS:
the Hub results dataset its leaderboard tab reads), set on the Space's settings page, override it
without a new push.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import tempfile
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from importlib.metadata import PackageNotFoundError, version
from itertools import groupby
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

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
from research_r1.protocol import (
    TEMPLATES,
    Protocol,
    ShownPassage,
    extract_answer,
    load_template,
    parse_passages,
    split_turn,
)
from research_r1.retrieval import Passage
from research_r1.retrieval.config import HybridConfig, RemoteConfig, parse_config
from research_r1.rollout import Episode

SPACE_DIR = Path(__file__).resolve().parent.parent / "spaces" / "search_agent"
SETTINGS_FILE = "space_config.json"
RETRIEVER_FILE = "retriever.yaml"
TEMPLATE_FILE = "template.yaml"

_LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "::1", "0.0.0.0"}
_SKIP = shutil.ignore_patterns("__pycache__", "*.pyc", ".*")


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
    passages = parse_passages(body.strip(), protocol)
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
    template: str = Field("search_r1", alias="TEMPLATE")
    max_turns: int = Field(4, alias="MAX_TURNS", ge=0)
    top_k: int = Field(3, alias="TOPK", ge=1)
    results: str | None = Field(None, alias="RESULTS")  # hf://datasets/ORG/NAME of eval runs

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
    config, template = settings.retriever_config, settings.template
    return settings.model_copy(
        update={
            "retriever_config": config if isinstance(config, dict) else _local(folder, config),
            "template": template if template in TEMPLATES else _local(folder, template),
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


def push_space(
    repo_id: str,
    model_id: str,
    retriever_config: str | os.PathLike,
    *,
    template: str = "search_r1",
    max_turns: int = 4,
    top_k: int = 3,
    results: str | None = None,
    private: bool = False,
    token: str | None = None,
) -> str:
    """Create the Space (gradio SDK) unless it exists and upload the app with its settings in
    one commit, both retried; returns the commit sha."""
    config_path = _check_space_inputs(model_id, retriever_config, template, max_turns, top_k)
    settings = SpaceSettings(
        model_id=model_id,
        retriever_config=RETRIEVER_FILE,
        template=template if template in TEMPLATES else TEMPLATE_FILE,
        max_turns=max_turns,
        top_k=top_k,
        results=results,
    )
    with tempfile.TemporaryDirectory(prefix="research-r1-space-") as tmp:
        stage = Path(tmp) / "space"
        shutil.copytree(SPACE_DIR, stage, ignore=_SKIP)
        shutil.copytree(Path(__file__).resolve().parent, stage / "research_r1", ignore=_SKIP)
        shutil.copyfile(config_path, stage / RETRIEVER_FILE)
        if template not in TEMPLATES:
            shutil.copyfile(template, stage / TEMPLATE_FILE)
        (stage / SETTINGS_FILE).write_text(
            json.dumps(settings.model_dump(by_alias=True), indent=2) + "\n"
        )
        space_card(model_id).save(stage / "README.md")
        return hub.push_folder(
            stage,
            repo_id,
            repo_type="space",
            commit_message=f"Search agent demo for {model_id}",
            private=private,
            token=token,
            what=f"push Space {repo_id}",
        )


def space_card(model_id: str) -> SpaceCard:
    """spaces/search_agent/README.md with the header set for this push: the installed gradio
    as `sdk_version` (the version the app was tested with) and the model it shows."""
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
    card.data.models = [model_id]
    return card


def _check_space_inputs(
    model_id: str,
    retriever_config: str | os.PathLike,
    template: str,
    max_turns: int,
    top_k: int,
) -> Path:
    """Refuse what the Space could not load; returns the retriever config's path."""
    if not SPACE_DIR.is_dir():
        raise InputError(f"the Space's sources {SPACE_DIR} are missing: run from a source checkout")
    if Path(model_id).exists():
        raise InputError(
            f"--model {model_id} is a local path; the Space loads the model from the Hub: "
            "push the checkpoint and pass its repo id"
        )
    try:
        validate_repo_id(model_id)
    except HFValidationError as error:
        raise InputError(f"--model {model_id!r} is not a Hub repo id: {error}") from None
    path = Path(retriever_config)
    if not path.is_file():
        raise InputError(f"retriever config {path} is not a file")
    _check_reachable(parse_config(path), f"retriever config {path}")
    load_template(template)
    if max_turns < 0 or top_k < 1:
        raise InputError(f"--max-turns must be >= 0 and --top-k >= 1, got {max_turns}, {top_k}")
    return path


def _check_reachable(config: Any, where: str) -> None:
    """Indexes and corpora must be `hf://` URIs and a remote server must not be this machine:
    the Space can read neither local files nor loopback servers of the machine that pushes."""
    if isinstance(config, RemoteConfig):
        if urlsplit(config.url).hostname in _LOOPBACK_HOSTS:
            raise InputError(
                f"{where}: key 'url' ({config.url}) is this machine, which the Space cannot "
                "reach: serve the retriever at a public address"
            )
        return
    sections = [config.bm25, config.dense] if isinstance(config, HybridConfig) else [config]
    paths = [(key, getattr(section, key)) for section in sections for key in ("index", "corpus")]
    if isinstance(config, HybridConfig):
        paths.append(("corpus", config.corpus))
    for key, value in paths:
        if value is not None and not hub.is_hub_uri(value):
            raise InputError(
                f"{where}: key {key!r} is a local path ({value}) the Space cannot read: "
                "push it to the Hub and use its hf:// URI"
            )


def configure_push_space(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Create (or update) a Gradio Space that shows MODEL_ID searching and answering: the "
        "app, a copy of research_r1, the retriever config and the settings go up in one commit. "
        "The token comes from HF_TOKEN or `hf auth login`."
    )
    parser.add_argument("--repo", required=True, metavar="ORG/NAME", help="the Space repo")
    parser.add_argument("--model", required=True, metavar="MODEL_ID", help="Hub model repo id")
    parser.add_argument(
        "--retriever-config",
        required=True,
        metavar="FILE",
        help="retriever YAML whose index and corpus are hf:// URIs (or a remote server)",
    )
    parser.add_argument(
        "--template",
        default="search_r1",
        help="built-in template (search_r1, research_base, research_instruct) or a YAML file",
    )
    parser.add_argument("--max-turns", type=int, default=4, help="searches per question")
    parser.add_argument("--top-k", type=int, default=3, help="passages per search")
    parser.add_argument(
        "--results", metavar="hf://datasets/ORG/NAME", help="eval runs for the leaderboard tab"
    )
    parser.add_argument("--private", action="store_true", help="create the Space private")


def run_push_space(args: argparse.Namespace) -> int:
    sha = push_space(
        args.repo,
        args.model,
        args.retriever_config,
        template=args.template,
        max_turns=args.max_turns,
        top_k=args.top_k,
        results=args.results,
        private=args.private,
    )
    print(f"pushed Space {args.repo} (commit {sha[:12]})")
    return 0
