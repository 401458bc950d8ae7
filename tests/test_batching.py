"""Query micro-batching: concurrent queries share one encode call, results go to the right caller, errors too."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from mmd2v2.retrieval.batching import QueryBatcher


def test_concurrent_queries_are_encoded_together_and_answered_in_place() -> None:
    calls: list[list[int]] = []
    first_started = threading.Event()

    def encode(items: list[int]) -> np.ndarray:
        calls.append(items)
        first_started.set()
        deadline = time.monotonic() + 5
        while len(calls) == 1 and batcher.pending.qsize() < 15 and time.monotonic() < deadline:
            time.sleep(0.005)  # the first batch is encoded while the 15 others arrive
        return np.array([[item, item * item] for item in items], dtype=np.float32)

    batcher: QueryBatcher[int] = QueryBatcher(encode, max_batch=8)
    with ThreadPoolExecutor(16) as pool:
        first = pool.submit(batcher.submit, 0)
        first_started.wait(5)
        rest = [pool.submit(batcher.submit, n) for n in range(1, 16)]
        results = [first.result(5)] + [f.result(5) for f in rest]
    assert [r.tolist() for r in results] == [[n, n * n] for n in range(16)]
    assert calls[0] == [0] and sorted(n for call in calls for n in call) == list(range(16))
    assert [len(call) for call in calls] == [1, 8, 7]  # the 15 waiting queries: batches of at most 8


def test_a_lone_query_is_not_delayed_and_errors_reach_every_caller() -> None:
    batcher: QueryBatcher[str] = QueryBatcher(lambda items: np.ones((len(items), 2), np.float32))
    start = time.perf_counter()
    assert batcher.submit("a").tolist() == [1.0, 1.0]
    assert time.perf_counter() - start < 0.5

    def broken(items: list[str]) -> np.ndarray:
        raise ValueError("query text is empty")

    failing: QueryBatcher[str] = QueryBatcher(broken)
    with pytest.raises(ValueError, match="query text is empty"):
        failing.submit("")
    with pytest.raises(ValueError):  # the batcher's thread survives an error
        failing.submit("again")
