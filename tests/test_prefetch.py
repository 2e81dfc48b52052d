"""nanovlm.data.prefetch: the training batches made in a thread, a step ahead - same items, same order,
errors where they happened, and nothing left running when the consumer stops."""

from __future__ import annotations

import threading
import time

import pytest

from nanovlm.data.prefetch import prefetch


def test_items_come_in_order_and_at_most_depth_ahead():
    made = []

    def source():
        for i in range(50):
            made.append(i)
            yield i

    taken = []
    for item in prefetch(source(), depth=3):
        time.sleep(0.002)  # a slow consumer: the producer fills the queue and waits
        # made: what was taken (item + 1), up to 3 in the queue, and 1 the producer holds while the queue is full
        assert len(made) <= item + 1 + 3 + 1
        taken.append(item)
    assert taken == list(range(50))


def test_an_error_in_the_source_is_raised_where_it_happened():
    def source():
        yield 1
        yield 2
        raise KeyError("row 3 is broken")

    got = []
    with pytest.raises(KeyError, match="row 3 is broken"):
        for item in prefetch(source(), depth=2):
            got.append(item)
    assert got == [1, 2]


def test_stopping_early_stops_the_thread_and_closes_the_source():
    closed = threading.Event()

    def source():
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed.set()

    before = threading.active_count()
    stream = prefetch(source(), depth=4)
    assert [next(stream) for _ in range(5)] == [0, 1, 2, 3, 4]
    stream.close()  # the training loop ends (or raises) with batches still queued
    assert closed.is_set()  # closed by the thread before close() returned: no thread inside a DataLoader at exit
    assert threading.active_count() == before


def test_depth_must_be_positive():
    with pytest.raises(ValueError, match="depth must be at least 1"):
        next(prefetch(iter([1]), depth=0))
