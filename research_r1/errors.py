"""The exceptions the CLI prints as one line, without a traceback: the user can act on them."""

from __future__ import annotations

import difflib
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NoReturn

from pydantic import ValidationError


class InputError(ValueError):
    """Bad user input: the message names the file, row, field, repo or recipe key to fix."""


class RunStopped(RuntimeError):
    """A run stopped for a cause outside it (the retriever stayed unreachable): nothing is wrong
    with its input, and the message says how to go on (e.g. resume from the last checkpoint)."""


class Unreachable(RuntimeError):
    """A service the command needs (a retrieval server) stayed unreachable through its retries:
    nothing is wrong with the input or the program, and the same command may work later. The
    message names the service and the cause."""


def closest(name: str, choices: Iterable[str]) -> str | None:
    """The choice `name` most likely misspells, for a "did you mean" in an error; None if none
    is close. The one choice `name` begins is taken first (`--out` for `--output_dir`, an old
    name cut short), then the closest by spelling."""
    choices = list(choices)
    extended = [choice for choice in choices if choice.startswith(name) and choice != name]
    if len({choice.replace("-", "_") for choice in extended}) == 1:  # one option, two spellings
        return extended[0]
    match = difflib.get_close_matches(name, choices, n=1)
    return match[0] if match else None


class OneLineParser:
    """A mixin for an `argparse.ArgumentParser` (first among its bases): a command-line mistake
    is one line, `PROG: error: MESSAGE (PROG --help lists the options)`, exit 2, instead of the
    whole usage and then the message; `--help` still prints the usage. An argument no option
    takes gets the option it most likely misspells, when one is close (`did you mean`)."""

    prog: str
    _option_string_actions: dict[str, Any]
    _subparsers: Any

    def error(self, message: str, hint: str | None = None) -> NoReturn:
        listed = "commands" if self._subparsers is not None else "options"
        hint = hint or f"{self.prog} --help lists the {listed}"
        self.exit(2, f"{self.prog}: error: {message} ({hint})\n")

    def unrecognized(self, unknown: Sequence[str]) -> NoReturn:
        """The error for arguments that no option takes: `unrecognized arguments: ...`."""
        flag = unknown[0].split("=")[0]
        match = closest(flag, self._option_string_actions) if flag.startswith("-") else None
        hint = f"did you mean {match}?" if match else None
        self.error(f"unrecognized arguments: {' '.join(unknown)}", hint)

    def parse_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:
        parsed, unknown = self.parse_known_args(args, namespace)
        if unknown:
            self.unrecognized(unknown)
        return parsed


def invalid(error: ValidationError, where: str) -> InputError:
    """A pydantic validation failure as one line: where, the first wrong key, what is wrong,
    and the value given (clipped) when there is one. A validator's own `ValueError` reads as
    its message (pydantic prefixes it with "Value error, ")."""
    first = error.errors(include_url=False)[0]
    key = ".".join(str(part) for part in first["loc"]) or "value"
    message = first["msg"].removeprefix("Value error, ")
    given = "" if first["type"] == "missing" else f", got {first['input']!r}"[:80]
    more = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
    return InputError(f"{where}: key {key!r}: {message}{given}{more}")


def report(
    run: Callable[[], int | None],
    translate: Callable[[Exception], Exception | None] | None = None,
) -> int:
    """`run()`'s exit status, with our errors printed as one line instead of a traceback: 2 for
    bad input, 3 for a stopped run (its last checkpoint resumes it), 4 for a service that stayed
    unreachable, 130 for Ctrl-C.

    `translate` turns a third-party error the user can act on into one of ours (the CLI passes
    `research_r1.hub.user_error`, for the Hub's); it returns None for any other error, which
    keeps its traceback: a bug is not hidden."""
    try:
        try:
            return run() or 0
        except Exception as error:
            ours = translate(error) if translate is not None else None
            if ours is None:
                raise
            raise ours from error
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except RunStopped as error:
        print(f"\nstopped: {error}", file=sys.stderr)  # below any progress bar it cut off
        return 3
    except Unreachable as error:
        print(f"error: {error}", file=sys.stderr)
        return 4
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
