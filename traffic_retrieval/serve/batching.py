"""Micro-batching of search requests: queries that arrive within a few milliseconds
of each other are encoded by the text tower in one ``search_batch`` call.

One worker thread owns the calls into the retriever, so under load the model sees
a few batched calls instead of many single ones fighting for the model lock: every
request that arrived while the previous batch was being encoded goes into the next
one, plus those arriving within ``max_wait_s`` (0: none, so a lone request never
waits). Requests are grouped by
(k, category) because ``search_batch`` takes one of each; results are the same
as ``Retriever.search`` would give for each request alone.

Other model calls (searches by an example image, combined queries) go through
the same queue and worker with ``submit_call(fn, *args)``: each runs alone, in
arrival order among the batches, so the model never runs in two threads at once.

The queue is bounded (``max_queued`` queries or calls waiting for the model): past
it, or once the worker has stopped or died, ``submit`` and ``submit_call`` raise
``ServiceUnavailable`` at once (the server answers 503) instead of letting a flood
queue without end.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field

from ..errors import TrafficRetrievalError, check_at_least


class ServiceUnavailable(TrafficRetrievalError):
    """The search cannot be taken now (queue full, shutting down, worker stopped): a 503, not the client's fault."""


@dataclass
class _Request:
    query: str
    k: int
    category: str | None
    future: Future = field(default_factory=Future)
    waiting: bool = True  # counted in the queue's bound until the worker takes it or it is cancelled


@dataclass
class _Call:
    """A model call that is not a text query: run alone by the worker."""

    fn: object
    args: tuple
    future: Future = field(default_factory=Future)
    waiting: bool = True


_STOP = object()


class MicroBatcher:
    """``submit(query, k, category)`` returns a Future of ``list[SearchResult]``.

    ``search_batch(queries, k, category)`` is the retriever's method; ``max_batch``
    bounds one encoding call; ``max_wait_s`` is how long the worker waits for more
    requests after the first one of a batch; ``max_queued`` bounds the queries
    waiting for the worker (cancelled ones stop counting at once).
    """

    def __init__(self, search_batch, max_batch: int = 32, max_wait_s: float = 0.0, max_queued: int = 1024):
        check_at_least("max_batch", max_batch, 1)
        check_at_least("max_wait_s", max_wait_s, 0)
        check_at_least("max_queued", max_queued, 1)
        self._search_batch = search_batch
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_queued = max_queued
        self._queue: queue.Queue = queue.Queue()  # bounded by ``_waiting`` in ``submit``: a full queue.Queue would block close()
        self._waiting = 0
        self._closed = False
        self._lock = threading.Lock()
        self.batches = 0  # search_batch calls made
        self.batched_queries = 0  # queries they answered
        self.largest_batch = 0
        self.recent_batch_sizes: deque[int] = deque(maxlen=1000)
        self.calls = 0  # submit_call calls made
        self._worker = threading.Thread(target=self._run, name="search-batcher", daemon=True)
        self._worker.start()

    @property
    def alive(self) -> bool:
        """The worker thread is running and takes requests."""
        return self._worker.is_alive() and not self._closed

    @property
    def queued(self) -> int:
        return self._waiting

    def submit(self, query: str, k: int, category: str | None) -> Future:
        return self._enqueue(_Request(query, k, category))

    def submit_call(self, fn, *args) -> Future:
        """A Future of ``fn(*args)``, run by the worker thread alone (a search by image, a combined query)."""
        return self._enqueue(_Call(fn, args))

    def _enqueue(self, request) -> Future:
        with self._lock:
            if self._closed:
                raise ServiceUnavailable("the search service is shutting down")
            if not self._worker.is_alive():
                raise ServiceUnavailable("the search worker has stopped; restart the service")
            if self._waiting >= self.max_queued:
                raise ServiceUnavailable(f"the search service is busy ({self._waiting} queries waiting); try again shortly")
            self._waiting += 1
            self._queue.put(request)
        request.future.add_done_callback(lambda future: self._taken(request) if future.cancelled() else None)
        return request.future

    def _taken(self, request) -> None:
        """``request`` no longer waits: the worker took it, or its caller cancelled it."""
        with self._lock:
            if request.waiting:
                request.waiting = False
                self._waiting -= 1

    def close(self, timeout: float = 5.0) -> None:
        """Finish the queued requests, then stop the worker."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_STOP)
        self._worker.join(timeout)

    def _collect(self, first: _Request) -> tuple[list[_Request], bool]:
        batch, stop = [first], False
        deadline = time.monotonic() + self.max_wait_s
        while len(batch) < self.max_batch:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    item = self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
            if item is _STOP:
                stop = True
                break
            self._taken(item)
            batch.append(item)
        return batch, stop

    def _run(self) -> None:
        stop = False
        while not stop:
            item = self._queue.get()
            if item is _STOP:
                break
            self._taken(item)
            batch, stop = self._collect(item)
            self._answer(batch)
        # requests that were queued behind the stop marker still get an answer
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP:
                self._taken(item)
                self._answer([item])

    def _answer(self, batch: list) -> None:
        groups: dict[tuple[int, str | None], list[_Request]] = {}
        calls: list[_Call] = []
        for request in batch:
            if request.future.set_running_or_notify_cancel():
                if isinstance(request, _Call):
                    calls.append(request)
                else:
                    groups.setdefault((request.k, request.category), []).append(request)
        for call in calls:
            self._run_call(call)
        for (k, category), requests in groups.items():
            try:
                results = self._search_batch([r.query for r in requests], k, category)
            except Exception as exc:
                if len(requests) == 1:
                    requests[0].future.set_exception(exc)
                    continue
                # one bad request must not fail the others: answer each alone
                for request in requests:
                    self._answer_one(request, k, category)
                continue
            self._record(len(requests))
            for request, result in zip(requests, results):
                request.future.set_result(result)

    def _run_call(self, call: _Call) -> None:
        try:
            result = call.fn(*call.args)
        except Exception as exc:
            call.future.set_exception(exc)
            return
        self.calls += 1
        call.future.set_result(result)

    def _answer_one(self, request: _Request, k: int, category: str | None) -> None:
        try:
            result = self._search_batch([request.query], k, category)[0]
        except Exception as exc:
            request.future.set_exception(exc)
            return
        self._record(1)
        request.future.set_result(result)

    def _record(self, size: int) -> None:
        self.batches += 1
        self.batched_queries += size
        self.largest_batch = max(self.largest_batch, size)
        self.recent_batch_sizes.append(size)

    def stats(self) -> dict:
        return {"batches": self.batches, "queries": self.batched_queries, "largest_batch": self.largest_batch,
                "mean_batch": round(self.batched_queries / self.batches, 2) if self.batches else None,
                "max_batch": self.max_batch, "max_wait_ms": self.max_wait_s * 1000, "queued": self.queued, "max_queued": self.max_queued,
                "calls": self.calls}
