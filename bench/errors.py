"""Errors that the CLI prints as one line (exit 2) instead of a traceback."""


class BenchError(Exception):
    """A user-facing error: bad input, a missing file, an impossible request."""


class UnknownNameError(BenchError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])
