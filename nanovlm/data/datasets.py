"""VQA training data in the_cauldron / FineVision schema, from the hub, a local path or the synthetic set.

    splits = load_splits(cfg.data, seed)          # -> Splits(train, val, fingerprint, source)
    ds = VQADataset(splits.train, SampleProcessor(model, max_length))
    ds[i]  # -> {"input_ids", "labels", "pixel_values"} or None (unreadable image / too long: skipped)

Schema: `images` (a list of images) and `texts` (a list of {"user", "assistant"} turns). Images
are decoded here, not by `datasets`, so an unreadable image skips that sample (counted by the
collator as `data/skipped`) instead of crashing a worker.
"""

from __future__ import annotations

import glob
import hashlib
import io
import os
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from nanovlm.checks import looks_local
from nanovlm.config import ConfigError, DataConfig
from nanovlm.data.processors import clean_turns, encode_conversation

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
    """A local dataset; an empty one, or files that are not what their names say, are one-line errors."""
    import datasets

    if os.path.isdir(path) and any(os.path.exists(os.path.join(path, f)) for f in ("state.json", "dataset_dict.json")):
        if _saved_without_data(path):  # `datasets` itself fails on these with an IndexError
            raise ConfigError(f"dataset {path}: the save_to_disk folder holds 0 rows")
        try:
            ds = datasets.load_from_disk(path)
        except Exception as err:  # noqa: BLE001 - a broken folder is the user's to fix, whatever `datasets` raises
            raise ConfigError(f"dataset {path}: not a readable save_to_disk folder ({type(err).__name__}: "
                              f"{_first_line(err)})") from err
        if isinstance(ds, datasets.DatasetDict):
            if not ds:
                raise ConfigError(f"dataset {path}: the save_to_disk folder holds no splits")
            ds = ds["train"] if "train" in ds else next(iter(ds.values()))
        if len(ds) == 0:
            raise ConfigError(f"dataset {path}: the save_to_disk folder holds 0 rows")
        return ds.to_iterable_dataset() if streaming else ds
    if os.path.isdir(path):
        files = sorted(glob.glob(os.path.join(path, "**", "*.parquet"), recursive=True))
        if not files:
            found = sorted(os.listdir(path))
            shown = ", ".join(found[:5]) + (", ..." if len(found) > 5 else "") if found else "nothing"
            raise ConfigError(f"dataset folder {path} holds no .parquet files and is not a save_to_disk folder "
                              f"(found: {shown})")
    elif path.endswith(".parquet"):
        files = [path]
    else:
        raise ConfigError(f"dataset path {path!r}: expected a .parquet file, a folder of parquet files or a "
                          f"save_to_disk folder")
    if parquet_rows(files) == 0:
        raise ConfigError(f"dataset {path}: 0 rows in {len(files)} parquet file(s)")
    data_files = path if path.endswith(".parquet") else os.path.join(path, "**", "*.parquet")
    return datasets.load_dataset("parquet", data_files=data_files, split="train", streaming=streaming)


def _saved_without_data(path: str) -> bool:
    """A save_to_disk folder of an empty Dataset: its state.json lists no data files."""
    import json

    try:
        with open(os.path.join(path, "state.json")) as f:
            return json.load(f).get("_data_files") == []
    except (OSError, ValueError, AttributeError):
        return False


def parquet_rows(files: list[str]) -> int:
    """Total rows, read from the files' footers; a file that is not parquet is a one-line error."""
    import pyarrow.parquet as pq

    total = 0
    for name in files:
        try:
            total += pq.ParquetFile(name).metadata.num_rows
        except Exception as err:  # noqa: BLE001 - ArrowInvalid, OSError: the file is not what it claims
            raise ConfigError(f"{name} is not a readable parquet file ({_first_line(err)})") from err
    return total


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else type(err).__name__


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
    local = os.path.expanduser(cfg.dataset)
    if os.path.exists(local):
        ds = _load_local(local, cfg.streaming)
    elif looks_local(cfg.dataset):  # a typo in a path, not a hub id: say so instead of blaming the network
        raise ConfigError(f"no such file or directory: {local} (--dataset)")
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
        raise ConfigError(f"dataset {cfg.dataset} has {len(ds)} rows, not more than val_samples={cfg.val_samples}: "
                          f"lower --val_samples or use more data")
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
    """A PIL image from whatever a dataset row holds: PIL, {"bytes", "path"}, bytes or a path.

    Raises one of UNREADABLE for a missing, unreadable, truncated or oversized (decompression bomb) image.
    """
    if item is None:
        raise ValueError("no image (None)")
    if isinstance(item, Image.Image):
        image = item
    elif isinstance(item, dict):
        if item.get("bytes"):
            image = Image.open(io.BytesIO(item["bytes"]))
        elif item.get("path"):
            image = Image.open(item["path"])
        else:
            raise ValueError("an image entry with neither bytes nor path")
    elif isinstance(item, (bytes, bytearray)):
        image = Image.open(io.BytesIO(item))
    elif isinstance(item, (str, os.PathLike)):
        image = Image.open(item)
    else:
        raise ValueError(f"cannot read an image from a {type(item).__name__}")
    image.load()  # decode now: a truncated file fails here, not later
    return image.convert("RGB")


# PIL's errors for unreadable/truncated/unknown files, and images over its pixel limit (decompression bombs).
UNREADABLE = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


class SampleProcessor:
    """A record -> model inputs: chat-formatted token ids, answer-only labels, image tensors.

    Returns None (the sample is skipped and counted) for a bad row: no or unreadable images (None,
    corrupt, truncated, over PIL's decompression-bomb limit), malformed texts (None, bytes, missing
    turns), a sample longer than max_length, or image-token slots that do not match its images.
    """

    def __init__(self, tokenizer: Any, transform: Any, image_placeholder: str, max_length: int):
        self.tokenizer, self.transform = tokenizer, transform
        self.image_placeholder, self.max_length = image_placeholder, max_length
        # The placeholder is one added token repeated once per image token.
        placeholder_ids = tokenizer(image_placeholder, add_special_tokens=False)["input_ids"]
        if not placeholder_ids or len(set(placeholder_ids)) != 1:
            raise ValueError(f"the image placeholder {image_placeholder[:40]!r}... is not one repeated token")
        self.image_token_id, self.tokens_per_image = placeholder_ids[0], len(placeholder_ids)
        self.image_token = tokenizer.convert_ids_to_tokens(self.image_token_id)

    @classmethod
    def for_model(cls, model: Any, max_length: int) -> "SampleProcessor":
        return cls(model.tokenizer, model.arch.transform, model.image_placeholder, max_length)

    def __call__(self, record: dict[str, Any]) -> dict[str, torch.Tensor] | None:
        if not isinstance(record, dict):
            return None
        raw_images = record.get("images")
        if not isinstance(raw_images, (list, tuple)) or not raw_images:
            return None
        turns = clean_turns(record.get("texts"), self.image_token)
        if turns is None:
            return None
        try:
            images = [self.transform(decode_image(x)) for x in raw_images]
        except UNREADABLE:
            return None
        # one placeholder block per image, in front of the first question
        ids, labels = encode_conversation(self.tokenizer, turns, self.image_placeholder * len(images))
        if len(ids) > self.max_length:
            return None
        if ids.count(self.image_token_id) != len(images) * self.tokens_per_image:
            return None  # the text changed the image slots (e.g. a token that merges with the placeholder)
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
