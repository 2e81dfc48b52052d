"""Measuring one model: parameter counts, the FLOPs formula, and timed training steps.

    counts = count_parameters(cfg)                   # meta device: no memory, no download
    result = measure(cfg, batch_size=1, seq_len=128, steps=2, warmup=1, device="cpu")
    result.metrics, result.tags                      # what reports.profile logs to MLflow
    model_flops(model, cfg.train, batch_size, seq_len, loss_tokens)   # FLOPS_FORMULA, per micro-step

    python -m reports.measure CONFIG.json RESULT.json [options]   # one row in this process

`reports.profile` runs each row through the command line above, in a fresh process: on CPU the
peak resident memory of a process never goes down, so one process per row is what makes the
figure belong to that row; it also keeps an out-of-memory kill from taking the other rows along.

The training step is the one `nanovlm.train.train` takes (same freezing, AdamW parameter groups,
clipping, bf16 autocast on CUDA and fp32 on CPU), on a synthetic batch of random token ids and
random pixels: timing and memory depend on shapes, not on values.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import resource
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nanovlm.config import ExperimentConfig, TrainConfig, from_dict, override, to_dict
from nanovlm import metrics as M
from nanovlm.optim import apply_freezing, build_optimizer, group_rates, set_train_mode
from reports import names as N

IGNORE_INDEX = -100

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


def device_description(device: torch.device) -> str:
    """The same wording as the training runs' `device` tag, so rows from both group together."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


# ----------------------------------------------------------------------------- counting


def count_parameters(cfg: ExperimentConfig) -> dict[str, int]:
    """{vision, projector, language, total, trainable} of `cfg`, built on the meta device.

    The language count includes the one vocabulary row added for the image token (the real
    tokenizer's size, which a random-init build offline does not have); "trainable" applies the
    config's freezing (a learning rate of 0 or freeze_vision_encoder).
    """
    from nanovlm.model.vlm import build_vlm

    model = build_vlm(cfg.model, meta=True)
    apply_freezing(model, cfg.train)
    return model.parameter_counts()


# ----------------------------------------------------------------------------- FLOPs


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
    "model FLOPs per optimizer step = grad_accum x batch x sum over vision, projector, language of "
    "k x (2 x P x T + 4 x L x d x T^2), plus the LM head k_lm x 2 x V x D x A; "
    "P = the part's parameters except lookup tables (embeddings, and the LM head counted apart), "
    "T = tokens through the part per sample (vision: patches + CLS/registers; projector: image tokens; "
    "language: seq_len), L x d = layers x attention width (heads x head_dim; 0 for the projector), "
    "V x D = vocabulary x LM width, A = tokens with a loss; k = 3 for a trained part (forward + backward "
    "for weights and inputs), 2 for a frozen part that gradients pass through, 1 for a frozen part with "
    "nothing trainable before it. Attention is counted over the full T x T square (no causal or "
    "sliding-window discount) and nothing is recomputed, as in the PaLM MFU convention."
)


@dataclass(frozen=True)
class FlopsBreakdown:
    vision: float
    projector: float
    language: float
    head: float

    @property
    def total(self) -> float:
        return self.vision + self.projector + self.language + self.head


def model_flops(model: Any, train_cfg: TrainConfig, batch_size: int, seq_len: int, loss_tokens: int) -> FlopsBreakdown:
    """FLOPs of one micro-step (forward + backward) by FLOPS_FORMULA; `model` may be on the meta device.

    `loss_tokens` = tokens per sample that get a loss (the LM head only runs on those).
    """
    arch = model.arch
    rates = group_rates(train_cfg)
    trained = {part: rate > 0 for part, rate in rates.items()}
    # Gradients flow back from the loss to the first trained part: vision -> projector -> language.
    k_vision = 3 if trained["vision"] else 1
    k_projector = 3 if trained["projector"] else (2 if trained["vision"] else 1)
    k_language = 3 if trained["language"] else (2 if trained["vision"] or trained["projector"] else 1)

    vision_tokens = arch.grid ** 2 + arch.prefix_tokens
    vision_params = _unique_params(model.vision, _embedding_param_ids(model.vision))
    vision_cfg = arch.vision_config
    vision = 2 * vision_params * vision_tokens + 4 * vision_cfg.num_hidden_layers * _attention_width(vision_cfg) * vision_tokens ** 2

    projector = 2 * _unique_params(model.projector) * arch.image_tokens

    lm = model.lm
    head = lm.get_output_embeddings().weight
    skip = _embedding_param_ids(lm) | {id(head)}
    lm_cfg = lm.config
    body = 2 * _unique_params(lm, skip) * seq_len + 4 * lm_cfg.num_hidden_layers * _attention_width(lm_cfg) * seq_len ** 2
    head_flops = 2 * head.numel() * loss_tokens
    return FlopsBreakdown(vision=batch_size * k_vision * vision, projector=batch_size * k_projector * projector,
                          language=batch_size * k_language * body, head=batch_size * k_language * head_flops)


# ----------------------------------------------------------------------------- the batch


def synthetic_batch(model: Any, batch_size: int, seq_len: int, device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    """`batch_size` samples of `seq_len` tokens: the image's tokens first, then random text ids.

    Every text token gets a loss (an upper bound on the LM head's cost: real samples train on the
    answer only). One image per sample, random pixels at the encoder's input size.
    """
    image_tokens = model.arch.image_tokens
    if seq_len <= image_tokens + 1:
        raise ValueError(f"seq_len {seq_len} leaves no text: it must exceed the {image_tokens} image tokens per "
                         f"image of this model by at least 2")
    g = torch.Generator().manual_seed(seed)
    vocab = model.lm.get_input_embeddings().num_embeddings
    ids = torch.randint(0, vocab, (batch_size, seq_len), generator=g)
    ids[ids == model.image_token_id] = 0  # text must not contain the image placeholder
    ids[:, :image_tokens] = model.image_token_id
    labels = ids.clone()
    labels[:, :image_tokens] = IGNORE_INDEX
    size = model.arch.transform.size
    images = torch.randn(batch_size, 3, size, size, generator=g)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "images": images, "labels": labels}
    return {k: v.to(device) for k, v in batch.items()}


def loss_tokens_per_sample(image_tokens: int, seq_len: int) -> int:
    """Positions whose next token has a loss in `synthetic_batch`: every text token."""
    return seq_len - image_tokens


# ----------------------------------------------------------------------------- peak memory


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


# ----------------------------------------------------------------------------- one row


@dataclass
class Measurement:
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(cfg: ExperimentConfig, batch_size: int = 1, seq_len: int = 128, steps: int = 2, warmup: int = 1,
            grad_accum: int = 1, device: str = "cpu", peak_tflops_override: float | None = None) -> Measurement:
    """Build `cfg`'s model at real size with random weights and time `steps` training steps after `warmup`.

    Parameter counts are not part of it: `count_parameters` gives them without building anything.

    A step is `grad_accum` micro-steps of `batch_size` samples, then clipping and the AdamW step,
    as in training. Throughput uses the median step time.
    """
    from nanovlm.model.vlm import build_vlm

    if steps < 1 or warmup < 0 or batch_size < 1 or grad_accum < 1:
        raise ValueError("steps and batch_size and grad_accum must be >= 1, warmup >= 0")
    dev = torch.device(device)
    torch.manual_seed(cfg.train.seed)
    # random_init: real size from the bundled configs, no download (the tokenizer may be the tiny
    # stand-in of the family, which changes nothing that is measured here).
    model = build_vlm(override(cfg, {"random_init": True}).model).to(dev)
    arch = model.arch
    apply_freezing(model, cfg.train)
    optimizer = build_optimizer(model, cfg.train, dev)
    set_train_mode(model, cfg.train, True)
    step_model = torch.compile(model) if cfg.train.compile else model
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else contextlib.nullcontext()
    batch = synthetic_batch(model, batch_size, seq_len, dev, seed=cfg.train.seed)

    step_times, fb_times, opt_times = [], [], []
    with PeakMemory(dev) as peak:
        for _ in range(warmup + steps):
            _sync(dev)
            t0 = time.perf_counter()
            for _ in range(grad_accum):
                with autocast:
                    loss = step_model(**batch) / grad_accum
                loss.backward()
            _sync(dev)
            t1 = time.perf_counter()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.max_grad_norm or float("inf"))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            _sync(dev)
            t2 = time.perf_counter()
            step_times.append(t2 - t0)
            fb_times.append(t1 - t0)
            opt_times.append(t2 - t1)
    timed = slice(warmup, None)
    step_s = statistics.median(step_times[timed])
    samples = batch_size * grad_accum

    loss_tokens = loss_tokens_per_sample(arch.image_tokens, seq_len)
    flops = model_flops(model, cfg.train, batch_size, seq_len, loss_tokens).total * grad_accum
    metrics: dict[str, float] = {
        M.SAMPLES_PER_S: samples / step_s,
        M.TOKENS_PER_S: samples * seq_len / step_s,
        M.PEAK_MEMORY_MB: peak.mb,
        N.IMAGE_TOKENS: float(arch.image_tokens),
        N.VISION_TOKENS: float(arch.grid ** 2 + arch.prefix_tokens),
        N.STEP_TIME_S: step_s,
        N.FORWARD_BACKWARD_S: statistics.median(fb_times[timed]),
        N.OPTIMIZER_S: statistics.median(opt_times[timed]),
        N.MODEL_FLOPS_PER_STEP: float(flops),
        N.ACHIEVED_TFLOPS: flops / step_s / 1e12,
    }
    description = device_description(dev)
    tags = {"vision_encoder": arch.vision_source, "language_model": arch.language_source, "device": description,
            N.PEAK_MEMORY_MEASURE_TAG: peak.measure, "dtype": "bf16 autocast" if dev.type == "cuda" else "fp32",
            "torch_threads": str(torch.get_num_threads()), "final_loss": f"{loss.item() * grad_accum:.4f}"}
    peak_tf = peak_tflops_override or (peak_tflops(description) if dev.type == "cuda" else None)
    if peak_tf:
        metrics[N.MFU] = flops / step_s / (peak_tf * 1e12)
        tags["peak_tflops"] = str(peak_tf)
    else:
        tags[N.MFU_NOTE_TAG] = (f"peak FLOPS of {description} unknown (pass --peak_tflops)" if dev.type == "cuda"
                                else "MFU is measured on CUDA only (pass --peak_tflops to compute it on CPU)")
    return Measurement(metrics, tags)


# ----------------------------------------------------------------------------- worker command line


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Profile one resolved config (used by reports.profile, one process per row).")
    p.add_argument("config", help="ExperimentConfig as JSON (nanovlm.config.to_dict)")
    p.add_argument("result", help="where to write {metrics, tags} as JSON")
    p.add_argument("--batch_size", type=int, default=1)
    p.add_argument("--seq_len", type=int, default=128)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--grad_accum", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--peak_tflops", type=float, default=None)
    a = p.parse_args(argv)
    cfg = from_dict(ExperimentConfig, json.loads(Path(a.config).read_text()))
    result = measure(cfg, a.batch_size, a.seq_len, a.steps, a.warmup, a.grad_accum, a.device, a.peak_tflops)
    Path(a.result).write_text(json.dumps({"metrics": result.metrics, "tags": result.tags}))
    return 0


def config_json(cfg: ExperimentConfig) -> str:
    return json.dumps(to_dict(cfg))


if __name__ == "__main__":
    sys.exit(main())
