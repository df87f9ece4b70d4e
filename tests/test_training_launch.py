"""`research-r1 train` (research_r1.training.launch): recipe keys go to training and every other
flag to `accelerate launch`, `--help` lists every recipe key, our own flags are read wherever
they stand, and a failed run under the real launcher ends with one line."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest
import trl
from helpers import ROOT

from research_r1.cli import main as cli_main
from research_r1.training import launch
from research_r1.training.configs import RECIPE_DATACLASSES


def test_research_r1_train_hands_every_other_flag_to_accelerate(in_repo, monkeypatch, capsys):
    launched = []
    monkeypatch.setattr(launch, "launch_command", launched.append)
    recipe = "recipes/tiny_cpu_grpo.yaml"

    assert cli_main(["train", recipe, "--max_steps", "3"]) == 0
    (run,) = launched
    assert (run.config_file, run.quiet, run.module, run.training_script) == (
        "recipes/accelerate/cpu.yaml",
        True,
        True,
        "research_r1.training.train",
    )
    assert run.training_script_args == [recipe, "--max_steps", "3"]

    # Any accelerate flag goes to accelerate; recipe keys (and a bare resume flag) to training.
    multi = "recipes/accelerate/multi_node.yaml"
    argv = [
        *("--machine_rank", "1", "--learning_rate", "1e-5", "--main_process_ip=10.0.0.2"),
        *("--num_processes", "16", "--mixed_precision", "bf16", "--resume_from_checkpoint"),
    ]
    assert cli_main(["train", recipe, "--accelerate_config", multi, *argv]) == 0
    run = launched[-1]
    assert (run.config_file, run.machine_rank, run.main_process_ip) == (multi, 1, "10.0.0.2")
    assert (run.num_processes, run.mixed_precision) == (16, "bf16")
    assert run.training_script_args == [
        *(recipe, "--accelerate_config", multi, "--learning_rate", "1e-5"),
        "--resume_from_checkpoint",
    ]

    # A preset by name is TRL's own file, found as `trl grpo --accelerate_config` finds it.
    assert cli_main(["train", recipe, "--accelerate_config", "zero3"]) == 0
    trl_presets = Path(trl.__file__).parent / "accelerate_configs"
    assert launched[-1].config_file == str(trl_presets / "zero3.yaml")

    for argv, message in [
        (["recipes/missing.yaml"], "error: recipe recipes/missing.yaml does not exist"),
        (
            [recipe, "--accelerate_config", "nope.yaml"],
            "error: accelerate_config: nope.yaml is neither a file nor one of TRL's presets "
            "(fsdp1, fsdp2, multi_gpu, single_gpu, zero1, zero2, zero3)",
        ),
        ([recipe, "--no_such_key", "1"], "error: --no_such_key: neither a recipe key nor an"),
    ]:
        capsys.readouterr()
        assert cli_main(["train", *argv]) == 2
        assert capsys.readouterr().err.startswith(message)
    assert len(launched) == 3


def test_train_help_lists_every_recipe_key_and_our_flags(capsys):
    """As `trl grpo --help` does: every key of the recipe's dataclasses, then ours, and where
    any other flag goes."""
    with pytest.raises(SystemExit) as done:
        cli_main(["train", "recipes/qwen7b_grpo.yaml", "--max_steps", "3", "--help"])
    out = capsys.readouterr().out
    assert done.value.code == 0
    keys = [field.name for part in RECIPE_DATACLASSES for field in fields(part) if field.init]
    flags = set(re.findall(r"^  (--\w+)", out, re.MULTILINE))
    assert {f"--{key}" for key in keys} <= flags
    assert {"--max_turns", "--retriever", "--lora_r", "--dry_run", "--gpu_memory"} <= flags
    assert "--dry-run" in out and "--gpu-memory" in out
    assert "Any other --flag goes to `accelerate launch`" in " ".join(out.split())


def test_our_flags_are_read_wherever_they_appear():
    argv, args = launch.parse_train(
        ["r.yaml", "--gpu_memory", "24GiB", "--max_steps", "3", "--dry-run", "--num_processes", "2"]
    )
    assert argv == ["r.yaml", "--max_steps", "3", "--num_processes", "2"]
    assert (args.dry_run, args.gpu_memory) == (True, "24GiB")
    argv, args = launch.parse_train(["r.yaml", "--dry_run", "false", "--resume_from_checkpoint"])
    assert (argv, args.dry_run, args.gpu_memory) == (
        ["r.yaml", "--resume_from_checkpoint"],
        False,
        None,
    )


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["--dry-run", "r.yaml"], "the recipe comes first"),
        (["r.yaml", "--gpu_memory"], "argument --gpu_memory/--gpu-memory: expected one argument"),
    ],
)
def test_a_mistake_in_our_flags_is_one_line_without_the_usage(argv, line, capsys):
    with pytest.raises(SystemExit) as done:
        launch.parse_train(argv)
    assert done.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        f"research-r1 train: error: {line} (research-r1 train --help lists the options)"
    ]


@pytest.mark.slow
# `accelerate launch` in a subprocess with a 300 s limit of its own.
@pytest.mark.timeout(400)
def test_a_failed_run_through_the_launcher_ends_with_one_line(tmp_path):
    """`research-r1 train` under the real `accelerate launch`: our error, no launcher traceback."""
    run = subprocess.run(
        [
            *(sys.executable, "-m", "research_r1.cli", "train"),
            str(ROOT / "recipes" / "tiny_cpu_grpo.yaml"),
            *("--accelerate_config", str(ROOT / "recipes" / "accelerate" / "cpu.yaml")),
            *("--dataset_name", str(tmp_path / "nothing"), "--template", "search_r1"),
            *("--output_dir", str(tmp_path / "run")),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert run.returncode != 0
    expected = (
        f"error: dataset_name: no train.parquet (dataset_train_split) in {tmp_path / 'nothing'}"
    )
    assert expected in run.stderr
    assert "Traceback" not in run.stderr and "CalledProcessError" not in run.stderr


@pytest.mark.parametrize(
    ("flags", "line"),
    [
        (
            ["--max_step", "3"],
            "error: --max_step: neither a recipe key nor an accelerate launch flag "
            "(did you mean --max_steps?)",
        ),
        (
            ["--max_steps", "three"],
            "error: recipe: argument --max_steps/--max-steps: invalid int value: 'three'",
        ),
    ],
    ids=["misspelled", "bad value"],
)
def test_a_recipe_key_mistake_is_one_line(flags, line, capsys):
    """Not a guess at the key it begins (`--max_step` is no `--max_steps`), not the ~200 lines of
    usage before a bad value: one line, naming what to fix."""
    assert cli_main(["train", "recipes/tiny_cpu_grpo.yaml", *flags]) == 2
    assert capsys.readouterr().err.splitlines() == [line]
