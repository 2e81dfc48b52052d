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
        return scatter_features(embeds, features, image_slots)

    def image_slots(self, input_ids: torch.Tensor, n_images: int) -> torch.Tensor:
        """Slots in row-major order (sample by sample, image by image), checked against the images."""
        is_image = input_ids == self.image_token_id
        n_slots = int(is_image.sum())
        if n_slots != n_images * self.image_tokens:
            raise ValueError(f"{n_slots} image-token slots in the batch but {n_images} images x "
                             f"{self.image_tokens} tokens each")
        order = is_image.flatten().cumsum(0).view_as(input_ids) - 1
        return torch.where(is_image, order, -1)


def scatter_features(embeds: torch.Tensor, features: torch.Tensor, image_slots: torch.Tensor) -> torch.Tensor:
    """(B, T, D) embeddings with row `image_slots[b, t]` of the (F, D) features written at every slot >= 0.

    A scatter, not a gather: `torch.where(slots >= 0, features[slots.clamp(min=0)], embeds)` would send the
    (zero) gradient of every text position to feature 0 through index_put(accumulate=True), whose CUDA
    kernel serialises repeated indices (about 10 ms of a 190 ms step at 16 x 2048 tokens on an H200).
    Here the backward is a plain gather of the slots' gradients. Integer work only on the device, no sync.
    """
    b, t, d = embeds.shape
    n = features.shape[0]
    slots = image_slots.flatten()
    # target[f] = the flat position (b * T + t) that feature f goes to; features without a slot (the
    # blank images that pad the batch to a bucket size) go to an extra row, dropped at the end. Text
    # positions scatter their index into target[n], which is never read.
    target = torch.full((n + 1,), b * t, dtype=torch.long, device=embeds.device)
    target.scatter_(0, torch.where(slots >= 0, slots, n), torch.arange(b * t, device=embeds.device))
    rows = torch.cat([embeds.flatten(0, 1), embeds.new_zeros(1, d)])  # (B * T + 1, D)
    return rows.index_put((target[:n],), features)[:-1].view(b, t, d)


def embed_scale(lm: torch.nn.Module) -> float:
    """The factor the LM's embedding layer multiplies token embeddings by (Gemma 3: sqrt(hidden), else 1)."""
    return float(getattr(lm.get_input_embeddings(), "scalar_embed_scale", 1.0))
