"""`research-r1 push-space`: stage the Space's folder and upload it to a Hub Space, in one commit.

What goes up: the Space's own folder, `spaces/search_agent/` (its entry app.py and
requirements.txt); a copy of this package's source, because research_r1 is not on PyPI and a
copy pins the very code the model was trained with (the Space imports it from its root, next to
app.py; requirements.txt lists the package's runtime dependencies); the retriever config as
`retriever.yaml`; the settings as `space_config.json` (read back by `settings.py`, under the
Space variables); and the README, whose YAML header configures the Space (sdk, sdk_version,
app_file, models). Without a model, `push-space` ships what `make demo` wrote (model, BM25
index, corpus, questions) into the Space itself. The folder is staged in a temporary folder
(under $TMPDIR), removed once the upload is done: the push writes nothing else locally.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from huggingface_hub import SpaceCard
from huggingface_hub.utils import HFValidationError, validate_repo_id

from research_r1 import hub, outputs
from research_r1.errors import InputError
from research_r1.protocol import TEMPLATES, load_template
from research_r1.retrieval.config import TYPES, HybridConfig, RemoteConfig, parse_config
from research_r1.space.settings import SETTINGS_FILE, SpaceSettings

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # research_r1/, copied into the Space
SPACE_DIR = PACKAGE_DIR.parent / "spaces" / "search_agent"  # the Space's own files
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

SHIP_LIMIT_BYTES = 2**30  # local files a push puts into the Space repo; larger ones go to the Hub


def push_space(
    repo_id: str,
    model: str | None = None,
    retriever: str | os.PathLike | None = None,
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
        demo = outputs.demo_dir()  # what `make demo` writes: the Space's embedded default
        if not (demo / "grpo").is_dir():
            raise InputError(
                f"{demo / 'grpo'} does not exist: run `make demo` first, or pass --model"
            )
        model, retriever = str(demo / "grpo"), retriever or demo / "retriever.yaml"
        examples = examples or demo / "questions" / "test.jsonl"
    if retriever is None:
        raise InputError("--retriever is needed with --model")
    config_path = Path(retriever)
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
        shutil.copytree(PACKAGE_DIR, stage / "research_r1", ignore=_SKIP)
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
        default=None,
        metadata={"help": "Hub model id or local folder (default: the demo's, outputs/demo/grpo)."},
    )
    retriever: str | None = field(
        default=None,
        metadata={
            "metavar": "FILE",
            "help": "Retriever YAML (default: the demo's, outputs/demo/retriever.yaml).",
        },
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
        default=None,
        metadata={
            "metavar": "FILE",
            "help": "A QA file: its first questions (default: the demo's held-out questions "
            "without --model, else none).",
        },
    )
    private: bool = field(default=False, metadata={"help": "Create the Space private."})


def run_push_space(args: PushSpaceArguments) -> int:
    sha = push_space(
        args.repo,
        args.model,
        args.retriever,
        template=args.template,
        max_turns=args.max_turns,
        top_k=args.top_k,
        results=args.results,
        examples=args.examples,
        private=args.private,
    )
    print(f"pushed Space {args.repo} (commit {sha[:12]})")
    return 0
