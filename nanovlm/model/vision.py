"""Vision encoder wrapper: a transformers vision model -> patch features, CLS/register tokens dropped.

    enc = VisionEncoder(AutoModel.from_config(vision_config), num_prefix_tokens=5, native_size=224)
    enc(pixels)   # (N, 3, H, W) -> (N, (H/patch)*(W/patch), hidden)
"""

from __future__ import annotations

import torch
from torch import nn


class VisionEncoder(nn.Module):
    def __init__(self, model: nn.Module, num_prefix_tokens: int, native_size: int, image_size: int):
        super().__init__()
        self.model = model
        self.num_prefix_tokens = num_prefix_tokens  # CLS (+ registers) in front of the patch tokens
        # Learned absolute position embeddings (SigLIP, DINOv2) must be interpolated at other sizes;
        # DINOv3 uses RoPE and takes any size as is.
        self.interpolate = image_size != native_size and model.config.model_type != "dinov3_vit"

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        kwargs = {"interpolate_pos_encoding": True} if self.interpolate else {}
        hidden = self.model(pixel_values=pixel_values, **kwargs).last_hidden_state  # (N, prefix + P, D)
        return hidden[:, self.num_prefix_tokens:]
