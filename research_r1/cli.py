"""The `research-r1` command: one subcommand per job.

Each job lives in a module that declares its options as one dataclass, `<Job>Arguments`
(`<Job>` is the subcommand in CamelCase: `build-index` -> `BuildIndexArguments`), and does the
work in `run_<job>(args)` (`<job>` with `_` for `-`). Every subcommand is parsed the same way,
by TRL's `TrlParser` (transformers' `HfArgumentParser` plus `--config FILE.yaml`): options are
snake_case as in TRL and transformers (`--max_new_tokens`), the kebab-case spelling
(`--max-new-tokens`) is accepted too, a bool is a switch, abbreviations are refused, and any
option can come from a YAML file given with `--config`, flags on the command line overriding
it. A field with `metadata={"positional":
True}` is given without its flag (`research-r1 eval MODEL`). A job whose command line is not
one dataclass (`train` hands the flags its recipe does not know to `accelerate launch`) parses
its own: `parse_<job>(argv)` returns what `run_<job>` takes.

Only the module of the subcommand being run is imported, so `research-r1 --help` stays instant
and a module that fails to import breaks its own subcommand only.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

from research_r1 import kernels, outputs
from research_r1.errors import OneLineParser, closest, report

# subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "prepare-data": ("research_r1.data", "Write train/eval parquet splits with prompts."),
    "serve-retriever": ("research_r1.retrieval.server", "Serve a retriever over HTTP."),
    "build-index": ("research_r1.retrieval.cli", "Build a BM25 or dense (FAISS) index."),
    "search": ("research_r1.retrieval.cli", "Search with a retriever config; print a table."),
    "train": ("research_r1.training.launch", "Train with GRPO from a recipe (under accelerate)."),
    "push-space": ("research_r1.space.push", "Push the Gradio demo Space for a trained model."),
    "space": ("research_r1.space.app", "Run the demo app here (default: the demo's model)."),
    "demo": ("research_r1.demo", "Show on a CPU in minutes that GRPO teaches search."),
    "eval": ("research_r1.evaluation", "Evaluate a checkpoint on a published setting."),
    "leaderboard": (
        "research_r1.evaluation.leaderboard",
        "Merge eval runs into one leaderboard per setting.",
    ),
    "ask": (
        "research_r1.evaluation.ask",
        "Ask one question; watch the agent think and search, live.",
    ),
    "download": ("research_r1.evaluation.download", "Prefetch a checkpoint and its suite's index."),
}


def command_parser(arguments: type, prog: str, description: str) -> argparse.ArgumentParser:
    """The parser of one subcommand's dataclass: TRL's parser, with its positional fields."""
    from trl import TrlParser  # here: `research-r1 --help` needs none of TRL

    class CommandParser(OneLineParser, TrlParser):
        """`TrlParser` with positional fields and switches, whose mistakes are one line
        (`OneLineParser`). `HfArgumentParser` declares every
        field as `--name VALUE`, a bool one with an optional value that takes the next word
        (`eval --dry-run MODEL` would read MODEL as the bool); its one per-field hook,
        `_parse_dataclass_field`, is where a positional field is declared instead, and a bool
        as a switch (`--dry-run`; `--no-batching` for one that defaults to true)."""

        @staticmethod
        def _parse_dataclass_field(parser: Any, field: dataclasses.Field) -> None:
            if field.type is bool:
                names = dict.fromkeys([f"--{field.name}", f"--{field.name.replace('_', '-')}"])
                parser.add_argument(
                    *names,
                    dest=field.name,
                    action=argparse.BooleanOptionalAction if field.default else "store_true",
                    default=field.default,
                    help=field.metadata.get("help"),
                )
                return
            if not field.metadata.get("positional"):
                TrlParser._parse_dataclass_field(parser, field)
                return
            has_default = field.default is not dataclasses.MISSING
            many = "list" in str(field.type)
            parser.add_argument(
                field.name,
                metavar=field.metadata.get("metavar", field.name.upper()),
                help=field.metadata.get("help"),
                choices=field.metadata.get("choices"),
                nargs=("*" if has_default else "+") if many else ("?" if has_default else None),
                default=field.default if has_default else None,
            )

    epilog = (
        "Options are snake_case (kebab-case accepted); any of them can come from a YAML file of "
        "`option: value` lines given with --config FILE, flags overriding it."
    )
    if "output_dir" in {field.name for field in dataclasses.fields(arguments)}:
        epilog += f" {outputs.HELP}"
    return CommandParser(
        [arguments],
        prog=prog,
        description=description,
        formatter_class=_HelpFormatter,
        allow_abbrev=False,  # `--max_step 3` is an error, not a guess at --max_steps
        epilog=epilog,
    )


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default only where it says something: not None or False, nor where the help
    text already says what the default is."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class _TopParser(OneLineParser, argparse.ArgumentParser):
    """The commands' parser, whose mistakes are one line."""


def _top_parser() -> argparse.ArgumentParser:
    parser = _TopParser(prog="research-r1", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        subparsers.add_parser(name, help=help_text, description=help_text)
    return parser


def parse(argv: Sequence[str]) -> tuple[Callable[..., int | None], Any]:
    """The run function of `argv`'s subcommand and its parsed arguments."""
    argv = list(argv)
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    if command is not None and command not in COMMANDS:
        meant = closest(command, COMMANDS)
        hint = f"did you mean {meant}?" if meant else None
        _top_parser().error(f"unknown command {command!r}", hint)
    if command not in COMMANDS:
        _top_parser().parse_args(argv)  # prints the commands (--help) or the error, and exits
    rest = argv[argv.index(command) + 1 :]
    if command == "demo":
        kernels.pin()  # before the demo's imports compute with torch (see research_r1.kernels)
    module = importlib.import_module(COMMANDS[command][0])
    job = command.replace("-", "_")
    run = getattr(module, f"run_{job}")
    own_parser = getattr(module, f"parse_{job}", None)
    if own_parser is not None:
        return run, own_parser(rest)
    arguments = getattr(module, "".join(part.title() for part in job.split("_")) + "Arguments")
    prog, description = f"research-r1 {command}", COMMANDS[command][1]
    doc = arguments.__doc__ or ""
    if not doc.startswith(f"{arguments.__name__}("):  # not the signature dataclasses writes
        description = doc
    parser = command_parser(arguments, prog, description)
    import yaml  # here, as TRL imports it: `research-r1 --help` needs none of it

    try:
        args, unknown = parser.parse_args_and_config(rest, return_remaining_strings=True)
    except (OSError, ValueError, IndexError, yaml.YAMLError) as error:  # reading --config FILE
        if "--config" not in rest:
            raise
        parser.error(_config_error(error, rest[rest.index("--config") + 1 :][:1]))
    if unknown:
        parser.unrecognized(unknown)  # one line, exit 2
    return run, args


def _config_error(error: Exception, path: list[str]) -> str:
    """What is wrong with `--config FILE` (`path`: FILE, or none given), as TrlParser found it."""
    if not path:
        return "argument --config: expected one argument"
    if isinstance(error, OSError):
        return f"--config {path[0]}: {error.strerror or error}"
    reason = " ".join(str(error).split())  # a YAML error spans lines
    return f"--config {path[0]}: {reason}"


def main(argv: Sequence[str] | None = None) -> int:
    run, args = parse(sys.argv[1:] if argv is None else argv)
    from research_r1.hub import user_error  # here: `research-r1 --help` needs no Hub client

    return report(lambda: run(args), user_error)


if __name__ == "__main__":
    sys.exit(main())
