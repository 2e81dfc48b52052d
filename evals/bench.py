"""Evaluation throughput: items/s of the full pipeline (decode, prompt, generate, score) on a fixture.

    python -m evals.bench                                   # the tiny model (random weights), MMStar fixture
    python -m evals.bench CKPT --task mmstar --n 256 --batch_sizes 1,8,32,64 --num_workers 0,2

Builds the task's fixture (evals/fixtures.py) with --n items in a temporary folder, runs the
harness once to warm up, then once per (batch size, workers) setting, and prints items/s and the
score (identical across settings, up to batching's float rounding). Without a checkpoint the tiny
stand-in model of `python -m experiments.run tiny` is built (offline, random weights).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any, Sequence

from evals.fixtures import write_task
from evals.harness import evaluate_task, load_task_data
from evals.registry import get_task


def tiny_model() -> Any:
    import torch

    from nanovlm.config import ModelConfig
    from nanovlm.model.vlm import build_vlm

    torch.manual_seed(0)
    return build_vlm(ModelConfig(vision_encoder="siglip", language_model="smollm", tiny=True, image_tokens=16)).eval()


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(prog="python -m evals.bench", description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", nargs="?", help="default: the tiny model with random weights")
    parser.add_argument("--task", default="mmstar")
    parser.add_argument("--n", type=int, default=128, help="fixture items (default 128)")
    parser.add_argument("--batch_sizes", type=ints, default=[1, 8, 32])
    parser.add_argument("--num_workers", type=ints, default=[0, 2])
    parser.add_argument("--max_new_tokens", type=int)
    parser.add_argument("--device")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.checkpoint:
        from evals.cli import load_model

        model, name = load_model(args.checkpoint, args.device, args.threads), args.checkpoint
    else:
        model, name = tiny_model(), "tiny (random weights)"
        if args.device:
            model = model.to(args.device)
    task = get_task(args.task)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        path = write_task(task.name, Path(folder) / f"{task.name}.parquet", n=args.n)
        data = load_task_data(task, str(path))
        evaluate_task(model, task, data, batch_size=max(args.batch_sizes), num_workers=0, progress=False)  # warm-up
        device = next(model.parameters()).device
        print(f"{task.name} fixture, {len(data)} items, model {name}, {device}, {torch.get_num_threads()} threads")
        print(f"{'batch':>6} {'workers':>8} {'items/s':>9} {'seconds':>8} {task.primary:>24}")
        for batch_size in args.batch_sizes:
            for workers in args.num_workers:
                r = evaluate_task(model, task, data, batch_size=batch_size, max_new_tokens=args.max_new_tokens,
                                  num_workers=workers, progress=False)
                rows.append({"batch_size": batch_size, "num_workers": workers, "items_per_s": r.items_per_s,
                             "seconds": r.seconds, "score": r.primary})
                print(f"{batch_size:>6} {workers:>8} {r.items_per_s:>9.1f} {r.seconds:>8.2f} {r.primary:>24.4f}",
                      flush=True)
    return rows


if __name__ == "__main__":
    main()
