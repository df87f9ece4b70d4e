"""The options of `research-r1 eval`, and those every job that plays a model shares.

`ModelArguments` names the model, how it is played (its family or a template) and what it
searches (a suite's retriever or another); `PlayArguments` adds an episode's budgets and the
generation backend. `eval`, `ask`, `download` and the app (`research-r1 space`) extend them, so
an option is declared once and means the same in every command. Python callers (the eval after
training, `ask`, the app) build these dataclasses; the command line parses into them
(`research_r1.cli`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from research_r1.data import FLASHRAG_REPO
from research_r1.evaluation.suites import SUITES

METHODS = ("agent", "rag", "direct")
MODEL_HELP = "local folder or Hub model id, optionally MODEL@REVISION"


@dataclass(kw_only=True)
class ModelArguments:
    """Which model, played how, searching what: all `download` needs to find what a run reads."""

    model: str = field(metadata={"help": MODEL_HELP})
    family: str | None = field(
        default=None,
        metadata={
            "help": "play the model as this published family's evaluation does (for a "
            "checkpoint trained with its code under another name; default: the family its name "
            "or model card names)"
        },
    )
    template: str | None = field(
        default=None,
        metadata={
            "help": "template (built-in name or YAML) for unknown models (default: the model "
            "family's own)"
        },
    )
    suite: str | None = field(
        default=None,
        metadata={"choices": sorted(SUITES), "help": "setting (default: the model family's)"},
    )
    # A path or hf:// URI; from Python also the config itself (the Space's settings may hold one).
    retriever: dict[str, Any] | str | None = field(
        default=None, metadata={"help": "retriever config (default: the suite's)"}
    )


@dataclass(kw_only=True)
class PlayArguments(ModelArguments):
    """The model's episodes: their budgets and the generation backend (`ask` and the app play
    one question at a time with these, as `eval` plays a set)."""

    top_k: int | None = field(
        default=None, metadata={"help": "passages per search (default: the family's)"}
    )
    max_turns: int | None = field(
        default=None, metadata={"help": "searches per question (default: the family's)"}
    )
    backend: Literal["auto", "transformers", "vllm"] = field(
        default="auto", metadata={"help": "generation"}
    )


@dataclass(kw_only=True)
class EvalArguments(PlayArguments):
    """Evaluate a checkpoint (a local folder or Hub id, optionally @revision) with its own
    template on a published setting: traces, results.json and results.md per method."""

    model: str = field(metadata={"positional": True, "help": MODEL_HELP})
    datasets: str | None = field(
        default=None,
        metadata={
            "help": "comma-separated, as prepare-data takes them (names, files, NAME=FILE); "
            "default: the suite's"
        },
    )
    split: str | None = field(
        default=None, metadata={"help": "split of every dataset (default: the suite's, or test)"}
    )
    source: str = field(default=FLASHRAG_REPO, metadata={"help": "where named datasets come from"})
    method: str = field(
        default="agent", metadata={"help": f"comma-separated: {', '.join(METHODS)}"}
    )
    decoding: Literal["greedy", "upstream"] = field(
        default="greedy",
        metadata={
            "help": "greedy, or sample as the family's own evaluation did (seeded) where it sampled"
        },
    )
    subset: int | None = field(
        default=None,
        metadata={"help": "a fixed sample per set, Bamboogle whole (default: the suite's, or all)"},
    )
    limit: int | None = field(
        default=None, metadata={"help": "the first N questions of each set (default: all)"}
    )
    skip_bad: bool = field(default=False, metadata={"help": "skip bad rows and count them"})
    batch_size: int = field(default=16, metadata={"help": "questions played together"})
    tensor_parallel_size: int = field(default=1, metadata={"help": "vLLM only"})
    output_dir: Path | None = field(
        default=None,
        metadata={
            "help": "output folder (default: outputs/eval/MODEL-DIGEST, one per model and setting)",
            "metavar": "DIR",
        },
    )
    overwrite: bool = field(
        default=False,
        metadata={
            "help": "replace the traces of another run in --output_dir instead of refusing to "
            "mix them"
        },
    )
    push_to_hub: str | None = field(
        default=None,
        metadata={
            "metavar": "ORG/NAME",
            "help": "upload the run (results.json, results.md, traces) to this Hub results dataset",
        },
    )
    update_model_card: bool = field(
        default=False,
        metadata={
            "help": "write the scores into the model card's model-index (local README.md or the "
            "Hub)"
        },
    )
    dry_run: bool = field(
        default=False, metadata={"help": "print the resolved settings and load nothing"}
    )
