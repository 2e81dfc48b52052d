"""Putting image features into the LM's input embeddings: one implementation for training and transformers.

    class MyVLM(ImageTextEmbedding, nn.Module): ...   # with .vision .projector .lm .image_token_id .image_tokens .embed_scale
    embeds = model.embed(input_ids, images)           # (B, T) ids + (N, 3, H, W) -> (B, T, D)

Used by the training model (`nanovlm.model.vlm.VisionLanguageModel`) and by the transformers model
(`nanovlm.model.modeling_nanovlm`); torch only, so an export can copy it into a checkpoint.
"""

from __future__ import annotations

import torch


class ImageTextEmbedding:
    """Mixin for a module with `vision`, `projector`, `lm`, `image_token_id`, `image_tokens` and `embed_scale`."""

    def embed(self, input_ids: torch.Tensor, images: torch.Tensor | None,
              image_slots: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) ids + (N, 3, H, W) images -> (B, T, D) LM input embeddings, image features in their slots.

        `image_slots` (B, T) gives each image-token position the index of its feature in the flattened
        (N * image_tokens, D) features, -1 on text. The training collator computes it on the CPU, so this
        is a gather with static shapes and no host sync; blank padding images are simply never gathered.
        Without it (prompts at inference) the slots are derived here, and their count is checked.
        """
        embeds = self.lm.get_input_embeddings()(input_ids)
        if images is None or images.shape[0] == 0:
            return embeds
        if image_slots is None:
            image_slots = self.image_slots(input_ids, images.shape[0])
        features = self.projector(self.vision(images.to(embeds.dtype)))  # (N, tokens, D)
        # Gemma 3 multiplies token embeddings by sqrt(hidden) inside its embedding layer; image
        # features replace embeddings after that layer, so they get the same factor.
        features = (features * self.embed_scale).to(embeds.dtype).flatten(0, 1)  # (N * tokens, D)
        is_image = (image_slots >= 0).unsqueeze(-1)  # (B, T, 1)
        return torch.where(is_image, features[image_slots.clamp(min=0)], embeds)

    def image_slots(self, input_ids: torch.Tensor, n_images: int) -> torch.Tensor:
        """Slots in row-major order (sample by sample, image by image), checked against the images."""
        is_image = input_ids == self.image_token_id
        n_slots = int(is_image.sum())
        if n_slots != n_images * self.image_tokens:
            raise ValueError(f"{n_slots} image-token slots in the batch but {n_images} images x "
                             f"{self.image_tokens} tokens each")
        order = is_image.flatten().cumsum(0).view_as(input_ids) - 1
        return torch.where(is_image, order, -1)


def embed_scale(lm: torch.nn.Module) -> float:
    """The factor the LM's embedding layer multiplies token embeddings by (Gemma 3: sqrt(hidden), else 1)."""
    return float(getattr(lm.get_input_embeddings(), "scalar_embed_scale", 1.0))
