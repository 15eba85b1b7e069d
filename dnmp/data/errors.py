"""The one error type of dnmp.data (and, subclassed, of the converters)."""

from __future__ import annotations


class SceneError(ValueError):
    """A scene (or a converter's input) is invalid. The message is one line
    that names the file and the problem."""

    def __init__(self, path, problem: str):
        msg = f"{path}: {problem}" if path is not None else str(problem)
        msg = " ".join(str(msg).split())  # force one line
        super().__init__(msg)
        self.path = None if path is None else str(path)
        self.problem = problem
