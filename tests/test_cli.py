"""The `research-r1` command (research_r1.cli): `--help` imports no job module, and a subcommand
that cannot import breaks only itself."""

from __future__ import annotations

import subprocess
import sys

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
