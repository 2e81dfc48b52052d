"""Training batches: samples packed first-fit into rows of a fixed length, as static-shape model inputs.

    for rows, consumed, skipped in pack(samples, rows=4, row_length=2048):   # samples: dicts or None
        batch = collate_rows(rows, row_length, pad_id, image_token_id, image_tokens)
        loss = model(**model_inputs(batch, device))

`pack` reads processed samples in order and places each in the first of the batch's rows with
room for it; when one fits in none, the batch is emitted and that sample starts the next one. A
batch therefore covers a contiguous stretch of the (shuffled, resumable) sample order, and the
data position after it is just "samples consumed so far": a resumed run re-reads from there and
builds the same batches. With `packing=False` every row holds one sample.

`collate_rows` turns rows into the model's inputs; everything shape- or count-dependent is worked
out here on the CPU, so the training step never reads a device value back (no host syncs):

    input_ids     (R, W)   token ids, padded with pad_id
    position_ids  (R, W)   0, 1, 2, ... restarting at every sample (and for the padding tail)
    sequence_ids  (R, W)   which sample of the row a token belongs to: attention stays inside it
    images        (N, 3, H, W)  the images in slot order, then blank ones up to a bucket size (the
                           training loader's are uint8, normalised by the model on the device)
    image_slots   (R, W)   index into the flattened (N * image_tokens) image features, -1 on text
    loss_positions (A,)    flat index r * W + t of every position whose next token has a loss ...
    loss_targets  (A,)     ... and that token; padded to a bucket size with IGNORE_INDEX

N and A are rounded up to `bucket` sizes so that a compiled model sees a handful of shapes, not a
new one every step; the blank images and ignored targets are counted in `stats` so the waste is
visible as metrics.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator

import torch

from nanovlm.data.processors import IGNORE_INDEX

MODEL_INPUTS = ("input_ids", "position_ids", "sequence_ids", "images", "image_slots", "loss_positions", "loss_targets")
_EMPTY = object()  # no sample waiting to be placed


def bucket(n: int) -> int:
    """n up to 4, else the smallest m x 2^k >= n with m in 4..7: at most 25% padding, four shapes per doubling."""
    if n <= 4:
        return max(n, 1)
    size = 4
    while True:
        for m in (4, 5, 6, 7):
            if m * size // 4 >= n:
                return m * size // 4
        size *= 2


def pack(samples: Iterable[dict[str, torch.Tensor] | None], rows: int, row_length: int,
         packing: bool = True) -> Iterator[tuple[list[list[dict[str, torch.Tensor]]], int, int]]:
    """Group samples into batches of `rows` rows -> (rows, samples consumed, of which skipped).

    A None sample (unreadable, too long) is consumed and counted as skipped; after `rows` of them in a
    row with nothing placed, an empty batch is yielded. Ends when the samples end (the last batch may
    have empty rows).
    """
    source = iter(samples)
    waiting: Any = _EMPTY
    while True:
        batch: list[list[dict[str, torch.Tensor]]] = [[] for _ in range(rows)]
        free = [row_length] * rows
        consumed = skipped = 0
        exhausted = False
        while True:
            if waiting is _EMPTY:
                try:
                    waiting = next(source)
                except StopIteration:
                    exhausted = True
                    break
            if waiting is None:
                consumed, skipped, waiting = consumed + 1, skipped + 1, _EMPTY
                if skipped >= rows and not any(batch):
                    break  # an empty batch: lets the caller judge the skip rate instead of reading on forever
                continue
            n = waiting["input_ids"].shape[0]
            if n > row_length:
                raise ValueError(f"a sample of {n} tokens cannot fit a row of {row_length}")
            row = next((r for r in range(rows) if free[r] >= n and (packing or not batch[r])), None)
            if row is None:
                break  # the batch is full; `waiting` starts the next one
            batch[row].append(waiting)
            free[row] -= n
            consumed, waiting = consumed + 1, _EMPTY
        if consumed:
            yield batch, consumed, skipped
        if exhausted:
            return


def collate_rows(rows: list[list[dict[str, torch.Tensor]]], width: int, pad_id: int, image_token_id: int,
                 image_tokens: int, pin_memory: bool = False) -> dict[str, Any]:
    """Rows of samples -> the model's inputs (see the module docstring) plus `stats` (CPU ints).

    A few tensor ops per batch, not per sample: the samples' tokens are concatenated in (row, sample)
    order and scattered into the rows at once (the main process's CPU time per sample, as
    `python -m reports.loader` prints it, went down by about a quarter). `pin_memory` (CUDA): the images, by far
    the largest input, are copied once, straight into pinned memory.
    """
    samples = [s for row in rows for s in row]
    lens, starts, index_in_row, used = [], [], [], []  # per sample: tokens, flat index r * width + offset, j
    for r, row in enumerate(rows):
        offset = 0
        for j, sample in enumerate(row):
            n = sample["input_ids"].shape[0]  # .shape, not len(): Tensor.__len__ is slow
            lens.append(n)
            starts.append(r * width + offset)
            index_in_row.append(j)
            offset += n
        used.append(offset)  # per row: tokens before the padding tail
    n_rows, n_tokens = len(rows), sum(lens)
    ids = torch.cat([s["input_ids"] for s in samples]) if samples else torch.zeros(0, dtype=torch.long)  # (T,)
    labels = torch.cat([s["labels"] for s in samples]) if samples else torch.zeros(0, dtype=torch.long)  # (T,)
    sizes = torch.tensor(lens, dtype=torch.long)  # (S,)
    first = torch.cumsum(sizes, 0) - sizes  # (S,) where each sample starts in `ids`
    sample_of = torch.repeat_interleave(torch.arange(len(samples)), sizes)  # (T,) each token's sample
    position = torch.arange(n_tokens) - first[sample_of]  # (T,) each token's position in its sample
    dest = torch.tensor(starts, dtype=torch.long)[sample_of] + position  # (T,) each token's flat index in the rows

    input_ids = torch.full((n_rows, width), pad_id, dtype=torch.long)
    input_ids.view(-1)[dest] = ids
    # positions restart at every sample, and at the padding tail (a sample of its own that nothing attends into)
    position_ids = torch.arange(width) - torch.tensor(used, dtype=torch.long)[:, None]  # (R, W): the tails
    position_ids.view(-1)[dest] = position
    sequence_ids = torch.tensor([len(row) for row in rows])[:, None].repeat(1, width)  # the tails: after the samples
    sequence_ids.view(-1)[dest] = torch.tensor(index_in_row, dtype=torch.long)[sample_of]

    # image tokens in (row, sample) order point at the images' features in the same order
    n_images_of = [s["pixel_values"].shape[0] for s in samples]
    is_image = ids == image_token_id  # (T,)
    slot_counts = torch.bincount(sample_of[is_image], minlength=len(samples))
    expected = torch.tensor(n_images_of, dtype=torch.long) * image_tokens
    if not torch.equal(slot_counts, expected):  # the processor guarantees this
        bad = int((slot_counts != expected).nonzero()[0])
        raise ValueError(f"a sample has {int(slot_counts[bad])} image-token slots for {n_images_of[bad]} images x "
                         f"{image_tokens} tokens")
    image_slots = torch.full((n_rows, width), -1, dtype=torch.long)
    image_slots.view(-1)[dest[is_image]] = torch.arange(int(expected.sum()))

    # position t predicts token t + 1 of its own sample: a loss wherever that label is not ignored
    next_labels = torch.full_like(labels, IGNORE_INDEX)  # (T,); a sample's last token predicts nothing
    next_labels[:-1] = labels[1:]
    next_labels[first[1:] - 1] = IGNORE_INDEX  # ... not the next sample's first token
    has_loss = (next_labels != IGNORE_INDEX).nonzero().squeeze(1)
    n_loss, n_images = has_loss.shape[0], sum(n_images_of)
    a_pad, n_pad = bucket(n_loss), bucket(n_images)
    loss_positions = torch.zeros(a_pad, dtype=torch.long)  # padding points at position 0 with an ignored target
    loss_targets = torch.full((a_pad,), IGNORE_INDEX, dtype=torch.long)
    loss_positions[:n_loss] = dest[has_loss]
    loss_targets[:n_loss] = next_labels[has_loss]
    pixels = torch.zeros(0)
    if n_images:  # one copy; blank images up to the bucket size have no slots: they cost vision compute only
        images = [s["pixel_values"] for s in samples]
        pixels = torch.empty((n_pad, *images[0].shape[1:]), dtype=images[0].dtype, pin_memory=pin_memory)
        torch.cat(images, out=pixels[:n_images])
        pixels[n_images:].zero_()
    stats = {"samples": len(samples), "tokens": n_tokens, "slots": n_rows * width, "loss_tokens": n_loss,
             "loss_slots": a_pad, "images": n_images, "image_slots": n_pad if n_images else 0,
             "sample_lens": lens}  # for the FLOPs count (MFU)
    return {"input_ids": input_ids, "position_ids": position_ids, "sequence_ids": sequence_ids, "images": pixels,
            "image_slots": image_slots, "loss_positions": loss_positions, "loss_targets": loss_targets,
            "stats": stats}


def model_inputs(batch: dict[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
    """The tensors the model takes, on `device` (asynchronously from pinned memory on CUDA)."""
    return {k: batch[k].to(device, non_blocking=True) for k in MODEL_INPUTS}
