"""Export a nanovlm checkpoint as a transformers SmolVLM checkpoint (no project code needed to load it).

    plan = check_exportable(ckpt, "smolvlm")        # reads config.json only; UnsupportedExport if not possible
    export_checkpoint(ckpt, out, "smolvlm")         # writes `out` atomically, after checking the logits

    AutoModelForImageTextToText.from_pretrained(out)   # SmolVLMForConditionalGeneration
    AutoProcessor.from_pretrained(out)                 # SmolVLMProcessor (needs num2words + torchvision,
                                                       # as every SmolVLM checkpoint does)

The mapping (every point is checked by tests/test_export.py on tiny models):
- vision: SigLIP / fixed-resolution SigLIP2 (`siglip_vision_model`) -> SmolVLMVisionTransformer, the same
  modules by name. The position table is the one our model adds at our image size (SigLIP's bicubic
  interpolation done once when the size differs from the encoder's). SmolVLM places patches in that table
  with a float `bucketize`, which for some grids (19, 25, 29, 31, ... patches per side) maps two patches to
  one position; such grids are refused.
- connector: SmolVLM's pixel shuffle orders output tokens row-major over blocks and channels as
  (row in block, column in block, channel), exactly `nanovlm.model.projector.pixel_shuffle`; so the
  projector weight is copied as is. Gemma 3 scales token embeddings by sqrt(hidden) inside its embedding
  layer and our model multiplies image features by the same factor; SmolVLM inserts the features after
  that layer unscaled, so the factor is folded into the (bias-free) projection weight.
- text: the LM's decoder -> `model.text_model`, its head -> `lm_head` (tied when the LM ties them).
  Gemma 3 with a final logit softcap is refused (SmolVLM's head has none).
- tokens: one image token repeated `image_tokens` times, in front of the first question. SmolVLM's
  processor reads its image token and the two wrapper tokens it puts around an image from tokenizer
  attributes; the export sets `image_token` to ours and the wrappers (`fake_image_token`,
  `global_image_token`) to empty strings, so the processor expands one image token to exactly our layout.
- images: no splitting, square resize to our image size with our resample filter, our mean / std.
- generation: stop at EOS and the end-of-turn marker, the image token suppressed (as `model.generate`).

Idefics3 is refused: its processor hard-codes `<fake_token_around_image><global-img>` around every image,
tokens these models never saw, so a processor-built prompt cannot give our model's outputs.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nanovlm.config import ModelConfig, from_dict
from nanovlm.model.architecture import shuffle_factor
from nanovlm.model.processing_nanovlm import processor_chat_template

REFUSED_FORMATS = {
    "idefics3": "Idefics3's processor always wraps an image in <fake_token_around_image><global-img>...; "
                "these models were trained without them (use --format smolvlm: same weights, exact token layout)",
}
VISION_TYPES = {"siglip_vision_model": "SigLIP / SigLIP2 (fixed resolution)"}
LANGUAGE_TYPES = {"llama": "SmolLM2 (Llama)", "gemma3_text": "Gemma 3"}
SUPPORTED = (f"--format smolvlm takes vision {', '.join(VISION_TYPES.values())} with language "
             f"{', '.join(LANGUAGE_TYPES.values())}; --format remote exports every combination (trust_remote_code=True)")
EMPTY_WRAPPERS = {"fake_image_token": "", "global_image_token": ""}
EXTRA_FILES = ("meta.json",)  # carried over for the model card (transformers ignores it)


class UnsupportedExport(ValueError):
    """A checkpoint (or format) that cannot be exported so that it computes the same function."""


@dataclass(frozen=True)
class ExportPlan:
    """What the export will write, decided from the checkpoint's config alone."""

    fmt: str
    vision_type: str
    language_type: str
    image_size: int
    patch_size: int
    grid: int
    factor: int
    image_tokens: int
    image_token: str
    embed_scale: float  # folded into the projector (Gemma 3: sqrt(hidden))


def smolvlm_patch_positions(grid: int) -> torch.Tensor:
    """The position index SmolVLMVisionEmbeddings gives each patch of a full grid x grid image.

    The same float arithmetic as transformers' code (fractional coordinates bucketised against
    `arange(1/grid, 1, 1/grid)`), so the check sees what the exported model will do.
    """
    boundaries = torch.arange(1 / grid, 1.0, 1 / grid)
    step = 1.0 / torch.tensor([grid])
    coords = torch.clamp(torch.arange(grid, dtype=torch.float32)[None, :] * step[:, None], max=1.0 - 1e-6)
    buckets = torch.bucketize(coords, boundaries, right=True)[0]
    return (buckets[:, None] * grid + buckets[None, :]).flatten()


def check_exportable(checkpoint: str | Path, fmt: str) -> ExportPlan:
    """Decide from config.json (no weights read) whether `checkpoint` exports to `fmt`; else UnsupportedExport."""
    path = Path(checkpoint)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise UnsupportedExport(f"{path} is not a checkpoint directory (no config.json)")
    stored = json.loads(config_file.read_text())
    if stored.get("model_type") != "nanovlm":
        raise UnsupportedExport(f"{path} is not a nanovlm checkpoint (model_type {stored.get('model_type')!r})")
    vision, cfg = stored["vision_config"], stored["model"]
    language = stored["text_config"] if "text_config" in stored else stored["language_config"]  # older checkpoints
    problems = []
    if vision.get("model_type") not in VISION_TYPES:
        problems.append(f"vision encoder {vision.get('model_type')!r} has no SmolVLM equivalent")
    if language.get("model_type") not in LANGUAGE_TYPES:
        problems.append(f"language model {language.get('model_type')!r} has no SmolVLM equivalent")
    if language.get("final_logit_softcapping"):
        problems.append("a final logit softcap (SmolVLM's head has none)")
    if problems:
        raise UnsupportedExport(f"cannot export {path} to {fmt}: {'; '.join(problems)}. {SUPPORTED}")
    pre = json.loads((path / "preprocessor_config.json").read_text())
    image_size = int(pre["size"]["height"])
    patch = int(vision["patch_size"])
    grid = image_size // patch
    factor = int(stored.get("pixel_shuffle_factor") or 0) or shuffle_factor(grid, from_dict(ModelConfig, cfg))
    positions = smolvlm_patch_positions(grid)
    if not torch.equal(positions, torch.arange(grid * grid)):
        raise UnsupportedExport(f"cannot export {path} to {fmt}: SmolVLM's patch positions for a {grid}x{grid} grid "
                                f"repeat ({len(set(positions.tolist()))} distinct of {grid * grid}), so its vision "
                                f"features would differ; use an image size whose grid is not affected. {SUPPORTED}")
    scale = math.sqrt(language["hidden_size"]) if language["model_type"] == "gemma3_text" else 1.0
    return ExportPlan(fmt, vision["model_type"], language["model_type"], image_size, patch, grid, factor,
                      (grid // factor) ** 2, cfg["image_token"], scale)


# --------------------------------------------------------------------------- building


def build_smolvlm(model: Any, plan: ExportPlan) -> Any:
    """The project's VisionLanguageModel -> an equivalent SmolVLMForConditionalGeneration (fp32, eval)."""
    from transformers import SmolVLMConfig, SmolVLMForConditionalGeneration

    if model.arch.factor != plan.factor or model.arch.image_tokens != plan.image_tokens:
        raise UnsupportedExport(f"checkpoint geometry {model.arch.describe()} differs from its config")
    if not math.isclose(model.embed_scale, plan.embed_scale, rel_tol=1e-6):
        raise UnsupportedExport(f"embedding scale {model.embed_scale} differs from the expected {plan.embed_scale}")
    vcfg, lcfg = model.arch.vision_config, model.lm.config
    vision_config = dict(hidden_size=vcfg.hidden_size, intermediate_size=vcfg.intermediate_size,
                         num_hidden_layers=vcfg.num_hidden_layers, num_attention_heads=vcfg.num_attention_heads,
                         num_channels=vcfg.num_channels, image_size=plan.image_size, patch_size=plan.patch_size,
                         hidden_act=vcfg.hidden_act, layer_norm_eps=vcfg.layer_norm_eps)
    tied = bool(getattr(lcfg, "tie_word_embeddings", False))
    config = SmolVLMConfig(vision_config=vision_config, text_config=lcfg.to_dict(), scale_factor=plan.factor,
                           image_token_id=model.image_token_id, tie_word_embeddings=tied,
                           pad_token_id=model.tokenizer.pad_token_id)
    hf = SmolVLMForConditionalGeneration(config).to(torch.float32).eval()
    with torch.no_grad():
        _copy_vision(model, hf.model.vision_model, plan)
        proj = model.projector.proj.weight * plan.embed_scale
        hf.model.connector.modality_projection.proj.weight.copy_(proj)
        hf.model.text_model.load_state_dict(model.lm.get_decoder().state_dict())
        hf.lm_head.weight.copy_(model.lm.get_output_embeddings().weight)
    if tied:
        hf.tie_weights()
    return hf


def _copy_vision(model: Any, target: Any, plan: ExportPlan) -> None:
    source = getattr(model.vision.model, "vision_model", model.vision.model)  # SiglipVisionModel -> transformer
    target.encoder.load_state_dict(source.encoder.state_dict())
    target.post_layernorm.load_state_dict(source.post_layernorm.state_dict())
    emb = source.embeddings
    target.embeddings.patch_embedding.load_state_dict(emb.patch_embedding.state_dict())
    # The position embeddings our model adds at its image size (interpolated once if not native).
    dummy = torch.zeros(1, plan.grid * plan.grid, emb.patch_embedding.out_channels)
    if model.vision.interpolate:
        table = emb.interpolate_pos_encoding(dummy, plan.image_size, plan.image_size)[0]
    else:
        table = emb.position_embedding.weight
    if table.shape[0] != plan.grid * plan.grid:
        raise UnsupportedExport(f"vision position table has {table.shape[0]} rows, expected {plan.grid ** 2}")
    target.embeddings.position_embedding.weight.copy_(table)


# --------------------------------------------------------------------------- processor files


def image_processor_config(transform: Any) -> dict[str, Any]:
    """SmolVLM's image processor doing our transform: square resize, rescale, normalise, no splitting."""
    size = {"longest_edge": transform.size}
    return {"image_processor_type": "SmolVLMImageProcessor", "processor_class": "SmolVLMProcessor",
            "do_convert_rgb": True, "do_resize": False, "size": size, "max_image_size": size,
            "do_image_splitting": False, "resample": int(transform.resample), "do_rescale": True,
            "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": list(transform.mean),
            "image_std": list(transform.std), "do_pad": True}


def video_processor_config(transform: Any) -> dict[str, Any]:
    """SmolVLMProcessor needs a video processor; frames get the image transform."""
    size = {"longest_edge": transform.size}
    return {"video_processor_type": "SmolVLMVideoProcessor", "processor_class": "SmolVLMProcessor",
            "do_convert_rgb": True, "do_resize": False, "size": size, "max_image_size": size,
            "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
            "image_mean": list(transform.mean), "image_std": list(transform.std), "do_pad": True,
            "do_sample_frames": False, "resample": int(transform.resample)}


def _write_processor_files(model: Any, plan: ExportPlan, directory: Path) -> None:
    from nanovlm.data.processors import stop_token_ids

    tok = model.tokenizer
    tok.save_pretrained(directory)
    tok_config_file = directory / "tokenizer_config.json"
    tok_config = json.loads(tok_config_file.read_text())
    tok_config.update({"image_token": plan.image_token, **EMPTY_WRAPPERS, "padding_side": "left"})
    tok_config.pop("chat_template", None)
    tok_config_file.write_text(json.dumps(tok_config, indent=2) + "\n")
    # transformers 5 keeps one chat_template.jinja for the tokenizer and the processor: the wrapped template
    # renders string contents exactly as the LM's own and also takes the processor's list contents.
    (directory / "chat_template.jinja").write_text(processor_chat_template(tok.chat_template, plan.image_token))
    _write_json(directory / "processor_config.json", {"processor_class": "SmolVLMProcessor",
                                                      "image_seq_len": plan.image_tokens})
    _write_json(directory / "preprocessor_config.json", image_processor_config(model.arch.transform))
    _write_json(directory / "video_preprocessor_config.json", video_processor_config(model.arch.transform))
    from transformers import GenerationConfig

    GenerationConfig(eos_token_id=stop_token_ids(tok), pad_token_id=tok.pad_token_id, bos_token_id=None,
                     suppress_tokens=[model.image_token_id]).save_pretrained(directory)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


# --------------------------------------------------------------------------- checking and writing


def probe_inputs(model: Any, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A real prompt (ids, mask: (1, T)) and a random image ((1, 3, H, W)): what an export's logits are checked on."""
    from nanovlm.data.processors import encode_prompt

    size = model.arch.transform.size
    pixels = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(seed))
    ids = torch.tensor([encode_prompt(model.tokenizer, "what colour is the shape?", model.image_placeholder)])
    return ids, torch.ones_like(ids), pixels


def max_logit_difference(model: Any, hf: Any, seed: int = 0) -> float:
    """Largest |logit difference| between our model and the export, on a random image and a real prompt."""
    ids, mask, pixels = probe_inputs(model, seed)
    with torch.no_grad():
        ours = model.logits(ids, mask, pixels)
        theirs = hf(input_ids=ids, attention_mask=mask, pixel_values=pixels[:, None]).logits
    return float((ours - theirs).abs().max())


def export_checkpoint(checkpoint: str | Path, out: str | Path, fmt: str = "smolvlm", atol: float = 1e-3,
                      dtype: str = "float32") -> Path:
    """Write the `fmt` export of `checkpoint` to `out` (atomically), after checking its logits match ours."""
    from nanovlm.files import atomic_directory
    from nanovlm.model.vlm import VisionLanguageModel

    plan = check_exportable(checkpoint, fmt)
    model = VisionLanguageModel.from_pretrained(checkpoint).eval()
    hf = build_smolvlm(model, plan)
    diff = max_logit_difference(model, hf)
    if not diff <= atol:  # also catches NaN
        raise UnsupportedExport(f"the exported model's logits differ from the checkpoint's by {diff:.3g} "
                                f"(> {atol}); not written")
    if dtype != "float32":
        hf = hf.to(getattr(torch, dtype))
    with atomic_directory(out) as tmp:
        hf.save_pretrained(tmp)
        _write_processor_files(model, plan, tmp)
        for name in EXTRA_FILES:
            if (Path(checkpoint) / name).is_file():
                shutil.copy(Path(checkpoint) / name, tmp / name)
        _write_json(tmp / "nanovlm_export.json", {"format": fmt, "source": str(Path(checkpoint).resolve()),
                                                  "max_abs_logit_difference_fp32": diff, "dtype": dtype,
                                                  "image_tokens": plan.image_tokens,
                                                  "image_token": plan.image_token})
    return Path(out)
