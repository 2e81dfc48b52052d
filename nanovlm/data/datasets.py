"""VQA training data in the_cauldron / FineVision schema, from the hub, a local path or the synthetic set.

    splits = load_splits(cfg.data, seed)          # -> Splits(train, val, fingerprint, source)
    ds = VQADataset(splits.train, SampleProcessor(model, max_length))
    ds[i]  # -> {"input_ids", "labels", "pixel_values"} or None (unreadable image / too long: skipped)

Schema: `images` (a list of images) and `texts` (a list of {"user", "assistant"} turns). Images
are decoded here, not by `datasets`, so an unreadable image skips that sample (counted by the
collator as `data/skipped`) instead of crashing a worker.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from nanovlm.config import ConfigError, DataConfig
from nanovlm.data.processors import encode_conversation

REQUIRED_COLUMNS = ("images", "texts")


@dataclass
class Splits:
    train: Any  # datasets.Dataset or a list of records
    val: Any
    fingerprint: str
    source: str


def check_columns(columns: list[str], where: str) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise ConfigError(f"dataset {where} is missing column(s) {missing}; found {list(columns)}. Expected the "
                          f"the_cauldron schema: 'images' (list of images) and 'texts' (list of user/assistant turns)")


def _load_local(path: str) -> Any:
    import datasets

    if os.path.isdir(path) and any(os.path.exists(os.path.join(path, f)) for f in ("state.json", "dataset_dict.json")):
        ds = datasets.load_from_disk(path)
    elif path.endswith(".parquet") or os.path.isdir(path):
        files = path if path.endswith(".parquet") else os.path.join(path, "**", "*.parquet")
        ds = datasets.load_dataset("parquet", data_files=files, split="train")
    else:
        raise ConfigError(f"dataset path {path!r}: expected a .parquet file, a folder of parquet files or a "
                          f"save_to_disk folder")
    if isinstance(ds, datasets.DatasetDict):
        ds = ds["train"] if "train" in ds else next(iter(ds.values()))
    return ds


def _load_hub(name: str, subsets: list[str], streaming: bool) -> Any:
    import datasets

    from nanovlm.backbones import hub_call

    parts = [hub_call(name, lambda s=s: datasets.load_dataset(name, s or None, split="train", streaming=streaming),
                      f"dataset subset {s or 'default'}") for s in subsets or [""]]
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


def load_splits(cfg: DataConfig, seed: int, image_size: int = 64) -> Splits:
    """Train and held-out validation data as configured; validation is never trained on."""
    if cfg.dataset == "synthetic":
        from nanovlm.data import synthetic

        records = synthetic.generate(cfg.train_samples + cfg.val_samples, seed=seed, image_size=image_size)
        digest = hashlib.sha256(f"synthetic:{len(records)}:{seed}:{image_size}".encode()).hexdigest()[:16]
        return Splits(records[cfg.val_samples:], records[: cfg.val_samples], digest, "synthetic")
    is_local = os.path.exists(cfg.dataset)
    subsets = [s for s in cfg.subsets.split(",") if s]
    ds = _load_local(cfg.dataset) if is_local else _load_hub(cfg.dataset, subsets, cfg.streaming)
    check_columns(list(ds.column_names or REQUIRED_COLUMNS), cfg.dataset)
    if cfg.streaming and not is_local:
        # A stream has no length: the first val_samples are held out, training starts after them.
        val = list(ds.take(cfg.val_samples))
        train = ds.skip(cfg.val_samples)
        return Splits(train.take(cfg.train_samples) if cfg.train_samples else train, val,
                      f"stream:{cfg.dataset}:{cfg.subsets}", cfg.dataset)
    ds = _raw_images(ds)
    if len(ds) <= cfg.val_samples:
        raise ConfigError(f"dataset {cfg.dataset} has {len(ds)} rows, not more than val_samples={cfg.val_samples}")
    split = ds.train_test_split(test_size=cfg.val_samples, seed=seed, shuffle=True)
    train = split["train"]
    if cfg.train_samples and cfg.train_samples < len(train):
        train = train.select(range(cfg.train_samples))
    return Splits(train, split["test"], ds._fingerprint, cfg.dataset)


def _raw_images(ds: Any) -> Any:
    """Keep images as encoded bytes so we decode them ourselves (and survive corrupt ones)."""
    import datasets

    feature = ds.features.get("images") if ds.features else None
    if isinstance(feature, (datasets.Sequence, datasets.List)) and isinstance(feature.feature, datasets.Image):
        return ds.cast_column("images", datasets.List(datasets.Image(decode=False)))
    return ds


def decode_image(item: Any) -> Image.Image:
    """A PIL image from whatever a dataset row holds: PIL, {"bytes", "path"}, bytes or a path."""
    if isinstance(item, Image.Image):
        image = item
    elif isinstance(item, dict):
        image = Image.open(io.BytesIO(item["bytes"])) if item.get("bytes") else Image.open(item["path"])
    elif isinstance(item, (bytes, bytearray)):
        image = Image.open(io.BytesIO(item))
    else:
        image = Image.open(item)
    image.load()  # decode now: a truncated file fails here, not later
    return image.convert("RGB")


class SampleProcessor:
    """A record -> model inputs: chat-formatted token ids, answer-only labels, image tensors."""

    def __init__(self, tokenizer: Any, transform: Any, image_placeholder: str, max_length: int):
        self.tokenizer, self.transform = tokenizer, transform
        self.image_placeholder, self.max_length = image_placeholder, max_length

    @classmethod
    def for_model(cls, model: Any, max_length: int) -> "SampleProcessor":
        return cls(model.tokenizer, model.arch.transform, model.image_placeholder, max_length)

    def __call__(self, record: dict[str, Any]) -> dict[str, torch.Tensor] | None:
        try:
            images = [self.transform(decode_image(x)) for x in record["images"]]
        except (OSError, ValueError, SyntaxError):  # PIL's errors for unreadable/truncated files
            return None
        turns = record["texts"]
        if not images or not turns:
            return None
        # one placeholder block per image, in front of the first question
        ids, labels = encode_conversation(self.tokenizer, turns, self.image_placeholder * len(images))
        if len(ids) > self.max_length:
            return None
        return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "pixel_values": torch.stack(images)}


class VQADataset(torch.utils.data.Dataset):
    def __init__(self, records: Any, processor: SampleProcessor):
        self.records, self.processor = records, processor

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor] | None:
        return self.processor(self.records[index])
