"""Errors that reach a user as one clear line (CLI) instead of a traceback."""


class P2esError(Exception):
    """A user-facing error: bad input, missing file, impossible request.

    The CLI prints ``p2es: error: <message>`` and exits with status 2.
    """


class InputError(P2esError):
    """Input data could not be read or is not usable."""
