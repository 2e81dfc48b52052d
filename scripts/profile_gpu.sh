#!/usr/bin/env bash
# Profile every preset's training step on one GPU (about 10 minutes on one 80 GB H100, or an H200),
# then build the size table from the runs:
#
#     scripts/profile_gpu.sh                                  # the five size-table presets, packed rows, CUDA
#     scripts/profile_gpu.sh --device cpu --presets tiny      # the same command on CPU (a smoke test)
#
# Extra arguments go to `python -m reports.profile` after the defaults below, so they override them
# (argparse keeps the last value): --presets, --device, --batch_size, --steps, --tracking_uri, ...
# Results: one MLflow run per preset in the experiment "profile" (sqlite:///<$NANOVLM_HOME or the
# current directory>/mlflow.db unless --tracking_uri or $MLFLOW_TRACKING_URI says otherwise), and
# runs/size_table/ (markdown, CSV, plots) in the current directory.
set -euo pipefail

# This checkout's code, whichever directory the script is run from.
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"

# Random weights at real size from the bundled configs, nothing downloaded; tokenizers are each
# family's offline stand-in (the vocabulary sizes, hence the measured shapes, are the real ones).
export HF_HUB_OFFLINE=1

# Each preset in a fresh process: model build, fused kernels and torch.compile of each block as in
# training, 3 warm-up steps, then the median of 10 timed nanovlm.step.train_step calls (bf16
# autocast, fused AdamW, clipping), with device syncs around each call.
#   --packed --seq_len 2048 --sample_len 256: rows of 2048 tokens, each packed with 8 samples of
#       256 tokens, one image per sample, attention within each sample (as `--packing` training);
#   --batch_size 4: 4 rows = 32 samples, 32 images and 8192 tokens per optimizer step (no
#       accumulation): about 30 GB for the largest by our estimate (the `default` preset's
#       1024-patch SigLIP2 images and 8192 LM tokens), well inside 80 GB;
#   --timeout_s 600: a row that hangs or compiles for too long fails alone, with its reason.
# Each row prints and logs tokens/s, samples/s, MFU (model FLOPs by nanovlm.flops.FLOPS_FORMULA
# over the GPU's dense bf16 peak) and the peak CUDA memory allocated during the profiled steps.
python -m reports.profile \
    --presets original_small,default,dinov3_gemma,dinov3b_smollm,dinov3l_gemma \
    --device cuda --packed --seq_len 2048 --sample_len 256 --batch_size 4 \
    --steps 10 --warmup 3 --timeout_s 600 "$@"

# The size table (markdown, CSV, plots) from the store the profile wrote to: the latest run of each
# preset, device and setting, joined with training and evaluation runs found there.
tracking=()
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    case "${args[i]}" in
        --tracking_uri) tracking=(--tracking_uri "${args[i + 1]:-}") ;;
        --tracking_uri=*) tracking=("${args[i]}") ;;
    esac
done
python -m reports.size_table ${tracking[@]+"${tracking[@]}"}
