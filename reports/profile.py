"""Profile presets at real size with random weights: parameters, peak memory, training throughput
and (on CUDA) MFU of the training step, one MLflow run per row in the experiment `profile`.

    python -m reports.profile                                   # the five rows of the size table
    python -m reports.profile --presets tiny,original_small --seq_len 256 --steps 5
    python -m reports.profile --device cuda --batch_size 8      # on a GPU: adds model FLOPs utilisation
    python -m reports.profile --device cuda --packed --seq_len 2048 --sample_len 256 --batch_size 4
    python -m reports.profile --presets dinov3_gemma --set train.freeze_vision_encoder=true
    python -m reports.size_table                                # then: the table and plots from MLflow
    scripts/profile_gpu.sh                                      # every preset, packed, on one GPU (~10 min)

What is timed is `nanovlm.step.train_step`, the step the training loop runs, set up as training sets
it up (fused AdamW, fused kernels and per-block torch.compile on CUDA, bf16 autocast on CUDA), on a
synthetic micro-batch collated like training's (`nanovlm.data.packing`); see `reports.measure`.
A row of the batch is one sample of `--seq_len` tokens (default 128), or with `--packed` a row
of `--seq_len` tokens (default 2048) holding seq_len // sample_len samples of `--sample_len`
tokens (default 256: a single-image VQA sample's order of size) with one image each, attention
kept inside each sample, as `--packing` training does. Each row prints and logs tokens/s,
samples/s, MFU (CUDA, where the GPU's peak is known) and the peak memory of the profiled steps.

Each row runs in a fresh process (`python -m reports.measure`), so that its CPU peak memory is its
own and an out-of-memory kill costs one row, not the whole profile. Parameter counts come from a
meta-device build in this process first (no memory, exact), so even a failed row has them. A row
that fails or times out ends FAILED with an `error` tag; the table shows it as empty cells with
that reason as the footnote. No weights are downloaded (random init from the bundled configs);
online the real tokenizer may be fetched, offline (HF_HUB_OFFLINE=1) the family's stand-in is used.

Runs go to `--tracking_uri`, else `$MLFLOW_TRACKING_URI`, else `sqlite:///<$NANOVLM_HOME or cwd>/mlflow.db`,
as for training runs. Timings on a shared machine are only as good as the machine was quiet.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from experiments.presets import PRESETS, get_preset
from nanovlm import metrics as metric_names
from nanovlm.config import ConfigError, ExperimentConfig, flatten, override, parse_assignments
from nanovlm.provenance import device_description, git_sha, library_versions
from reports import names as report_names

# The five rows of the source document's "Model Size Comparison" table, in its order.
DEFAULT_ROWS = ("original_small", "default", "dinov3_gemma", "dinov3b_smollm", "dinov3l_gemma")
DEFAULT_SAMPLE_LEN = 256  # reports.batches.DEFAULT_SAMPLE_LEN (not imported here: it would load torch)
RUN_KIND_TAG = "run_kind"  # "profile" on every profile run, whatever experiment it is in
PROFILE_KIND = "profile"


def resolve_rows(presets: str, sets: dict[str, str]) -> list[tuple[str, ExperimentConfig]]:
    """Preset names -> configs (with the --set overrides); unknown names fail before anything runs."""
    names = [p.strip() for p in presets.split(",") if p.strip()]
    if not names:
        raise ConfigError(f"--presets is empty. Valid presets: {', '.join(PRESETS)}")
    return [(name, override(get_preset(name), sets) if sets else get_preset(name)) for name in names]


def _worker_command(config_path: Path, result_path: Path, a: argparse.Namespace) -> list[str]:
    cmd = [sys.executable, "-m", "reports.measure", str(config_path), str(result_path),
           "--batch_size", str(a.batch_size), "--seq_len", str(a.seq_len), "--steps", str(a.steps),
           "--warmup", str(a.warmup), "--grad_accum", str(a.grad_accum), "--device", a.device]
    if a.packed:
        cmd += ["--packed", "--sample_len", str(a.sample_len)]
    if a.peak_tflops:
        cmd += ["--peak_tflops", str(a.peak_tflops)]
    if a.trace:
        cmd += ["--trace", a.trace]
    return cmd


def _run_worker(cfg: ExperimentConfig, a: argparse.Namespace) -> tuple[dict[str, Any] | None, str]:
    """(result, "") from a fresh process, or (None, why it failed)."""
    from reports.measure import config_json

    with tempfile.TemporaryDirectory(prefix="nanovlm-profile-") as tmp:
        config_path, result_path, log_path = Path(tmp, "config.json"), Path(tmp, "result.json"), Path(tmp, "log.txt")
        config_path.write_text(config_json(cfg))
        # The repository root first on the path, so the worker imports the same code as this process.
        root = str(Path(__file__).resolve().parents[1])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
        with open(log_path, "w") as log:
            try:
                proc = subprocess.run(_worker_command(config_path, result_path, a), stdout=log, stderr=subprocess.STDOUT,
                                      env=env, timeout=a.timeout_s or None)
                code = proc.returncode
            except subprocess.TimeoutExpired:
                return None, f"timed out after {a.timeout_s} s"
        if code == 0 and result_path.exists():
            return json.loads(result_path.read_text()), ""
        tail = log_path.read_text(errors="replace").strip().splitlines()[-6:]
        why = "killed by signal 9 (out of memory?)" if code == -9 else f"exit code {code}"
        return None, f"{why}: " + " | ".join(tail)[-1500:]


def _in_process(cfg: ExperimentConfig, a: argparse.Namespace) -> tuple[dict[str, Any] | None, str]:
    from reports.measure import measure

    try:
        r = measure(cfg, a.batch_size, a.seq_len, a.steps, a.warmup, a.grad_accum, a.device, a.peak_tflops,
                    a.packed, a.sample_len, a.trace)
    except Exception as e:  # reported as a FAILED run, like a worker's failure
        return None, f"{type(e).__name__}: {e}"
    return {"metrics": r.metrics, "tags": r.tags}, ""


def profile_row(name: str, cfg: ExperimentConfig, a: argparse.Namespace, common_tags: dict[str, str],
                run: Any = None) -> dict[str, Any]:
    """Profile one row into its own MLflow run; returns {preset, run_id, status, metrics, error}.

    `run(cfg, a) -> (result or None, error)` measures; by default a fresh worker process (or this
    process with --in_process). Another one can log measurements taken elsewhere.
    """
    from nanovlm.tracking import MLflowTracker
    from nanovlm.flops import FLOPS_FORMULA
    from reports.param_counts import count_parameters

    import torch

    started = time.perf_counter()
    counts = count_parameters(cfg)
    run_name = f"{name}-{a.device}-bs{a.batch_size}-seq{a.seq_len}" + (f"-packed{a.sample_len}" if a.packed else "")
    run_name += "".join(f"-{field.rsplit('.', 1)[-1]}={value}"  # --set rows apart
                        for field, value in parse_assignments(a.set).items())
    # The parent never touches CUDA (a context would cost the GPU memory the row is measured on):
    # on CUDA the worker's exact device name replaces this provisional tag.
    device = device_description(torch.device("cpu")) if a.device == "cpu" else a.device
    tags = {**common_tags, "preset": name, RUN_KIND_TAG: PROFILE_KIND, "device": device, "flops_formula": FLOPS_FORMULA}
    # sample_len: the tokens of one sample, seq_len itself when a row is one sample
    params = {**flatten(cfg), "profile.batch_size": a.batch_size, "profile.seq_len": a.seq_len,
              "profile.packed": a.packed, "profile.sample_len": a.sample_len if a.packed else a.seq_len,
              "profile.steps": a.steps, "profile.warmup": a.warmup, "profile.grad_accum": a.grad_accum,
              "profile.device": a.device, "profile.isolated": not a.in_process}
    if a.trace_dir:  # where this row's step time goes (torch.profiler tables), next to the other rows'
        # a --set value may be a path: its slashes must not become folders
        file_name = re.sub(r"[^\w.=+-]", "_", run_name) + ".txt"
        a = argparse.Namespace(**{**vars(a), "trace": os.path.abspath(os.path.join(a.trace_dir, file_name))})
    tracker = MLflowTracker.start(a.experiment, run_name, tags=tags, tracking_uri=a.tracking_uri, system_metrics=False)
    with tracker:
        tracker.log_params(params)
        tracker.log_metrics({report_names.param_metric(k): float(v) for k, v in counts.items()}, step=0)
        result, error = (run or (_in_process if a.in_process else _run_worker))(cfg, a)
        wall = time.perf_counter() - started
        if result is None:
            tracker.set_tags({report_names.ERROR_TAG: error})
            tracker.log_metrics({report_names.WALL_S: wall}, step=0)
            tracker.finish("FAILED")
            return {"preset": name, "run_id": tracker.run_id, "status": "FAILED", "metrics": {}, "error": error,
                    "wall_s": wall}
        tracker.set_tags(result["tags"])
        tracker.log_metrics({**result["metrics"], report_names.WALL_S: wall}, step=0)
    return {"preset": name, "run_id": tracker.run_id, "status": "FINISHED", "metrics": {**result["metrics"], **{
        report_names.param_metric(k): float(v) for k, v in counts.items()}}, "error": "", "wall_s": wall}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m reports.profile", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", default=",".join(DEFAULT_ROWS), help=f"comma-separated presets ({', '.join(PRESETS)})")
    p.add_argument("--batch_size", type=int, default=1,
                   help="rows per micro-step (a row is one sample unless --packed)")
    p.add_argument("--seq_len", type=int, default=None,
                   help="tokens per row, the images' tokens included (the rest is text with a loss); "
                        "default 128, or 2048 with --packed")
    p.add_argument("--packed", action="store_true",
                   help="pack each row with seq_len // sample_len samples of --sample_len tokens, one image each, "
                        "attention within each sample (as training with --packing); without it a row is one sample")
    p.add_argument("--sample_len", type=int, default=None,
                   help=f"tokens per sample with --packed, its image's tokens included (default "
                        f"{DEFAULT_SAMPLE_LEN}: the order of a single-image VQA sample)")
    p.add_argument("--steps", type=int, default=None,
                   help="timed optimizer steps, the median is reported (default: 2 on CPU, 10 on CUDA)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed steps first: AdamW state allocation, caches, kernels (default: 1 on CPU, 3 on CUDA)")
    p.add_argument("--grad_accum", type=int, default=1, help="micro-steps per optimizer step")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--peak_tflops", type=float, default=None,
                   help="the device's peak TFLOPS for MFU (default: known GPUs' dense bf16 peak; none on CPU)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a config field of every row, e.g. train.freeze_vision_encoder=true")
    p.add_argument("--tracking_uri", default=None, help="MLflow store (default: $MLFLOW_TRACKING_URI or ./mlflow.db)")
    p.add_argument("--experiment", default=report_names.EXPERIMENT, help="MLflow experiment of the profile runs")
    p.add_argument("--timeout_s", type=float, default=1800, help="give up on a row after this long (0 = never)")
    p.add_argument("--trace_dir", default=None,
                   help="after timing, profile 3 more steps of each row with torch.profiler and write the GPU and host "
                        "time by operator to DIR/<run name>.txt (is the step host-bound, and on what?)")
    p.add_argument("--in_process", action="store_true",
                   help="measure in this process (faster to start; CPU peak memory then includes earlier rows)")
    a = p.parse_args(argv)
    a.trace = None  # the row's file under --trace_dir, set per row
    if a.device == "auto":
        import torch

        a.device = "cuda" if torch.cuda.is_available() else "cpu"
    # A CPU step of a real-size row takes tens of seconds: few steps keep the five rows near 10
    # minutes on 2 cores. A GPU step takes milliseconds, and its first steps are outliers.
    if a.steps is None:
        a.steps = 10 if a.device == "cuda" else 2
    if a.warmup is None:
        a.warmup = 3 if a.device == "cuda" else 1
    if a.seq_len is None:
        a.seq_len = 2048 if a.packed else 128
    if a.sample_len is None:
        a.sample_len = DEFAULT_SAMPLE_LEN
    elif not a.packed:
        p.error("--sample_len needs --packed (without it a sample is a whole row of --seq_len tokens)")
    for flag in ("batch_size", "seq_len", "sample_len", "steps", "grad_accum"):
        if getattr(a, flag) < 1:
            p.error(f"--{flag} must be >= 1")
    if a.packed and a.sample_len > a.seq_len:
        p.error(f"--sample_len {a.sample_len} does not fit a row of --seq_len {a.seq_len}")
    if a.warmup < 0:
        p.error("--warmup must be >= 0")
    if a.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            p.error(f"--device cuda: this machine has no CUDA device (torch {torch.__version__}); use --device cpu")
    if a.trace_dir:
        try:
            os.makedirs(a.trace_dir, exist_ok=True)
        except OSError as e:
            p.error(f"--trace_dir {a.trace_dir}: cannot create it ({e.strerror}); pass a writable folder")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    from nanovlm.tracking import default_tracking_uri, mark_orphans_killed

    try:
        rows = resolve_rows(a.presets, parse_assignments(a.set))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    a.tracking_uri = a.tracking_uri or default_tracking_uri()
    mark_orphans_killed(a.experiment, tracking_uri=a.tracking_uri)
    common = {"git_sha": git_sha(), **library_versions()}
    layout = (f"{a.batch_size} rows of {a.seq_len} tokens, each {a.seq_len // a.sample_len} packed samples of "
              f"{a.sample_len}" if a.packed else f"batch {a.batch_size}, {a.seq_len} tokens")
    print(f"profiling {len(rows)} rows on {a.device} ({layout}, {a.steps} timed steps after {a.warmup}) into "
          f"{a.tracking_uri}, experiment {a.experiment!r}", flush=True)
    if a.packed and a.seq_len // a.sample_len == 1:
        print(f"note: --sample_len {a.sample_len} fills a {a.seq_len}-token row by itself: one sample per row, "
              f"nothing packed (pass a smaller --sample_len or a larger --seq_len)", file=sys.stderr, flush=True)
    started, failed = time.perf_counter(), 0
    for name, cfg in rows:
        row = profile_row(name, cfg, a, common)
        m = row["metrics"]
        if row["status"] == "FINISHED":
            mfu = f"MFU {100 * m[report_names.MFU]:5.1f}%" if report_names.MFU in m else "MFU    -  "
            print(f"  {name:<16} {m[report_names.param_metric('total')] / 1e6:8.2f}M params  {m[metric_names.TOKENS_PER_S]:10.4g} tokens/s  "
                  f"{m[metric_names.SAMPLES_PER_S]:9.4g} samples/s  {mfu}  step peak {m[report_names.STEP_PEAK_MEMORY_MB] / 1024:6.2f} GiB  "
                  f"({row['wall_s']:.0f} s)  run {row['run_id']}", flush=True)
        else:
            failed += 1
            print(f"  {name:<16} FAILED ({row['wall_s']:.0f} s) run {row['run_id']}: {row['error']}", flush=True)
    print(f"done in {time.perf_counter() - started:.0f} s; table: python -m reports.size_table "
          f"--tracking_uri {a.tracking_uri}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
