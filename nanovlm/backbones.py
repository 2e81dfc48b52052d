"""Backbone registries and loading: short names -> Hugging Face ids, configs and vision traits.

    VISION_ENCODERS["siglip"].hub_id            # google/siglip2-base-patch16-512
    resolve_vision(cfg), resolve_language(cfg)  # -> a hub id or local directory, honouring cfg.tiny
    load_backbone_config(source, cfg)           # transformers config, offline from hub_configs/ when possible

Any hub id or local directory is accepted in place of a short name. Everything that might touch
the network goes through `hub_call`, which turns an unreachable hub into one clear message.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

from nanovlm.config import ConfigError, ModelConfig

HUB_CONFIGS = Path(__file__).parent / "hub_configs"
T = TypeVar("T")


@dataclass(frozen=True)
class Backbone:
    hub_id: str  # may contain {size} (DINOv3 sizes)
    tiny: str  # name of the offline stand-in of the same family (see nanovlm/tiny.py)
    about: str


VISION_ENCODERS: dict[str, Backbone] = {
    "siglip": Backbone("google/siglip2-base-patch16-512", "siglip", "SigLIP2-B/16, 512 px (model type siglip)"),
    "siglip-224": Backbone("google/siglip-base-patch16-224", "siglip", "SigLIP-B/16, 224 px (original_small)"),
    "dinov2": Backbone("facebook/dinov2-small", "dinov2", "DINOv2-S/14, CLS token"),
    "dinov3": Backbone("facebook/dinov3-{size}-pretrain-lvd1689m", "dinov3", "DINOv3 (--dinov3_size), CLS + 4 registers"),
}
DINOV3_SIZES = ("vits16", "vits16plus", "vitb16", "vitl16")

LANGUAGE_MODELS: dict[str, Backbone] = {
    "smollm": Backbone("HuggingFaceTB/SmolLM2-360M-Instruct", "smollm", "SmolLM2-360M-Instruct (Llama-style)"),
    "smollm-360m": Backbone("HuggingFaceTB/SmolLM2-360M-Instruct", "smollm", "alias of smollm"),
    "smollm-135m": Backbone("HuggingFaceTB/SmolLM2-135M", "smollm-base", "SmolLM2-135M base, ChatML template"),
    "gemma": Backbone("google/gemma-3-270m-it", "gemma", "Gemma-3-270M-it (scaled embeddings, head_dim 256)"),
}

# Tokens in front of the patch tokens in the encoder's last hidden state, by config model type.
# DINOv3 adds `num_register_tokens` after its CLS token; these are removed before the projector.
CLS_TOKENS = {"siglip_vision_model": 0, "dinov2": 1, "dinov3_vit": 1}


class BackboneUnavailable(RuntimeError):
    """A backbone (or its config/tokenizer) could not be fetched: usually no network."""


def lookup(registry: dict[str, Backbone], name: str, kind: str) -> Backbone | None:
    """Registry entry for a short name; None for something that looks like a hub id or path."""
    if name in registry:
        return registry[name]
    if "/" in name or os.path.isdir(name):
        return None
    raise ConfigError(f"unknown {kind} {name!r}. Valid names: {', '.join(registry)}; or a hub id / local path")


def _dinov3_size(cfg: ModelConfig) -> str:
    if cfg.dinov3_size == "vitl14":
        raise ConfigError("dinov3_size 'vitl14' does not exist (DINOv3 ViT-L uses 16x16 patches): use 'vitl16'")
    if cfg.dinov3_size not in DINOV3_SIZES:
        raise ConfigError(f"unknown dinov3_size {cfg.dinov3_size!r}. Valid: {', '.join(DINOV3_SIZES)}")
    return cfg.dinov3_size


def _resolve(cfg: ModelConfig, name: str, registry: dict[str, Backbone], kind: str) -> str:
    entry = lookup(registry, name, kind)
    if cfg.tiny:
        if entry is None:
            raise ConfigError(f"tiny stand-ins exist for the registry names only ({', '.join(registry)}), not {name!r}")
        from nanovlm import tiny  # local import: tiny builds models, most callers never need it

        return str(tiny.ensure(entry.tiny))
    if entry is None:
        return name
    return entry.hub_id.format(size=_dinov3_size(cfg)) if "{size}" in entry.hub_id else entry.hub_id


def resolve_vision(cfg: ModelConfig) -> str:
    """Hub id or local directory of the configured vision encoder."""
    if cfg.vision_encoder == "dinov3" or cfg.dinov3_size != "vits16plus":
        _dinov3_size(cfg)  # validate even when another encoder is chosen: a typo should not pass silently
    return _resolve(cfg, cfg.vision_encoder, VISION_ENCODERS, "vision encoder")


def resolve_language(cfg: ModelConfig) -> str:
    """Hub id or local directory of the configured language model."""
    return _resolve(cfg, cfg.language_model, LANGUAGE_MODELS, "language model")


def snapshot_dir(source: str) -> Path | None:
    """The bundled copy of a hub repo's config files, if we ship one."""
    path = HUB_CONFIGS / source.replace("/", "--")
    return path if path.is_dir() else None


def hub_call(source: str, fn: Callable[[], T], what: str) -> T:
    """Run a loader that may need the hub; an unreachable hub becomes one actionable error, and a local
    path that does not exist (a typo) says so instead of blaming the hub."""
    from nanovlm.checks import missing_local_path

    try:
        return fn()
    except (OSError, ValueError) as err:  # transformers/huggingface_hub raise OSError subclasses offline
        if os.path.isdir(source):
            raise
        missing = missing_local_path(source)
        if missing:
            raise ConfigError(f"no such file or directory: {missing} (the {what} of {source!r})") from err
        raise BackboneUnavailable(
            f"could not load the {what} of {source!r} from the Hugging Face hub ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}). Offline? Pass a local directory laid out like "
            f"the hub repo, or --random_init to build it with random weights from the bundled configs."
        ) from err


def config_source(source: str) -> str:
    """Where to read a backbone's config from: a local dir, the bundled snapshot, or the hub id."""
    if os.path.isdir(source):
        return source
    snap = snapshot_dir(source)
    return str(snap) if snap is not None else source


def load_backbone_config(source: str) -> Any:
    """The transformers config of a backbone; the bundled snapshot avoids a download."""
    from transformers import AutoConfig

    src = config_source(source)
    return hub_call(source, lambda: AutoConfig.from_pretrained(src), "config")


def read_json_file(source: str, filename: str) -> dict[str, Any]:
    """A JSON file of a hub repo (e.g. preprocessor_config.json), local, bundled or downloaded."""
    src = config_source(source)
    if os.path.isdir(src):
        return json.loads((Path(src) / filename).read_text())
    from huggingface_hub import hf_hub_download

    return json.loads(Path(hub_call(source, lambda: hf_hub_download(src, filename), filename)).read_text())


def vision_tower_config(config: Any) -> Any:
    """The vision part of an encoder config (SigLIP repos hold text + vision), without pooling head."""
    vision = getattr(config, "vision_config", config)
    if vision.model_type not in CLS_TOKENS:
        raise ConfigError(
            f"unsupported vision model type {vision.model_type!r}; supported: {', '.join(CLS_TOKENS)}"
        )
    if vision.model_type.startswith("siglip"):
        # nanoVLM uses patch features; the MAP pooling head would be dead weight. Set it even when the
        # config class lacks the field: SigLIP's vision tower reads it with a default of True.
        vision.vision_use_head = False
    return vision


def num_prefix_tokens(vision_config: Any) -> int:
    """CLS + register tokens that precede the patch tokens (read from the config, not assumed)."""
    return CLS_TOKENS[vision_config.model_type] + int(getattr(vision_config, "num_register_tokens", 0) or 0)


def describe() -> str:
    """Human-readable registry listing for `--list`."""
    lines = ["Vision encoders (--vision_encoder):"]
    lines += [f"  {k:<12} {v.hub_id:<48} {v.about}" for k, v in VISION_ENCODERS.items()]
    lines.append(f"  DINOv3 sizes (--dinov3_size): {', '.join(DINOV3_SIZES)}")
    lines.append("Language models (--language_model):")
    lines += [f"  {k:<12} {v.hub_id:<48} {v.about}" for k, v in LANGUAGE_MODELS.items()]
    return "\n".join(lines)
