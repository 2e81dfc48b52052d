"""Batching: dynamic padding to the longest sample, answer-only labels, skipped samples counted;
and the resumable, rank-sharded sampler that makes the data order part of a checkpoint.

    loader = DataLoader(ds, batch_size=8, sampler=ResumableSampler(len(ds), seed, start=pos),
                        collate_fn=Collator(pad_id))
    batch = next(iter(loader))  # input_ids, attention_mask, labels (B, T); images (N, 3, H, W); skipped
"""

from __future__ import annotations

from typing import Any, Iterator

import torch

from nanovlm.data.processors import IGNORE_INDEX


class Collator:
    def __init__(self, pad_id: int, padding_side: str = "right"):
        self.pad_id, self.padding_side = pad_id, padding_side

    def __call__(self, samples: list[dict[str, torch.Tensor] | None]) -> dict[str, Any]:
        good = [s for s in samples if s is not None]
        batch: dict[str, Any] = {"skipped": len(samples) - len(good), "size": len(good)}
        if not good:
            return batch
        width = max(len(s["input_ids"]) for s in good)
        ids = torch.full((len(good), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(good), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(good), width), dtype=torch.long)
        for row, s in enumerate(good):
            n = len(s["input_ids"])
            cols = slice(0, n) if self.padding_side == "right" else slice(width - n, width)
            ids[row, cols], mask[row, cols] = s["input_ids"], 1
            if "labels" in s:
                labels[row, cols] = s["labels"]
        batch.update(input_ids=ids, attention_mask=mask, labels=labels,
                     images=torch.cat([s["pixel_values"] for s in good]))  # sample order = slot order
        return batch


class ResumableSampler(torch.utils.data.Sampler[int]):
    """Endless reshuffled epochs, sharded over ranks, that can start at any position.

    The order depends only on (seed, epoch), so position p of a run is the same index whether the
    run got there in one go or after a resume: `start` = samples this rank already consumed.
    """

    def __init__(self, size: int, seed: int, start: int = 0, rank: int = 0, world_size: int = 1):
        if size < world_size:
            raise ValueError(f"dataset of {size} samples cannot be sharded over {world_size} ranks")
        self.size, self.seed, self.start, self.rank, self.world = size, seed, start, rank, world_size
        self.per_rank = size // world_size  # drop the remainder so every rank takes the same steps

    def _epoch(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = torch.randperm(self.size, generator=g)[: self.per_rank * self.world]
        return order[self.rank :: self.world].tolist()

    def __iter__(self) -> Iterator[int]:
        epoch, offset = divmod(self.start, self.per_rank)
        while True:
            yield from self._epoch(epoch)[offset:]
            epoch, offset = epoch + 1, 0
