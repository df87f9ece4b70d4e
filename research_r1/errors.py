"""The one exception type for bad input, so the CLI can print it without a traceback."""


class InputError(ValueError):
    """Bad user input: the message names the file, row, field, repo or recipe key to fix."""
