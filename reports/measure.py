"""Measuring one profile row: a model at real size with random weights, its training step timed.

    result = measure(cfg, batch_size=1, seq_len=128, steps=2, warmup=1, device="cpu")
    result = measure(cfg, batch_size=4, seq_len=2048, packed=True, sample_len=256, device="cuda")
    result = measure(cfg, ..., trace="trace.txt")  # then 3 more steps under torch.profiler: where the time goes
    result.metrics, result.tags                      # what reports.profile logs to MLflow

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

The parts, one module each: the micro-batch is `reports.batches.synthetic_batch` (the training
format, packed or not), peak memory `reports.memory.PeakMemory` (of the profiled steps, warm-up
included), model FLOPs and the GPUs' peaks `nanovlm.flops`, parameter counts (not measured here,
no model needed) `reports.param_counts`. Throughput counts sample tokens (image tokens included,
row padding not) and samples, as the training loop does.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from nanovlm import metrics as metric_names
from nanovlm.config import ExperimentConfig, from_dict, override, to_dict
from nanovlm.data.packing import model_inputs
from nanovlm.flops import FlopsCounter, peak_tflops
from nanovlm.optim import apply_freezing, build_optimizer, set_train_mode
from nanovlm.provenance import device_description
from reports import names as report_names
from reports.batches import DEFAULT_SAMPLE_LEN, synthetic_batch
from reports.memory import PeakMemory


@dataclass
class Measurement:
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA; CPU ops run synchronously)."""
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
            packed: bool = False, sample_len: int = DEFAULT_SAMPLE_LEN, trace: str | None = None) -> Measurement:
    """Build `cfg`'s model at real size with random weights and time `steps` calls of
    `nanovlm.step.train_step` after `warmup` untimed ones (see the module docstring).

    Parameter counts are not part of it: `reports.param_counts.count_parameters` gives them
    without building anything.
    A step is `grad_accum` micro-steps of `batch_size` rows of `seq_len` tokens (one sample per
    row, or seq_len // sample_len samples with `packed`), then clipping and the AdamW step.
    Throughput uses the median step time. With `trace`, 3 more steps run under torch.profiler
    afterwards (not timed) and `write_trace` saves where their time went.
    """
    from nanovlm import step as training_step  # looked up at call time: the step the training loop uses, whatever it is now
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
    step_model = training_step.prepare(model, cfg.train, dev)
    graphs = training_step.cuda_graphs_for(step_model, cfg.train, dev)
    autocast = training_step.autocast_for(dev)
    set_train_mode(model, cfg.train, True)
    inputs = model_inputs(batch, dev)
    micro_batches = [inputs] * grad_accum  # the same tensors each micro-step: shapes, not values, set the cost
    clock = _OptimizerClock(optimizer, dev)

    step_times, fb_times, opt_times, outs = [], [], [], []
    with PeakMemory(dev) as peak:
        for _ in range(warmup + steps):
            sync(dev)
            t0 = time.perf_counter()
            clock.mark("start")
            out = training_step.train_step(step_model, model, optimizer, micro_batches, autocast, cfg.train.max_grad_norm,
                                           graphs=graphs)
            sync(dev)
            step_times.append(time.perf_counter() - t0)
            fb, opt = clock.split()
            fb_times.append(fb)
            opt_times.append(opt)
            outs.append(out)
    if trace:  # after the peak-memory window: the profiler's own buffers are not the step's
        write_trace(lambda: training_step.train_step(step_model, model, optimizer, micro_batches, autocast,
                                                     cfg.train.max_grad_norm, graphs=graphs), dev, 3, trace)
    timed = slice(warmup, None)
    step_s = statistics.median(step_times[timed])
    last_loss, _, _ = outs[-1].tolist()
    skipped = int(sum(o[2] for o in torch.stack(outs).tolist()))

    samples, tokens = stats["samples"] * grad_accum, stats["tokens"] * grad_accum
    flops = FlopsCounter(model, cfg.train)(stats).total * grad_accum
    metrics: dict[str, float] = {
        metric_names.SAMPLES_PER_S: samples / step_s,
        metric_names.TOKENS_PER_S: tokens / step_s,
        report_names.STEP_PEAK_MEMORY_MB: peak.mb,
        metric_names.PADDING_FRACTION: 1 - stats["tokens"] / stats["slots"],
        metric_names.BLANK_IMAGE_FRACTION: 1 - stats["images"] / max(1, stats["image_slots"]),
        report_names.SAMPLES_PER_ROW: stats["samples"] / batch_size,
        report_names.IMAGE_TOKENS: float(arch.image_tokens),
        report_names.VISION_TOKENS: float(arch.grid ** 2 + arch.prefix_tokens),
        report_names.STEP_TIME_S: step_s,
        report_names.FORWARD_BACKWARD_S: statistics.median(fb_times[timed]),
        report_names.OPTIMIZER_S: statistics.median(opt_times[timed]),
        report_names.MODEL_FLOPS_PER_STEP: float(flops),
        report_names.ACHIEVED_TFLOPS: flops / step_s / 1e12,
    }
    description = device_description(dev)
    tags = {"vision_encoder": arch.vision_source, "language_model": arch.language_source, "device": description,
            report_names.PEAK_MEMORY_MEASURE_TAG: peak.measure, "dtype": "bf16 autocast" if dev.type == "cuda" else "fp32",
            "torch_threads": str(torch.get_num_threads()), "final_loss": f"{last_loss:.4f}",
            "compiled": str(training_step.compile_enabled(cfg.train, dev)).lower(), "loss_kernel": model.loss_backend}
    if skipped:
        tags["skipped_steps"] = f"{skipped} of {warmup + steps} steps had a non-finite loss or gradient norm"
    peak_tf = peak_tflops_override or (peak_tflops(description) if dev.type == "cuda" else None)
    if peak_tf:
        metrics[report_names.MFU] = flops / step_s / (peak_tf * 1e12)
        tags["peak_tflops"] = str(peak_tf)
    else:
        tags[report_names.MFU_NOTE_TAG] = (f"peak FLOPS of {description} unknown (pass --peak_tflops)" if dev.type == "cuda"
                                else "MFU is measured on CUDA only (pass --peak_tflops to compute it on CPU)")
    return Measurement(metrics, tags)


def write_trace(run_step: Any, device: torch.device, steps: int, path: str) -> None:
    """Run `steps` steps under torch.profiler and write, to `path`: the wall time against the time the
    GPU spent in kernels (a step whose kernels fill a small part of its wall time is host-bound),
    then the operators by device time and by host (CPU) time."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    sync(device)
    started = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]) as prof:
        for _ in range(steps):
            run_step()
        sync(device)
    wall = time.perf_counter() - started
    averages = prof.key_averages()
    lines = [f"{steps} steps: {wall / steps * 1e3:.1f} ms wall per step"]
    if cuda:
        from torch.autograd import DeviceType

        # the kernels themselves (as the profiler's own "Self CUDA time total"): the operators that
        # launched them and user annotations repeat their time
        busy = sum(e.self_device_time_total for e in averages
                   if e.device_type == DeviceType.CUDA and not getattr(e, "is_user_annotation", False)) / 1e6
        lines[0] += f", GPU kernels {busy / steps * 1e3:.1f} ms per step ({100 * busy / wall:.0f}% of the wall time)"
        lines += ["", "By GPU time:", averages.table(sort_by="self_device_time_total", row_limit=30, max_name_column_width=70)]
    lines += ["", "By host time:", averages.table(sort_by="self_cpu_time_total", row_limit=30, max_name_column_width=70)]
    Path(path).write_text("\n".join(lines) + "\n")


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
    p.add_argument("--trace", default=None, help="also profile 3 steps with torch.profiler and write the tables here")
    a = p.parse_args(argv)
    try:
        cfg = from_dict(ExperimentConfig, json.loads(Path(a.config).read_text()))
    except (OSError, ValueError) as e:  # ValueError: bad JSON, or a ConfigError (fields of another version)
        print(f"error: cannot read the config {a.config}: {e} (write it with reports.measure.config_json)",
              file=sys.stderr)
        return 2
    try:
        result = measure(cfg, a.batch_size, a.seq_len, a.steps, a.warmup, a.grad_accum, a.device, a.peak_tflops,
                         a.packed, a.sample_len, a.trace)
    except ValueError as e:  # a layout that holds no sample, or a count below 1: the message says which
        print(f"error: {e}", file=sys.stderr)
        return 2
    Path(a.result).write_text(json.dumps({"metrics": result.metrics, "tags": result.tags}))
    return 0


def config_json(cfg: ExperimentConfig) -> str:
    return json.dumps(to_dict(cfg))


if __name__ == "__main__":
    sys.exit(main())
