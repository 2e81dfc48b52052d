"""One optimizer step, shared by the training loop (`nanovlm.train`) and the profiler (`reports.measure`).

    step_model = prepare(model, tc, device, dist)          # fused kernels, per-block compile, DDP
    out = train_step(step_model, model, optimizer, micro_batches, autocast_for(device), tc.max_grad_norm, dist)
    loss, grad_norm, skipped = out.tolist()                # the only host read: do it once per log interval

The step never reads a device value on the host: the loss and gradient norm stay on the device,
and a non-finite step is skipped by the fused AdamW kernel itself (`found_inf`, the mechanism
torch's GradScaler uses), so the weights are never updated with a NaN/inf and the CPU does not wait
for the GPU. The caller finds out at its next read and stops the run.

Compilation is per transformer block (every layer of the vision encoder and of the LM, each with
`Module.compile`): the blocks of a stack share one compiled graph, so compile time stays short,
and the glue between them (embedding, masks, loss) runs eagerly without graph breaks to worry about.
With `--cuda_graphs true`, forward and backward of each micro-step are replayed CUDA graphs
(`nanovlm.graphs`: `graphs = cuda_graphs_for(step_model, tc, device)`, passed to `train_step`).
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from nanovlm.config import ConfigError, TrainConfig
from nanovlm.distributed import Dist
from nanovlm.model.loss import pick_backend

if TYPE_CHECKING:
    from nanovlm.graphs import MicroStepGraphs

log = logging.getLogger(__name__)


def autocast_for(device: torch.device) -> Any:
    """bf16 autocast on CUDA; fp32 on CPU (bf16 matmuls are slow on most CPUs)."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


def compile_enabled(tc: TrainConfig, device: torch.device) -> bool:
    """`compile` is auto, true or false (the config checks the value)."""
    return tc.compile == "true" or (tc.compile == "auto" and device.type == "cuda")


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks: children of every ModuleList whose members are all of one class."""
    blocks = []
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) and len({type(m) for m in module}) == 1:
            blocks += [m for m in module if any(True for _ in m.parameters())]
    return blocks


def compile_blocks(model: nn.Module, **options: Any) -> int:
    """Compile every transformer block in place (static shapes); returns how many."""
    blocks = transformer_blocks(model)
    # transformers wraps every layer's forward in one function, so the vision and LM blocks share
    # dynamo's per-function limit on compiled variants (8): the LM's one shape plus the vision
    # encoder's image buckets can exceed it, and dynamo would silently fall back to eager.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 32)
    for block in blocks:
        block.compile(dynamic=False, **options)
    return len(blocks)


def apply_fused_kernels(model: nn.Module, device: torch.device) -> list[str]:
    """Liger-Kernel's fused RMSNorm / SwiGLU or GeGLU / RoPE for the LM, when installed (pip install -e '.[gpu]').

    CUDA only (Triton kernels). Returns what was applied; anything that fails to apply is logged and
    left as it was, since these only change speed.
    """
    if device.type != "cuda":
        return []
    try:
        import liger_kernel.transformers as liger
    except ImportError:
        return []
    lm, family = model.lm, model.lm.config.model_type
    patches = {"llama": lambda: liger.apply_liger_kernel_to_llama(rope=True, rms_norm=True, swiglu=True,
                                                                   cross_entropy=False, fused_linear_cross_entropy=False,
                                                                   model=lm),
               "gemma3_text": lambda: liger.apply_liger_kernel_to_gemma3_text(rope=True, rms_norm=True, geglu=True,
                                                                              cross_entropy=False,
                                                                              fused_linear_cross_entropy=False,
                                                                              model=lm)}
    if family not in patches:
        return []
    try:
        patches[family]()
    except Exception as err:  # noqa: BLE001 - an optional speed-up must never stop a run
        log.warning("liger-kernel could not patch %s (%s); using the plain modules", family, err)
        return []
    return [f"liger:{family}"]


def use_fused_kernels(tc: TrainConfig, compiled: bool) -> bool:
    """Whether to patch in Liger's RMSNorm / SwiGLU / RoPE (`apply_fused_kernels`).

    Not into compiled blocks by default: inductor fuses these ops with their neighbours itself, and
    Liger's kernels are opaque to it. On an H200 (original_small, 16 packed rows of 2048 tokens),
    Liger's RMSNorm backward took 15% of the step's GPU time, about 6x its memory-bound time.
    """
    return tc.fused_kernels == "true" or (tc.fused_kernels == "auto" and not compiled)


def attention_for(tc: TrainConfig, device: torch.device) -> str:
    """The LM's attention kernel while training: FlexAttention on CUDA takes packed rows as block masks."""
    if tc.attention != "auto":
        return tc.attention
    return "flex_attention" if device.type == "cuda" else "sdpa"


def loss_kernel_for(tc: TrainConfig, device: torch.device) -> str:
    """The answer-token loss while training (`nanovlm.model.loss.BACKENDS`). auto: "compiled" in a compiled step
    (one fused kernel per chunk and no host sync, where Liger's loss reads its target count with `.item()`), else
    Liger's on CUDA when installed, else "chunked"; never Liger's with CUDA graphs (a capture forbids the sync)."""
    if tc.loss_kernel != "auto":
        return tc.loss_kernel
    if compile_enabled(tc, device):
        return "compiled"
    backend = pick_backend(device)
    return "chunked" if backend == "liger" and tc.cuda_graphs else backend


def prepare(model: nn.Module, tc: TrainConfig, device: torch.device, dist: Dist = Dist()) -> nn.Module:
    """The module the step calls: attention kernel, loss kernel, fused kernels and compiled blocks applied to
    `model` in place, DDP around it. `model.lm.set_attn_implementation(...)` switches the attention kernel back
    (generation does)."""
    model.lm.set_attn_implementation(attention_for(tc, device))
    model.loss_backend = loss_kernel_for(tc, device)
    compiled = compile_enabled(tc, device)
    applied = apply_fused_kernels(model, device) if use_fused_kernels(tc, compiled) else []
    if compiled:
        applied.append(f"compiled {compile_blocks(model)} blocks")
    log.info("training step: %s", ", ".join([f"{model.lm.config._attn_implementation} attention",
                                               f"{model.loss_backend} loss", *applied]))
    if dist.enabled:
        return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return model


def forward_backward(step_model: nn.Module, micro_batches: list[dict[str, torch.Tensor]], autocast: Any,
                     dist: Dist = Dist()) -> torch.Tensor:
    """Gradients of the mean loss over the micro-batches, added to p.grad -> that mean (this rank's), on the device."""
    n = len(micro_batches)
    loss_sum = torch.zeros((), device=next(step_model.parameters()).device)
    for i, inputs in enumerate(micro_batches):
        # DDP all-reduces gradients on the last micro-step only
        sync = i == n - 1 or not dist.enabled
        with contextlib.nullcontext() if sync else step_model.no_sync():
            micro_step(step_model, inputs, autocast, n, loss_sum)
    return loss_sum


def micro_step(step_model: nn.Module, inputs: dict[str, torch.Tensor], autocast: Any, n: int | torch.Tensor,
               loss_sum: torch.Tensor) -> None:
    """Gradients of loss / n added to p.grad, and loss / n to `loss_sum` (in place). `nanovlm.graphs` records
    this same function, with n a device tensor."""
    with autocast:
        loss = step_model(**inputs) / n
    loss.backward()
    loss_sum += loss.detach()


def cuda_graphs_for(step_model: nn.Module, tc: TrainConfig, device: torch.device) -> MicroStepGraphs | None:
    """The replayed micro-steps of `--cuda_graphs true` (`nanovlm.graphs`), else None (the eager loop)."""
    if not tc.cuda_graphs:
        return None
    if device.type != "cuda":  # nanovlm.checks.check_config says so before a run starts
        raise ConfigError(f"train.cuda_graphs=true needs a CUDA GPU, and this step runs on {device.type}")
    from nanovlm.graphs import MicroStepGraphs

    log.info("training step: CUDA graphs of the micro-steps")
    return MicroStepGraphs(step_model)


def train_step(step_model: nn.Module, model: nn.Module, optimizer: torch.optim.Optimizer,
               micro_batches: list[dict[str, torch.Tensor]], autocast: Any, max_grad_norm: float,
               dist: Dist = Dist(), graphs: MicroStepGraphs | None = None) -> torch.Tensor:
    """Forward/backward over the micro-batches, clip, AdamW -> (3,) device tensor [loss, grad_norm, skipped].

    `loss` is the mean over micro-batches (and ranks) of each micro-batch's mean answer-token loss;
    `skipped` is 1.0 when the loss or the gradient norm was not finite and the update was skipped.
    With `graphs` (`cuda_graphs_for`), forward and backward are replayed CUDA graphs.
    """
    if graphs is None:
        loss_sum = forward_backward(step_model, micro_batches, autocast, dist)
    else:
        loss_sum = graphs.forward_backward(micro_batches)
    loss_sum = dist.all_reduce_sum(loss_sum) / dist.world_size
    grad_norm = nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm or float("inf"))
    # Gradients are all-reduced, so every rank sees the same norm and skips the same steps.
    skipped = (~torch.isfinite(loss_sum) | ~torch.isfinite(grad_norm)).float()
    optimizer.found_inf = skipped  # read by the fused AdamW kernel: no update when 1
    optimizer.grad_scale = None
    optimizer.step()
    # The graphs add into the .grad tensors they were recorded with: zero those in place.
    optimizer.zero_grad(set_to_none=graphs is None)
    return torch.stack([loss_sum, grad_norm.to(loss_sum.dtype), skipped])
