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


def _load_local(path: str, streaming: bool) -> Any:
    import datasets

    if os.path.isdir(path) and any(os.path.exists(os.path.join(path, f)) for f in ("state.json", "dataset_dict.json")):
        ds = datasets.load_from_disk(path)
        if isinstance(ds, datasets.DatasetDict):
            ds = ds["train"] if "train" in ds else next(iter(ds.values()))
        return ds.to_iterable_dataset() if streaming else ds
    if path.endswith(".parquet") or os.path.isdir(path):
        files = path if path.endswith(".parquet") else os.path.join(path, "**", "*.parquet")
        return datasets.load_dataset("parquet", data_files=files, split="train", streaming=streaming)
    raise ConfigError(f"dataset path {path!r}: expected a .parquet file, a folder of parquet files or a "
                      f"save_to_disk folder")


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
    subsets = [s for s in cfg.subsets.split(",") if s]
    if os.path.exists(cfg.dataset):
        ds = _load_local(cfg.dataset, cfg.streaming)
    else:
        ds = _load_hub(cfg.dataset, subsets, cfg.streaming)
    check_columns(list(ds.column_names or REQUIRED_COLUMNS), cfg.dataset)
    if cfg.streaming:
        # A stream has no length: the first val_samples are held out, training reads what follows.
        stream = _raw_images(ds)
        val = list(stream.take(cfg.val_samples))
        train = stream.skip(cfg.val_samples)
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


class StreamingVQA(torch.utils.data.IterableDataset):
    """A streamed dataset (no length, no random access): endless epochs, each reshuffled through a
    buffer, sharded over ranks and resumable at a position (samples this rank consumed).

    Resuming re-reads the stream up to the position (cheap next to training on it). DataLoader
    workers would each replay the whole stream, so streaming uses num_workers=0.
    """

    def __init__(self, stream: Any, processor: SampleProcessor, seed: int = 0, buffer_size: int = 1000,
                 start: int = 0, rank: int = 0, world_size: int = 1):
        self.stream, self.processor, self.seed, self.buffer_size = stream, processor, seed, buffer_size
        self.start, self.rank, self.world_size = start, rank, world_size

    def resume(self, start: int, rank: int, world_size: int) -> "StreamingVQA":
        return StreamingVQA(self.stream, self.processor, self.seed, self.buffer_size, start, rank, world_size)

    def __iter__(self):
        seen, epoch = 0, 0
        while True:
            any_rows = False
            shuffled = self.stream.shuffle(seed=self.seed * 100_003 + epoch, buffer_size=self.buffer_size)
            for i, record in enumerate(shuffled):
                any_rows = True
                if i % self.world_size != self.rank:
                    continue
                seen += 1
                if seen > self.start:
                    yield self.processor(record)
            if not any_rows:
                raise ValueError("the training stream is empty")
            epoch += 1
