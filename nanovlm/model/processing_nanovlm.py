"""The nanovlm processor: images -> pixel values, prompts -> token ids with the image token expanded.

    processor = AutoProcessor.from_pretrained(ckpt)                   # after `import nanovlm`
    text = processor.prompt("What colour is the shape?")              # chat template, one image token
    inputs = processor(images=[image], text=[text])                   # input_ids, attention_mask, pixel_values
    pixels = NanoVLMImageProcessor(size={"height": 64, "width": 64})(images)["pixel_values"]   # (N, 3, 64, 64)

`to_pixels` is the one image transform of the project: training (`nanovlm.data.processors.ImageTransform`)
and this processor give identical pixels. No torchvision: PIL resizes, numpy normalises. Prompts are
rendered by the tokenizer's chat template (which adds any BOS itself), so the processor tokenizes with
`add_special_tokens=False`, and left-pads a batch for generation, as the project's evaluation does.
Transformers, torch, numpy and PIL only: an export copies this file into a checkpoint.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from transformers.feature_extraction_utils import BatchFeature
from transformers.image_processing_utils import BaseImageProcessor
from transformers.processing_utils import ProcessorMixin


def to_pixels(image: Any, size: int, mean: Sequence[float], std: Sequence[float], resample: int,
              normalize: bool = True) -> torch.Tensor:
    """A PIL image (or HWC uint8 array) -> (3, size, size) float32: square resize, [0, 1], mean/std normalised.

    `normalize=False`: the resized uint8 pixels, a quarter of the bytes; `normalize_pixels` finishes them
    on the device (training does this: less to pass between processes, copy and send to the GPU).
    """
    if not isinstance(image, Image.Image):
        image = Image.fromarray(np.asarray(image))
    image = image.convert("RGB").resize((size, size), resample=Image.Resampling(resample))
    if not normalize:
        return torch.from_numpy(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).copy())
    x = np.asarray(image, dtype=np.float32) / 255.0  # (H, W, 3)
    x = (x - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return torch.from_numpy(x.transpose(2, 0, 1).copy())


def normalize_pixels(pixels: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 pixels from `to_pixels(..., normalize=False)` -> what `to_pixels` gives (the same float32 steps)."""
    return (pixels.float() / 255.0 - mean) / std


def processor_chat_template(template: str, image_token: str) -> str:
    """A processor template: message contents as lists ({"type": "image"} / {"type": "text"}) become the
    strings our tokenizer's template renders (an image -> one image token, expanded by the processor)."""
    prefix = (
        "{%- set _ns = namespace(msgs=[]) -%}"
        "{%- for _m in messages -%}"
        "{%- if _m['content'] is string -%}{%- set _ns.msgs = _ns.msgs + [_m] -%}"
        "{%- else -%}{%- set _t = namespace(s='') -%}"
        "{%- for _p in _m['content'] -%}"
        "{%- if _p['type'] == 'image' -%}{%- set _t.s = _t.s + '" + image_token + "' -%}"
        "{%- elif _p['type'] == 'text' -%}{%- set _t.s = _t.s + _p['text'] -%}{%- endif -%}"
        "{%- endfor -%}"
        "{%- set _ns.msgs = _ns.msgs + [{'role': _m['role'], 'content': _t.s}] -%}"
        "{%- endif -%}"
        "{%- endfor -%}"
        "{%- set messages = _ns.msgs -%}"
    )
    return template if template.startswith(prefix) else prefix + template  # wrapped once, however often saved


def _flat(images: Any) -> list[Any]:
    """One image, a list of images, or one list of images per prompt -> a flat list."""
    if images is None:
        return []
    if isinstance(images, (list, tuple)):
        return [im for item in images for im in _flat(item)]
    return [images]


class NanoVLMImageProcessor(BaseImageProcessor):
    model_input_names = ["pixel_values"]

    def __init__(self, size: dict[str, int] | None = None, image_mean: Sequence[float] = (0.5, 0.5, 0.5),
                 image_std: Sequence[float] = (0.5, 0.5, 0.5), resample: int = 3, **kwargs: Any):
        super().__init__(**kwargs)
        self.size = dict(size or {"height": 224, "width": 224})
        self.image_mean, self.image_std, self.resample = list(image_mean), list(image_std), int(resample)
        # The fields of a hub preprocessor_config.json that describe this transform, for readers of the file.
        self.do_resize = self.do_rescale = self.do_normalize = True
        self.rescale_factor = 1 / 255

    def preprocess(self, images: Any, return_tensors: Any = "pt", **kwargs: Any) -> BatchFeature:
        side = int(self.size["height"])
        pixels = [to_pixels(im, side, self.image_mean, self.image_std, self.resample) for im in _flat(images)]
        stacked = torch.stack(pixels) if pixels else torch.empty(0, 3, side, side)
        return BatchFeature({"pixel_values": stacked})


class NanoVLMProcessor(ProcessorMixin):
    def __init__(self, image_processor: Any = None, tokenizer: Any = None, image_token: str = "<|image|>",
                 image_tokens: int = 1, chat_template: str | None = None, **kwargs: Any):
        self.image_token, self.image_tokens = image_token, int(image_tokens)
        super().__init__(image_processor, tokenizer, chat_template=chat_template)

    def prompt(self, question: str) -> str:
        """A one-image, one-question user turn in the chat template, ending where the answer starts."""
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        return self.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def __call__(self, images: Any = None, text: str | list[str] | None = None, return_tensors: str = "pt",
                 padding: bool | str = True, padding_side: str = "left", add_special_tokens: bool = False,
                 **kwargs: Any) -> BatchFeature:
        """Each image token in `text` stands for the next image (in order); it becomes `image_tokens` tokens."""
        texts = [text] if isinstance(text, str) else list(text or [])
        flat = _flat(images)
        found = sum(t.count(self.image_token) for t in texts)
        if found != len(flat):
            raise ValueError(f"the text has {found} image token(s) {self.image_token!r} for {len(flat)} image(s); "
                             f"put one {self.image_token} where each image goes (processor.prompt does)")
        expanded = [t.replace(self.image_token, self.image_token * self.image_tokens) for t in texts]
        encoded = self.tokenizer(expanded, padding=padding, padding_side=padding_side, return_tensors=return_tensors,
                                 add_special_tokens=add_special_tokens, **kwargs)
        data = dict(encoded)
        if flat:
            data["pixel_values"] = self.image_processor(flat)["pixel_values"]
        return BatchFeature(data)

    def batch_decode(self, *args: Any, **kwargs: Any) -> list[str]:
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args: Any, **kwargs: Any) -> str:
        return self.tokenizer.decode(*args, **kwargs)

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "pixel_values"]


__all__ = ["NanoVLMImageProcessor", "NanoVLMProcessor", "processor_chat_template", "to_pixels"]
