"""Turning item scores into benchmark scores, as lmms-eval 0.7.3 aggregates them.

    mean([1.0, 0.0, 1.0])                                         # 0.667: lmms-eval's "mean"
    mmstar_scores(categories, l2_categories, item_scores)         # {"coarse perception": .., "average": ..}
    mme_scores(categories, question_ids, item_scores)             # perception / cognition totals + per task
    mean_stderr([1.0, 0.0, 1.0])                                  # 0.333: lmms-eval's stderr of a "mean"
    clt_stderr([1.0, 0.0, 1.0])                                   # lmms-eval's `<metric>_stderr_clt`

Sums run over the items in dataset order, and groups in order of first appearance, as the
reference code does, so the floating-point results agree to the last bit.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

# MMStar's 6 categories x 3 sub-axes (lmms-eval mmstar/utils.py::eval_type_dict), for display order
MMSTAR_CATEGORIES = {
    "coarse perception": ["image scene and topic", "image style & quality", "image emotion"],
    "fine-grained perception": ["object counting", "recognition", "localization"],
    "instance reasoning": ["single-instance reasoning", "cross-instance attribute reasoning",
                           "cross-instance relation reasoning"],
    "logical reasoning": ["code & sequence reasoning", "diagram reasoning", "common reasoning"],
    "science & technology": ["biology & chemistry & physics", "electronics & energy & mechanical eng.",
                             "geography & earth science & agriculture"],
    "math": ["geometry", "numeric commonsense and calculation", "statistical reasoning"],
}

# MME's subtasks (lmms-eval mme/utils.py::eval_type_dict): perception and cognition totals
MME_PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark",
                  "artwork", "OCR")
MME_COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")


def mean(values: Sequence[float]) -> float:
    """lmms-eval's `mean` aggregation: sum / count (NaN for no values rather than an error)."""
    return sum(values) / len(values) if values else float("nan")


def mean_stderr(values: Sequence[float]) -> float | None:
    """lmms-eval's `mean_stderr`, the standard error it reports for a metric aggregated by `mean`:
    the sample standard deviation (n - 1 in the denominator) over sqrt(n). None (lmms-eval: "N/A")
    for fewer than 2 values."""
    n = len(values)
    if n < 2:
        return None
    mu = sum(values) / n
    return math.sqrt(sum((x - mu) ** 2 for x in values) / (n - 1)) / math.sqrt(n)


def clt_stderr(values: Sequence[float]) -> float | None:
    """lmms-eval's `<metric>_stderr_clt` (0.7.x, every metric whatever its aggregation): the item
    scores' sample standard deviation (numpy, ddof=1) over sqrt(n); None ("N/A") below 2 items.
    For a metric that is not a plain mean of its items it is the standard error of that mean,
    in item units, not of the metric."""
    import numpy as np

    n = len(values)
    if n < 2:
        return None
    return float(np.std(np.asarray(values, dtype=float), ddof=1) / np.sqrt(n))


def group(keys: Sequence[Any], values: Sequence[float]) -> dict[Any, list[float]]:
    """Values by key, keys in order of first appearance."""
    out: dict[Any, list[float]] = {}
    for key, value in zip(keys, values):
        out.setdefault(key, []).append(value)
    return out


def mean_of_group_means(keys: Sequence[Any], values: Sequence[float]) -> tuple[float, dict[Any, float]]:
    """The mean over groups of each group's mean, and the group means."""
    means = {k: sum(v) / len(v) for k, v in group(keys, values).items()}
    return (sum(means.values()) / len(means) if means else float("nan")), means


def mmstar_scores(categories: Sequence[str], l2_categories: Sequence[str],
                  scores: Sequence[float]) -> tuple[dict[str, float], dict[str, float]]:
    """MMStar (lmms-eval `mmstar_aggregate_results`): each category = the mean of its sub-axis
    (l2_category) means; "average" = the mean over all sub-axes' means (not plain accuracy).

    Returns (scores by lmms-eval metric name, the sub-axis means).
    """
    out: dict[str, float] = {}
    for category, members in group(categories, range(len(scores))).items():
        out[category], _ = mean_of_group_means([l2_categories[i] for i in members], [scores[i] for i in members])
    out["average"], l2_means = mean_of_group_means(l2_categories, scores)
    return out, l2_means


def mme_scores(categories: Sequence[str], question_ids: Sequence[Any],
               scores: Sequence[float]) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """MME (lmms-eval `mme_aggregate_results`): questions come in pairs on one image (same
    question_id). Per subtask: accuracy (% of questions right) + accuracy+ (% of images with
    both right), 0-200; perception and cognition totals are sums over their subtasks.

    Returns ({"mme_perception_score", "mme_cognition_score"}, per subtask {"score", "acc",
    "acc_plus", "pairs", "incomplete_pairs"}). The reference requires complete pairs; here an
    incomplete pair (after --limit) counts for accuracy and never for accuracy+.
    """
    per_task: dict[str, dict[str, float]] = {}
    for category, members in group(categories, range(len(scores))).items():
        pairs = group([question_ids[i] for i in members], [scores[i] for i in members])
        total = acc_sum = plus_sum = 0.0
        incomplete = 0
        for pair in pairs.values():
            acc = sum(pair) / len(pair) * 100.0
            plus = (len(pair) == 2 and sum(pair) == 2) * 100.0
            incomplete += len(pair) != 2
            total += plus + acc
            acc_sum, plus_sum = acc_sum + acc, plus_sum + plus
        n = len(pairs)
        per_task[category] = {"score": total / n, "acc": acc_sum / n, "acc_plus": plus_sum / n, "pairs": n,
                              "incomplete_pairs": incomplete}
    perception = [v["score"] for k, v in per_task.items() if k in MME_PERCEPTION]
    cognition = [v["score"] for k, v in per_task.items() if k not in MME_PERCEPTION]
    out = {}
    if perception:
        out["mme_perception_score"] = sum(perception)
    if cognition:
        out["mme_cognition_score"] = sum(cognition)
    return out, per_task
