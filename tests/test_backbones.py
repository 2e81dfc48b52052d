"""Registries, real-size presets on the meta device, the offline stand-ins and bad input."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from PIL import Image

from experiments.presets import PRESETS, get_preset
from nanovlm import backbones, tiny
from nanovlm.config import ConfigError, ModelConfig, override
from nanovlm.data.processors import ImageTransform
from nanovlm.model.architecture import resolve_architecture
from nanovlm.model.vlm import VisionLanguageModel, build_vlm

M = 1e6
# Published figures (../shared/nanovlm-presets.md and the backbones' model cards), in parameters.
# The source gives the default as "~450M" in its table and "460M" in the help text it quotes;
# the parts (86.4M SigLIP2-B/16-512 tower + 361.8M SmolLM2-360M + 11.8M projector) add up to 460M.
EXPECTED = {
    "original_small": {"vision": 85.8 * M, "language": 134.5 * M, "projector": 1.8 * M, "total": 222 * M},
    "default": {"vision": 86.0 * M, "language": 361.8 * M, "total": 460 * M},
    "dinov3_gemma": {"vision": 28.7 * M, "language": 268.1 * M},
    "dinov3b_smollm": {"vision": 85.7 * M, "language": 361.8 * M},
    "dinov3l_gemma": {"vision": 303.1 * M, "language": 268.1 * M},
}


@pytest.mark.parametrize("preset", list(EXPECTED))
def test_presets_build_at_real_size_on_meta_with_published_counts(preset):
    model = build_vlm(get_preset(preset).model, meta=True)
    counts = model.parameter_counts()
    assert next(model.parameters()).device.type == "meta"
    for part, expected in EXPECTED[preset].items():
        assert counts[part] == pytest.approx(expected, rel=0.02), (part, counts[part])
    assert counts["total"] == counts["vision"] + counts["projector"] + counts["language"]


@pytest.mark.parametrize("preset,tokens,prefix", [("original_small", 49, 0), ("default", 64, 0), ("dinov3_gemma", 49, 5)])
def test_preset_geometry(preset, tokens, prefix):
    arch = resolve_architecture(get_preset(preset).model)
    assert (arch.image_tokens, arch.prefix_tokens) == (tokens, prefix)
    assert arch.transform.size == {"default": 512}.get(preset, 224)


def test_registry_names_resolve_to_hub_ids():
    cfg = ModelConfig(vision_encoder="dinov3", dinov3_size="vitb16", language_model="gemma")
    assert backbones.resolve_vision(cfg) == "facebook/dinov3-vitb16-pretrain-lvd1689m"
    assert backbones.resolve_language(cfg) == "google/gemma-3-270m-it"
    assert backbones.resolve_vision(ModelConfig()) == "google/siglip2-base-patch16-512"
    assert backbones.resolve_language(ModelConfig(language_model="smollm-135m")) == "HuggingFaceTB/SmolLM2-135M"
    assert backbones.resolve_vision(ModelConfig(vision_encoder="org/any-model")) == "org/any-model"


@pytest.mark.parametrize("change,message", [
    ({"vision_encoder": "clip"}, "siglip, siglip-224, dinov2, dinov3"),
    ({"language_model": "llama"}, "smollm, smollm-360m, smollm-135m, gemma"),
    ({"vision_encoder": "dinov3", "dinov3_model": "vitl14"}, "use 'vitl16'"),
    ({"vision_encoder": "dinov3", "dinov3_model": "vitg16"}, "vits16, vits16plus, vitb16, vitl16"),
    ({"image_size": 500}, "not divisible by the patch size 16 .*use 496 or 512"),
    ({"pixel_shuffle_factor": 3}, "not divisible by pixel_shuffle_factor 3"),
])
def test_bad_model_config_is_a_clear_error(change, message):
    cfg = override(get_preset("default"), change).model
    with pytest.raises(ConfigError, match=message):
        resolve_architecture(cfg)


def test_unknown_preset_and_field_list_valid_names():
    with pytest.raises(ConfigError, match="original_small"):
        get_preset("orignal_small")
    with pytest.raises(ConfigError, match="lr_mp"):
        override(get_preset("tiny"), {"lr_mpp": 0.1})
    with pytest.raises(ConfigError, match="expected int"):
        override(get_preset("tiny"), {"batch_size": "four"})


def test_unreachable_hub_id_says_what_to_do():
    with pytest.raises(backbones.BackboneUnavailable, match="local directory.*--random_init"):
        resolve_architecture(ModelConfig(vision_encoder="nobody/no-such-encoder"))
    # a registry backbone without --random_init needs its weights: same clear message offline
    with pytest.raises(backbones.BackboneUnavailable, match="--random_init"):
        build_vlm(get_preset("original_small").model)


def test_hub_layout_directories_load_offline(tmp_path):
    """The stand-ins are plain hub-repo directories: passing their paths takes the hub-id code path."""
    cfg = ModelConfig(vision_encoder=str(tiny.ensure("dinov3")), language_model=str(tiny.ensure("gemma")), image_tokens=16)
    model = build_vlm(cfg)
    assert model.arch.prefix_tokens == 5 and model.arch.transform.size == tiny.IMAGE_SIZE
    assert type(model.lm).__name__ == "Gemma3ForCausalLM"
    assert type(model.vision.model).__name__ == "DINOv3ViTModel"
    # pretrained weights really came from the directory
    from safetensors.torch import load_file

    stored = load_file(tiny.ensure("dinov3") / "model.safetensors")
    name, tensor = next(iter(stored.items()))
    torch.testing.assert_close(model.vision.model.state_dict()[name], tensor)
    # SigLIP repos hold a text tower too: only the vision tower is loaded, without its pooling head
    siglip = build_vlm(ModelConfig(vision_encoder=str(tiny.ensure("siglip")), tiny=False,
                                   language_model=str(tiny.ensure("smollm")), image_tokens=16))
    assert type(siglip.vision.model).__name__ == "SiglipVisionModel"
    assert not any("head" in n for n, _ in siglip.vision.named_parameters())
    # a checkpoint directory loads offline, too
    path = model.save_pretrained(tmp_path / "ckpt")
    assert VisionLanguageModel.from_pretrained(str(path)).arch.prefix_tokens == 5


def test_random_init_at_real_size_without_network():
    cfg = override(get_preset("dinov3_gemma"), {"random_init": True}).model
    with pytest.warns(UserWarning, match="tiny 'gemma' stand-in tokenizer"):
        model = build_vlm(cfg)
    assert model.parameter_counts()["language"] == pytest.approx(268.1 * M, rel=0.02)
    assert model.embed_scale == pytest.approx(640 ** 0.5)


def test_tiny_stand_ins_are_deterministic(tmp_path, monkeypatch):
    first = tiny.ensure("smollm")
    monkeypatch.setenv("NANOVLM_CACHE", str(tmp_path))
    second = tiny.ensure("smollm")
    assert first != second
    for name in ("tokenizer.json", "model.safetensors", "config.json"):
        digest = [hashlib.sha256((d / name).read_bytes()).hexdigest() for d in (first, second)]
        assert digest[0] == digest[1], name
    with pytest.raises(ValueError, match="siglip, dinov2"):
        tiny.ensure("clip")


def test_building_a_stand_in_leaves_the_callers_random_state_alone(tmp_path, monkeypatch):
    # A run seeds torch, then builds its model: the new parts' weights must not depend on whether
    # the stand-ins were already cached (they once did, so a first run trained to other numbers).
    monkeypatch.setenv("NANOVLM_CACHE", str(tmp_path))
    torch.manual_seed(1)
    before = torch.random.get_rng_state()
    tiny.ensure("dinov2")  # built now: a fresh cache
    assert torch.equal(torch.random.get_rng_state(), before)


def test_tiny_chat_templates_follow_the_real_ones():
    from transformers import AutoTokenizer

    msgs = [{"role": "user", "content": "Hi"}]
    gemma = AutoTokenizer.from_pretrained(tiny.ensure("gemma"))
    assert gemma.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == \
        "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
    smol = AutoTokenizer.from_pretrained(tiny.ensure("smollm"))
    assert smol.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True).endswith(
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    base = build_vlm(ModelConfig(language_model="smollm-135m", tiny=True, image_tokens=16)).tokenizer
    assert base.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == \
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"  # ChatML for a base model


def test_image_transform_matches_transformers_siglip_processor():
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    pre = json.loads((backbones.HUB_CONFIGS / "google--siglip-base-patch16-224" / "preprocessor_config.json").read_text())
    reference = SiglipImageProcessorPil(**{k: v for k, v in pre.items() if not k.endswith(("_type", "_class"))})
    image = Image.fromarray((np.random.RandomState(0).rand(100, 130, 3) * 255).astype("uint8"))
    expected = reference(image, return_tensors="pt")["pixel_values"][0]
    torch.testing.assert_close(ImageTransform.from_preprocessor(pre)(image), expected)


def test_unreachable_image_tokens_take_the_nearest_count(caplog):
    assert resolve_architecture(override(get_preset("default"), {"image_tokens": 50}).model).image_tokens == 64
    assert "cannot give 50 image tokens" in caplog.text
    # a preset's 64 tokens with a 224 px encoder (14x14 patches): 49, the nearest reachable
    swapped = override(get_preset("default"), {"vision_encoder": "dinov3"}).model
    assert resolve_architecture(swapped).image_tokens == 49


def test_native_sizes_come_from_preprocessor_configs():
    sizes = {name: resolve_architecture(override(get_preset("default"), {"vision_encoder": name}).model).transform.size
             for name in ("siglip", "siglip-224", "dinov2", "dinov3")}
    assert sizes == {"siglip": 512, "siglip-224": 224, "dinov2": 224, "dinov3": 224}


def test_every_preset_is_registered_once_and_resolves():
    for name, fn in PRESETS.items():
        assert fn().preset == name
        resolve_architecture(fn().model)
