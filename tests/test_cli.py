"""The `research-r1` command (research_r1.cli): `--help` imports no job module, and a subcommand
that cannot import breaks only itself."""

from __future__ import annotations

import logging
import re
import shlex
import subprocess
import sys
import types
from dataclasses import dataclass, field

import httpx2
import pytest
from helpers import ROOT
from huggingface_hub import constants

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


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (  # a typo
            ["toy", "q", "--top_kk", "2"],
            "research-r1 toy: error: unrecognized arguments: --top_kk 2 (did you mean --top_k?)",
        ),
        (  # an abbreviation
            ["toy", "q", "--top", "2"],
            "research-r1 toy: error: unrecognized arguments: --top 2 (did you mean --top_k?)",
        ),
        (
            ["toy", "q", "--zzz"],
            "research-r1 toy: error: unrecognized arguments: --zzz (research-r1 toy --help lists "
            "the options)",
        ),
        (
            ["toy", "q", "--top_k", "three"],
            "research-r1 toy: error: argument --top_k/--top-k: invalid int value: 'three' "
            "(research-r1 toy --help lists the options)",
        ),
        (
            ["toy"],
            "research-r1 toy: error: the following arguments are required: QUERIES (research-r1 "
            "toy --help lists the options)",
        ),
        (["tyo", "q"], "research-r1: error: unknown command 'tyo' (did you mean toy?)"),
        (
            ["zzz"],
            "research-r1: error: unknown command 'zzz' (research-r1 --help lists the commands)",
        ),
        (
            [],
            "research-r1: error: the following arguments are required: COMMAND (research-r1 "
            "--help lists the commands)",
        ),
    ],
)
def test_a_command_line_mistake_is_one_line_without_the_usage(toy_command, capsys, argv, line):
    with pytest.raises(SystemExit) as done:
        cli.parse(argv)
    assert done.value.code == 2
    assert capsys.readouterr().err.splitlines() == [line]


def test_a_config_file_that_cannot_be_read_is_one_line(toy_command, tmp_path, capsys):
    not_yaml, a_list = tmp_path / "not.yaml", tmp_path / "list.yaml"
    not_yaml.write_text("top_k: [1\n")
    a_list.write_text("- top_k\n")
    for config, reason in [
        ([str(tmp_path / "none.yaml")], f"--config {tmp_path / 'none.yaml'}: No such file"),
        ([], "argument --config: expected one argument"),
        ([str(not_yaml)], f"--config {not_yaml}: while parsing a flow sequence"),
        ([str(a_list)], f"--config {a_list}: Config file {a_list} must contain a YAML mapping"),
    ]:
        with pytest.raises(SystemExit) as done:
            cli.parse(["toy", "q", "--config", *config])
        assert done.value.code == 2
        (line,) = capsys.readouterr().err.splitlines()
        assert line.startswith(f"research-r1 toy: error: {reason}"), line


def test_a_bad_value_of_a_real_command_is_one_line(capsys):
    with pytest.raises(SystemExit) as done:
        cli_main(["eval", "x", "--limit", "three"])
    assert done.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        "research-r1 eval: error: argument --limit: invalid int value: 'three' (research-r1 eval "
        "--help lists the options)"
    ]


# What `errors.report` prints as one line: our errors, and the Hub's through hub.user_error
# (each command's own tests show them); anything else is a bug and keeps its traceback.


@pytest.mark.parametrize(
    "bug", [TypeError("a bug"), KeyError("a bug"), OSError("a bug"), ConnectionError("a bug")]
)
def test_a_bug_keeps_its_traceback(toy_command, monkeypatch, bug):
    def run(args):
        raise bug

    monkeypatch.setattr(sys.modules["toy_job"], "run_toy", run)
    with pytest.raises(type(bug)) as raised:
        cli_main(["toy", "q"])
    assert raised.value is bug


def test_a_hub_error_raised_anywhere_in_a_command_is_one_line(toy_command, monkeypatch, capsys):
    request = httpx2.Request("GET", f"{constants.ENDPOINT}/api/models/org/name/revision/main")

    def run(args):
        raise httpx2.ConnectError("[Errno 111] Connection refused", request=request)

    monkeypatch.setattr(sys.modules["toy_job"], "run_toy", run)
    assert cli_main(["toy", "q"]) == 4
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(
        f"error: cannot reach {constants.ENDPOINT} to fetch model repo 'org/name'"
    )


def test_bitsandbytes_notice_of_an_optional_kernel_is_dropped_and_nothing_else(caplog):
    """research_r1/__init__.py drops the one line bitsandbytes logs at import on a CPU with
    AVX512-BF16 when the optional `kernels` package is missing; other lines of its logger stay."""
    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    with caplog.at_level(logging.WARNING):
        logger.warning(
            "Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make sure "
            "you already `pip install kernels` and the kernels >= 0.11.1",
            ModuleNotFoundError("No module named 'kernels'"),
        )
        logger.warning("Failed to load CPU gemv_4bit: another problem")
    assert [record.getMessage() for record in caplog.records] == [
        "Failed to load CPU gemv_4bit: another problem"
    ]


@pytest.mark.slow
def test_a_command_that_imports_trl_prints_nothing_on_stderr():
    """`serve-retriever --help` imports sentence-transformers, hence transformers' Trainer, peft
    and bitsandbytes: stderr stays empty."""
    run = subprocess.run(
        [sys.executable, "-m", "research_r1.cli", "serve-retriever", "--help"],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0 and "--port" in run.stdout
    assert run.stderr == ""


def documented_commands() -> list[tuple[str, str]]:
    """Every `research-r1 ...` line of a bash block in the README and docs/ (continuations
    joined; environment assignments, a trailing `&` and comments left out), with its page."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    found = []
    for page in pages:
        for block in re.findall(r"```bash\n(.*?)```", page.read_text(), re.S):
            for line in re.sub(r"\\\n\s*", "", block).splitlines():
                words = shlex.split(line, comments=True)
                while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
                    words.pop(0)
                if words[:1] == ["research-r1"]:
                    found.append((page.name, shlex.join(words).removesuffix(" '&'")))
    return found


@pytest.mark.parametrize(("page", "command"), documented_commands())
def test_every_documented_command_parses(page, command, capsys):
    """A renamed or removed option fails here, in `make test`, not in a reader's shell."""
    try:
        cli.parse(shlex.split(command)[1:])
    except SystemExit as stop:  # `--help` exits 0; a bad line exits 2 with its one-line error
        assert stop.code == 0 and "--help" in command, capsys.readouterr().err


def test_the_docs_show_commands():
    pages = {page for page, _ in documented_commands()}
    assert {"README.md", "training.md", "evaluation.md", "retrieval.md", "data.md"} <= pages
    assert len(documented_commands()) > 40
