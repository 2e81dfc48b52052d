"""Small offline sets in each benchmark's schema, made from the synthetic shapes, saved as parquet.

    python -m evals.fixtures /tmp/evalfix                 # mmstar.parquet, ai2d.parquet, ... (seconds)
    python -m evals.run CKPT --data_dir /tmp/evalfix      # every task on its fixture

    paths = write_all(out_dir)                            # {"mmstar": out_dir/"mmstar.parquet", ...}
    write_task("mmstar", path, n=36, corrupt=[3])         # row 3's image is unreadable bytes

Each row is a synthetic image (one to three flat-coloured shapes) and its question (colour, shape,
count or position) dressed in the task's format: MMStar's inline "Options: A: red, B: ..." with a
letter answer and the 6 x 3 category / l2_category structure, ScienceQA's choices + index, AI2D's
options + index as text, TextVQA's 10 annotator answers, ChartQA's human/augmented split, DocVQA's
answer list, OCRBench's dataset / question_type (HME100k included), MME's yes/no pairs per image
across perception and cognition subtasks. Same seed, same files.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path
from typing import Any, Callable, Sequence

from evals.aggregate import MME_COGNITION, MME_PERCEPTION, MMSTAR_CATEGORIES
from nanovlm.data import synthetic

# One unused word per vocabulary, so every question can have four options.
_VOCABULARY = {"colour": list(synthetic.COLOURS), "shape": [*synthetic.SHAPES, "star"],
               "count": [*synthetic.COUNTS, "4"], "position": list(synthetic.POSITIONS)}
OCRBENCH_TYPES = ("Regular Text Recognition", "Irregular Text Recognition", "Artistic Text Recognition",
                  "Handwriting Recognition", "Digit String Recognition", "Non-Semantic Text Recognition",
                  "Scene Text-centric VQA", "Doc-oriented VQA", "Key Information Extraction",
                  "Handwritten Mathematical Expression Recognition")
OCRBENCH_SOURCES = ("IIIT5K", "SVT", "IC13_857", "HOST", "WordArt", "IAM", "NonSemanticText", "textVQA", "docVQA",
                    "FUNSD", "HME100k")
DEFAULT_SIZES = {"mmstar": 36, "scienceqa_img": 16, "ai2d": 16, "textvqa": 16, "chartqa": 16, "docvqa": 16,
                 "ocrbench": 20, "mme": 28}


def _base(n: int, seed: int, image_size: int) -> list[tuple[Any, str, str, str]]:
    """(image, question, answer, question type) from the synthetic generator."""
    records = synthetic.generate(n, seed=seed, image_size=image_size)
    return [(r["images"][0], r["texts"][0]["user"], r["texts"][0]["assistant"], synthetic.question_type(r))
            for r in records]


def _options(rng: random.Random, answer: str, qtype: str, k: int = 4) -> tuple[list[str], int]:
    others = [w for w in _VOCABULARY[qtype] if w != answer]
    options = rng.sample(others, k - 1) + [answer]
    rng.shuffle(options)
    return options, options.index(answer)


def mmstar_rows(n: int, seed: int = 0, image_size: int = 64) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    axes = [(c, l2) for c, l2s in MMSTAR_CATEGORIES.items() for l2 in l2s]
    rows = []
    for i, (image, question, answer, qtype) in enumerate(_base(n, seed, image_size)):
        options, gold = _options(rng, answer, qtype)
        inline = ", ".join(f"{chr(65 + j)}: {o}" for j, o in enumerate(options))
        category, l2 = axes[i % len(axes)]
        rows.append({"index": i, "question": f"{question}\nOptions: {inline}", "image": image,
                     "answer": chr(65 + gold), "category": category, "l2_category": l2,
                     "meta_info": {"source": "synthetic", "split": "val", "image_path": f"images/{i}.png"}})
    return rows


def scienceqa_img_rows(n: int, seed: int = 0, image_size: int = 64) -> list[dict[str, Any]]:
    rng = random.Random(seed + 1)
    rows = []
    for i, (image, question, answer, qtype) in enumerate(_base(n, seed + 1, image_size)):
        options, gold = _options(rng, answer, qtype, k=2 + i % 3)  # 2, 3 or 4 choices
        rows.append({"image": image, "question": question, "choices": options, "answer": gold,
                     "hint": "" if i % 2 else "The picture shows flat shapes on a light background.",
                     "task": "closed choice", "grade": "grade3", "subject": "natural science",
                     "topic": "shapes", "category": qtype, "skill": "Identify shapes", "lecture": "", "solution": ""})
    return rows


def ai2d_rows(n: int, seed: int = 0, image_size: int = 64) -> list[dict[str, Any]]:
    rng = random.Random(seed + 2)
    rows = []
    for image, question, answer, qtype in _base(n, seed + 2, image_size):
        options, gold = _options(rng, answer, qtype)
        rows.append({"question": question, "options": options, "answer": str(gold), "image": image})
    return rows


def textvqa_rows(n: int, seed: int = 0, image_size: int = 64) -> list[dict[str, Any]]:
    rows = []
    for i, (image, question, answer, _) in enumerate(_base(n, seed + 3, image_size)):
        # 10 annotators, not unanimous: the answer 7 times, with an article twice (the same after
        # normalisation), and once something else
        answers = [answer] * 7 + [f"the {answer}"] * 2 + ["unsure"]
        rows.append({"question_id": 34602 + i, "question": question.lower(), "image": image, "image_id": f"img{i:04d}",
                     "answers": answers, "ocr_tokens": [], "image_classes": ["shape"], "set_name": "val",
                     "flickr_original_url": "", "flickr_300k_url": "", "image_width": image_size,
                     "image_height": image_size})
    return rows


def chartqa_rows(n: int, seed: int = 0, image_size: int = 64) -> list[dict[str, Any]]:
    return [{"type": "human_test" if i % 2 else "augmented_test", "question": question, "answer": answer,
             "image": image} for i, (image, question, answer, _) in enumerate(_base(n, seed + 4, image_size))]


def docvqa_rows(n: int, seed: int = 0, image_size: int = 64) -> list[dict[str, Any]]:
    return [{"questionId": str(50000 + i), "question": question, "question_types": ["figure/diagram"],
             "image": image, "docId": 1000 + i, "ucsf_document_id": f"doc{i:04d}", "ucsf_document_page_no": "1",
             "answers": [answer, f"{answer} shape" if qtype in ("colour", "shape") else answer],
             "data_split": "val"}
            for i, (image, question, answer, qtype) in enumerate(_base(n, seed + 5, image_size))]


def ocrbench_rows(n: int, seed: int = 0, image_size: int = 64) -> list[dict[str, Any]]:
    rows = []
    for i, (image, question, answer, _) in enumerate(_base(n, seed + 6, image_size)):
        source = OCRBENCH_SOURCES[i % len(OCRBENCH_SOURCES)]
        kind = OCRBENCH_TYPES[-1] if source == "HME100k" else OCRBENCH_TYPES[i % (len(OCRBENCH_TYPES) - 1)]
        rows.append({"dataset": source, "question": question, "question_type": kind, "answer": [answer],
                     "image": image})
    return rows


_MME_QUESTION = {"colour": "Is the shape {}?", "shape": "Is this shape a {}?", "count": "Are there {} shapes?",
                 "position": "Is the shape on the {} side?"}


def mme_rows(n: int, seed: int = 0, image_size: int = 64) -> list[dict[str, Any]]:
    """n questions: n // 2 images with a yes and a no question each (the order alternates)."""
    rng = random.Random(seed + 7)
    subtasks = [*MME_PERCEPTION, *MME_COGNITION]
    rows = []
    for i, (image, _, answer, qtype) in enumerate(_base(n // 2, seed + 7, image_size)):
        category = subtasks[i % len(subtasks)]
        wrong = rng.choice([w for w in _VOCABULARY[qtype] if w != answer])
        pair = [(answer, "Yes"), (wrong, "No")]
        if i % 2:
            pair.reverse()
        for word, gold in pair:
            rows.append({"question_id": f"{category}/{i:04d}.png", "image": image,
                         "question": _MME_QUESTION[qtype].format(word) + " Please answer yes or no.",
                         "answer": gold, "category": category})
    return rows


BUILDERS: dict[str, Callable[..., list[dict[str, Any]]]] = {
    "mmstar": mmstar_rows, "scienceqa_img": scienceqa_img_rows, "ai2d": ai2d_rows, "textvqa": textvqa_rows,
    "chartqa": chartqa_rows, "docvqa": docvqa_rows, "ocrbench": ocrbench_rows, "mme": mme_rows}


def write_task(task: str, path: str | Path, n: int | None = None, seed: int = 0, image_size: int = 64,
               corrupt: Sequence[int] = ()) -> Path:
    """Write the task's fixture; rows in `corrupt` get image bytes no decoder reads."""
    from datasets import Dataset

    rows = BUILDERS[task](n or DEFAULT_SIZES[task], seed, image_size)
    for i in corrupt:
        rows[i]["image"] = {"bytes": b"\x89PNG\r\n\x1a\n truncated, not an image", "path": None}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if corrupt:  # a dict among PIL images: give the column its type explicitly
        from datasets import Image as ImageFeature

        ds = Dataset.from_list([{**r, "image": None} for r in rows])
        ds = ds.cast_column("image", ImageFeature())
        images = [r["image"] for r in rows]
        ds = ds.map(lambda _, i: {"image": images[i]}, with_indices=True, features=ds.features)
    else:
        ds = Dataset.from_list(rows)
    ds.to_parquet(str(path))
    return path


def write_all(out_dir: str | Path, seed: int = 0, image_size: int = 64,
              sizes: dict[str, int] | None = None) -> dict[str, Path]:
    out = Path(out_dir)
    return {task: write_task(task, out / f"{task}.parquet", (sizes or {}).get(task), seed, image_size)
            for task in BUILDERS}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m evals.fixtures", description=__doc__.split("\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image_size", type=int, default=64)
    args = parser.parse_args(argv)
    for task, path in write_all(args.out_dir, args.seed, args.image_size).items():
        print(f"{task:<14} {path}")


if __name__ == "__main__":
    main()
