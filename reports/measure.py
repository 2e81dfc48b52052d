"""Measuring one model: parameter counts, the FLOPs formula, and timed training steps.

    counts = count_parameters(cfg)                   # meta device: no memory, no download
    result = measure(cfg, batch_size=1, seq_len=128, steps=2, warmup=1, device="cpu")
    result = measure(cfg, batch_size=4, seq_len=2048, packed=True, sample_len=256, device="cuda")
    result.metrics, result.tags                      # what reports.profile logs to MLflow
    model_flops(model, cfg.train, sample_lens, loss_tokens)   # FLOPS_FORMULA, one micro-step

    python -m reports.measure CONFIG.json RESULT.json [--batch_size 4 --seq_len 2048 --packed --sample_len 256 ...]

`reports.profile` runs each row through the command line above, in a fresh process: on CPU the
peak resident memory of a process never goes down, so one process per row is what makes the
figure belong to that row; it also keeps an out-of-memory kill from taking the other rows along.

What is timed is the training step itself, `nanovlm.step.train_step`, set up as `nanovlm.train`
sets it up: `apply_freezing`, `build_optimizer` (fused AdamW), `nanovlm.step.prepare` (fused
kernels and per-block torch.compile when the config's `compile` asks for it: "auto" = on CUDA)
and `autocast_for` (bf16 autocast on CUDA, fp32 on CPU). A change to the step is measured here
without touching this file. One optimizer step = `grad_accum` micro-steps over the same
micro-batch (timing and memory depend on shapes, not values), clipping, AdamW; the wall time
between device syncs around the call is the step time, and the median over `steps` timed steps
after `warmup` untimed ones is reported. Data loading and the host-to-device copy are not timed.

The micro-batch is in exactly the training format: synthetic processed samples (random token ids
with one image's placeholder block at the start, labels = the ids with the image tokens ignored,
random pixels at the encoder's input size), grouped into rows by `nanovlm.data.packing.pack` and
collated by `collate_rows`, so the collator's bucket padding (blank images, ignored loss slots) is
in the timing just as in training:

- unpacked (default): `batch_size` rows, each one sample of `seq_len` tokens;
- packed (`packed=True`): `batch_size` rows of `seq_len` tokens, each holding seq_len // sample_len
  samples of `sample_len` tokens, one image each, attention restricted to each sample; a
  remainder of the row (when sample_len does not divide seq_len) is padding.

Every text token of a sample has a loss (an upper bound on the LM head's cost: real samples train
on the answer only). Throughput counts sample tokens (image tokens included, row padding not) and
samples, as the training loop does; model FLOPs (`model_flops`) are counted per sample.

Peak memory is that of the profiled steps (warm-up included): CUDA max allocated after a reset,
or on CPU the process's peak resident memory after resetting VmHWM. It is logged as
`profile/step_peak_memory_mb`, not under the training loop's `train/peak_memory_mb`, which is a
process-lifetime peak (see reports/names.py).
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nanovlm import metrics as M
from nanovlm.config import ExperimentConfig, TrainConfig, from_dict, override, to_dict
from nanovlm.data.packing import collate_rows, model_inputs, pack
from nanovlm.data.processors import IGNORE_INDEX
from nanovlm.provenance import device_description
from nanovlm.optim import apply_freezing, build_optimizer, group_rates, set_train_mode
from reports import names as N

# How long a packed sample is by default: a single-image VQA sample of the Cauldron/FineVision kind
# is the image's 49-64 tokens plus a question and a short answer, some tens to a few hundred
# tokens; 256 is that order of size and divides the usual row lengths (2048 = 8 samples per row).
DEFAULT_SAMPLE_LEN = 256

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


def model_flops(model: Any, train_cfg: TrainConfig, sample_lens: Sequence[int], loss_tokens: int,
                images: int | None = None) -> FlopsBreakdown:
    """FLOPs of one micro-step (forward + backward) by FLOPS_FORMULA; `model` may be on the meta device.

    `sample_lens` = tokens of every sample in the micro-step, whatever rows they were packed into
    (attention is per sample); `loss_tokens` = positions with a loss in the micro-step (the LM head
    only runs on those); `images` = images in the micro-step, by default one per sample.
    """
    arch = model.arch
    rates = group_rates(train_cfg)
    trained = {part: rate > 0 for part, rate in rates.items()}
    # Gradients flow back from the loss to the first trained part: vision -> projector -> language.
    k_vision = 3 if trained["vision"] else 1
    k_projector = 3 if trained["projector"] else (2 if trained["vision"] else 1)
    k_language = 3 if trained["language"] else (2 if trained["vision"] or trained["projector"] else 1)
    n_images = len(sample_lens) if images is None else images

    vision_tokens = arch.grid ** 2 + arch.prefix_tokens
    vision_params = _unique_params(model.vision, _embedding_param_ids(model.vision))
    vision_cfg = arch.vision_config
    vision = 2 * vision_params * vision_tokens + 4 * vision_cfg.num_hidden_layers * _attention_width(vision_cfg) * vision_tokens ** 2

    projector = 2 * _unique_params(model.projector) * arch.image_tokens

    lm = model.lm
    head = lm.get_output_embeddings().weight
    skip = _embedding_param_ids(lm) | {id(head)}
    lm_cfg = lm.config
    tokens = sum(sample_lens)
    squares = sum(n * n for n in sample_lens)  # attention per sample, not per row
    body = 2 * _unique_params(lm, skip) * tokens + 4 * lm_cfg.num_hidden_layers * _attention_width(lm_cfg) * squares
    head_flops = 2 * head.numel() * loss_tokens
    return FlopsBreakdown(vision=n_images * k_vision * vision, projector=n_images * k_projector * projector,
                          language=k_language * body, head=k_language * head_flops)


# ----------------------------------------------------------------------------- the batch


def synthetic_sample(model: Any, length: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """One processed sample of `length` tokens, as the data pipeline makes them: the image's placeholder
    block first, then random text ids; labels = the ids with the image tokens ignored; random pixels."""
    image_tokens = model.arch.image_tokens
    vocab = model.lm.get_input_embeddings().num_embeddings
    ids = torch.randint(0, vocab, (length,), generator=generator)
    ids[ids == model.image_token_id] = 0  # text must not contain the image placeholder
    ids[:image_tokens] = model.image_token_id
    labels = ids.clone()
    labels[:image_tokens] = IGNORE_INDEX
    size = model.arch.transform.size
    return {"input_ids": ids, "labels": labels, "pixel_values": torch.randn(1, 3, size, size, generator=generator)}


def batch_layout(image_tokens: int, seq_len: int, packed: bool, sample_len: int) -> tuple[int, int]:
    """(sample length, samples per row); raises ValueError for a layout that cannot hold a sample."""
    length = sample_len if packed else seq_len
    what = f"sample_len {sample_len}" if packed else f"seq_len {seq_len}"
    if length <= image_tokens + 1:
        raise ValueError(f"{what} leaves no text: a sample must exceed the {image_tokens} image tokens per image "
                         f"of this model by at least 2")
    if length > seq_len:
        raise ValueError(f"sample_len {sample_len} does not fit a row of seq_len {seq_len}")
    return length, (seq_len // sample_len if packed else 1)


def synthetic_batch(model: Any, batch_size: int, seq_len: int, packed: bool = False,
                    sample_len: int = DEFAULT_SAMPLE_LEN, seed: int = 0) -> dict[str, Any]:
    """One micro-batch of `batch_size` rows of `seq_len` tokens, made by `pack` and `collate_rows` (CPU tensors).

    Unpacked: a row is one sample of seq_len tokens. Packed: a row holds seq_len // sample_len
    samples of sample_len tokens. `stats` gains `sample_lens`, the length of every sample.
    """
    length, per_row = batch_layout(model.arch.image_tokens, seq_len, packed, sample_len)
    g = torch.Generator().manual_seed(seed)
    samples = [synthetic_sample(model, length, g) for _ in range(batch_size * per_row)]
    (rows, consumed, _), = list(pack(samples, batch_size, seq_len, packing=packed))
    assert consumed == len(samples) and all(len(row) == per_row for row in rows)
    batch = collate_rows(rows, seq_len, model.tokenizer.pad_token_id, model.image_token_id, model.arch.image_tokens)
    batch["stats"]["sample_lens"] = [len(s["input_ids"]) for row in rows for s in row]
    return batch


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


class _OptimizerClock:
    """Where the AdamW step starts and ends inside `train_step`, from optimizer hooks and without a
    sync of its own: CUDA events on the GPU (read after the step's closing sync), the host clock on
    the CPU (whose ops run synchronously)."""

    def __init__(self, optimizer: torch.optim.Optimizer, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks: dict[str, Any] = {}
        optimizer.register_step_pre_hook(lambda *_: self.mark("adamw_start"))
        optimizer.register_step_post_hook(lambda *_: self.mark("adamw_end"))

    def mark(self, name: str) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks[name] = event
        else:
            self.marks[name] = time.perf_counter()

    def split(self) -> tuple[float, float]:
        """(step start -> AdamW start, AdamW start -> end) in seconds, for the step since `mark("start")`."""
        start, adamw_start, adamw_end = (self.marks[k] for k in ("start", "adamw_start", "adamw_end"))
        if self.cuda:
            return start.elapsed_time(adamw_start) / 1e3, adamw_start.elapsed_time(adamw_end) / 1e3
        return adamw_start - start, adamw_end - adamw_start


def measure(cfg: ExperimentConfig, batch_size: int = 1, seq_len: int = 128, steps: int = 2, warmup: int = 1,
            grad_accum: int = 1, device: str = "cpu", peak_tflops_override: float | None = None,
            packed: bool = False, sample_len: int = DEFAULT_SAMPLE_LEN) -> Measurement:
    """Build `cfg`'s model at real size with random weights and time `steps` calls of
    `nanovlm.step.train_step` after `warmup` untimed ones (see the module docstring).

    Parameter counts are not part of it: `count_parameters` gives them without building anything.
    A step is `grad_accum` micro-steps of `batch_size` rows of `seq_len` tokens (one sample per
    row, or seq_len // sample_len samples with `packed`), then clipping and the AdamW step.
    Throughput uses the median step time.
    """
    from nanovlm import step as S  # looked up at call time: the step the training loop uses, whatever it is now
    from nanovlm.model.vlm import build_vlm

    if steps < 1 or warmup < 0 or batch_size < 1 or grad_accum < 1 or sample_len < 1:
        raise ValueError("steps, batch_size, grad_accum and sample_len must be >= 1, warmup >= 0")
    dev = torch.device(device)
    torch.manual_seed(cfg.train.seed)
    # random_init: real size from the bundled configs, no download (the tokenizer may be the tiny
    # stand-in of the family, which changes nothing that is measured here).
    model = build_vlm(override(cfg, {"random_init": True}).model)
    arch = model.arch
    # On the CPU first, as the data pipeline makes it; a layout that holds no sample fails here.
    batch = synthetic_batch(model, batch_size, seq_len, packed, sample_len, seed=cfg.train.seed)
    stats = batch["stats"]

    # The set-up of nanovlm.train.train: device, freezing, fused AdamW, kernels + compile, autocast.
    model.to(dev)
    apply_freezing(model, cfg.train)
    optimizer = build_optimizer(model, cfg.train)
    step_model = S.prepare(model, cfg.train, dev)
    autocast = S.autocast_for(dev)
    set_train_mode(model, cfg.train, True)
    inputs = model_inputs(batch, dev)
    micro_batches = [inputs] * grad_accum  # the same tensors each micro-step: shapes, not values, set the cost
    clock = _OptimizerClock(optimizer, dev)

    step_times, fb_times, opt_times, outs = [], [], [], []
    with PeakMemory(dev) as peak:
        for _ in range(warmup + steps):
            _sync(dev)
            t0 = time.perf_counter()
            clock.mark("start")
            out = S.train_step(step_model, model, optimizer, micro_batches, autocast, cfg.train.max_grad_norm)
            _sync(dev)
            step_times.append(time.perf_counter() - t0)
            fb, opt = clock.split()
            fb_times.append(fb)
            opt_times.append(opt)
            outs.append(out)
    timed = slice(warmup, None)
    step_s = statistics.median(step_times[timed])
    last_loss, _, _ = outs[-1].tolist()
    skipped = int(sum(o[2] for o in torch.stack(outs).tolist()))

    samples, tokens = stats["samples"] * grad_accum, stats["tokens"] * grad_accum
    micro = model_flops(model, cfg.train, stats["sample_lens"], stats["loss_tokens"], stats["images"])
    flops = micro.total * grad_accum
    metrics: dict[str, float] = {
        M.SAMPLES_PER_S: samples / step_s,
        M.TOKENS_PER_S: tokens / step_s,
        N.STEP_PEAK_MEMORY_MB: peak.mb,
        M.PADDING_FRACTION: 1 - stats["tokens"] / stats["slots"],
        M.BLANK_IMAGE_FRACTION: 1 - stats["images"] / max(1, stats["image_slots"]),
        N.SAMPLES_PER_ROW: stats["samples"] / batch_size,
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
            "torch_threads": str(torch.get_num_threads()), "final_loss": f"{last_loss:.4f}",
            "compiled": str(S.compile_enabled(cfg.train, dev)).lower()}
    if skipped:
        tags["skipped_steps"] = f"{skipped} of {warmup + steps} steps had a non-finite loss or gradient norm"
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
    p = argparse.ArgumentParser(prog="python -m reports.measure",
                                description="Profile one resolved config (reports.profile runs it once per row).")
    p.add_argument("config", help="ExperimentConfig as JSON (nanovlm.config.to_dict)")
    p.add_argument("result", help="where to write {metrics, tags} as JSON")
    p.add_argument("--batch_size", type=int, default=1, help="rows per micro-step")
    p.add_argument("--seq_len", type=int, default=128, help="tokens per row")
    p.add_argument("--packed", action="store_true", help="rows of several samples of --sample_len tokens")
    p.add_argument("--sample_len", type=int, default=DEFAULT_SAMPLE_LEN, help="tokens per sample with --packed")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--grad_accum", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--peak_tflops", type=float, default=None)
    a = p.parse_args(argv)
    cfg = from_dict(ExperimentConfig, json.loads(Path(a.config).read_text()))
    result = measure(cfg, a.batch_size, a.seq_len, a.steps, a.warmup, a.grad_accum, a.device, a.peak_tflops,
                     a.packed, a.sample_len)
    Path(a.result).write_text(json.dumps({"metrics": result.metrics, "tags": result.tags}))
    return 0


def config_json(cfg: ExperimentConfig) -> str:
    return json.dumps(to_dict(cfg))


if __name__ == "__main__":
    sys.exit(main())
