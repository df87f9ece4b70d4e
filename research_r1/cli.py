"""The `research-r1` command: one subcommand per job.

Each job lives in a module that exposes `configure_<job>(parser)` to declare its arguments and
`run_<job>(args)` to do the work (`<job>` is the subcommand with `-` as `_`). Only the module of
the subcommand being run is imported, so `research-r1 --help` stays instant and a module that
fails to import breaks its own subcommand only.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from research_r1.errors import report

# subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "prepare-data": ("research_r1.data", "Write train/eval parquet splits with prompts."),
    "serve-retriever": ("research_r1.retrieval.server", "Serve a retriever over HTTP."),
    "build-index": ("research_r1.retrieval.cli", "Build a BM25 or dense (FAISS) index."),
    "search": ("research_r1.retrieval.cli", "Search with a retriever config; print a table."),
    "train": ("research_r1.launch", "Train with GRPO from a recipe (under accelerate)."),
    "push-space": ("research_r1.space", "Push the Gradio demo Space for a trained model."),
    "space": ("research_r1.app", "Run the demo app here (default: the demo's model)."),
    "demo": ("research_r1.demo", "Show on a CPU in minutes that GRPO teaches search."),
    "eval": ("research_r1.evaluation", "Evaluate a checkpoint on a published setting."),
    "leaderboard": ("research_r1.leaderboard", "Merge eval runs into one leaderboard per setting."),
    "ask": ("research_r1.ask", "Ask one question; watch the agent think and search, live."),
    "download": ("research_r1.download", "Prefetch a checkpoint and its suite's index."),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Every subcommand with its help line; only `command`'s module is imported, for its
    arguments and the function that runs it."""
    parser = argparse.ArgumentParser(prog="research-r1", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        if name == command:
            module = importlib.import_module(module_name)
            job = name.replace("-", "_")
            getattr(module, f"configure_{job}")(sub)
            sub.set_defaults(_run=getattr(module, f"run_{job}"))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    args = build_parser(command).parse_args(argv)
    return report(lambda: args._run(args))


if __name__ == "__main__":
    sys.exit(main())
