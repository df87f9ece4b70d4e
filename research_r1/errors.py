"""The exceptions the CLI prints as one line, without a traceback: the user can act on them."""


class InputError(ValueError):
    """Bad user input: the message names the file, row, field, repo or recipe key to fix."""


class RunStopped(RuntimeError):
    """A run stopped for a cause outside it (the retriever stayed unreachable): nothing is wrong
    with its input, and the message says how to go on (e.g. resume from the last checkpoint)."""
