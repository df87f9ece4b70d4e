"""The `research-r1` command (research_r1.cli): `--help` imports no job module, and a subcommand
that cannot import breaks only itself."""

from __future__ import annotations

import subprocess
import sys
import types
from dataclasses import dataclass, field

import pytest

from research_r1 import cli
from research_r1.cli import main as cli_main


@pytest.mark.slow
def test_the_cli_imports_only_the_subcommand_it_runs():
    """`research-r1 --help` imports no job module (TRL alone takes seconds), `research-r1 search`
    only its own."""
    code = (
        "import contextlib, io, sys; from research_r1 import cli\n"
        "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        "    cli.parse({!r})\n"
        "print(' '.join(m for m in ('torch', 'trl', 'research_r1.retrieval.cli', "
        "'research_r1.training.train') if m in sys.modules))"
    )

    def imported(argv: list[str]) -> set[str]:
        run = subprocess.run(
            [sys.executable, "-c", code.format(argv)], capture_output=True, text=True
        )
        assert run.returncode == 0, run.stderr
        return set(run.stdout.split())

    assert imported(["--help"]) == set()
    searched = imported(["search", "--help"])
    assert "research_r1.retrieval.cli" in searched and "research_r1.training.train" not in searched


def test_a_subcommand_that_cannot_import_breaks_only_itself(monkeypatch, capsys):
    monkeypatch.setitem(cli.COMMANDS, "demo", ("research_r1.no_such_module", "broken"))
    with pytest.raises(SystemExit) as done:
        cli_main(["search", "--help"])
    assert done.value.code == 0 and "--config" in capsys.readouterr().out
    with pytest.raises(ModuleNotFoundError, match=r"research_r1\.no_such_module"):
        cli_main(["demo"])


# One argument style: a dataclass per subcommand, parsed by TRL's parser with positionals and
# switches, from flags in either spelling or from a YAML file.


@dataclass
class ToyArguments:
    """A toy job."""

    queries: list[str] = field(metadata={"positional": True, "help": "the queries"})
    top_k: int = field(default=3, metadata={"help": "passages per query"})
    dry_run: bool = field(default=False, metadata={"help": "load nothing"})
    batching: bool = field(default=True, metadata={"help": "gather queries"})


@pytest.fixture
def toy_command(monkeypatch):
    module = types.ModuleType("toy_job")
    module.ToyArguments, module.run_toy = ToyArguments, lambda args: args
    monkeypatch.setitem(sys.modules, "toy_job", module)
    monkeypatch.setitem(cli.COMMANDS, "toy", ("toy_job", "A toy job."))


def test_positionals_and_switches_parse_in_either_spelling(toy_command):
    _, args = cli.parse(["toy", "--dry-run", "who wrote hamlet", "paris", "--top_k", "5"])
    assert args == ToyArguments(["who wrote hamlet", "paris"], top_k=5, dry_run=True)
    _, args = cli.parse(["toy", "q", "--top-k", "2", "--no-batching"])
    assert args == ToyArguments(["q"], top_k=2, dry_run=False, batching=False)


def test_options_come_from_a_yaml_file_and_flags_override_it(toy_command, tmp_path):
    options = tmp_path / "options.yaml"
    options.write_text("top_k: 7\ndry_run: true\n")
    _, args = cli.parse(["toy", "q", "--config", str(options)])
    assert (args.top_k, args.dry_run) == (7, True)
    _, args = cli.parse(["toy", "q", "--config", str(options), "--top_k", "1"])
    assert args.top_k == 1


def test_help_lists_the_options_with_defaults_that_say_something(toy_command, capsys):
    with pytest.raises(SystemExit):
        cli.parse(["toy", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert (
        "usage: research-r1 toy [-h] [--top_k TOP_K] [--dry_run] [--batching | --no-batching]"
        in shown
    )
    assert "--top_k TOP_K, --top-k TOP_K passages per query (default: 3)" in shown
    assert "--dry_run, --dry-run load nothing --batching" in shown
    assert "--config FILE" in shown


@pytest.mark.parametrize("option", ["--top_kk", "--top"])  # a typo; an abbreviation
def test_an_unknown_option_is_one_line_of_usage_error(toy_command, capsys, option):
    with pytest.raises(SystemExit) as done:
        cli.parse(["toy", "q", option, "2"])
    assert done.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"research-r1 toy: error: unrecognized arguments: {option} 2"
    )
