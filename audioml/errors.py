"""The error audioml raises for a mistake the user can fix (its message says how); every command
ends it with that one line and exit status 2 (``audioml.run.outcome``, ``audioml.entry``)."""

__all__ = ["UserError", "error_summary"]


def error_summary(error: BaseException) -> str:
    """``"<type>: <first line>"`` of ``error``'s root cause (following ``__cause__``, e.g. through
    Hydra's ``InstantiationException``), at most 500 characters of the message."""
    cause = error
    while cause.__cause__ is not None:
        cause = cause.__cause__
    first_line = (str(cause).strip().splitlines() or [""])[0][:500]
    return f"{type(cause).__name__}: {first_line}"


class UserError(Exception):
    """A mistake the user can fix; the message says how. (audioml's checks also raise
    ``ValueError``, ``FileNotFoundError``, ``ConnectionError`` ... with such messages: they count
    as mistakes too, ``audioml.run.outcome.classify``.)"""
