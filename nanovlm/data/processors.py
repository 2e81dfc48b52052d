"""Turning raw inputs into model inputs: the image transform and the chat-formatted tokenizer.

    transform = ImageTransform.from_preprocessor(read_json_file(src, "preprocessor_config.json"))
    pixels = transform(pil_image)                          # (3, size, size) float32
    tok = load_tokenizer(lm_source, "<|image|>")           # LM tokenizer + image token (+ ChatML if none)
    ids, labels = encode_conversation(tok, turns, image_placeholder)   # loss on answers only

No torchvision: resizing is PIL's, normalisation is numpy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from nanovlm.model.processing_nanovlm import to_pixels

# Used for base LMs that ship without a chat template (e.g. SmolLM2-135M).
CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
IGNORE_INDEX = -100  # label value that cross_entropy skips: prompts, images, padding


@dataclass(frozen=True)
class ImageTransform:
    """Resize to a square and normalise, with the values of the encoder's preprocessor config."""

    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resample: int = Image.Resampling.BICUBIC  # PIL resample code, as in HF preprocessor configs

    @classmethod
    def from_preprocessor(cls, pre: dict[str, Any], size: int = 0) -> "ImageTransform":
        return cls(size=size or native_image_size(pre), mean=tuple(pre.get("image_mean", (0.5,) * 3)),
                   std=tuple(pre.get("image_std", (0.5,) * 3)), resample=int(pre.get("resample", 3)))

    def __call__(self, image: Image.Image, normalize: bool = True) -> torch.Tensor:
        """(3, H, W) float32 as the processor gives it, or with `normalize=False` the resized uint8 pixels."""
        return to_pixels(image, self.size, self.mean, self.std, self.resample, normalize)

    def to_preprocessor(self) -> dict[str, Any]:
        """The HF preprocessor_config.json fields this transform reproduces."""
        return {"do_resize": True, "do_rescale": True, "do_normalize": True, "rescale_factor": 1 / 255,
                "image_mean": list(self.mean), "image_std": list(self.std), "resample": self.resample,
                "size": {"height": self.size, "width": self.size}}


def native_image_size(pre: dict[str, Any]) -> int:
    """The input size an encoder was trained at, from its preprocessor config (crop wins over resize)."""
    for key in ("crop_size", "size"):
        value = pre.get(key)
        if isinstance(value, dict) and "height" in value:
            return int(value["height"])
    value = pre.get("size") or {}
    if "shortest_edge" in value:
        return int(value["shortest_edge"])
    raise ValueError(f"cannot read an image size from the preprocessor config: {pre}")


def load_tokenizer(source: str, image_token: str) -> Any:
    """The LM's tokenizer with the image placeholder token and a chat template (ChatML if it has none)."""
    from transformers import AutoTokenizer

    from nanovlm.backbones import hub_call

    tok = hub_call(source, lambda: AutoTokenizer.from_pretrained(source), "tokenizer")
    prepare_tokenizer(tok, image_token)
    return tok


def prepare_tokenizer(tok: Any, image_token: str) -> Any:
    if image_token not in tok.get_vocab():
        tok.add_special_tokens({"additional_special_tokens": [image_token]}, replace_extra_special_tokens=False)
    if not tok.chat_template:
        tok.chat_template = CHATML_TEMPLATE
        for token in ("<|im_start|>", "<|im_end|>"):  # ChatML markers must be single tokens
            if token not in tok.get_vocab():
                tok.add_special_tokens({"additional_special_tokens": [token]}, replace_extra_special_tokens=False)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def stop_token_ids(tok: Any) -> list[int]:
    """Tokens that end an assistant turn: EOS and the template's end-of-turn marker."""
    ids = {tok.eos_token_id}
    for marker in ("<|im_end|>", "<end_of_turn>"):
        if marker in tok.get_vocab() and marker in (tok.chat_template or ""):
            ids.add(tok.convert_tokens_to_ids(marker))
    return sorted(i for i in ids if i is not None)


def _render(tok: Any, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def clean_turns(turns: Any, image_token: str) -> list[dict[str, str]] | None:
    """The_cauldron `texts` as a list of {"user", "assistant"} strings, or None when the row is malformed
    (not a list, no turns, a turn that is not a mapping, a missing/None/non-string text: bytes included).

    The image placeholder token is removed from the text: only the processor decides how many image
    slots a prompt has, so a question that quotes `<|image|>` can neither add nor remove one.
    """
    if not isinstance(turns, (list, tuple)) or not turns:
        return None
    out = []
    for turn in turns:
        if not isinstance(turn, dict):
            return None
        user, assistant = turn.get("user"), turn.get("assistant")
        if not isinstance(user, str) or not isinstance(assistant, str):
            return None
        if image_token:
            user, assistant = user.replace(image_token, ""), assistant.replace(image_token, "")
        out.append({"user": user, "assistant": assistant})
    return out


def encode_conversation(tok: Any, turns: list[dict[str, str]], image_placeholder: str) -> tuple[list[int], list[int]]:
    """Token ids and labels of a conversation; labels are IGNORE_INDEX except on assistant replies.

    `turns` is the_cauldron's `texts` list ({"user", "assistant"} per turn); `image_placeholder`
    (the image token repeated for every image) is put in front of the first user message. The
    template is rendered for growing prefixes, so whatever markers a template adds, the label mask
    covers exactly the reply and its end-of-turn marker.
    """
    messages: list[dict[str, str]] = []
    ids: list[int] = []
    labels: list[int] = []
    rendered = ""
    for i, turn in enumerate(turns):
        user = (image_placeholder if i == 0 else "") + turn["user"]
        messages.append({"role": "user", "content": user})
        prompt = _render(tok, messages, add_generation_prompt=True)
        messages.append({"role": "assistant", "content": turn["assistant"]})
        full = _render(tok, messages, add_generation_prompt=False)
        if not (prompt.startswith(rendered) and full.startswith(prompt)):
            raise ValueError("the chat template does not render conversations prefix by prefix")
        for text, trainable in ((prompt[len(rendered):], False), (full[len(prompt):], True)):
            piece = tok(text, add_special_tokens=False)["input_ids"]
            ids += piece
            labels += piece if trainable else [IGNORE_INDEX] * len(piece)
        rendered = full
    return ids, labels


def encode_prompt(tok: Any, question: str, image_placeholder: str, image_token: str = "") -> list[int]:
    """Token ids of a single-turn prompt ending where the assistant's reply starts. `image_token` is
    removed from the question, as `clean_turns` does for training data: only the images make slots."""
    if image_token:
        question = question.replace(image_token, "")
    text = _render(tok, [{"role": "user", "content": image_placeholder + question}], add_generation_prompt=True)
    return tok(text, add_special_tokens=False)["input_ids"]
