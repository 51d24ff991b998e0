"""Helpers shared by the test suites."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float, *, interval: float = 0.02, message: str = "") -> T:
    """Poll `predicate` until it returns something truthy and return that; fail after `timeout` s.

    A barrier instead of a sleep: the test goes on as soon as the condition holds, and a
    condition that never holds fails the test with `message` instead of hanging it.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {message or predicate}")
        time.sleep(interval)
