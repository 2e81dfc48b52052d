"""Registers nanovlm checkpoints with transformers' Auto classes; `import nanovlm` does it.

    import nanovlm
    AutoConfig.from_pretrained(ckpt)                     # NanoVLMConfig
    AutoModelForImageTextToText.from_pretrained(ckpt)    # NanoVLMForConditionalGeneration
    AutoProcessor.from_pretrained(ckpt)                  # NanoVLMProcessor (+ AutoImageProcessor)
"""

from __future__ import annotations


def register_auto_classes() -> None:
    from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageTextToText, AutoProcessor

    from nanovlm.model.configuration_nanovlm import NanoVLMConfig
    from nanovlm.model.modeling_nanovlm import NanoVLMForConditionalGeneration
    from nanovlm.model.processing_nanovlm import NanoVLMImageProcessor, NanoVLMProcessor

    AutoConfig.register(NanoVLMConfig.model_type, NanoVLMConfig, exist_ok=True)
    AutoModelForImageTextToText.register(NanoVLMConfig, NanoVLMForConditionalGeneration, exist_ok=True)
    AutoImageProcessor.register(NanoVLMConfig, slow_image_processor_class=NanoVLMImageProcessor, exist_ok=True)
    AutoProcessor.register(NanoVLMConfig, NanoVLMProcessor, exist_ok=True)
