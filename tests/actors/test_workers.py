"""Worker processes: results come back, a killed worker is replaced and its call reported
failed, stopping never hangs and leaves nothing behind."""

from __future__ import annotations

import operator
import os
import queue
import signal
import time

import pytest

from actors.workers import BatchRunner, WorkerDied, WorkerPool
from tests.helpers import wait_until


@pytest.fixture
def results():
    return queue.Queue()


@pytest.fixture
def pool(results):
    pool = WorkerPool(2, lambda token, result, error: results.put((token, result, error)), "test")
    yield pool
    started = time.monotonic()
    pool.stop()
    assert time.monotonic() - started < 5
    assert not any(w.process.is_alive() for w in pool._workers)


def test_calls_run_in_other_processes_and_answer(pool, results):
    assert pool.submit("a", operator.add, 2, 3)
    assert pool.submit("b", os.getpid)
    answers = {results.get(timeout=30)[:2] for _ in range(2)}
    assert ("a", 5) in answers
    (pid,) = [r for t, r in answers if t == "b"]
    assert pid != os.getpid()


def test_a_busy_pool_refuses_more_work_instead_of_queueing(pool, results):
    assert pool.submit(1, time.sleep, 0.5) and pool.submit(2, time.sleep, 0.5)
    assert not pool.submit(3, time.sleep, 0.5)
    results.get(timeout=30)
    assert pool.submit(3, operator.add, 1, 1)


def test_a_queue_holds_calls_for_the_first_free_worker_and_is_bounded(results):
    pool = WorkerPool(1, lambda token, result, error: results.put((token, result, error)), "test", queue=2)
    try:
        assert pool.submit("first", time.sleep, 0.5)
        assert pool.submit("second", operator.add, 1, 1) and pool.submit("third", operator.add, 2, 2)
        assert not pool.submit("fourth", operator.add, 3, 3)  # one running, two waiting: full
        assert [results.get(timeout=30)[:2] for _ in range(3)] == [("first", None), ("second", 2), ("third", 4)]
    finally:
        pool.stop()


def test_queued_calls_go_to_the_replacement_of_a_killed_worker(results):
    pool = WorkerPool(1, lambda token, result, error: results.put((token, result, error)), "test", queue=1)
    try:
        assert pool.submit("doomed", time.sleep, 60) and pool.submit("waiting", operator.mul, 6, 7)
        os.kill(pool._workers[0].process.pid, signal.SIGKILL)
        token, _, error = results.get(timeout=30)
        assert token == "doomed" and isinstance(error, WorkerDied)
        assert results.get(timeout=30)[:2] == ("waiting", 42)
    finally:
        pool.stop()


def test_an_exception_is_reported_and_the_worker_goes_on(pool, results):
    pool.submit("bad", int, "not a number")
    token, result, error = results.get(timeout=30)
    assert token == "bad" and result is None and "ValueError" in str(error)
    pool.submit("good", operator.mul, 6, 7)
    assert results.get(timeout=30)[:2] == ("good", 42)


def test_a_killed_worker_reports_its_call_and_is_replaced(pool, results):
    pool.submit("doomed", time.sleep, 60)
    busy = next(w for w in pool._workers if w.token == "doomed")
    os.kill(busy.process.pid, signal.SIGKILL)
    token, result, error = results.get(timeout=30)
    assert token == "doomed" and isinstance(error, WorkerDied)
    assert pool.restarts == 1
    wait_until(lambda: pool.idle() == 2, 30)
    assert pool.submit("after", operator.add, 1, 2)
    assert results.get(timeout=30)[:2] == ("after", 3)


def test_stop_kills_a_worker_busy_in_a_long_call(results):
    pool = WorkerPool(1, lambda *a: results.put(a), "test")
    pool.submit("long", time.sleep, 600)
    process = pool._workers[0].process
    started = time.monotonic()
    pool.stop()
    assert time.monotonic() - started < 5
    assert not process.is_alive()


def test_batch_runner_keeps_order_and_bounds_its_wait():
    runner = BatchRunner(2, "test")
    try:
        assert runner.map(operator.mul, [(i, i) for i in range(10)], 30) == [i * i for i in range(10)]
        with pytest.raises(TimeoutError):
            runner.map(time.sleep, [(5,)], 0.5)
    finally:
        runner.stop()
