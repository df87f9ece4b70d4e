"""`research-r1 train RECIPE [--key value ...]`: the training process under `accelerate launch`.

As TRL's own `trl grpo` does: the recipe's parser takes the keys it knows, the recipe's
`accelerate_config` becomes accelerate's `--config_file`, and every other flag goes to
accelerate's own launch parser (`--num_processes`, `--machine_rank`, `--main_process_ip`,
`--mixed_precision`, ...), so one command starts one machine of a run of any size.

With `--dry-run`, nothing is launched: `research_r1.dry_run` prints the resolved recipe, what
the run will fetch from the Hub and an estimate of its memory per GPU (`--gpu-memory`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from accelerate.commands.launch import launch_command, launch_command_parser

from research_r1.configs import Recipe, make_parser, recipe_argv
from research_r1.errors import InputError

DEFAULT_GPU_MEMORY = "80GiB"


def configure_train(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Train with GRPO from a recipe, under `accelerate launch` with the recipe's "
        "accelerate_config. Any recipe key can be overridden: --key value; any other flag goes "
        "to accelerate launch (e.g. --num_processes 8, --machine_rank 1 --main_process_ip IP)."
    )
    _add_own_flags(parser)
    parser.add_argument("recipe", help="recipe YAML (recipes/*.yaml)")
    parser.add_argument("overrides", nargs=argparse.REMAINDER, help="--key value pairs")


def _add_own_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="launch nothing: print the resolved recipe, the files it fetches from the Hub and "
        "an estimate of its memory per GPU",
    )
    parser.add_argument(
        "--gpu-memory",
        help=f"with --dry-run: the GPU's memory, e.g. 24GiB, 24GB or 80 (GiB); default "
        f"{DEFAULT_GPU_MEMORY}",
    )


def launch_args(argv: list[str]) -> argparse.Namespace:
    """accelerate's launch arguments for `RECIPE [--key value ...]`: the flags the recipe does
    not know, the recipe's accelerate config, `--quiet` (a failed run ends with its own one-line
    error, not the launcher's traceback), and `-m research_r1.train` with the recipe's flags."""
    return parse_launch(argv)[1]


def parse_launch(argv: list[str]) -> tuple[Recipe, argparse.Namespace]:
    """The recipe's three dataclasses and accelerate's launch arguments (see `launch_args`)."""
    try:
        *recipe, yaml_unknown, flags_unknown = make_parser().parse_args_and_config(
            recipe_argv(argv), return_remaining_strings=True, separate_remaining_strings=True
        )
    except ValueError as error:
        raise InputError(f"recipe: {error}") from error
    if yaml_unknown:
        raise InputError(f"recipe {argv[0]}: unknown keys {yaml_unknown}")
    script = recipe[0]
    config = ["--config_file", script.accelerate_config] if script.accelerate_config else []
    if script.accelerate_config and not Path(script.accelerate_config).is_file():
        raise InputError(f"accelerate_config: {script.accelerate_config} does not exist")
    recipe_flags = _without(argv, flags_unknown)
    args, unknown = launch_command_parser().parse_known_args(
        [*config, *flags_unknown, "--quiet", "--module", "research_r1.train", *recipe_flags]
    )
    if unknown:
        raise InputError(f"{' '.join(unknown)}: neither a recipe key nor an accelerate launch flag")
    return tuple(recipe), args


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


def run_train(args: argparse.Namespace) -> int:
    # `overrides` takes every flag after the recipe, ours too: read them from there as well.
    own = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    _add_own_flags(own)
    later, overrides = own.parse_known_args(args.overrides)
    dry_run = args.dry_run or later.dry_run
    gpu_memory = later.gpu_memory or args.gpu_memory
    if not Path(args.recipe).is_file():
        raise InputError(f"recipe {args.recipe} does not exist")
    if dry_run:  # imported here: it imports this module, and a launch does not need it
        from research_r1.dry_run import dry_run as report_dry_run

        report_dry_run([args.recipe, *overrides], gpu_memory or DEFAULT_GPU_MEMORY)
        return 0
    if gpu_memory is not None:
        raise InputError("--gpu-memory: only read with --dry-run")
    launch_command(launch_args([args.recipe, *overrides]))
    return 0
