"""The one error type for unreadable user data."""

from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """A user's data cannot be read. The message names the file (and line) and says what was expected."""

    def __init__(self, path: str | Path | None, problem: str | None = None, line: int | None = None) -> None:
        if problem is None:  # one string: the whole message (how a DataLoader worker re-raises it)
            super().__init__(str(path))
            self.path, self.line = None, None
            return
        where = "" if path is None else f"{path}" + (f", line {line}" if line is not None else "") + ": "
        super().__init__(where + problem)
        self.path = None if path is None else Path(path)
        self.line = line
