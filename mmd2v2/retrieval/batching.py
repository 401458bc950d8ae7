"""Micro-batching of concurrent queries: requests that arrive together share one model forward."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Generic, TypeVar

import numpy as np

Item = TypeVar("Item")


class QueryBatcher(Generic[Item]):
    """Collects queries from many threads and encodes them together, at most `max_batch` at a time.

    It never waits to fill a batch: a lone query is encoded at once, and the queries that arrive while one batch
    is being encoded form the next. Under load batches grow by themselves; when idle, latency is unchanged.
    """

    def __init__(self, encode: Callable[[list[Item]], np.ndarray], max_batch: int = 32) -> None:
        self.encode = encode
        self.max_batch = max_batch
        self.pending: queue.Queue[tuple[Item, Future[np.ndarray]]] = queue.Queue()
        threading.Thread(target=self._run, daemon=True, name="query-batcher").start()

    def submit(self, item: Item) -> np.ndarray:
        """The embedding of `item` (blocks until its batch is encoded; re-raises the encoder's error)."""
        future: Future[np.ndarray] = Future()
        self.pending.put((item, future))
        return future.result()

    def _run(self) -> None:
        while True:
            batch = [self.pending.get()]
            try:
                while len(batch) < self.max_batch:
                    batch.append(self.pending.get_nowait())
            except queue.Empty:
                pass
            try:
                vectors = self.encode([item for item, _ in batch])
            except Exception as error:  # noqa: BLE001 - every waiting request gets the error, the thread lives on
                for _, future in batch:
                    future.set_exception(error)
                continue
            for (_, future), vector in zip(batch, vectors):
                future.set_result(vector)
