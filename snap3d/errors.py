"""The one error type users see for bad input."""

from __future__ import annotations

import os


class Snap3dError(Exception):
    """Bad input or a failed operation, with a message a user can act on.

    When the problem lies in a file, ``path`` names it and the message starts with it.
    """

    def __init__(self, problem: str, path: str | os.PathLike | None = None):
        self.path = None if path is None else os.fspath(path)
        self.problem = problem
        super().__init__(problem if path is None else f"{self.path}: {problem}")
