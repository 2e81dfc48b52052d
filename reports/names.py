"""Names that profiles log and the size table reads, defined once (the training loop's own names
stay in `nanovlm.metrics`; these are the ones only `reports` uses).

    from reports import names as report_names
    tracker.log_metrics({report_names.IMAGE_TOKENS: 49, report_names.MFU: 0.31}, step=0)

A profile logs the same `params/*`, `train/samples_per_s`, `train/tokens_per_s`,
`train/padding_fraction` and `train/blank_image_fraction` as a training run (the same quantities,
measured the same way), so one name means one thing whichever kind of run a number came from; what
only a profile measures, or measures differently, gets a `profile/` name here. Peak memory is the
second kind: a training run's `train/peak_memory_mb` is the process-lifetime peak (ru_maxrss on
CPU, CUDA max allocated since the start), a profile's `profile/step_peak_memory_mb` the peak of
the profiled steps alone (VmHWM / CUDA peak reset just before them).
"""

from nanovlm import metrics as metric_names

EXPERIMENT = "profile"  # MLflow experiment of profile runs
TRAINING_EXPERIMENT = "nanovlm"  # experiments.run's default experiment (ExperimentConfig.experiment)
# Where evaluation scores of a checkpoint whose training run is not in the store go
# (evals.mlflow_log.EXPERIMENT; reports does not import evals, a test checks the two agree).
EVAL_EXPERIMENT = "nanovlm-evals"

# Metrics of a profile run (besides metric_names.PARAMS_PREFIX + part, metric_names.SAMPLES_PER_S, metric_names.TOKENS_PER_S, metric_names.PADDING_FRACTION,
# metric_names.BLANK_IMAGE_FRACTION).
# Peak memory over the profiled steps only (PEAK_MEMORY_MEASURE_TAG says how it was measured).
STEP_PEAK_MEMORY_MB = "profile/step_peak_memory_mb"
SAMPLES_PER_ROW = "profile/samples_per_row"  # 1 unpacked; seq_len // sample_len packed
IMAGE_TOKENS = "profile/image_tokens"  # LM tokens per image, after the projector
VISION_TOKENS = "profile/vision_tokens"  # tokens through the vision tower per image (patches + CLS/registers)
STEP_TIME_S = "profile/step_time_s"  # median wall time of one nanovlm.step.train_step call (all micro-steps)
# Inside the step (optimizer hooks; CUDA events on a GPU): from the step's start to the AdamW step
# (forward/backward of the micro-steps and gradient clipping; before the shared train_step,
# clipping was counted in OPTIMIZER_S), and the AdamW step itself.
FORWARD_BACKWARD_S = "profile/forward_backward_s"  # median: micro-steps' forward/backward + clipping
OPTIMIZER_S = "profile/optimizer_s"  # median: the (fused) AdamW step
MODEL_FLOPS_PER_STEP = "profile/model_flops_per_step"  # nanovlm.flops.FLOPS_FORMULA (attention per sample)
ACHIEVED_TFLOPS = "profile/achieved_tflops"  # model FLOPs per second / 1e12
MFU = "profile/mfu"  # achieved / peak FLOPS of the device, 0..1; only where the peak is known
WALL_S = "profile/wall_s"  # the whole row: meta count, fresh process, model build, all steps

PARAM_PARTS = ("vision", "projector", "language", "total", "trainable")


def param_metric(part: str) -> str:
    return f"{metric_names.PARAMS_PREFIX}{part}"


# Tags of a profile run (besides preset, vision_encoder, language_model, device, git_sha and versions).
PEAK_MEMORY_MEASURE_TAG = "peak_memory_measure"  # a key of PEAK_MEMORY_MEASURES
MFU_NOTE_TAG = "mfu_note"  # why there is no MFU, when there is none
ERROR_TAG = "error"  # why a profile failed (the run ends FAILED)

PEAK_MEMORY_MEASURES = {
    "cuda_max_allocated": "CUDA: torch.cuda.max_memory_allocated over the profiled steps (tensors only, "
                          "not the CUDA context or the allocator's cache)",
    "cpu_step_peak_rss": "CPU: peak resident memory of a fresh process during the profiled steps (Linux "
                         "VmHWM, reset just before the first step): weights, gradients, AdamW state, "
                         "activations and the Python/torch runtime",
    "cpu_process_peak_rss": "CPU: peak resident memory (ru_maxrss) of a fresh process over its whole life, "
                            "model building included",
}
