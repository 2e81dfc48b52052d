"""The transformers config of a nanovlm checkpoint (`"model_type": "nanovlm"` in config.json).

    import nanovlm                                   # registers the Auto classes
    config = AutoConfig.from_pretrained(ckpt)        # or AutoConfig.from_pretrained(export, trust_remote_code=True)
    config.vision_config, config.text_config         # the two backbones' own transformers configs

The backbones' configs plus the few numbers that join them: the image size the encoder sees, the
tokens it puts in front of the patches (CLS, registers), the pixel-shuffle factor and the image token.
Transformers and torch only: `python -m experiments.export CKPT OUT --format remote` copies this file
into a checkpoint so that it loads without the project.
"""

from __future__ import annotations

from transformers import AutoConfig, PretrainedConfig
from transformers.configuration_utils import SubConfigSpec


class NanoVLMConfig(PretrainedConfig):
    model_type = "nanovlm"
    sub_configs_defaults = {"vision_config": SubConfigSpec(AutoConfig, model_type="siglip_vision_model"),
                            "text_config": SubConfigSpec(AutoConfig, model_type="llama")}

    vision_config: dict | PretrainedConfig | None = None
    text_config: dict | PretrainedConfig | None = None
    image_token: str = "<|image|>"
    image_token_id: int = -1
    image_size: int = 224  # pixels per side given to the encoder
    pixel_shuffle_factor: int = 2
    image_tokens: int = 49  # LM tokens per image: (image_size / patch / factor)^2
    vision_prefix_tokens: int = 1  # CLS (+ registers) dropped from the encoder's output
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        if self.text_config is None and "language_config" in kwargs:  # the key before these classes existed
            self.text_config = kwargs.pop("language_config")
        super().__post_init__(**kwargs)
        # Generation and weight tying read it here; the LM's config is where it is decided.
        self.tie_word_embeddings = bool(getattr(self.text_config, "tie_word_embeddings", False))


__all__ = ["NanoVLMConfig"]
