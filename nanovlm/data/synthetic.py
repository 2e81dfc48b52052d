"""Offline synthetic VQA data drawn with PIL: ``generate(n, seed)`` gives cauldron-schema records, ``save_parquet(records, path)`` writes them.

Each example is one small RGB image (plain light background, big flat-coloured
shapes) and ONE question from a fixed template with a one-word answer. It exists
so a tiny VLM can be trained on a couple of CPU cores in minutes and be shown to
use the image: a "blind" control (images shuffled between questions) should do
much worse, most clearly on colour questions.

Design choices, and why:
  * one fixed phrasing per question type, so the text alone tells the model
    *which* vocabulary to answer from but never *which* word;
  * single lower-case words as answers (multiple-choice letters were not
    learned fast by a tiny model, colour words were);
  * exact fill colours and no anti-aliasing, so the visual signal is clean and
    tests can check pixels exactly;
  * everything comes from one ``random.Random(seed)``, so the same seed gives
    identical pixels and texts, and ``generate(n)`` is a prefix of ``generate(m)``
    for n <= m.

Records follow the_cauldron / FineVision schema::

    {"images": [PIL.Image.Image],
     "texts": [{"user": question, "assistant": answer, "source": qtype}]}
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from PIL import Image, ImageDraw

QUESTION_TYPES = ("colour", "shape", "count", "position")

# Far apart in RGB (and in hue) so no colour can be mistaken for another, and
# all far from the near-white background.
COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (240, 210, 20),
    "purple": (140, 50, 180),
    "orange": (245, 130, 20),
}
SHAPES = ("circle", "square", "triangle")
COUNTS = ("1", "2", "3")
# The shape sits wholly inside the named half and is centred on the other axis,
# so e.g. "left" can never also be read as "top".
POSITIONS = ("left", "right", "top", "bottom")

QUESTIONS = {
    "colour": "What colour is the shape?",
    "shape": "What shape is it?",
    "count": "How many shapes are there?",
    "position": "Where is the shape?",
}
ANSWERS = {
    "colour": tuple(COLOURS),
    "shape": SHAPES,
    "count": COUNTS,
    "position": POSITIONS,
}

MIN_IMAGE_SIZE = 16


def _check_args(question_types: Sequence[str], image_size: int) -> None:
    if not question_types:
        raise ValueError(f"question_types is empty; valid types: {QUESTION_TYPES}")
    for qtype in question_types:
        if qtype not in QUESTION_TYPES:
            raise ValueError(f"unknown question type {qtype!r}; valid types: {QUESTION_TYPES}")
    if not isinstance(image_size, int) or image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be an int >= {MIN_IMAGE_SIZE}, got {image_size!r}")


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, x0: int, y0: int, size: int, fill) -> None:
    """Draw `shape` filling the square box with top-left (x0, y0) and side `size`."""
    x1, y1 = x0 + size - 1, y0 + size - 1  # PIL boxes are inclusive
    if shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=fill)
    else:  # triangle: apex at top centre, base along the bottom edge
        draw.polygon([((x0 + x1) / 2, y0), (x0, y1), (x1, y1)], fill=fill)


def _place_single(rng: random.Random, image_size: int) -> tuple[int, int, int]:
    """One big shape (45-70% of the side) anywhere fully inside the image."""
    margin = max(1, image_size // 16)
    size = rng.randint(round(0.45 * image_size), round(0.70 * image_size))
    x0 = rng.randint(margin, image_size - margin - size)
    y0 = rng.randint(margin, image_size - margin - size)
    return x0, y0, size


def _place_many(rng: random.Random, image_size: int, n: int) -> list[tuple[int, int, int]]:
    """`n` equal shapes in distinct cells of a 3x3 grid.

    Each shape stays inside its own cell with a margin, so shapes never touch
    and are always separate blobs; no rejection sampling is needed.
    """
    cell = image_size // 3
    margin = max(1, cell // 10)
    size = rng.randint(max(3, round(0.6 * cell)), cell - 2 * margin)
    boxes = []
    for index in rng.sample(range(9), n):
        row, col = divmod(index, 3)
        x0 = col * cell + margin + rng.randint(0, cell - 2 * margin - size)
        y0 = row * cell + margin + rng.randint(0, cell - 2 * margin - size)
        boxes.append((x0, y0, size))
    return boxes


def _place_at(rng: random.Random, image_size: int, where: str) -> tuple[int, int, int]:
    """One medium shape wholly inside the named half, near-centred on the other axis."""
    half = image_size // 2
    gap = max(1, image_size // 16)  # keeps the shape clear of the midline and the edge
    size = rng.randint(round(0.25 * image_size), round(0.35 * image_size))
    # Along the named axis: anywhere in the outer half, clear of the midline.
    near = rng.randint(gap, half - gap - size)  # measured from the named edge
    # Along the other axis: centred, with a little jitter for variety.
    jitter = image_size // 16
    centred = (image_size - size) // 2 + rng.randint(-jitter, jitter)
    if where == "left":
        return near, centred, size
    if where == "right":
        return image_size - near - size, centred, size
    if where == "top":
        return centred, near, size
    return centred, image_size - near - size, size  # bottom


def make_example(rng: random.Random, qtype: str, image_size: int = 64) -> dict:
    """One cauldron-schema record of question type `qtype`, drawn from `rng`."""
    _check_args((qtype,), image_size)

    # A neutral, slightly varying near-white background: a bit of variety that
    # can never be confused with any of the saturated shape colours.
    grey = rng.randint(235, 255)
    image = Image.new("RGB", (image_size, image_size), (grey, grey, grey))
    draw = ImageDraw.Draw(image)

    # Every example picks a colour and a shape, even when the question is about
    # something else, so irrelevant attributes vary independently of the answer.
    colour = rng.choice(ANSWERS["colour"])
    shape = rng.choice(SHAPES)

    if qtype == "count":
        answer = rng.choice(COUNTS)
        boxes = _place_many(rng, image_size, int(answer))
    elif qtype == "position":
        answer = rng.choice(POSITIONS)
        boxes = [_place_at(rng, image_size, answer)]
    else:
        answer = colour if qtype == "colour" else shape
        boxes = [_place_single(rng, image_size)]

    for x0, y0, size in boxes:
        _draw_shape(draw, shape, x0, y0, size, COLOURS[colour])

    return {
        "images": [image],
        "texts": [{"user": QUESTIONS[qtype], "assistant": answer, "source": qtype}],
    }


def generate(
    n: int,
    seed: int = 0,
    image_size: int = 64,
    question_types: Sequence[str] = QUESTION_TYPES,
) -> list[dict]:
    """`n` records; question types cycle in the given order so they stay balanced."""
    question_types = tuple(question_types)
    _check_args(question_types, image_size)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(seed)
    return [make_example(rng, question_types[i % len(question_types)], image_size) for i in range(n)]


def question_type(record: dict) -> str:
    """The question type of a record (stored in its first turn's ``source``)."""
    return record["texts"][0]["source"]


def _features():
    # Imported lazily: `datasets` is slow to import and generation doesn't need it.
    from datasets import Features, Image as ImageFeature, List, Value

    turn = {"user": Value("string"), "assistant": Value("string"), "source": Value("string")}
    # List(...) is what Sequence(...) means in datasets >= 4.
    return Features({"images": List(ImageFeature()), "texts": List(turn)})


def to_dataset(records: list[dict]):
    """A `datasets.Dataset` with images = List(Image()) and texts = list of {user, assistant, source}."""
    from datasets import Dataset

    return Dataset.from_list(records, features=_features())


def save_parquet(records: list[dict], path) -> None:
    """Write `records` to one self-contained parquet file (images embedded as PNG bytes)."""
    to_dataset(records).to_parquet(str(path))
