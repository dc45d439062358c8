"""Errors a user can cause. The CLI prints them as one line and exits non-zero."""

from __future__ import annotations


class DapoError(Exception):
    """A problem the user can fix (bad file, bad flag, missing model).

    The message is shown as-is on one line, so it should name the thing and the fix.
    """


class DataError(DapoError):
    """A data file or record is malformed. ``where`` is ``file:line`` (or ``file: row N``)."""

    def __init__(self, where: str, problem: str):
        self.where = where
        self.problem = problem
        super().__init__(f"{where}: {problem}" if where else problem)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its class name when it has none): what a
    one-line error quotes of a library's failure."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
