"""CUDA graphs of the training micro-step: forward + backward recorded once per input shape, then replayed.

    graphs = cuda_graphs_for(step_model, tc, device)   # nanovlm.step: None unless --cuda_graphs true
    loss_sum = graphs.forward_backward(micro_batches)  # like nanovlm.step.forward_backward; grads in p.grad
    optimizer.step(); optimizer.zero_grad(set_to_none=False)  # the .grad tensors stay where they are

Why: even with compiled blocks, a micro-step launches thousands of kernels from Python. With few rows
per micro-step the GPU waits for the host (H200, original_small, 4 rows of 2048 tokens: 57 ms of
kernels in a 172 ms step). A replayed graph launches them all with one call.

How (the "whole network capture" recipe of PyTorch's CUDA graphs notes, without the optimizer):
- Every trained parameter gets its `.grad` once, zeroed in place after each optimizer step. The
  captured backward adds into those tensors (AccumulateGrad adds in place when `.grad` exists), so
  gradient accumulation copies nothing. Not torch.compile's mode="reduce-overhead": its graphs own
  the gradients they return, which breaks gradient accumulation (pytorch/pytorch#169545). One
  difference from the eager step: a parameter that gets no gradient in a whole step (the vision
  encoder, when no micro-batch has an image) has a zero .grad rather than None, so AdamW still
  moves it by its momentum.
- Inputs are copied into the graph's static tensors before each replay, so the collator's buckets
  (row count, loss slots, images) give a handful of shapes, each with its own graph. The first
  micro-batch of a shape runs eagerly (it compiles the blocks for it and warms up the libraries; its
  gradients count like any other), the second is captured and replayed.
- The loss sum and the 1/n of gradient accumulation are static tensors too; autocast runs without
  its weight-cast cache (a cache kept across a capture would be stale).
- The graphs share one memory pool. That is safe in any replay order because nothing allocated
  during a capture outlives it: the graph's only results land in tensors made before it.
- The loss is never Liger's (`nanovlm.step.loss_kernel_for`): it reads its target count with
  `.item()`, which a capture forbids. No DDP: its gradient all-reduce hooks are not captured.

GPU test: `tests/test_gpu.py::test_cuda_graph_steps_match_the_eager_steps`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from nanovlm.step import micro_step

Inputs = dict[str, torch.Tensor | None]


@dataclass
class _Graph:
    graph: Any  # a torch.cuda.CUDAGraph (anything with replay())
    inputs: Inputs  # the static tensors the graph reads


class MicroStepGraphs:
    """Forward + backward of micro-batches, replayed as CUDA graphs (see the module docstring)."""

    def __init__(self, step_model: nn.Module, autocast: Any = None):
        self.step_model = step_model
        self.params = [p for p in step_model.parameters() if p.requires_grad]
        device = self.params[0].device
        # bf16 as nanovlm.step.autocast_for, without the weight-cast cache
        self.autocast = autocast or torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False)
        self.loss_sum = torch.zeros((), device=device)  # sum over micro-batches of loss / n
        self.count = torch.ones((), device=device)  # n, the micro-batches of the step
        self.seen: set[tuple] = set()  # shape keys run eagerly once
        self.graphs: dict[tuple, _Graph] = {}
        self.pool: Any = None  # the graphs' shared memory pool, made at the first capture
        self.side: torch.cuda.Stream | None = None  # the stream of the eager micro-steps
        self.grads: list[torch.Tensor] = []  # the trained parameters' .grad, for the whole run

    def forward_backward(self, micro_batches: list[Inputs]) -> torch.Tensor:
        """Gradients of mean(loss over micro_batches) added to p.grad -> that mean, on the device."""
        self.start_step(len(micro_batches))
        for inputs in micro_batches:
            key = tuple((name, None if t is None else (tuple(t.shape), t.dtype)) for name, t in inputs.items())
            if key not in self.seen:  # first of its shape: eager (compiles, warms up; its gradients count)
                self.seen.add(key)
                self._eager(inputs)
                continue
            graph = self.graphs.get(key)
            if graph is None:  # second of its shape: recorded now, replayed from here on
                graph = self.graphs[key] = self._capture(inputs)
            for name, tensor in inputs.items():
                if tensor is not None:
                    graph.inputs[name].copy_(tensor, non_blocking=True)
            graph.graph.replay()
        return self.loss_sum.clone()  # the static sum is overwritten by the next step

    def start_step(self, n: int) -> None:
        """Before a step's micro-batches: the .grad tensors the graphs add into (made at the first step, and
        put back, zeroed, if anything set them to None), the loss sum at 0 and the count at n."""
        self.grads = self.grads or [torch.zeros_like(p) for p in self.params]
        for p, grad in zip(self.params, self.grads):
            if p.grad is not grad:  # a graph writes into `grad` whatever p.grad is: they must stay one
                p.grad = grad.zero_()
        self.loss_sum.zero_()
        self.count.fill_(n)

    def micro_step(self, inputs: Inputs) -> None:
        """What a graph records: the eager step's own micro-step, with static loss sum and count."""
        micro_step(self.step_model, inputs, self.autocast, self.count, self.loss_sum)

    def _eager(self, inputs: Inputs) -> None:
        # On a side stream, as before a capture (PyTorch's CUDA graphs notes): the libraries' lazy
        # set-up (cuBLAS workspaces, compiled kernels) happens outside the main stream.
        # One stream for all of them: the caching allocator keeps freed memory per stream.
        self.side = self.side or torch.cuda.Stream()
        self.side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.side):
            self.micro_step(inputs)
        torch.cuda.current_stream().wait_stream(self.side)

    def _capture(self, inputs: Inputs) -> _Graph:
        static = {name: None if t is None else t.clone() for name, t in inputs.items()}
        return _Graph(self._record(lambda: self.micro_step(static)), static)

    def _record(self, fn: Callable[[], None]) -> torch.cuda.CUDAGraph:
        """fn's kernels as a CUDA graph: recorded, not run."""
        self.pool = self.pool or torch.cuda.graph_pool_handle()
        torch.cuda.synchronize()
        torch.cuda.empty_cache()  # the eager steps' cached blocks, so that the graph pool can have them
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            fn()
        return graph
