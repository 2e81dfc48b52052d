"""The answer-token loss kernels timed alone: forward + backward of `linear_cross_entropy` per backend.

    python -m reports.loss_kernels                                  # CPU: 2048 rows, D 576, V 49152 (SmolLM2)
    python -m reports.loss_kernels --device cuda --rows 16384       # bf16 autocast, as training runs it
    python -m reports.loss_kernels --device cuda --rows 16384 --dim 640 --vocab 262144   # Gemma 3's head
    python -m reports.loss_kernels --dim 64                         # a narrow head: the per-chunk math dominates

Random hidden states (rows x dim, 30% of the targets ignored, as prompt and image positions are) and a
random head weight (vocab x dim), both requiring grad. For each backend (`nanovlm.model.loss.BACKENDS`:
chunked, compiled, liger where it runs, plain where (rows x vocab) logits fit), the median of `--repeats`
timed calls after two warm-up calls (the compiled backend compiles in the first), in ms and rows/s, and
on CUDA the peak memory above the inputs. Each backend's loss and gradients are checked against the
chunked ones first, so a number is never one of a wrong kernel.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from nanovlm.data.processors import IGNORE_INDEX
from nanovlm.model.loss import BACKENDS, linear_cross_entropy, pick_backend
from nanovlm.step import autocast_for
from reports.measure import sync


def _inputs(rows: int, dim: int, vocab: int, device: torch.device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(rows, dim, generator=g).to(device).requires_grad_()
    weight = (torch.randn(vocab, dim, generator=g) / dim ** 0.5).to(device).requires_grad_()
    targets = torch.randint(0, vocab, (rows,), generator=g)
    targets[torch.rand(rows, generator=g) < 0.3] = IGNORE_INDEX
    return hidden, weight, targets.to(device)


def run_backend(backend: str, hidden, weight, targets, softcap: float | None, chunk_size: int):
    """One forward + backward -> (loss, grad of hidden, grad of weight)."""
    hidden.grad = weight.grad = None
    with autocast_for(hidden.device):
        loss = linear_cross_entropy(hidden, weight, targets, softcap=softcap, backend=backend, chunk_size=chunk_size)
    loss.backward()
    return loss.detach(), hidden.grad, weight.grad


def backends_for(device: torch.device, rows: int, vocab: int) -> list[str]:
    """The backends worth timing here: liger on CUDA when installed, plain while its logits stay under 4 GiB."""
    names = [b for b in BACKENDS if b != "liger" or pick_backend(device) == "liger"]
    return [b for b in names if b != "plain" or rows * vocab * 4 <= 4 << 30]


def measure(device: torch.device, rows: int, dim: int, vocab: int, softcap: float | None, chunk_size: int,
            repeats: int) -> list[dict[str, float | str]]:
    hidden, weight, targets = _inputs(rows, dim, vocab, device)
    reference = run_backend("chunked", hidden, weight, targets, softcap, chunk_size)
    results = []
    for backend in backends_for(device, rows, vocab):
        got = run_backend(backend, hidden, weight, targets, softcap, chunk_size)  # warm-up; compiles "compiled"
        tolerance = dict(rtol=2e-2, atol=2e-3) if device.type == "cuda" else dict(rtol=1e-3, atol=1e-5)
        for name, a, b in zip(("loss", "hidden grad", "weight grad"), got, reference):
            torch.testing.assert_close(a, b, msg=lambda m: f"{backend}: {name} differs from chunked's: {m}",
                                       **tolerance)
        run_backend(backend, hidden, weight, targets, softcap, chunk_size)
        times = []
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
        for _ in range(repeats):
            sync(device)
            start = time.perf_counter()
            run_backend(backend, hidden, weight, targets, softcap, chunk_size)
            sync(device)
            times.append(time.perf_counter() - start)
        seconds = statistics.median(times)
        row: dict[str, float | str] = {"backend": backend, "ms": seconds * 1e3, "rows_per_s": rows / seconds}
        if device.type == "cuda":
            row["peak_mib"] = (torch.cuda.max_memory_allocated(device) - base) / 2**20
        results.append(row)
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m reports.loss_kernels", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--rows", type=int, default=2048, help="positions with a target (N)")
    p.add_argument("--dim", type=int, default=576, help="hidden size (D): 576 SmolLM2-135M, 960 -360M, 640 Gemma 3")
    p.add_argument("--vocab", type=int, default=49152, help="vocabulary (V): 49152 SmolLM2, 262144 Gemma 3")
    p.add_argument("--softcap", type=float, default=None, help="final logit softcapping (none for these LMs)")
    p.add_argument("--chunk_size", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args(argv)
    if min(a.rows, a.dim, a.vocab, a.chunk_size, a.repeats) < 1:
        print("error: --rows, --dim, --vocab, --chunk_size and --repeats must be at least 1", file=sys.stderr)
        return 2
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"error: --device cuda: this machine has no CUDA device (torch {torch.__version__})", file=sys.stderr)
        return 2
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"linear_cross_entropy forward + backward: N {a.rows}, D {a.dim}, V {a.vocab}, softcap {a.softcap}, "
          f"chunks of {a.chunk_size}; {where}, torch {torch.__version__}, "
          f"{'bf16 autocast' if device.type == 'cuda' else 'fp32'}; median of {a.repeats}")
    for row in measure(device, a.rows, a.dim, a.vocab, a.softcap, a.chunk_size, a.repeats):
        memory = f"  peak +{row['peak_mib']:.0f} MiB" if "peak_mib" in row else ""
        print(f"  {row['backend']:<9} {row['ms']:9.1f} ms  {row['rows_per_s']:12,.0f} rows/s{memory}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
