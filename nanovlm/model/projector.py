"""Modality projector: pixel shuffle (fewer, wider image tokens) followed by one linear layer.

    proj = ModalityProjector(vision_dim=768, lm_dim=576, factor=2)
    proj(features)   # (N, 196, 768) -> (N, 49, 576)
"""

from __future__ import annotations

import math

import torch
from torch import nn


def pixel_shuffle(x: torch.Tensor, factor: int) -> torch.Tensor:
    """(N, S, D) patch tokens on a square grid -> (N, S / factor^2, D * factor^2).

    Each output token concatenates a factor x factor block of neighbouring patches, so spatial
    layout is kept while the LM sees factor^2 times fewer image tokens.
    """
    n, seq, dim = x.shape
    side = math.isqrt(seq)
    if side * side != seq or side % factor:
        raise ValueError(f"pixel shuffle needs a square patch grid divisible by {factor}; got {seq} tokens")
    x = x.reshape(n, side // factor, factor, side // factor, factor, dim)  # (N, h, f, w, f, D)
    x = x.permute(0, 1, 3, 2, 4, 5)  # (N, h, w, f, f, D): the block's patches next to each other
    return x.reshape(n, (side // factor) ** 2, factor * factor * dim)


class ModalityProjector(nn.Module):
    def __init__(self, vision_dim: int, lm_dim: int, factor: int):
        super().__init__()
        self.factor = factor
        self.proj = nn.Linear(vision_dim * factor * factor, lm_dim, bias=False)
        nn.init.normal_(self.proj.weight, std=0.02)  # trained from scratch; small init keeps early LM inputs sane

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.proj(pixel_shuffle(features, self.factor))
