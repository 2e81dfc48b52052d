"""Peak memory over a block of code: CUDA max allocated, or the CPU process's peak resident memory.

    with PeakMemory(torch.device("cuda")) as peak:
        ...                                        # the profiled steps
    peak.mb, peak.measure                          # MiB, and a key of reports.names.PEAK_MEMORY_MEASURES

On CUDA: max allocated after a reset (tensors only, not the context or the allocator's cache). On
CPU: the process's peak resident memory after resetting VmHWM (Linux >= 4.0), else, where that
cannot be reset, ru_maxrss: the peak over the process's whole life. Logged as
`profile/step_peak_memory_mb`, not under the training loop's `train/peak_memory_mb`, which is a
process-lifetime peak (see reports/names.py).
"""

from __future__ import annotations

import gc
import resource
from pathlib import Path
from typing import Any

import torch


def _reset_cpu_peak() -> bool:
    """Reset this process's peak resident memory (Linux >= 4.0: "5" > clear_refs resets VmHWM)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _cpu_peak_mb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


class PeakMemory:
    """Peak memory over a block: CUDA max allocated, or CPU peak resident memory; `.measure` says which."""

    def __init__(self, device: torch.device):
        self.device, self.mb, self.measure = device, float("nan"), ""

    def __enter__(self) -> "PeakMemory":
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.measure = "cuda_max_allocated"
        else:
            self.measure = "cpu_step_peak_rss" if _reset_cpu_peak() else "cpu_process_peak_rss"
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            self.mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        elif self.measure == "cpu_step_peak_rss" and (peak := _cpu_peak_mb()) is not None:
            self.mb = peak
        else:
            self.measure = "cpu_process_peak_rss"
            self.mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
