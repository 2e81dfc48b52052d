"""The architecture of a VLM, resolved and checked before anything is built.

    arch = resolve_architecture(ModelConfig(vision_encoder="siglip", language_model="smollm"))
    arch.image_tokens, arch.factor, arch.describe()       # from the backbones' configs, no weights
    arch = architecture_from_checkpoint(cfg, stored_config_json, checkpoint_dir)

Every dimension comes from the backbones' transformers configs (bundled snapshots when possible, so no
download) and the encoder's preprocessor config; the image geometry (size / patch / pixel shuffle) is
checked here, so a bad combination fails at config time with one line.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nanovlm import backbones
from nanovlm.config import ConfigError, ModelConfig
from nanovlm.data.processors import ImageTransform
from nanovlm.files import read_json

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Architecture:
    """Everything `build_vlm` needs, resolved and checked at config time."""

    cfg: ModelConfig
    vision_source: str
    language_source: str
    vision_config: Any  # transformers config of the vision tower
    language_config: Any  # transformers config of the causal LM
    transform: ImageTransform
    patch_size: int
    grid: int  # patches per side
    factor: int  # pixel shuffle factor
    image_tokens: int  # per image, after the projector
    prefix_tokens: int  # CLS + registers dropped from the encoder output

    def describe(self) -> dict[str, Any]:
        return {"vision": self.vision_source, "language": self.language_source, "image_size": self.transform.size,
                "patch_size": self.patch_size, "patch_grid": f"{self.grid}x{self.grid}",
                "pixel_shuffle_factor": self.factor, "image_tokens": self.image_tokens,
                "dropped_prefix_tokens": self.prefix_tokens, "vision_hidden": self.vision_config.hidden_size,
                "language_hidden": self.language_config.hidden_size}


def shuffle_factor(grid: int, cfg: ModelConfig) -> int:
    """The pixel-shuffle factor: given, or derived from the wanted number of image tokens.

    A derived factor must divide the patch grid; when image_tokens is not reachable exactly (a
    preset's 64 tokens on a 224 px encoder, say) the nearest reachable count is used and logged,
    so swapping the encoder of a preset just works. An explicit factor that does not divide is an error.
    """
    divisors = [f for f in range(1, grid + 1) if grid % f == 0]
    if cfg.pixel_shuffle_factor:
        if grid % cfg.pixel_shuffle_factor:
            raise ConfigError(f"the {grid}x{grid} patch grid is not divisible by pixel_shuffle_factor "
                              f"{cfg.pixel_shuffle_factor}; use a factor in {divisors} or change image_size")
        return cfg.pixel_shuffle_factor
    factor = min(divisors, key=lambda f: (abs((grid // f) ** 2 - cfg.image_tokens), f))
    if (grid // factor) ** 2 != cfg.image_tokens:
        log.warning("a %dx%d patch grid cannot give %d image tokens (reachable: %s); using %d (pixel shuffle %d)",
                    grid, grid, cfg.image_tokens, [(grid // f) ** 2 for f in divisors], (grid // factor) ** 2, factor)
    return factor


def resolve_architecture(cfg: ModelConfig) -> Architecture:
    vision_source, language_source = backbones.resolve_vision(cfg), backbones.resolve_language(cfg)
    with quiet_transformers():
        vision_config = backbones.vision_tower_config(backbones.load_backbone_config(vision_source))
        language_config = backbones.load_backbone_config(language_source)
    pre = backbones.read_json_file(vision_source, "preprocessor_config.json")
    transform = ImageTransform.from_preprocessor(pre, cfg.image_size)
    return _architecture(cfg, vision_source, language_source, vision_config, language_config, transform)


def _architecture(cfg: ModelConfig, vision_source: str, language_source: str, vision_config: Any,
                  language_config: Any, transform: ImageTransform) -> Architecture:
    """Check the image geometry (size / patch / shuffle) and derive the token counts."""
    patch = int(vision_config.patch_size)
    if transform.size % patch:
        ok = sorted({transform.size // patch * patch, (transform.size // patch + 1) * patch})
        raise ConfigError(f"image_size {transform.size} is not divisible by the patch size {patch} of "
                          f"{vision_source}; use {' or '.join(map(str, ok))}")
    grid = transform.size // patch
    factor = shuffle_factor(grid, cfg)
    return Architecture(cfg, vision_source, language_source, vision_config, language_config, transform,
                        patch, grid, factor, (grid // factor) ** 2, backbones.num_prefix_tokens(vision_config))


def architecture_from_checkpoint(cfg: ModelConfig, stored: dict[str, Any], path: Path) -> Architecture:
    """The architecture a checkpoint was saved with: its own backbone configs, no download."""
    from transformers import AutoConfig

    def rebuild(d: dict[str, Any]) -> Any:
        d = dict(d)
        return AutoConfig.for_model(d.pop("model_type"), **d)

    language = stored["text_config"] if "text_config" in stored else stored["language_config"]  # older checkpoints
    with quiet_transformers():
        vision_config, language_config = rebuild(stored["vision_config"]), rebuild(language)
    transform = ImageTransform.from_preprocessor(read_json(path / "preprocessor_config.json"))
    return _architecture(cfg, stored["sources"]["vision"], stored["sources"]["language"], vision_config,
                         language_config, transform)


class quiet_transformers:
    """Silence transformers' config warnings about the unused SigLIP text tower's token ids."""

    def __enter__(self):
        from transformers.utils import logging as hf_logging

        self.level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()

    def __exit__(self, *exc):
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity(self.level)
