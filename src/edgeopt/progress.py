"""How long-running stages report progress, without knowing how it is shown."""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def start(self, description: str, total: int) -> None:
        """A new bar of `total` steps (an epoch's batches, a set of images, a list of variants)."""

    def advance(self, steps: int = 1, info: str = "") -> None:
        """Move the current bar; `info` is a short status such as the running loss."""

    def finish(self, summary: str = "") -> None:
        """Close the current bar; `summary` is one line kept on screen."""


class NullProgress:
    """Shows nothing: the default for library use and for tests."""

    def start(self, description: str, total: int) -> None:
        pass

    def advance(self, steps: int = 1, info: str = "") -> None:
        pass

    def finish(self, summary: str = "") -> None:
        pass
