"""`research-r1 train RECIPE [--key value ...]`: the training process under `accelerate launch`.

As TRL's own `trl grpo` does: the recipe's parser takes the keys it knows, the recipe's
`accelerate_config` becomes accelerate's `--config_file`, and every other flag goes to
accelerate's own launch parser (`--num_processes`, `--machine_rank`, `--main_process_ip`,
`--mixed_precision`, ...), so one command starts one machine of a run of any size.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from accelerate.commands.launch import launch_command, launch_command_parser

from research_r1.configs import make_parser, recipe_argv
from research_r1.errors import InputError


def configure_train(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Train with GRPO from a recipe, under `accelerate launch` with the recipe's "
        "accelerate_config. Any recipe key can be overridden: --key value; any other flag goes "
        "to accelerate launch (e.g. --num_processes 8, --machine_rank 1 --main_process_ip IP)."
    )
    parser.add_argument("recipe", help="recipe YAML (recipes/*.yaml)")
    parser.add_argument("overrides", nargs=argparse.REMAINDER, help="--key value pairs")


def launch_args(argv: list[str]) -> argparse.Namespace:
    """accelerate's launch arguments for `RECIPE [--key value ...]`: the flags the recipe does
    not know, the recipe's accelerate config, `--quiet` (a failed run ends with its own one-line
    error, not the launcher's traceback), and `-m research_r1.train` with the recipe's flags."""
    try:
        script, *_, yaml_unknown, flags_unknown = make_parser().parse_args_and_config(
            recipe_argv(argv), return_remaining_strings=True, separate_remaining_strings=True
        )
    except ValueError as error:
        raise InputError(f"recipe: {error}") from error
    if yaml_unknown:
        raise InputError(f"recipe {argv[0]}: unknown keys {yaml_unknown}")
    config = ["--config_file", script.accelerate_config] if script.accelerate_config else []
    if script.accelerate_config and not Path(script.accelerate_config).is_file():
        raise InputError(f"accelerate_config: {script.accelerate_config} does not exist")
    recipe_flags = _without(argv, flags_unknown)
    args, unknown = launch_command_parser().parse_known_args(
        [*config, *flags_unknown, "--quiet", "--module", "research_r1.train", *recipe_flags]
    )
    if unknown:
        raise InputError(f"{' '.join(unknown)}: neither a recipe key nor an accelerate launch flag")
    return args


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
    if not Path(args.recipe).is_file():
        raise InputError(f"recipe {args.recipe} does not exist")
    launch_command(launch_args([args.recipe, *args.overrides]))
    return 0
