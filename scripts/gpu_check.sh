#!/usr/bin/env bash
# The GPU checks of issue 9 in one short sitting on one GPU (about 8 minutes on an H100/H200):
#
#     scripts/gpu_check.sh OUT_DIR [BUDGET_S]          # default budget 480 s
#
# Stages, most important first. Each has its own time limit, cut to what is left of the budget;
# a stage that would start with under 45 s left is skipped and says so.
#   1. profile_small  reports.profile original_small: 16 packed rows of 2048 tokens (8 samples of 256
#                     each), compiled blocks, bf16; then 3 steps under torch.profiler (OUT_DIR/traces.txt)
#   2. tests          pytest -m gpu tests/test_gpu.py tests/test_loss.py tests/test_reports.py (CUDA graphs
#                     against eager steps, Liger against plain modules, sync-free compiled step, ...)
#   3. profile_graphs stage 1 at 4 rows (a host-bound step), without and with --cuda_graphs true
#   4. run            experiments.run original_small --random_init on the synthetic set: micro-steps of
#                     16 packed 2048-token rows, 8 of them per step, 8 DataLoader workers, 30 steps;
#                     train/mfu and train/data_wait_s every 5 steps, two py-spy stack dumps (if installed)
#   5. profile_liger  stage 1 with Liger everywhere (train.fused_kernels=true, train.loss_kernel=liger): its
#                     RMSNorm / SwiGLU / RoPE in the compiled blocks and its fused loss, against inductor's
#                     own fusion of them (the defaults: fused_kernels=auto, loss_kernel=auto -> compiled)
#   6. loss           reports.loss_kernels: the loss alone, chunked / compiled / liger, SmolLM2's head and
#                     Gemma 3's (262k vocabulary), 16k rows
#   7. profile_more   dinov3_gemma and default, 4 rows
# Logs go to OUT_DIR/<stage>.log (the loss stage's into the summary), and the lines the README quotes to
# OUT_DIR/summary.txt: 8 files in
# all, as many as a GPU lease returns.
# Work files (MLflow store, run folders) go to a temporary folder; the checkout is not written to.
# GPU_CHECK_STAGES picks stages and their order (comma-separated); GPU_CHECK_TESTS is a pytest -k
# expression; GPU_CHECK_ROWS the rows of profile_small/profile_liger; GPU_CHECK_STEPS and
# GPU_CHECK_LOG_INTERVAL the run's steps and logging interval.
set -uo pipefail

out="$(mkdir -p "${1:?usage: scripts/gpu_check.sh OUT_DIR [BUDGET_S]}" && cd "$1" && pwd)"
budget="${2:-480}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
export MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING=false
work="$(mktemp -d)"
export MLFLOW_TRACKING_URI="sqlite:///$work/mlflow.db"
cd "$work"
start=$SECONDS
summary="$out/summary.txt"

stage() {  # stage NAME LIMIT_S COMMAND...: run it with the smaller of its limit and the time left
    local name=$1 limit=$2 left=$((budget - (SECONDS - start)))
    shift 2
    if ((left < 45)); then
        echo "== $name: skipped, ${left} s of the budget left" | tee -a "$summary"
        return
    fi
    ((limit > left)) && limit=$left
    echo "== $name (limit ${limit} s, at $((SECONDS - start)) s)"
    timeout -k 10 "$limit" "$@" >"$out/$name.log" 2>&1
    local rc=$?
    echo "== $name: exit $rc after $((SECONDS - start)) s" | tee -a "$summary"
    tail -n 15 "$out/$name.log"
}

{
    echo "date: $(date -u +%F)"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    python3 -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, '| transformers', transformers.__version__)"
    python3 -c "import liger_kernel, importlib.metadata as m; print('liger-kernel', m.version('liger-kernel'))" 2>/dev/null ||
        echo "liger-kernel: not installed"
    echo "cpus: $(nproc)"
} | tee "$summary"

profile=(python3 -m reports.profile --device cuda --packed --seq_len 2048 --sample_len 256 --steps 10 --warmup 3
         --trace_dir "$work/traces")
rows=(--batch_size "${GPU_CHECK_ROWS:-16}")
run_metrics() {  # the run's numbers per logging window (the first one includes compilation)
    python3 - <<'PY'
from mlflow import MlflowClient

client = MlflowClient()
experiment = client.get_experiment_by_name("gpu_check")
for run in client.search_runs([experiment.experiment_id]) if experiment else []:
    print("run", run.info.run_name, run.info.status)
    for name in ["train/mfu", "train/samples_per_s", "train/tokens_per_s", "train/data_wait_s", "train/padding_fraction",
                 "train/blank_image_fraction", "train/peak_memory_mb", "train/loss"]:
        history = sorted(client.get_metric_history(run.info.run_id, name), key=lambda m: m.step)
        print(f"{name:<28}", " ".join(f"{m.step}:{m.value:.4g}" for m in history))
PY
}
stack_dumps() {  # two py-spy dumps of the training process, 75 and 85 s in (when py-spy is installed)
    command -v py-spy >/dev/null || return 0
    sleep 75
    local pid
    pid=$(pgrep -f "^python3 -m experiments.run" | head -n 1)
    [[ -n $pid ]] && for _ in 1 2; do py-spy dump --pid "$pid"; sleep 10; done
}

IFS=, read -ra stages <<<"${GPU_CHECK_STAGES:-profile_small,tests,profile_graphs,run,profile_liger,loss,profile_more}"
for name in "${stages[@]}"; do
    case $name in
        profile_small) stage profile_small 120 "${profile[@]}" "${rows[@]}" --presets original_small ;;
        profile_liger) stage profile_liger 120 "${profile[@]}" "${rows[@]}" --presets original_small \
            --set train.fused_kernels=true --set train.loss_kernel=liger ;;
        profile_graphs) stage profile_graphs 180 bash -c '"$@" --set train.cuda_graphs=false; "$@" --set \
            train.cuda_graphs=true' _ "${profile[@]}" --batch_size 4 --presets original_small ;;
        loss) stage loss 60 bash -c 'python3 -m reports.loss_kernels --device cuda --rows 16384 &&
            python3 -m reports.loss_kernels --device cuda --rows 16384 --dim 640 --vocab 262144' ;;
        profile_more) stage profile_more 150 "${profile[@]}" --batch_size 4 --presets dinov3_gemma,default ;;
        tests) stage tests 170 python3 -m pytest -q -p no:cacheprovider -m gpu -k "${GPU_CHECK_TESTS:-}" \
            "$root/tests/test_gpu.py" "$root/tests/test_loss.py" "$root/tests/test_reports.py" ;;
        run)
            stack_dumps >"$work/stacks.txt" 2>&1 &
            # TORCH_LOGS=recompiles: a recompilation after the first steps would show here, with its cause.
            stage run 150 env TORCH_LOGS=recompiles python3 -m experiments.run original_small --random_init \
                --experiment gpu_check --output_dir "$work/runs" --max_length 2048 --batch_size 16 \
                --gradient_accumulation_steps 8 --packing --num_workers 8 --max_steps "${GPU_CHECK_STEPS:-30}" \
                --log_interval "${GPU_CHECK_LOG_INTERVAL:-5}" \
                --train_samples 40000 --val_samples 64 --validation_steps 1000 --best_checkpoint_steps 1000 \
                --save_checkpoint_steps 1000
            run_metrics >>"$out/run.log" 2>&1
            kill %1 2>/dev/null ;;
        *) echo "unknown stage $name (profile_small, tests, profile_graphs, run, profile_liger, loss, profile_more)" >&2; exit 2 ;;
    esac
done

{
    echo "-- profile rows"
    grep -h -E "^  [a-z0-9_]+ " "$out"/profile_*.log 2>/dev/null
    echo "-- step time vs GPU kernel time (torch.profiler)"
    head -qn 1 "$work"/traces/*.txt 2>/dev/null
    echo "-- loss kernels"
    cat "$out/loss.log" 2>/dev/null && rm "$out/loss.log"  # short: kept here, as a lease returns 8 files
    echo "-- tests"
    tail -n 3 "$out/tests.log" 2>/dev/null
    echo "-- run"
    grep -E "^(run |train/)" "$out/run.log" 2>/dev/null
    echo "recompilations logged: $(grep -c "Recompiling function" "$out/run.log" 2>/dev/null)"
    echo "total: $((SECONDS - start)) s"
} >>"$summary"
# One file of traces (a GPU lease returns few files): each row's tables under its run name, and the
# run's py-spy stacks last.
for f in "$work"/traces/*.txt "$work/stacks.txt"; do [[ -e $f ]] && { echo "=== $(basename "$f" .txt)"; cat "$f"; }; done \
    >"$out/traces.txt"
cat "$summary"
rm -rf "$work"
