"""Batched answer generation shared by every benchmark: prompts sorted by length, left padding,
greedy decoding with the KV cache, early stop at end of turn, images decoded in DataLoader workers.

    answers = generate_answers(model, [(images, question), ...], batch_size=32, max_new_tokens=8)
    outputs = generate(model, questions, images, batch_size=32, max_new_tokens=16, num_workers=2,
                       progress=tqdm(total=len(questions)))     # str, or Failed(error) per item

`images[i]` is the list of row i's images in any form `nanovlm.data.datasets.decode_image` reads
(PIL, {"bytes", "path"}, bytes, a path). An item whose images cannot be read is not generated:
its slot holds `Failed(reason)`, so callers count and list it instead of losing it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from PIL import Image

from nanovlm.data.collate import Collator
from nanovlm.data.datasets import decode_image
from nanovlm.data.processors import encode_prompt


@dataclass(frozen=True)
class Failed:
    """An item that was not generated, and why (an unreadable image, say)."""

    error: str


class _PromptItems(torch.utils.data.Dataset):
    """Item i -> its prompt ids and transformed images; runs in DataLoader workers (so it must
    pickle: no lambdas), where the decoding cost is spread over processes."""

    def __init__(self, prompt_ids: list[list[int]], images: Sequence[Any], counts: list[int], transform: Any):
        self.prompt_ids, self.images, self.counts, self.transform = prompt_ids, images, counts, transform

    def __len__(self) -> int:
        return len(self.prompt_ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        try:
            pixels = [self.transform(decode_image(x)) for x in self.images[i] or []]
        except Exception as e:  # noqa: BLE001 -- any unreadable image fails its item, with the reason
            return {"index": i, "error": f"unreadable image: {type(e).__name__}: {e}"}
        if len(pixels) != self.counts[i]:
            return {"index": i, "error": f"expected {self.counts[i]} images, read {len(pixels)}"}
        size = self.transform.size
        return {"index": i, "input_ids": torch.tensor(self.prompt_ids[i]),
                "pixel_values": torch.stack(pixels) if pixels else torch.empty(0, 3, size, size)}


class _Collate:
    def __init__(self, pad_id: int):
        self.collate = Collator(pad_id, padding_side="left")  # generation continues from the right

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        good = [x for x in items if "error" not in x]
        batch = self.collate(good) if good else {}
        batch["rows"] = [x["index"] for x in good]
        batch["failed"] = [(x["index"], x["error"]) for x in items if "error" in x]
        return batch


def image_count(images: Any) -> int:
    return len(images) if images else 0


@torch.inference_mode()
def generate(model: Any, questions: Sequence[str], images: Sequence[Any], *, counts: Sequence[int] | None = None,
             batch_size: int = 32, max_new_tokens: int = 16, num_workers: int = 0,
             progress: Any = None, on_batch: Callable[[list[tuple[int, str | Failed]]], None] | None = None
             ) -> list[str | Failed]:
    """Greedy replies (whitespace-stripped) to `questions`, in their order; `Failed` where the
    item's images could not be read.

    `counts[i]` is the number of images of item i (default: `len(images[i])`, which reads them
    in this process; pass counts to leave all reading to the workers). `progress` is anything
    with `update(n)` (a tqdm bar). `on_batch` is called after each batch with its (position,
    reply or Failed) pairs, as they become known (for writing results as they come).
    """
    if len(questions) != len(images):
        raise ValueError(f"{len(questions)} questions but {len(images)} image lists")
    model.eval()
    device = next(model.parameters()).device
    counts = list(counts) if counts is not None else [image_count(x) for x in images]
    tok = model.tokenizer
    prompt_ids = [encode_prompt(tok, q, model.image_placeholder * n, model.arch.cfg.image_token)
                  for q, n in zip(questions, counts)]
    order = sorted(range(len(questions)), key=lambda i: len(prompt_ids[i]))  # similar lengths -> little padding
    batches = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
    loader = torch.utils.data.DataLoader(
        _PromptItems(prompt_ids, images, counts, model.arch.transform), batch_sampler=batches,
        collate_fn=_Collate(tok.pad_token_id), num_workers=num_workers,
        pin_memory=device.type == "cuda", prefetch_factor=4 if num_workers else None)
    outputs: list[str | Failed] = [Failed("not generated")] * len(questions)
    for batch in loader:
        for i, error in batch["failed"]:
            outputs[i] = Failed(error)
        if batch["rows"]:
            new = model.generate(batch["input_ids"].to(device, non_blocking=True),
                                 batch["attention_mask"].to(device, non_blocking=True),
                                 batch["images"].to(device, non_blocking=True), max_new_tokens=max_new_tokens)
            for i, ids in zip(batch["rows"], new):
                outputs[i] = tok.decode(ids, skip_special_tokens=True).strip()
        if on_batch is not None:
            on_batch([(i, outputs[i]) for i, _ in batch["failed"]] + [(i, outputs[i]) for i in batch["rows"]])
        if progress is not None:
            progress.update(len(batch["rows"]) + len(batch["failed"]))
    return outputs


def generate_answers(model: Any, items: Sequence[tuple[list[Image.Image], str]], batch_size: int = 32,
                     max_new_tokens: int = 16, progress: Any = None) -> list[str]:
    """Decoded replies, in the order of `items`; an unreadable image is an error here."""
    outputs = generate(model, [q for _, q in items], [imgs for imgs, _ in items], batch_size=batch_size,
                       max_new_tokens=max_new_tokens, progress=progress)
    for (_, question), out in zip(items, outputs):
        if isinstance(out, Failed):
            raise ValueError(f"cannot answer {question!r}: {out.error}")
    return outputs  # type: ignore[return-value]
