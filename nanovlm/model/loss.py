"""Answer-token cross-entropy straight from the final hidden states and the LM-head weight, without (N, V) logits.

    from nanovlm.model.loss import linear_cross_entropy
    loss = linear_cross_entropy(hidden, lm_head.weight, targets, softcap=config.final_logit_softcapping)
    loss.backward()

hidden (N, D) holds the states at positions that predict a token and targets (N,) the next token ids, or
IGNORE_INDEX where there is nothing to learn (prompt, image, padding). Full logits are (N, V): with Gemma 3's 262k
vocabulary they dominate the memory and time of a training step. Backends (`backend=`):

- "chunked": pure PyTorch, runs anywhere. The forward pass walks over chunks of `chunk_size` rows and computes each
  chunk's loss *and* its gradients w.r.t. hidden and weight right away, so at most chunk_size x V logits exist at
  once; backward only scales the saved gradients. No device->host sync and no data-dependent shape (ignored
  targets are masked, never dropped), so it runs inside a CUDA step without synchronising and under torch.compile.
- "compiled": "chunked" with each chunk's softmax, loss and logit gradient compiled by torch.compile: without
  softcap one fused kernel reads the chunk's logits and writes their gradient (eager makes ~10 passes over
  float32 copies): the memory traffic of Liger's kernel, without its sync (2-4x faster than "chunked" on CPU;
  not yet timed on a GPU). The training step's default when its blocks are compiled (`nanovlm.step.loss_kernel_for`).
- "liger": Liger-Kernel's fused Triton kernel (CUDA, optional `liger-kernel` package); the same idea, but it
  reads the number of targets with `.item()` (one host sync per call).
- "plain": full logits then F.cross_entropy; the reference the tests compare against.
- "auto" (default): `pick_backend(hidden.device)`.

Precision matches the plain head `F.cross_entropy(F.linear(h, W).float(), ...)`: under torch.autocast the chunked
path casts the matmul operands to the autocast dtype by hand (no custom_fwd: the same code serves every device), and
the softmax, the loss and the gradient sums run in float32 (float64 for float64 inputs) whatever the input dtypes;
gradients come back in the dtypes of hidden and weight.

Tests: `python -m pytest -q tests/test_loss.py`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from nanovlm.data.processors import IGNORE_INDEX


def _autocast(device_type: str) -> bool:
    # is_autocast_enabled raises for device types autocast does not know (meta, ...)
    return torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)


def _compute_dtype(hidden: Tensor, weight: Tensor) -> torch.dtype:
    """The matmul dtype the plain path would get: the autocast dtype when autocast is on, else the wider input."""
    device_type = hidden.device.type
    if _autocast(device_type):
        return torch.get_autocast_dtype(device_type)
    return torch.promote_types(hidden.dtype, weight.dtype)


def _float_dtype(dtype: torch.dtype) -> torch.dtype:
    """Softmax and accumulation dtype: float32, or float64 when the inputs are float64."""
    return torch.promote_types(dtype, torch.float32)


def _plain(hidden: Tensor, weight: Tensor, targets: Tensor, softcap: float | None, chunk_size: int) -> Tensor:
    dtype = _compute_dtype(hidden, weight)
    logits = (hidden.to(dtype) @ weight.to(dtype).T).to(_float_dtype(dtype))  # (N, V): what the others avoid
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    # The mean written as sum / count so that no target at all gives 0, not F.cross_entropy's 0/0 = NaN.
    total = F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="sum")
    return total / (targets != IGNORE_INDEX).sum().clamp(min=1)


def _chunk_loss_and_grad(logits: Tensor, index: Tensor, ignored: Tensor, softcap: float | None, acc: torch.dtype,
                         dtype: torch.dtype, need_grad: bool) -> tuple[Tensor, Tensor | None]:
    """One chunk: logits (c, V) as the matmul made them, index (c, 1) target ids (0 where ignored), ignored (c, 1)
    -> (sum of the chunk's losses in `acc`, d(that sum)/d(logits) in `dtype`, or None without need_grad).
    Consumes `logits` (in place). The "compiled" backend runs this function compiled: without softcap, one
    kernel reads the logits and writes the gradient (as Liger's does), where eager runs ~10 passes over (c, V)
    float32 tensors."""
    logits = logits.to(acc)  # (c, V)
    if softcap is not None:
        capped = torch.tanh(logits / softcap)  # (c, V), kept for the chain rule
        logits = capped * softcap
    lse = torch.logsumexp(logits, dim=1, keepdim=True)  # (c, 1)
    target_logit = logits.gather(1, index)  # (c, 1)
    # masked_fill, not a multiply by the mask: 0 * inf is NaN.
    loss = (lse - target_logit).masked_fill(ignored, 0).sum()
    if not need_grad:
        return loss, None
    # d(sum of losses) / d(logits) = softmax - one_hot(target), zero on ignored rows. In place: logits dies.
    grad = logits.sub_(lse).exp_()  # (c, V)
    if torch.compiler.is_compiling():  # a compare fuses into the one kernel; a scatter would store (c, V) first
        grad.add_(torch.arange(grad.shape[1], device=grad.device) == index, alpha=-1)
    else:  # eager: a scatter of c values costs less than a (c, V) mask
        grad.scatter_add_(1, index, torch.full_like(target_logit, -1))
    grad.masked_fill_(ignored, 0)
    if softcap is not None:
        grad.mul_(capped.square_().neg_().add_(1))  # d(cap * tanh(z / cap)) / dz = 1 - tanh^2
    return loss, grad.to(dtype)


# A chunk is (chunk_size, V) or the remainder of N, at an offset: dynamic=True gives one graph for them all (N's
# buckets would each compile their remainder's graph otherwise; the kernels loop over V whatever its value).
_compiled_chunk_loss_and_grad = torch.compile(_chunk_loss_and_grad, dynamic=True, fullgraph=True)


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Loss and gradients computed together in forward, chunk by chunk; backward scales them by grad_output."""

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, targets: Tensor, softcap: float | None, chunk_size: int,
                dtype: torch.dtype, need_hidden_grad: bool, need_weight_grad: bool, compiled: bool) -> Tensor:
        # Autocast is applied by hand: matmul operands are cast to `dtype` (the autocast dtype when it is on) and
        # everything after the matmul runs in float32, so leaving autocast on in here changes nothing.
        acc = _float_dtype(dtype)
        chunk_loss_and_grad = _compiled_chunk_loss_and_grad if compiled else _chunk_loss_and_grad
        h, w = hidden.to(dtype), weight.to(dtype)  # (N, D), (V, D)
        valid = targets != IGNORE_INDEX  # (N,)
        index = torch.where(valid, targets, 0).unsqueeze(1)  # (N, 1): gather/scatter need a real id everywhere
        ignored = ~valid.unsqueeze(1)  # (N, 1)
        # Number of targets as a device tensor (no .item()); at least 1 so that no target gives 0 loss, 0 grads.
        count = valid.sum().clamp(min=1).to(acc)
        loss = torch.zeros((), dtype=acc, device=hidden.device)
        grad_h = torch.zeros(hidden.shape, dtype=acc, device=hidden.device) if need_hidden_grad else None
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_weight_grad else None
        for start in range(0, hidden.shape[0], chunk_size):
            rows = slice(start, start + chunk_size)
            chunk_loss, grad = chunk_loss_and_grad(h[rows] @ w.T, index[rows], ignored[rows], softcap, acc, dtype,
                                                   grad_h is not None or grad_w is not None)  # (c, V) grad
            loss = loss + chunk_loss
            if grad_h is not None:
                grad_h[rows] = grad @ w  # (c, D)
            if grad_w is not None:
                grad_w += grad.T @ h[rows]  # (V, D), summed over the chunks in float32
        # Divide by the count in float32, then store in the inputs' dtypes (the dtype autograd expects back).
        ctx.save_for_backward(None if grad_h is None else grad_h.div_(count).to(hidden.dtype),
                              None if grad_w is None else grad_w.div_(count).to(weight.dtype))
        return loss / count

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        grad_h, grad_w = ctx.saved_tensors
        # The loss is the last op before backward: grad_output is 1, or a gradient-accumulation scale.
        grad_h = None if grad_h is None else grad_h * grad_output.to(grad_h.dtype)
        grad_w = None if grad_w is None else grad_w * grad_output.to(grad_w.dtype)
        return grad_h, grad_w, None, None, None, None, None, None, None


def _chunked(hidden: Tensor, weight: Tensor, targets: Tensor, softcap: float | None, chunk_size: int,
             compiled: bool = False) -> Tensor:
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    grad = torch.is_grad_enabled()
    return _ChunkedLinearCrossEntropy.apply(hidden, weight, targets, softcap, chunk_size,
                                            _compute_dtype(hidden, weight), grad and hidden.requires_grad,
                                            grad and weight.requires_grad, compiled)


def _liger(hidden: Tensor, weight: Tensor, targets: Tensor, softcap: float | None, chunk_size: int) -> Tensor:
    # Liger-Kernel picks its own chunk size (chunk_size is unused) and computes the softmax in float32 inside the
    # kernel. It computes the weight gradient only when hidden requires grad: the chunked path covers the rest.
    if torch.is_grad_enabled() and weight.requires_grad and not hidden.requires_grad:
        return _chunked(hidden, weight, targets, softcap, chunk_size)
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

    if not _autocast(hidden.device.type):
        # Without autocast its matmul needs one dtype; under autocast its custom_fwd lets autocast cast.
        dtype = _compute_dtype(hidden, weight)
        hidden, weight = hidden.to(dtype), weight.to(dtype)
    # Keywords only past the first three: the positional order has changed between releases (ce_weight).
    loss = liger_fused_linear_cross_entropy(hidden.contiguous(), weight.contiguous(), targets.contiguous(),
                                            ignore_index=IGNORE_INDEX, reduction="mean", softcap=softcap)
    return loss.float()


BACKENDS: dict[str, Callable[[Tensor, Tensor, Tensor, float | None, int], Tensor]] = {
    "plain": _plain,
    "chunked": _chunked,
    "compiled": functools.partial(_chunked, compiled=True),
    "liger": _liger,
}


@functools.lru_cache(maxsize=None)
def liger_available() -> bool:
    try:
        import liger_kernel.transformers.functional  # noqa: F401
    except Exception:  # not installed, or installed without a working triton
        return False
    return True


def pick_backend(device: torch.device) -> str:
    """The default backend: "liger" on CUDA when liger_kernel imports, else "chunked"."""
    return "liger" if torch.device(device).type == "cuda" and liger_available() else "chunked"


def linear_cross_entropy(hidden: Tensor, weight: Tensor, targets: Tensor, softcap: float | None = None,
                         backend: str = "auto", chunk_size: int = 1024) -> Tensor:
    """hidden (N, D) at positions that predict a token, weight (V, D) the LM head (maybe tied to the input
    embedding), targets (N,) token ids or IGNORE_INDEX (-100, import it from nanovlm.data.processors).
    Returns the mean cross-entropy over targets != IGNORE_INDEX (a 0-dim tensor; 0.0, not NaN, when every target
    is ignored, so a micro-batch whose loss slots are all padding contributes nothing). Logits are
    tanh(h @ W.T / softcap) * softcap when softcap is set (Gemma's final_logit_softcapping), and the softmax is
    computed in float32 whatever dtype hidden/weight have (under CUDA bf16 autocast the matmul runs in bf16,
    as the plain path `F.cross_entropy(logits.float(), ...)` does)."""
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"expected hidden (N, D) and weight (V, D), got {tuple(hidden.shape)} and "
                         f"{tuple(weight.shape)}")
    if targets.shape != hidden.shape[:1]:
        raise ValueError(f"expected targets ({hidden.shape[0]},), got {tuple(targets.shape)}")
    name = pick_backend(hidden.device) if backend == "auto" else backend
    if name not in BACKENDS:
        raise ValueError(f"unknown loss backend {backend!r}; valid: 'auto', {', '.join(map(repr, BACKENDS))}")
    return BACKENDS[name](hidden, weight, targets, softcap, chunk_size)
