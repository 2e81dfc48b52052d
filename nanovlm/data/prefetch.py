"""An iterator run in a background thread, up to `depth` items ahead of its consumer.

    train_batches = prefetch(batches(samples, model, cfg, device), depth=tc.gradient_accumulation_steps, device=device)

The training loop's batches are packed, collated and pinned in the main process (the DataLoader
workers only decode and tokenise). Without this, that host work runs between steps while the GPU
drains its queue: on an H200 with 8 workers, a step of 8 x 16 rows of 2048 tokens is ~1.6 s of GPU
time, and packing and collating its ~4,000 samples about as long again. In a thread, it runs while the
main thread waits on the device (PyTorch releases the GIL inside its ops and CUDA calls).

The items and their order are exactly the iterator's (one producer), so runs stay deterministic and
resumable: the loop counts what it takes, not what was made ahead. An exception in the iterator is
raised to the consumer when it reaches that point. Closing the generator (or dropping it) stops the
thread at its next item and waits for it to close the iterator.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import TypeVar

import torch

T = TypeVar("T")
_END = object()
JOIN_TIMEOUT_S = 60.0


def prefetch(items: Iterator[T], depth: int, device: torch.device | None = None) -> Iterator[T]:
    """`items`, made in a background thread at most `depth` ahead. `device`: the CUDA device whose context the
    thread's pinned-memory allocations use (each thread starts on cuda:0; DDP ranks need their own)."""
    if depth < 1:
        raise ValueError(f"depth must be at least 1, got {depth}")
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry: tuple) -> bool:  # False once the consumer has gone
        while not stop.is_set():
            try:
                ready.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    threads = torch.get_num_threads()

    def produce() -> None:
        try:
            if device is not None and device.type == "cuda":
                torch.cuda.set_device(device)
            # Its tensor ops are small (collating, and decoding with 0 workers): a team of OpenMP threads
            # for them costs more than it saves (original_small, 0 workers, 2 cores: 730 -> 1020 samples/s).
            # The main thread keeps its own setting; threads started meanwhile begin with 1 too, and MKL's
            # dynamic thread count is off from here on (torch.set_num_threads turns it off for the process).
            torch.set_num_threads(1)
            for item in items:
                if not put((item, None)):
                    break
            else:
                put((_END, None))
        except BaseException as err:  # noqa: BLE001 - handed to the consumer, raised there
            put((None, err))
        finally:  # in this thread: the iterator's own clean-up (a DataLoader stops its workers)
            close = getattr(items, "close", None)
            if close is not None:
                close()
            torch.set_num_threads(threads)  # the default for threads started later

    thread = threading.Thread(target=produce, name="prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item, err = ready.get()
            if err is not None:
                raise err
            if item is _END:
                return
            yield item
    finally:
        stop.set()
        # Wait for the thread to finish its item and clean up: a thread still inside the iterator when the
        # interpreter exits aborts it. Not forever: a stalled source (a hub stream) may not return.
        thread.join(timeout=JOIN_TIMEOUT_S)
