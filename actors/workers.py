"""Worker processes for CPU-heavy work (PoW nonce search, large signature batches).

Each worker is a `spawn`ed process (never `fork`: the node holds an open LMDB environment)
with a pipe of its own, running one call at a time. A collector thread waits on every
pipe and every process sentinel together, and hands each result to a callback. A pool may
hold a bounded queue of calls: the collector gives a worker its next call the moment it
answers, so a worker never idles while the caller (an actor with a busy inbox) gets round
to handing out more work.

Why not multiprocessing.Pool: its workers share one task queue behind one lock. A worker
killed while holding it (the OOM killer, a signal to the process group) leaves the lock
held for good, Pool.terminate() then blocks for ever, and the task the worker held is
never reported, so whatever waited for it waits for ever. Here a dead worker is seen at
once through its sentinel, its call is reported as failed, a fresh worker takes its place,
and stopping kills what does not exit in time: nothing is left behind and nothing hangs.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 1.0
POLL_S = 0.2  # the collector looks at its own stop flag this often


class WorkerDied(Exception):
    """The worker running a call ended before answering (killed, out of memory)."""


def _worker_main(conn: multiprocessing.connection.Connection) -> None:
    # Ctrl-C reaches the whole process group; the node, not its workers, decides to stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        try:
            item = conn.recv()
        except (EOFError, OSError):
            return  # the node is gone
        if item is None:
            return
        token, function, args = item
        try:
            reply = (token, True, function(*args))
        except Exception as e:  # noqa: BLE001 - reported to the caller, the worker goes on
            reply = (token, False, f"{type(e).__name__}: {e}")
        try:
            conn.send(reply)
        except (EOFError, OSError):
            return


class _Worker:
    def __init__(self, ctx: Any, name: str) -> None:
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker_main, args=(child,), name=name, daemon=True)
        self.process.start()
        child.close()
        self.token: object | None = None  # the call it runs, if any


Callback = Callable[[object, Any, BaseException | None], None]


class WorkerPool:
    """`size` worker processes; `on_result(token, result, error)` runs in the collector thread.
    Up to `queue` calls wait for a worker when every one is busy."""

    def __init__(self, size: int, on_result: Callback, name: str = "worker", queue: int = 0) -> None:
        self._ctx = multiprocessing.get_context("spawn")
        self._name = name
        self._on_result = on_result
        self._lock = threading.Lock()
        self._queue: deque[tuple[object, Callable[..., Any], tuple]] = deque()
        self._queue_max = queue
        self._stopping = threading.Event()
        self._workers = [_Worker(self._ctx, f"{name}-{i}") for i in range(size)]
        self.restarts = 0
        self._collector = threading.Thread(target=self._collect, name=f"{name}-collector", daemon=True)
        self._collector.start()

    @property
    def size(self) -> int:
        return len(self._workers)

    def idle(self) -> int:
        with self._lock:
            return sum(1 for w in self._workers if w.token is None)

    def submit(self, token: object, function: Callable[..., Any], *args: Any) -> bool:
        """Run function(*args) on an idle worker, or queue it; False when every worker is
        busy and the queue is full."""
        with self._lock:
            if self._stopping.is_set():
                return False
            worker = next((w for w in self._workers if w.token is None), None)
            if worker is None or self._queue:
                if len(self._queue) >= self._queue_max:
                    return False
                self._queue.append((token, function, args))
                return True
            return self._send(worker, token, function, args)

    def _send(self, worker: _Worker, token: object, function: Callable[..., Any], args: tuple) -> bool:
        """Under the lock: hand `worker` (idle) one call."""
        worker.token = token
        try:
            worker.conn.send((token, function, args))
        except (EOFError, OSError):
            worker.token = None  # it died: the collector replaces it
            return False
        return True

    def _feed(self, worker: _Worker) -> None:
        """Under the lock: give an idle worker the oldest queued call."""
        if self._queue and worker.token is None and not self._stopping.is_set():
            token, function, args = self._queue.popleft()
            if not self._send(worker, token, function, args):
                self._queue.appendleft((token, function, args))

    def _collect(self) -> None:
        while not self._stopping.is_set():
            with self._lock:
                waitables = {w.conn: w for w in self._workers}
                waitables.update({w.process.sentinel: w for w in self._workers})
            ready = multiprocessing.connection.wait(list(waitables), timeout=POLL_S)
            for handle in ready:
                worker = waitables[handle]
                if handle is worker.conn:
                    self._receive(worker)
                elif not self._stopping.is_set():
                    self._replace(worker)

    def _receive(self, worker: _Worker) -> None:
        try:
            token, ok, value = worker.conn.recv()
        except (EOFError, OSError):
            return  # the sentinel tells the rest
        with self._lock:
            worker.token = None
            self._feed(worker)  # first: the worker starts on its next call while we report
        self._report(token, value if ok else None, None if ok else RuntimeError(value))

    def _replace(self, dead: _Worker) -> None:
        with self._lock:
            if dead not in self._workers:
                return
            token = dead.token
            index = self._workers.index(dead)
            dead.conn.close()
            self._workers[index] = _Worker(self._ctx, f"{self._name}-{index}")
            self.restarts += 1
            self._feed(self._workers[index])
        log.warning("worker process died pool=%s exitcode=%s: replaced", self._name, dead.process.exitcode)
        if token is not None:
            self._report(token, None, WorkerDied(f"worker {self._name}-{index} died (exit code {dead.process.exitcode})"))

    def _report(self, token: object, result: Any, error: BaseException | None) -> None:
        try:
            self._on_result(token, result, error)
        except Exception:  # noqa: BLE001 - a callback bug must not kill the collector
            log.exception("worker result callback failed pool=%s", self._name)

    def stop(self) -> None:
        """Ask every worker to exit, kill those that do not in time; never blocks for long."""
        self._stopping.set()
        self._collector.join(POLL_S * 5)
        with self._lock:
            workers = list(self._workers)
            self._queue.clear()
        for worker in workers:
            try:
                worker.conn.send(None)
            except (EOFError, OSError):
                pass
        for worker in workers:
            worker.process.join(STOP_TIMEOUT_S / max(1, len(workers)))
            if worker.process.is_alive():
                worker.process.kill()  # busy in a long call: its result no longer matters
                worker.process.join(STOP_TIMEOUT_S)
            worker.conn.close()


class BatchRunner:
    """Runs a list of calls on a WorkerPool and waits for all their results (validation)."""

    def __init__(self, size: int, name: str) -> None:
        self._results: dict[object, tuple[Any, BaseException | None]] = {}
        self._wanted: set[object] = set()  # tokens a map() still waits for; late answers are dropped
        self._done = threading.Condition()
        self.pool = WorkerPool(size, self._on_result, name)
        self._next = 0

    def _on_result(self, token: object, result: Any, error: BaseException | None) -> None:
        with self._done:
            if token in self._wanted:
                self._results[token] = (result, error)
                self._done.notify_all()

    def map(self, function: Callable[..., Any], argument_lists: list[tuple], timeout: float) -> list[Any]:
        """function(*args) for each, in order; raises the first error, or TimeoutError."""
        base = self._next
        self._next += len(argument_lists)
        tokens = range(base, base + len(argument_lists))
        pending = list(zip(tokens, argument_lists))
        answers: dict[int, Any] = {}
        end = time.monotonic() + timeout
        with self._done:
            self._wanted.update(tokens)
            try:
                while len(answers) < len(tokens):
                    while pending and self.pool.submit(pending[0][0], function, *pending[0][1]):
                        pending.pop(0)
                    for token in [t for t in tokens if t in self._results]:
                        result, error = self._results.pop(token)
                        if error is not None:
                            raise error
                        answers[token] = result
                    remaining = end - time.monotonic()
                    if len(answers) < len(tokens):
                        if remaining <= 0:
                            raise TimeoutError(f"worker processes did not answer within {timeout:g} s")
                        self._done.wait(min(remaining, POLL_S))
            finally:
                self._wanted.difference_update(tokens)
                for token in tokens:
                    self._results.pop(token, None)
        return [answers[token] for token in tokens]

    def stop(self) -> None:
        self.pool.stop()
