"""The project's one error type: a one-line, user-facing message.

The CLI prints ``error: <message>`` and exits with status 2 for it, never a
traceback. Messages name the file and line, the key, or the HTTP reason.
"""


class TrafficRetrievalError(Exception):
    """A problem with the user's input or configuration, explained in one line."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


def at(path, line_number: int | None = None) -> str:
    """Format a location as ``path:line`` (or just ``path``) for error messages."""
    return f"{path}:{line_number}" if line_number is not None else str(path)


def printable(value, limit: int | None = None) -> str:
    """``value`` safe to show on a terminal: characters that are not printable (ESC, BEL,
    C1 controls such as CSI, bidi overrides, line breaks) written as Python escapes
    (``\\x1b``, ``\\u202e``), after cutting it to ``limit`` characters plus "…"."""
    text = str(value)
    if limit is not None and len(text) > limit:
        text = text[:limit] + "…"
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


def check_at_least(name: str, value, minimum) -> None:
    """A library argument's lower bound (configs declare theirs with ``config.option(minimum=...)``)."""
    if not value >= minimum:  # also refuses NaN
        raise TrafficRetrievalError(f"{name} must be at least {minimum}, got {value}")
