"""A clock that moves only when the test moves it, for code that takes one (`now=`)."""

from __future__ import annotations


class ManualClock:
    """`now` for the code under test; `advance(seconds)` for the test."""

    def __init__(self, start: float = 1000.0) -> None:
        self.t = start

    def now(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds
