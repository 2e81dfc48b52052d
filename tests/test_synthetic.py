"""Tests for nanovlm.data.synthetic: determinism, schema, balance and that each answer is really in the pixels."""

import random
import sys
import time
from collections import Counter, deque
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Make the repo importable when pytest is run without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nanovlm.data import synthetic as syn  # noqa: E402


@pytest.fixture(scope="module")
def records():
    return syn.generate(400, seed=123)


def _shape_mask(image: Image.Image) -> np.ndarray:
    """True where a pixel differs from the (uniform) background colour."""
    pixels = np.asarray(image)
    return np.any(pixels != pixels[0, 0], axis=-1)


def _blobs(mask: np.ndarray) -> list[list[tuple[int, int]]]:
    """8-connected components of a boolean mask, by breadth-first search."""
    seen = np.zeros_like(mask)
    blobs = []
    h, w = mask.shape
    for y, x in zip(*np.nonzero(mask)):
        if seen[y, x]:
            continue
        seen[y, x] = True
        queue, blob = deque([(y, x)]), []
        while queue:
            cy, cx = queue.popleft()
            blob.append((cy, cx))
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    ny, nx = cy + dy, cx + dx
                    if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = True
                        queue.append((ny, nx))
        blobs.append(blob)
    return blobs


def _of_type(records, qtype):
    return [r for r in records if syn.question_type(r) == qtype]


def test_same_seed_is_identical_and_other_seed_differs():
    a, b, c = syn.generate(50, seed=7), syn.generate(50, seed=7), syn.generate(50, seed=8)
    assert [r["texts"] for r in a] == [r["texts"] for r in b]
    assert [r["images"][0].tobytes() for r in a] == [r["images"][0].tobytes() for r in b]
    assert [r["images"][0].tobytes() for r in a] != [r["images"][0].tobytes() for r in c]
    # A shorter run is a prefix of a longer one with the same seed.
    assert [r["texts"] for r in syn.generate(10, seed=7)] == [r["texts"] for r in a[:10]]


def test_schema(records):
    for r in records:
        assert set(r) == {"images", "texts"}
        assert len(r["images"]) == 1 and len(r["texts"]) == 1
        image = r["images"][0]
        assert isinstance(image, Image.Image)
        assert image.mode == "RGB" and image.size == (64, 64)
        turn = r["texts"][0]
        assert set(turn) == {"user", "assistant", "source"}
        assert turn["source"] in syn.QUESTION_TYPES
        assert turn["user"] == syn.QUESTIONS[turn["source"]]
        assert syn.question_type(r) == turn["source"]


def test_image_size_parameter():
    for size in (16, 17, 33, 100, 224):
        for r in syn.generate(40, seed=size, image_size=size):
            assert r["images"][0].size == (size, size)


def test_question_types_are_balanced_and_selectable(records):
    assert Counter(map(syn.question_type, records)) == {q: 100 for q in syn.QUESTION_TYPES}
    only = syn.generate(9, question_types=["colour", "count"])
    assert Counter(map(syn.question_type, only)) == {"colour": 5, "count": 4}


def test_answers_in_vocab_and_roughly_balanced():
    recs = syn.generate(2400, seed=1)
    for qtype in syn.QUESTION_TYPES:
        answers = Counter(r["texts"][0]["assistant"] for r in _of_type(recs, qtype))
        assert set(answers) == set(syn.ANSWERS[qtype])  # every answer occurs, nothing else
        expected = 600 / len(syn.ANSWERS[qtype])
        assert all(abs(k - expected) < 0.35 * expected for k in answers.values()), answers
        for word in answers:
            assert word == word.lower() and " " not in word


def test_colour_answer_matches_pixels(records):
    for r in _of_type(records, "colour"):
        pixels = np.asarray(r["images"][0])
        mask = _shape_mask(r["images"][0])
        rgb = syn.COLOURS[r["texts"][0]["assistant"]]
        # Every non-background pixel is exactly the named colour (no anti-aliasing).
        assert {tuple(p) for p in pixels[mask]} == {rgb}
        # And so is the centre of the shape's bounding box.
        ys, xs = np.nonzero(mask)
        cy, cx = (ys.min() + ys.max()) // 2, (xs.min() + xs.max()) // 2
        assert tuple(pixels[cy, cx]) == rgb
        assert mask.mean() > 0.1  # the shape is big


def test_colours_are_distinct():
    rgbs = np.array(list(syn.COLOURS.values()), dtype=float)
    dists = np.linalg.norm(rgbs[:, None] - rgbs[None], axis=-1)
    assert dists[~np.eye(len(rgbs), dtype=bool)].min() > 60


def test_shape_answer_matches_fill_ratio(records):
    # Fraction of the bounding box covered: square ~1, circle ~pi/4, triangle ~1/2.
    for r in _of_type(records, "shape"):
        mask = _shape_mask(r["images"][0])
        ys, xs = np.nonzero(mask)
        fill = mask.sum() / ((np.ptp(ys) + 1) * (np.ptp(xs) + 1))
        expected = {"square": 1.0, "circle": np.pi / 4, "triangle": 0.5}[r["texts"][0]["assistant"]]
        assert abs(fill - expected) < 0.08, (r["texts"], fill)


@pytest.mark.parametrize("size", [16, 64, 128])
def test_count_answer_matches_blobs(size):
    recs = syn.generate(60, seed=3, image_size=size, question_types=["count"])
    for r in recs:
        blobs = _blobs(_shape_mask(r["images"][0]))
        assert len(blobs) == int(r["texts"][0]["assistant"])
        assert len({len(b) for b in blobs}) == 1  # same shape, same size


@pytest.mark.parametrize("size", [16, 64, 101])
def test_position_answer_matches_centroid(size):
    recs = syn.generate(200, seed=4, image_size=size, question_types=["position"])
    mid = size / 2
    for r in recs:
        mask = _shape_mask(r["images"][0])
        ys, xs = np.nonzero(mask)
        where = r["texts"][0]["assistant"]
        # The whole shape lies in the named half...
        inside = {"left": xs.max() < mid, "right": xs.min() >= mid,
                  "top": ys.max() < mid, "bottom": ys.min() >= mid}[where]
        assert inside, (where, xs.min(), xs.max(), ys.min(), ys.max())
        # ...and its centroid is further off-centre on that axis than on the other.
        dx, dy = abs(xs.mean() - mid), abs(ys.mean() - mid)
        assert (dx > dy) if where in ("left", "right") else (dy > dx)


def test_make_example_uses_given_rng():
    a = syn.make_example(random.Random(5), "shape", 32)
    b = syn.make_example(random.Random(5), "shape", 32)
    assert a["texts"] == b["texts"] and a["images"][0].tobytes() == b["images"][0].tobytes()
    assert a["images"][0].size == (32, 32)


def test_to_dataset_features(records):
    from datasets import Image as ImageFeature, List

    ds = syn.to_dataset(records[:8])
    assert len(ds) == 8
    assert ds.features["images"] == List(ImageFeature())
    assert ds[0]["texts"] == records[0]["texts"]


def test_parquet_round_trip(tmp_path, records):
    from datasets import Dataset, load_dataset

    path = tmp_path / "synthetic.parquet"
    syn.save_parquet(records[:20], path)
    for ds in (Dataset.from_parquet(str(path)),
               load_dataset("parquet", data_files=str(path), split="train")):
        assert len(ds) == 20
        for row, r in zip(ds, records[:20]):
            assert row["texts"] == r["texts"]
            image = row["images"][0]
            assert image.size == (64, 64)
            # PNG is lossless, so the pixels come back exactly.
            assert image.convert("RGB").tobytes() == r["images"][0].tobytes()


def test_bad_args_raise():
    with pytest.raises(ValueError, match="colour"):  # message lists the valid types
        syn.generate(4, question_types=["colour", "size"])
    with pytest.raises(ValueError, match="unknown question type"):
        syn.make_example(random.Random(0), "texture", 64)
    with pytest.raises(ValueError):
        syn.generate(4, question_types=[])
    with pytest.raises(ValueError, match="image_size"):
        syn.generate(4, image_size=15)
    with pytest.raises(ValueError, match="image_size"):
        syn.make_example(random.Random(0), "colour", 8)
    with pytest.raises(ValueError):
        syn.generate(-1)


def test_fast_and_silent(capsys):
    start = time.perf_counter()
    syn.generate(2000, seed=0)
    elapsed = time.perf_counter() - start
    assert capsys.readouterr() == ("", "")
    assert elapsed < 2.0, elapsed
