"""Data loader throughput: how fast the training loop's batches are made on this machine, no model step.

    python -m reports.loader                                   # original_small, synthetic, 4 rows x 2048, 2 workers
    python -m reports.loader --preset tiny --num_workers 0 --batches 50
    python -m reports.loader --set data.max_length=1024 --batch_size 16
    python -m reports.loader --set max_length=2048 --step_ms 100 [--no_prefetch]   # overlap with a 100 ms step

Builds the preset's model (random weights: only its tokenizer and image size matter), its synthetic
training set, and times `nanovlm.train.batches` over `nanovlm.train.sample_stream` as training builds
them (DataLoader workers decode and tokenise, the main process packs and collates) for `--batches`
batches after one untimed, packed and collated a step ahead in a thread (`nanovlm.data.prefetch`;
`--no_prefetch`: when asked for). Prints samples/s and the main process's own CPU time per sample
(the prefetch thread's included). `--step_ms` waits that long after each batch, as the host waits for
the device's step, so it shows whether the batches are made during the steps: with the prefetch
thread, samples/s stays near min(loader alone, batch samples / step time). Pinned memory is not used
(it needs CUDA).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from experiments.presets import PRESETS, get_preset
from nanovlm.config import ConfigError, override, parse_assignments


def measure(preset: str, num_workers: int, batches: int, batch_size: int, sets: dict[str, str],
            step_ms: float = 0.0, ahead: bool = True) -> dict[str, float]:
    from nanovlm.data.collate import ResumableSampler
    from nanovlm.data.datasets import SampleProcessor, VQADataset, load_splits
    from nanovlm.data.prefetch import prefetch
    from nanovlm.model.vlm import build_vlm
    from nanovlm.train import batches as make_batches, sample_stream

    cfg = override(get_preset(preset), {"random_init": True, "batch_size": batch_size, **sets})
    model = build_vlm(cfg.model)
    # enough synthetic samples for the batches asked for, at the shortest sample length (~70 tokens)
    n = max(cfg.data.train_samples, (batches + 2) * batch_size * (cfg.data.max_length // 60 + 1))
    splits = load_splits(override(cfg, {"train_samples": n}).data, cfg.train.seed, image_size=model.arch.transform.size)
    dataset = VQADataset(splits.train, SampleProcessor.for_model(model, cfg.data.max_length, uint8_pixels=True))
    stream = make_batches(sample_stream(dataset, ResumableSampler(len(dataset), cfg.train.seed), num_workers),
                          model, cfg, torch.device("cpu"))
    if ahead:  # as nanovlm.train makes them: in a thread, a step's micro-batches ahead
        stream = prefetch(stream, cfg.train.gradient_accumulation_steps)
    next(stream)  # workers started, first chunks in
    samples = tokens = 0
    wall, cpu = time.perf_counter(), time.process_time()  # process_time: this process only, not the workers
    for _ in range(batches):
        stats = next(stream)["stats"]
        samples, tokens = samples + stats["samples"], tokens + stats["tokens"]
        time.sleep(step_ms / 1e3)  # the device's step: the host waits without the GIL
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"samples_per_s": samples / wall, "tokens_per_s": tokens / wall, "main_cpu_ms_per_sample": 1e3 * cpu / samples,
            "samples": samples, "wall_s": wall}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m reports.loader", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="original_small", help=f"one of: {', '.join(PRESETS)}")
    p.add_argument("--num_workers", type=int, default=2, help="DataLoader worker processes (0: all in this one)")
    p.add_argument("--batches", type=int, default=20, help="batches timed, after one untimed")
    p.add_argument("--batch_size", type=int, default=4, help="rows of max_length tokens per batch")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override a config field")
    p.add_argument("--step_ms", type=float, default=0.0,
                   help="stand-in for the device's step: wait this long after each batch (default 0: the loader alone)")
    p.add_argument("--no_prefetch", action="store_true",
                   help="make each batch when it is asked for, as before the prefetch thread")
    a = p.parse_args(argv)
    if a.num_workers < 0 or a.batches < 1 or a.batch_size < 1 or a.step_ms < 0:
        p.error("--num_workers and --step_ms must be >= 0, --batches and --batch_size >= 1")
    try:
        r = measure(a.preset, a.num_workers, a.batches, a.batch_size, parse_assignments(a.set), a.step_ms,
                    not a.no_prefetch)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    step = f", a {a.step_ms:g} ms step per batch" if a.step_ms else ""
    print(f"{a.preset}: {r['samples']} samples in {r['wall_s']:.2f} s with {a.num_workers} workers{step}"
          f"{'' if a.no_prefetch else ', prefetched'}: "
          f"{r['samples_per_s']:.0f} samples/s, {r['tokens_per_s']:.0f} tokens/s, main process "
          f"{r['main_cpu_ms_per_sample']:.2f} ms CPU per sample")
    return 0


if __name__ == "__main__":
    sys.exit(main())
