"""Model FLOPs of a training step (the formula MFU is computed with) and the peak FLOPS of known GPUs.

    micro = model_flops(model, cfg.train, sample_lens=[256] * 8, loss_tokens=1536)   # one micro-step
    micro.total * grad_accum / step_s / (peak_tflops("NVIDIA H100 80GB HBM3") * 1e12) # MFU
    counter = FlopsCounter(model, cfg.train); counter(batch["stats"]).total         # per batch, cheap
    FLOPS_FORMULA                                  # the formula in words, logged as a profile's tag

The training loop logs `train/mfu` with a `FlopsCounter` (the model's sizes are read once, so a
batch costs a few multiplications); `reports.measure` uses the same count for `profile/mfu`.

`model` may be built on the meta device: only parameter shapes and the architecture are read.
Model FLOPs are counted per sample (attention stays inside a sample, also in a packed row) and
follow the config's freezing (a frozen part costs its forward, plus the input gradients when a
trained part is before it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from nanovlm.config import TrainConfig
from nanovlm.optim import group_rates

# Dense bf16 tensor-core peak of the GPUs we know, in TFLOPS (vendor datasheets, without sparsity),
# matched against torch.cuda.get_device_name() in this order (the first substring that matches wins).
PEAK_BF16_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),  # SXM ("NVIDIA H100 80GB HBM3")
    ("H200", 989.4),
    ("GH200", 989.4),
    ("A100", 312.0),
)


def peak_tflops(device_name: str) -> float | None:
    """The device's dense bf16 peak in TFLOPS, or None when we do not know it."""
    for key, value in PEAK_BF16_TFLOPS:
        if key.lower() in device_name.lower():
            return value
    return None


def _unique_params(module: nn.Module, skip: set[int] = frozenset()) -> int:
    return sum(p.numel() for p in {id(p): p for p in module.parameters()}.values() if id(p) not in skip)


def _embedding_param_ids(module: nn.Module) -> set[int]:
    """Parameters of lookup tables (nn.Embedding): they cost no multiply-adds."""
    return {id(p) for m in module.modules() if isinstance(m, nn.Embedding) for p in m.parameters(recurse=False)}


def _attention_width(config: Any) -> int:
    heads = int(config.num_attention_heads)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return heads * int(head_dim)


FLOPS_FORMULA = (
    "model FLOPs per optimizer step = grad_accum x (micro-step FLOPs); micro-step FLOPs = "
    "images x [k_v x (2 x P_v x T_v + 4 x L_v x d_v x T_v^2) + k_p x 2 x P_p x I] "
    "+ sum over the samples i of k_l x (2 x P_l x n_i + 4 x L_l x d_l x n_i^2) + k_l x 2 x V x D x A; "
    "images = the micro-step's images (one per sample; blank images that pad the batch to a bucket size are "
    "not counted), n_i = tokens of sample i (its image tokens included): a packed row of several samples counts "
    "each sample's own n_i^2, since attention stays inside a sample, and the row's padding is not counted; "
    "A = positions with a loss (every text token of the synthetic samples; the padding of the loss slots "
    "is not counted); P = a part's parameters except lookup tables (embeddings, and the LM head counted apart), "
    "T_v = tokens through the vision encoder per image (patches + CLS/registers), I = image tokens per image "
    "after the projector, L x d = layers x attention width (heads x head_dim) of the vision encoder (v) and "
    "the language model (l), V x D = vocabulary x LM width; k = 3 for a trained part (forward + backward for "
    "weights and inputs), 2 for a frozen part that gradients pass through, 1 for a frozen part with nothing "
    "trainable before it. Attention is counted over each sample's full n_i x n_i square and each image's "
    "T_v x T_v square (no causal or sliding-window discount) and nothing is recomputed, as in the PaLM MFU "
    "convention; a kernel that computes a packed row's whole masked T x T square does more work than is counted."
)


@dataclass(frozen=True)
class FlopsBreakdown:
    vision: float
    projector: float
    language: float  # the LM body: linear layers and attention, without the head
    head: float

    @property
    def total(self) -> float:
        return self.vision + self.projector + self.language + self.head


class FlopsCounter:
    """FLOPS_FORMULA for one model and freezing: sizes read once, then `counter(stats)` per micro-batch."""

    def __init__(self, model: Any, train_cfg: TrainConfig):
        arch = model.arch
        trained = {part: rate > 0 for part, rate in group_rates(train_cfg).items()}
        # Gradients flow back from the loss to the first trained part: vision -> projector -> language.
        k_vision = 3 if trained["vision"] else 1
        k_projector = 3 if trained["projector"] else (2 if trained["vision"] else 1)
        self.k_language = 3 if trained["language"] else (2 if trained["vision"] or trained["projector"] else 1)

        vision_tokens = arch.grid ** 2 + arch.prefix_tokens
        vision_params = _unique_params(model.vision, _embedding_param_ids(model.vision))
        vision_cfg = arch.vision_config
        self.per_image_vision = k_vision * (2 * vision_params * vision_tokens + 4 * vision_cfg.num_hidden_layers
                                            * _attention_width(vision_cfg) * vision_tokens ** 2)
        self.per_image_projector = k_projector * 2 * _unique_params(model.projector) * arch.image_tokens

        lm = model.lm
        head = lm.get_output_embeddings().weight
        self.body_params = _unique_params(lm, _embedding_param_ids(lm) | {id(head)})
        self.attention = 4 * lm.config.num_hidden_layers * _attention_width(lm.config)
        self.head_params = head.numel()

    def count(self, sample_lens: Sequence[int], loss_tokens: int, images: int | None = None) -> FlopsBreakdown:
        """FLOPs of one micro-step over samples of `sample_lens` tokens (see `model_flops`)."""
        n_images = len(sample_lens) if images is None else images
        squares = sum(n * n for n in sample_lens)  # attention per sample, not per row
        body = 2 * self.body_params * sum(sample_lens) + self.attention * squares
        return FlopsBreakdown(vision=n_images * self.per_image_vision, projector=n_images * self.per_image_projector,
                              language=self.k_language * body, head=self.k_language * 2 * self.head_params * loss_tokens)

    def __call__(self, stats: dict[str, Any]) -> FlopsBreakdown:
        """FLOPs of a micro-batch from its collated `stats` (`nanovlm.data.packing.collate_rows`)."""
        return self.count(stats["sample_lens"], stats["loss_tokens"], stats["images"])


def model_flops(model: Any, train_cfg: TrainConfig, sample_lens: Sequence[int], loss_tokens: int,
                images: int | None = None) -> FlopsBreakdown:
    """FLOPs of one micro-step (forward + backward) by FLOPS_FORMULA; `model` may be on the meta device.

    `sample_lens` = tokens of every sample in the micro-step, whatever rows they were packed into
    (attention is per sample); `loss_tokens` = positions with a loss in the micro-step (the LM head
    only runs on those); `images` = images in the micro-step, by default one per sample.
    """
    return FlopsCounter(model, train_cfg).count(sample_lens, loss_tokens, images)
