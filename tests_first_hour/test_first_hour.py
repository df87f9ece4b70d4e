"""The README's "Your first hour", run as written on what `make demo` wrote (`make
test-first-hour` runs the demo first when outputs/demo is missing).

Each command of the README's block runs in bash from the repository root, after the block's own
`source .venv/bin/activate`, in the README's order; `research-r1 space` is started, asked for its
page, and stopped. The rollout snippet of docs/architecture.md runs too, and the one-line errors
the README shows. Nothing may be written outside `outputs/` and the cache."""

from __future__ import annotations

import re
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "outputs" / "demo" / "grpo"
ACTIVATE = "source .venv/bin/activate"
# `space`'s address, as the README's comment gives it
SPACE_URL = "http://127.0.0.1:7860"


def bash_block(markdown: Path, heading: str, language: str = "bash") -> str:
    """The first fenced block of `language` after `heading` in `markdown`."""
    text = markdown.read_text()
    after = text[text.index(heading) :]
    return re.search(rf"```{language}\n(.*?)```", after, re.S).group(1)


def commands(block: str) -> list[str]:
    """The block's commands: continuation lines joined, comments and blank lines left out."""
    joined = re.sub(r"\\\n\s*", "", block)
    return [line.strip() for line in joined.splitlines() if line.strip() and line[0] != "#"]


FIRST_HOUR = commands(bash_block(ROOT / "README.md", "## Your first hour"))


def run(command: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-c", f"{ACTIVATE} && {command}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def untracked() -> set[str]:
    """Paths git does not track, ignored ones included, bytecode caches left out."""
    status = subprocess.run(
        ["git", "status", "--porcelain", "--ignored", "--untracked-files=all"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    paths = {line[3:] for line in status.splitlines() if line[:2] in ("??", "!!")}
    return {path for path in paths if "__pycache__" not in path}


@pytest.fixture(scope="module")
def before() -> set[str]:
    """What git did not track before the first command ran (the last test compares)."""
    if not (DEMO / "README.md").is_file():
        pytest.fail(f"{DEMO} is missing: run `make demo` first (`make test-first-hour` does)")
    return untracked()


def test_the_block_opens_with_the_venv_and_names_every_command():
    assert FIRST_HOUR[0] == ACTIVATE
    named = {command.split()[1] for command in FIRST_HOUR[1:]}
    assert named == {"ask", "eval", "leaderboard", "search", "build-index", "train", "space"}


@pytest.mark.parametrize(
    "command", [c for c in FIRST_HOUR[1:] if c != "research-r1 space"], ids=lambda c: c[:40]
)
def test_each_command_runs_as_written(command, before):
    done = run(command)
    assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    job = command.split()[1]
    if job == "ask":
        assert re.search(r"answer", done.stdout, re.I), done.stdout
    elif job == "search":
        # the table holds the passages of the person the query names
        name = re.search(r'search "([^"]+)"', command).group(1)
        assert done.stdout.count(name.split()[-1]) >= 2, done.stdout
    elif job == "eval":
        assert (ROOT / "outputs" / "eval").is_dir()
    elif job == "leaderboard":
        assert (ROOT / "outputs" / "leaderboard" / "leaderboard.md").is_file()
    elif job == "build-index":
        assert list((ROOT / "outputs" / "indexes").glob("*/retriever.yaml"))
    elif job == "train":
        assert (ROOT / "outputs" / "tiny_cpu_grpo" / "reward_curve.png").is_file()


def test_the_app_serves_its_page_then_stops(before):
    assert "research-r1 space" in FIRST_HOUR
    assert SPACE_URL in bash_block(ROOT / "README.md", "## Your first hour")
    app = subprocess.Popen(
        ["bash", "-c", f"{ACTIVATE} && exec research-r1 space"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300
        while True:
            assert app.poll() is None, app.stdout.read()
            try:
                with urllib.request.urlopen(SPACE_URL, timeout=5) as page:
                    assert page.status == 200
                    break
            except OSError:
                assert time.monotonic() < deadline, "the app did not answer in 300 s"
                time.sleep(2)
    finally:
        app.terminate()
        app.wait(timeout=60)


def test_the_rollout_snippet_runs(before):
    snippet = bash_block(ROOT / "docs" / "architecture.md", "## The rollout, from Python", "python")
    done = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "python"), "-c", snippet],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    queries = done.stdout.splitlines()[0]
    assert queries.startswith("[") and queries != "[] True", done.stdout


@pytest.mark.parametrize(
    "command",
    [
        "research-r1 eval outputs/demo/grpo --limit three",
        "research-r1 train recipes/tiny_cpu_grpo.yaml --max_step 3",
    ],
)
def test_the_readme_s_mistakes_get_one_line(command, before):
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert command in readme
    done = run(command, timeout=300)
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_nothing_is_written_outside_outputs(before):
    """Runs last (pytest keeps the file's order)."""
    assert {path for path in untracked() - before if not path.startswith("outputs/")} == set()
