"""Test helpers for the evaluation harness: a stub model whose replies the test chooses."""

from __future__ import annotations

from typing import Any, Callable

import torch
from conftest import tiny_vlm


class StubModel(torch.nn.Module):
    """Answers `reply(prompt_text)` for every prompt; checks one image per placeholder block."""

    def __init__(self, reply: Callable[[str], str]):
        super().__init__()
        real = tiny_vlm("siglip", "smollm")
        self.tokenizer, self.arch, self.image_placeholder = real.tokenizer, real.arch, real.image_placeholder
        self.image_token_id, self.reply = real.image_token_id, reply
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.prompts: list[str] = []

    def generate(self, input_ids, attention_mask, images, max_new_tokens=16, **_: Any):
        slots = int((input_ids == self.image_token_id).sum())
        assert slots == images.shape[0] * self.arch.image_tokens, "images and placeholders out of step"
        rows = []
        for ids, mask in zip(input_ids, attention_mask):
            text = self.tokenizer.decode(ids[mask.bool()], skip_special_tokens=False)
            self.prompts.append(text)
            rows.append(self.tokenizer(self.reply(text), add_special_tokens=False)["input_ids"][:max_new_tokens])
        width = max(1, *(len(r) for r in rows))
        out = torch.full((len(rows), width), self.tokenizer.pad_token_id)
        for i, r in enumerate(rows):
            out[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        return out


def echo(prompt: str) -> str:
    """The user's question inside a rendered prompt (image tokens dropped)."""
    return prompt.split("<|im_start|>user\n")[1].split("<|im_end|>")[0].replace("<|image|>", "")


def varied(prompt: str) -> str:
    """A reply that differs between questions (by length), in several answer styles."""
    return ("B", "Yes", "(C) red", "No", "D. blue", "the answer is A")[len(echo(prompt)) % 6]
