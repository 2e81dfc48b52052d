#!/usr/bin/env bash
# The CPU numbers in the README's "Benchmarks and results" section, re-run:
#
#     scripts/benchmarks_cpu.sh            # about 6 minutes on 2 cores; writes into a temporary folder
#
# Prints wall time and peak memory of the tiny experiment end to end, then the profiled training step
# of the tiny preset with and without packing (tokens/s, samples/s, step peak memory), then the
# training data loader (samples/s, main-process CPU per sample), then the loss kernels alone (ms per
# forward + backward).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1
work="$(mktemp -d)"
export NANOVLM_HOME="$work"
cd "$work"
echo "device: $(python -c 'import os, platform; print(platform.processor() or platform.machine(), os.cpu_count(), "cores")'); \
torch $(python -c 'import torch; print(torch.__version__)'); $(date -u +%F)"

# 1. The tiny experiment end to end (600 steps of 4 packed rows of 336 tokens, validation, evaluation).
/usr/bin/time -f "tiny experiment: %e s wall, %M KiB peak RSS" python -m experiments.run tiny --output_dir "$work/runs" \
    2>&1 | grep -E "tiny experiment:|synthetic(_blind)? accuracy"

# 2. The training step alone: rows of 256 tokens, 4 rows; packed = 4 samples of 64 tokens per row.
python -m reports.profile --presets tiny --seq_len 256 --batch_size 4 --steps 10 --warmup 3 2>&1 | grep -E "^tiny|tokens/s"
python -m reports.profile --presets tiny --seq_len 256 --batch_size 4 --steps 10 --warmup 3 --packed --sample_len 64 \
    2>&1 | grep -E "^tiny|tokens/s"

# 3. The training data loader alone: original_small's synthetic set in rows of 2048 tokens, 2 workers, then none.
python -m reports.loader --set max_length=2048 2>&1 | grep -E "samples/s"
python -m reports.loader --set max_length=2048 --num_workers 0 2>&1 | grep -E "samples/s"

# 4. The answer-token loss alone: SmolLM2-135M's head (D 576: the matmuls dominate on a CPU), then a
#    narrow one (D 64: the per-chunk softmax and gradient dominate, which is what a GPU sees).
python -m reports.loss_kernels
python -m reports.loss_kernels --dim 64
