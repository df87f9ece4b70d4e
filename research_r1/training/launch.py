"""`research-r1 train RECIPE [--key value ...]`: the training process under `accelerate launch`.

As TRL's own `trl grpo` does: the recipe's parser takes the keys it knows, the recipe's
`accelerate_config` (a file, or the name of one of TRL's presets: `multi_gpu`, `zero3`, ...)
becomes accelerate's `--config_file`, and every other flag goes to accelerate's own launch parser
(`--num_processes`, `--machine_rank`, `--main_process_ip`, `--mixed_precision`, ...), so one
command starts one machine of a run of any size. `--help` lists every recipe key, as `trl grpo
--help` does, and our own flags.

With `--dry-run`, nothing is launched: `research_r1.training.dry_run` prints the resolved recipe,
what the run will fetch from the Hub and an estimate of its memory per GPU (`--gpu-memory`).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path

from accelerate.commands.launch import launch_command, launch_command_parser
from transformers import HfArgumentParser
from trl import TrlParser
from trl.cli.accelerate_config import resolve_accelerate_config_argument

from research_r1.errors import InputError, OneLineParser, closest
from research_r1.training.configs import RECIPE_DATACLASSES, Recipe, make_parser, recipe_argv

DEFAULT_GPU_MEMORY = "80GiB"
USAGE = "research-r1 train RECIPE [--key value ...] [--dry_run [--gpu_memory SIZE]] [--flag ...]"


@dataclass
class TrainArguments:
    """`research-r1 train`'s own flags, read wherever they appear after the recipe."""

    dry_run: bool = field(
        default=False,
        metadata={
            "help": "Launch nothing: print the resolved recipe, the files it fetches from the "
            "Hub and an estimate of its memory per GPU."
        },
    )
    gpu_memory: str | None = field(
        default=None,
        metadata={
            "help": "With --dry_run: the GPU's memory, e.g. 24GiB, 24GB or 80 (GiB); "
            f"{DEFAULT_GPU_MEMORY} when not given."
        },
    )


class _HelpParser(OneLineParser, TrlParser):
    """TRL's parser, whose mistakes are one line."""


class _OwnParser(OneLineParser, HfArgumentParser):
    """The parser of our own flags, whose mistakes are one line."""


def help_parser() -> TrlParser:
    """The parser `--help` prints: the recipe's keys, then ours."""
    parser = _HelpParser(
        (*RECIPE_DATACLASSES, TrainArguments),
        prog="research-r1 train",
        usage=USAGE,
        description="Train with GRPO from a recipe, under `accelerate launch` with the recipe's "
        "accelerate_config. Any recipe key below can be overridden on the command line "
        "(snake_case or kebab-case).",
        epilog="Any other --flag goes to `accelerate launch` (see `accelerate launch --help`), "
        "e.g. --num_processes 8, or --machine_rank 1 --main_process_ip IP.",
    )
    parser.add_argument("recipe", metavar="RECIPE", help="the recipe YAML (recipes/*.yaml)")
    return parser


def parse_train(argv: list[str]) -> tuple[list[str], TrainArguments]:
    """`RECIPE [--key value ...]` (recipe keys and accelerate's flags, in order) and our own
    flags, taken out of it wherever they appear."""
    if "-h" in argv or "--help" in argv:
        help_parser().parse_args(["--help"])  # prints every key and exits
    if not argv or argv[0].startswith("-"):
        help_parser().error("the recipe comes first")
    own = _OwnParser(TrainArguments, prog="research-r1 train", add_help=False, allow_abbrev=False)
    args, rest = own.parse_args_into_dataclasses(
        argv, return_remaining_strings=True, look_for_args_file=False
    )
    return rest, args


def launch_args(argv: list[str]) -> argparse.Namespace:
    """accelerate's launch arguments for `RECIPE [--key value ...]`: the flags the recipe does
    not know, the recipe's accelerate config, `--quiet` (a failed run ends with its own one-line
    error, not the launcher's traceback), and `-m research_r1.training.train` with the recipe's
    flags."""
    return parse_launch(argv)[1]


def parse_launch(argv: list[str]) -> tuple[Recipe, argparse.Namespace]:
    """The recipe's three dataclasses and accelerate's launch arguments (see `launch_args`)."""
    try:
        *recipe, yaml_unknown, flags_unknown = make_parser().parse_args_and_config(
            recipe_argv(argv), return_remaining_strings=True, separate_remaining_strings=True
        )
    except InputError:
        raise
    except ValueError as error:
        raise InputError(f"recipe: {error}") from error
    if yaml_unknown:
        raise InputError(f"recipe {argv[0]}: unknown keys {yaml_unknown}")
    config = accelerate_config_file(recipe[0].accelerate_config)
    recipe_flags = _without(argv, flags_unknown)
    args, unknown = launch_command_parser().parse_known_args(
        [
            *config,
            *flags_unknown,
            "--quiet",
            "--module",
            "research_r1.training.train",
            *recipe_flags,
        ]
    )
    if unknown:
        raise InputError(
            f"{' '.join(unknown)}: neither a recipe key nor an accelerate launch flag"
            + closest_key(unknown[0])
        )
    return tuple(recipe), args


def closest_key(flag: str) -> str:
    """` (did you mean --KEY?)` for the recipe key `flag` most likely misspells, else ''."""
    keys = [f"--{f.name}" for part in RECIPE_DATACLASSES for f in fields(part) if f.init]
    match = closest(flag.split("=")[0].replace("-", "_"), keys)
    return f" (did you mean {match}?)" if match else ""


def accelerate_config_file(name: str | None) -> list[str]:
    """accelerate's `--config_file` for the recipe's `accelerate_config`: a file, or the name of
    a preset TRL ships (`zero3`: its `accelerate_configs/zero3.yaml`), found as `trl grpo
    --accelerate_config` finds it."""
    if name is None:
        return []
    try:
        return resolve_accelerate_config_argument(["--accelerate_config", name])
    except ValueError:
        folder = resources.files("trl.accelerate_configs")
        presets = sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.is_file())
        raise InputError(
            f"accelerate_config: {name} is neither a file nor one of TRL's presets "
            f"({', '.join(presets)})"
        ) from None


def _without(items: list[str], subsequence: list[str]) -> list[str]:
    """`items` less `subsequence`, whose elements appear in `items` in that order."""
    rest, remaining = [], iter(subsequence)
    current = next(remaining, None)
    for item in items:
        if current is not None and item == current:
            current = next(remaining, None)
        else:
            rest.append(item)
    return rest


def run_train(parsed: tuple[list[str], TrainArguments]) -> int:
    argv, args = parsed
    if not Path(argv[0]).is_file():
        raise InputError(f"recipe {argv[0]} does not exist")
    if args.dry_run:  # imported here: it imports this module, and a launch does not need it
        from research_r1.training.dry_run import dry_run

        dry_run(argv, args.gpu_memory or DEFAULT_GPU_MEMORY)
        return 0
    if args.gpu_memory is not None:
        raise InputError("--gpu-memory: only read with --dry-run")
    launch_command(launch_args(argv))
    return 0
