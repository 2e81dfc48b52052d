"""Parameter counts of a config's model, without building it: a meta-device build, no memory, no download.

    count_parameters(get_preset("original_small"))  # {vision, projector, language, total, trainable}

A profile logs them first, in its own process, so even a row whose measurement fails has them.
"""

from __future__ import annotations

from nanovlm.config import ExperimentConfig
from nanovlm.optim import apply_freezing


def count_parameters(cfg: ExperimentConfig) -> dict[str, int]:
    """{vision, projector, language, total, trainable} of `cfg`, built on the meta device.

    The language count includes the one vocabulary row added for the image token (the real
    tokenizer's size, which a random-init build offline does not have); "trainable" applies the
    config's freezing (a learning rate of 0 or freeze_vision_encoder).
    """
    from nanovlm.model.vlm import build_vlm

    model = build_vlm(cfg.model, meta=True)
    apply_freezing(model, cfg.train)
    return model.parameter_counts()
