"""Helpers shared by the test suites."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T],
    timeout: float,
    *,
    interval: float = 0.02,
    message: str = "",
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """Poll `predicate` until it returns something truthy and return that; fail after `timeout` s.

    A barrier instead of a sleep: the test goes on as soon as the condition holds, and a
    condition that never holds fails the test with `message` instead of hanging it.
    Exceptions of the `ignore` types raised by `predicate` count as "not yet" (a node whose
    API is not listening yet); the failure then names the last one, or the last value seen.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = predicate()
        except ignore as e:
            value, last = None, e  # type: ignore[assignment]
        else:
            last = value
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"timed out after {timeout:g} s waiting for {message or predicate} (last: {last!r})"
            )
        time.sleep(interval)
