"""The synthetic shapes benchmark: exact-match accuracy per question type, next to a blind control.

    scores = evaluate_with_control(model, records)   # {"synthetic": {...}, "synthetic_blind": {...}}

The blind control asks the same questions with the images shuffled between them (no item keeps
its own image): what a model answers from the question alone. A model that uses its images beats
it; on colour questions a tiny model does within minutes of CPU training.
"""

from __future__ import annotations

import random
import re
from collections import defaultdict
from typing import Any

from evals.generation import generate_answers
from nanovlm.data.synthetic import question_type


def normalise(answer: str) -> str:
    words = re.findall(r"[a-z0-9]+", answer.lower())
    return words[0] if words else ""


def derangement(n: int, seed: int = 0) -> list[int]:
    """A permutation with no fixed point: every question gets another item's image."""
    if n < 2:
        raise ValueError("a blind control needs at least 2 items")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return [order[(order.index(i) + 1) % n] for i in range(n)]


def score(records: list[dict], answers: list[str]) -> dict[str, float]:
    hits: dict[str, list[bool]] = defaultdict(list)
    for record, answer in zip(records, answers):
        correct = normalise(answer) == record["texts"][0]["assistant"].lower()
        hits[question_type(record)].append(correct)
        hits["overall"].append(correct)
    return {kind: sum(v) / len(v) for kind, v in sorted(hits.items())}  # fractions, as every eval/ metric


def evaluate(model: Any, records: list[dict], blind: bool = False, batch_size: int = 32) -> dict[str, float]:
    images = [r["images"] for r in records]
    if blind:
        images = [images[j] for j in derangement(len(records))]
    items = [(imgs, r["texts"][0]["user"]) for imgs, r in zip(images, records)]
    return score(records, generate_answers(model, items, batch_size=batch_size, max_new_tokens=6))


def evaluate_with_control(model: Any, records: list[dict], batch_size: int = 32) -> dict[str, dict[str, float]]:
    return {"synthetic": evaluate(model, records, False, batch_size),
            "synthetic_blind": evaluate(model, records, True, batch_size)}
