"""Errors that the CLI prints as one line (exit 2) instead of a traceback."""


def one_line(text: str) -> str:
    """``text`` with its line breaks and other unprintable characters (a newline inside a quoted
    value, a NUL) written as escapes, so a message that quotes the user's input stays one line."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class BenchError(Exception):
    """A user-facing error: bad input, a missing file, an impossible request."""

    def __str__(self) -> str:
        return one_line(super().__str__())


class UnknownNameError(BenchError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return one_line(str(self.args[0]))
