"""Metric names, defined once. Everything that logs or reads a metric uses these strings.

    tracker.log_metrics({TRAIN_LOSS: 2.3, lr_name("projector"): 5e-3}, step)
"""

TRAIN_LOSS = "train/loss"
VAL_LOSS = "val/loss"
BEST_VAL_LOSS = "val/best_loss"
GRAD_NORM = "train/grad_norm"
SAMPLES_PER_S = "train/samples_per_s"
TOKENS_PER_S = "train/tokens_per_s"
PEAK_MEMORY_MB = "train/peak_memory_mb"
MFU = "train/mfu"  # model FLOPs (nanovlm.flops.FLOPS_FORMULA) / time / the GPU's dense bf16 peak, 0..1; known GPUs only
DATA_WAIT_S = "train/data_wait_s"  # host time spent waiting for the step's batches: a starved device shows here
PADDING_FRACTION = "train/padding_fraction"  # token slots in the rows that hold no sample
BLANK_IMAGE_FRACTION = "train/blank_image_fraction"  # images added to reach a bucket size (vision compute only)
DATA_SKIPPED = "data/skipped"
PARAMS_PREFIX = "params/"  # params/total, params/trainable, ... (numbers to sort by, so metrics)


def lr_name(group: str) -> str:
    return f"train/lr/{group}"


def eval_name(task: str, score: str) -> str:
    """eval/mmstar/average, eval/synthetic/colour, eval/synthetic_blind/colour, ..."""
    return f"eval/{task}/{score}"


def higher_is_better(name: str) -> bool:
    """Losses are minimised; benchmark scores (accuracies, ANLS, MME points) are maximised."""
    if name.endswith("loss"):
        return False
    if name.startswith("eval/"):
        return True
    raise ValueError(f"cannot tell whether {name!r} should go up or down: use a loss or an eval/<task>/<score> metric")
