"""The VLM itself: every encoder x LM family builds, trains, generates and round-trips through disk."""

from __future__ import annotations

import math

import pytest
import torch
from PIL import Image

from conftest import model_batch, tiny_vlm
from nanovlm.config import ModelConfig
from nanovlm.data.processors import IGNORE_INDEX, encode_conversation, encode_prompt
from nanovlm.model.projector import pixel_shuffle
from nanovlm.model.vlm import IncompatibleCheckpoint, VisionLanguageModel, build_vlm

VISION = ["siglip", "dinov2", "dinov3"]
LANGUAGE = ["smollm", "smollm-135m", "gemma"]


def _image(colour=(220, 30, 30), size=(50, 40)) -> Image.Image:
    return Image.new("RGB", size, colour)


def _sample(model, question="What colour is the shape?", answer="red", colour=(220, 30, 30)):
    ids, labels = encode_conversation(model.tokenizer, [{"user": question, "assistant": answer}],
                                      model.image_placeholder)
    pixels = model.arch.transform(_image(colour))[None]
    return torch.tensor([ids]), torch.tensor([labels]), pixels


def _loss(model, ids, labels, pixels):
    """The training loss of one-sample rows."""
    samples = [{"input_ids": i, "labels": l, "pixel_values": p[None]} for i, l, p in zip(ids, labels, pixels)]
    return model(**model_batch(model, samples))


def _prompts(model, questions, colours):
    """Left-padded batch of single-image prompts."""
    rows = [encode_prompt(model.tokenizer, q, model.image_placeholder) for q in questions]
    width = max(map(len, rows))
    pad = model.tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    pixels = torch.stack([model.arch.transform(_image(c)) for c in colours])
    return ids, mask, pixels


@pytest.mark.parametrize("vision", VISION)
@pytest.mark.parametrize("language", LANGUAGE)
def test_every_family_combination_trains(vision, language):
    torch.manual_seed(0)
    model = build_vlm(ModelConfig(vision_encoder=vision, language_model=language, tiny=True, image_tokens=16)).train()
    ids, labels, pixels = _sample(model)
    loss = _loss(model, ids, labels, pixels)
    assert math.isfinite(loss.item()) and loss.item() > 0
    loss.backward()
    for part in (model.vision, model.projector, model.lm):
        grads = [p.grad for p in part.parameters() if p.grad is not None]
        assert grads and any(g.abs().sum() > 0 for g in grads), f"no gradient reached {type(part).__name__}"
    # a few steps on one sample must drive its loss down: the whole graph is wired
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(15):
        opt.zero_grad()
        step_loss = _loss(model, ids, labels, pixels)
        step_loss.backward()
        opt.step()
    assert step_loss.item() < loss.item() * 0.5


@pytest.mark.parametrize("vision,prefix", [("siglip", 0), ("dinov2", 1), ("dinov3", 5)])
def test_cls_and_register_tokens_are_dropped(vision, prefix):
    model = tiny_vlm(vision)
    assert model.vision.num_prefix_tokens == prefix
    pixels = torch.randn(2, 3, 64, 64)
    raw = model.vision.model(pixel_values=pixels).last_hidden_state
    assert raw.shape[1] == 64 + prefix  # 8x8 patches + CLS/registers
    out = model.vision(pixels)
    assert out.shape == (2, 64, 64)
    assert torch.equal(out, raw[:, prefix:])


def test_pixel_shuffle_groups_neighbouring_patches():
    grid = torch.arange(16).reshape(1, 16, 1).float()  # 4x4 grid, value = patch index
    out = pixel_shuffle(grid, 2)
    assert out.shape == (1, 4, 4)
    # first output token = the top-left 2x2 block: patches 0, 1, 4, 5
    assert out[0, 0].tolist() == [0, 1, 4, 5]
    assert out[0, 3].tolist() == [10, 11, 14, 15]
    with pytest.raises(ValueError, match="divisible"):
        pixel_shuffle(torch.zeros(1, 36, 1), 4)


def test_image_features_replace_placeholders_at_gemma_scale():
    model = tiny_vlm("siglip", "gemma")
    assert model.embed_scale == pytest.approx(math.sqrt(model.lm.config.hidden_size))
    ids, _, pixels = _sample(model)
    embeds = model.embed(ids, pixels)
    slots = ids[0] == model.image_token_id
    assert int(slots.sum()) == model.arch.image_tokens
    expected = model.projector(model.vision(pixels))[0] * model.embed_scale
    torch.testing.assert_close(embeds[0, slots], expected)
    text = model.lm.get_input_embeddings()(ids)[0, ~slots]  # already scaled by the embedding layer
    torch.testing.assert_close(embeds[0, ~slots], text)


def test_image_count_mismatch_is_an_error():
    model = tiny_vlm()
    ids, labels, pixels = _sample(model)
    with pytest.raises(ValueError, match="image-token slots"):
        model.embed(ids, torch.cat([pixels, pixels]))


def test_loss_covers_answer_tokens_only():
    model = tiny_vlm()
    ids, labels, pixels = _sample(model, answer="blue")
    answer = model.tokenizer.decode(ids[0][labels[0] != IGNORE_INDEX])
    assert answer == "blue<|im_end|>\n"
    # changing a prompt token's label target cannot matter; changing the answer must
    logits = model.logits(ids, torch.ones_like(ids), pixels)[0, :-1]
    targets = labels[0, 1:]
    manual = torch.nn.functional.cross_entropy(logits[targets != -100], targets[targets != -100])
    torch.testing.assert_close(_loss(model, ids, labels, pixels), manual)


@pytest.mark.parametrize("language", ["smollm", "gemma"])
def test_generation_with_cache_equals_without(language):
    model = tiny_vlm("dinov3", language)
    ids, mask, pixels = _prompts(model, ["What colour is the shape?", "Where?"], [(220, 30, 30), (30, 70, 220)])
    cached = model.generate(ids, mask, pixels, max_new_tokens=8)
    uncached = model.generate(ids, mask, pixels, max_new_tokens=8, use_cache=False)
    assert torch.equal(cached, uncached)
    # left padding does not change a row's output: batched == one at a time
    for row in range(2):
        keep = mask[row].bool()
        single = model.generate(ids[row][keep][None], mask[row][keep][None], pixels[row : row + 1], max_new_tokens=8)
        assert cached[row, : single.shape[1]].tolist() == single[0].tolist()


def test_generation_stops_at_end_of_turn():
    torch.manual_seed(0)
    model = build_vlm(ModelConfig(tiny=True, image_tokens=16)).train()
    ids, labels, pixels = _sample(model, answer="red")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(40):  # memorise one answer, including its end-of-turn token
        opt.zero_grad()
        _loss(model, ids, labels, pixels).backward()
        opt.step()
    model.eval()
    p_ids, p_mask, p_pixels = _prompts(model, ["What colour is the shape?"], [(220, 30, 30)])
    out = model.generate(p_ids, p_mask, p_pixels, max_new_tokens=20)
    assert out.shape[1] < 20
    assert model.tokenizer.decode(out[0], skip_special_tokens=True).strip() == "red"
    sampled = model.generate(p_ids, p_mask, p_pixels, max_new_tokens=5, do_sample=True, temperature=1.5)
    assert sampled.shape[0] == 1


def test_save_load_roundtrip_gives_identical_logits(tmp_path):
    model = tiny_vlm("dinov3", "gemma")
    ids, _, pixels = _sample(model)
    path = model.save_pretrained(tmp_path / "ckpt", meta={"run_id": "abc"})
    names = {p.name for p in path.iterdir()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "meta.json", "tokenizer.json"} <= names
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary directory left behind"
    loaded = VisionLanguageModel.from_pretrained(path).eval()
    torch.testing.assert_close(loaded.logits(ids, torch.ones_like(ids), pixels),
                               model.logits(ids, torch.ones_like(ids), pixels), rtol=0, atol=0)
    assert loaded.tokenizer.convert_tokens_to_ids("<|image|>") == model.image_token_id
    assert loaded.arch.transform == model.arch.transform
    # saving over an existing checkpoint replaces it atomically
    model.save_pretrained(path)
    assert not (path / "meta.json").exists()


def test_loading_into_a_different_architecture_lists_the_fields(tmp_path):
    model = tiny_vlm("siglip", "smollm")
    path = model.save_pretrained(tmp_path / "ckpt")
    other = ModelConfig(vision_encoder="dinov3", language_model="smollm", tiny=True, image_tokens=4)
    with pytest.raises(IncompatibleCheckpoint) as err:
        VisionLanguageModel.from_pretrained(path, expect=other)
    assert "vision_encoder" in str(err.value) and "image_tokens" in str(err.value)
    assert "language_model" not in str(err.value)
    VisionLanguageModel.from_pretrained(path, expect=model.cfg)  # same architecture: fine


def test_corrupt_weights_are_a_clear_error(tmp_path):
    model = tiny_vlm("siglip", "smollm")
    path = model.save_pretrained(tmp_path / "ckpt")
    other = tiny_vlm("dinov2", "smollm").save_pretrained(tmp_path / "other")
    (path / "model.safetensors").write_bytes((other / "model.safetensors").read_bytes())
    with pytest.raises(IncompatibleCheckpoint, match="do not fit"):
        VisionLanguageModel.from_pretrained(path)
