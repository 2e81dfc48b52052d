"""VQA training data in the_cauldron / FineVision schema, from the hub, a local path or the synthetic set.

    splits = load_splits(cfg.data, seed)          # -> Splits(train, val, fingerprint, source)
    ds = VQADataset(splits.train, SampleProcessor(model, max_length))
    ds[i]  # -> {"input_ids", "labels", "pixel_values"} or None (unreadable image / too long: skipped)
    stream = StreamingVQA(splits.train, processor).resume(samples_seen, rank, world_size)  # --streaming

Sources (local or hub) are read by nanovlm.data.sources. Schema: `images` (a list of images) and
`texts` (a list of {"user", "assistant"} turns). Images are decoded here, not by `datasets`, so an
unreadable image skips that sample (counted by the collator as `data/skipped`) instead of crashing a
worker.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import os
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from nanovlm.config import ConfigError, DataConfig
from nanovlm.data.processors import clean_turns, encode_conversation
from nanovlm.data.sources import load_source, require_columns, undecoded_images

REQUIRED_COLUMNS = ("images", "texts")


@dataclass
class Splits:
    train: Any  # datasets.Dataset or a list of records
    val: Any
    fingerprint: str
    source: str


def load_splits(cfg: DataConfig, seed: int, image_size: int = 64) -> Splits:
    """Train and held-out validation data as configured; validation is never trained on."""
    if cfg.dataset == "synthetic":
        from nanovlm.data import synthetic

        records = synthetic.generate(cfg.train_samples + cfg.val_samples, seed=seed, image_size=image_size)
        digest = hashlib.sha256(f"synthetic:{len(records)}:{seed}:{image_size}".encode()).hexdigest()[:16]
        return Splits(records[cfg.val_samples:], records[: cfg.val_samples], digest, "synthetic")
    subsets = [s for s in cfg.subsets.split(",") if s]
    ds = load_source(cfg.dataset, split="train", configs=subsets or [None], streaming=cfg.streaming)
    require_columns(list(ds.column_names or REQUIRED_COLUMNS), REQUIRED_COLUMNS, f"dataset {cfg.dataset}",
                    "Expected the the_cauldron schema: 'images' (list of images) and 'texts' (list of user/assistant "
                    "turns)")
    ds = undecoded_images(ds, ["images"])
    if cfg.streaming:
        # A stream has no length: its first val_samples are held out. Training reads the rest, dropped by
        # content rather than skipped by count, because each DDP rank reads only its own shards of it.
        val = list(ds.take(cfg.val_samples))
        train = ds.filter(NotHeldOut(val))
        return Splits(train.take(cfg.train_samples) if cfg.train_samples else train, val,
                      f"stream:{cfg.dataset}:{cfg.subsets}", cfg.dataset)
    if len(ds) <= cfg.val_samples:
        raise ConfigError(f"dataset {cfg.dataset} has {len(ds)} rows, not more than val_samples={cfg.val_samples}: "
                          f"lower --val_samples or use more data")
    split = ds.train_test_split(test_size=cfg.val_samples, seed=seed, shuffle=True)
    train = split["train"]
    if cfg.train_samples and cfg.train_samples < len(train):
        train = train.select(range(cfg.train_samples))
    return Splits(train, split["test"], ds._fingerprint, cfg.dataset)


def row_key(record: dict[str, Any]) -> str:
    """A digest of a record's texts and encoded images: equal rows, equal keys."""
    digest = hashlib.sha256(repr(record.get("texts")).encode())
    for image in record.get("images") or []:
        if isinstance(image, dict):
            digest.update(image.get("bytes") or str(image.get("path")).encode())
        else:
            digest.update(image.tobytes() if isinstance(image, Image.Image) else repr(image).encode())
    return digest.hexdigest()


class NotHeldOut:
    """A stream filter: False for the held-out validation rows (and any copy of them)."""

    def __init__(self, held_out: list[dict[str, Any]]):
        self.keys = {row_key(r) for r in held_out}

    def __call__(self, record: dict[str, Any]) -> bool:
        return row_key(record) not in self.keys


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

    def __init__(self, tokenizer: Any, transform: Any, image_placeholder: str, max_length: int,
                 uint8_pixels: bool = False):
        self.tokenizer, self.transform = tokenizer, transform
        self.image_placeholder, self.max_length = image_placeholder, max_length
        self.uint8_pixels = uint8_pixels  # resized but not normalised: the model normalises uint8 images itself
        # The placeholder is one added token repeated once per image token.
        placeholder_ids = tokenizer(image_placeholder, add_special_tokens=False)["input_ids"]
        if not placeholder_ids or len(set(placeholder_ids)) != 1:
            raise ValueError(f"the image placeholder {image_placeholder[:40]!r}... is not one repeated token")
        self.image_token_id, self.tokens_per_image = placeholder_ids[0], len(placeholder_ids)
        self.image_token = tokenizer.convert_ids_to_tokens(self.image_token_id)

    @classmethod
    def for_model(cls, model: Any, max_length: int, uint8_pixels: bool = False) -> "SampleProcessor":
        return cls(model.tokenizer, model.arch.transform, model.image_placeholder, max_length, uint8_pixels)

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
            images = [self.transform(decode_image(x), normalize=not self.uint8_pixels) for x in raw_images]
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
    buffer, split over DDP ranks and resumable at a position (samples this rank consumed).

    Each rank reads only its part of every epoch (`datasets.distributed.split_dataset_by_node`: whole
    shards when the world size divides their number, else every world_size-th row). Resuming re-reads
    this rank's rows up to the position without processing them: that is exact, where restoring a
    `state_dict()` is not (the shuffle buffer is refilled), and a rank's epoch length is unknown until
    read (its shards change every epoch). DataLoader workers would each replay the rank's part, so
    streaming uses num_workers=0.
    """

    def __init__(self, stream: Any, processor: Any, seed: int = 0, buffer_size: int = 1000,
                 start: int = 0, rank: int = 0, world_size: int = 1):
        self.stream, self.processor, self.seed, self.buffer_size = stream, processor, seed, buffer_size
        self.start, self.rank, self.world_size = start, rank, world_size

    def resume(self, start: int, rank: int, world_size: int) -> "StreamingVQA":
        return StreamingVQA(self.stream, self.processor, self.seed, self.buffer_size, start, rank, world_size)

    def epoch(self, epoch: int) -> Any:
        """This rank's rows of one epoch; every rank shuffles alike (same seed), so the parts are disjoint."""
        from datasets.distributed import split_dataset_by_node

        shuffled = self.stream.shuffle(seed=self.seed * 100_003 + epoch, buffer_size=self.buffer_size)
        return split_dataset_by_node(shuffled, rank=self.rank, world_size=self.world_size)

    def __iter__(self):
        to_skip, epoch = self.start, 0
        while True:
            rows = iter(self.epoch(epoch))
            skipped = sum(1 for _ in itertools.islice(rows, to_skip))
            to_skip -= skipped
            read = skipped
            for record in rows:
                read += 1
                yield self.processor(record)
            if not read:
                raise ConfigError(f"the training stream holds no rows for rank {self.rank} of {self.world_size} "
                                  f"(all held out, or fewer rows than processes): lower --val_samples or use more data")
            epoch += 1
