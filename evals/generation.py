"""Batched answer generation shared by every benchmark: prompts sorted by length, left padding,
greedy decoding with the KV cache, early stop at end of turn.

    answers = generate_answers(model, [(images, question), ...], batch_size=32, max_new_tokens=8)
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from PIL import Image

from nanovlm.data.collate import Collator
from nanovlm.data.processors import encode_prompt


@torch.inference_mode()
def generate_answers(model: Any, items: Sequence[tuple[list[Image.Image], str]], batch_size: int = 32,
                     max_new_tokens: int = 16, progress: Any = None) -> list[str]:
    """Decoded replies, in the order of `items`."""
    model.eval()
    device = next(model.parameters()).device
    prompts = [encode_prompt(model.tokenizer, question, model.image_placeholder * len(images))
               for images, question in items]
    order = sorted(range(len(items)), key=lambda i: len(prompts[i]))  # similar lengths -> little padding
    collate = Collator(model.tokenizer.pad_token_id, padding_side="left")
    answers: list[str] = [""] * len(items)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        batch = collate([{"input_ids": torch.tensor(prompts[i]),
                          "pixel_values": torch.stack([model.arch.transform(im) for im in items[i][0]])} for i in rows])
        out = model.generate(batch["input_ids"].to(device), batch["attention_mask"].to(device),
                             batch["images"].to(device), max_new_tokens=max_new_tokens)
        for i, ids in zip(rows, out):
            answers[i] = model.tokenizer.decode(ids, skip_special_tokens=True).strip()
        if progress is not None:
            progress.update(len(rows))
    return answers
