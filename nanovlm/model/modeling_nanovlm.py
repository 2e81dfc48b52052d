"""The nanovlm model as a transformers model: `AutoModelForImageTextToText` loads a checkpoint, `generate` runs it.

    import nanovlm                                                    # registers the Auto classes
    model = AutoModelForImageTextToText.from_pretrained("runs/tiny/checkpoints/best")
    processor = AutoProcessor.from_pretrained("runs/tiny/checkpoints/best")
    inputs = processor(images=image, text=processor.prompt("What colour is the shape?"))
    print(processor.batch_decode(model.generate(**inputs, max_new_tokens=20)[:, inputs["input_ids"].shape[1]:]))

The same modules, under the same names, as the training model (`nanovlm.model.vlm.VisionLanguageModel`),
so a checkpoint's model.safetensors loads into either; the image features go into the embeddings the
same way (`ImageTextEmbedding`). Everything else is the backbones' own transformers code: the LM's
forward computes logits, the loss on `labels` and the KV cache, and GenerationMixin decodes (pixel
values are used on the prefill step only). Transformers and torch only, with relative imports:
`python -m experiments.export CKPT OUT --format remote` copies these files into the checkpoint for
`trust_remote_code=True`.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM, GenerationMixin, PreTrainedModel

from .configuration_nanovlm import NanoVLMConfig
from .embedding import ImageTextEmbedding, embed_scale
from .projector import ModalityProjector
from .vision import VisionEncoder


class NanoVLMForConditionalGeneration(ImageTextEmbedding, PreTrainedModel, GenerationMixin):
    config_class = NanoVLMConfig
    base_model_prefix = "model"  # no weight name starts with it: checkpoints hold this whole model
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_flash_attn = True
    _supports_attention_backend = True

    def __init__(self, config: NanoVLMConfig):
        super().__init__(config)
        vision = AutoModel.from_config(config.vision_config)
        native = int(getattr(config.vision_config, "image_size", config.image_size))
        self.vision = VisionEncoder(vision, config.vision_prefix_tokens, native, config.image_size)
        self.projector = ModalityProjector(config.vision_config.hidden_size, config.text_config.hidden_size,
                                           config.pixel_shuffle_factor)
        self.lm = AutoModelForCausalLM.from_config(config.text_config)
        self.image_token_id, self.image_tokens = config.image_token_id, config.image_tokens
        self.embed_scale = embed_scale(self.lm)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        # The backbones initialise their own modules; only the projector is ours.
        if module is self.projector.proj:
            nn.init.normal_(module.weight, std=0.02)

    def get_input_embeddings(self) -> nn.Module:
        return self.lm.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.lm.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm.get_output_embeddings()

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.lm.set_output_embeddings(value)

    def get_decoder(self) -> nn.Module:
        return self.lm.get_decoder()

    def forward(self, input_ids: torch.LongTensor | None = None, pixel_values: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, inputs_embeds: torch.Tensor | None = None,
                labels: torch.LongTensor | None = None, **kwargs):
        """(B, T) prompt ids with one run of `image_tokens` image tokens per image, (N, 3, H, W) pixels
        -> the LM's output (logits, loss when `labels` are given, cache). Other arguments go to the LM."""
        if inputs_embeds is None:
            inputs_embeds = self.embed(input_ids, pixel_values)
        return self.lm(inputs_embeds=inputs_embeds, attention_mask=attention_mask, labels=labels, **kwargs)


__all__ = ["NanoVLMForConditionalGeneration"]
