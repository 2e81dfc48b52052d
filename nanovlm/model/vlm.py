"""The vision-language model: vision encoder -> pixel-shuffle projector -> causal LM, and its checkpoints.

    model = build_vlm(ModelConfig(tiny=True))                 # backbones through transformers
    loss = model(**model_inputs(collate_rows(rows, ...), device))  # cross-entropy on answer tokens only
    new_tokens = model.generate(input_ids, attention_mask, images, max_new_tokens=8)
    model.save_pretrained("ckpt"); VisionLanguageModel.from_pretrained("ckpt")

The architecture is resolved and checked first (`nanovlm.model.architecture`); a checkpoint is a
transformers checkpoint of `NanoVLMForConditionalGeneration` (`nanovlm.model.modeling_nanovlm`).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nanovlm import backbones
from nanovlm.config import ModelConfig, diff, from_dict, to_dict
from nanovlm.data.processors import load_tokenizer, prepare_tokenizer, stop_token_ids
from nanovlm.files import atomic_directory, read_json, write_json
from nanovlm.model.architecture import Architecture, architecture_from_checkpoint, quiet_transformers, resolve_architecture
from nanovlm.model.attention import packed_attention_mask
from nanovlm.model.configuration_nanovlm import NanoVLMConfig
from nanovlm.model.embedding import ImageTextEmbedding, embed_scale
from nanovlm.model.loss import linear_cross_entropy
from nanovlm.model.processing_nanovlm import (NanoVLMImageProcessor, NanoVLMProcessor, normalize_pixels,
                                              processor_chat_template)
from nanovlm.model.projector import ModalityProjector
from nanovlm.model.vision import VisionEncoder

WEIGHTS = "model.safetensors"
HF_ARCHITECTURE = "NanoVLMForConditionalGeneration"  # the transformers class of our checkpoints
# Fields that do not change the network: a checkpoint may differ in them.
NON_ARCHITECTURE_FIELDS = {"random_init"}


class IncompatibleCheckpoint(ValueError):
    """A checkpoint whose architecture differs from the one asked for."""


class VisionLanguageModel(ImageTextEmbedding, nn.Module):
    """The model training and evaluation use: packed-row loss, batched generation, checkpoints.

    Its modules (`vision`, `projector`, `lm`) and their names are those of the transformers model
    `NanoVLMForConditionalGeneration`, so one checkpoint serves both.
    """

    def __init__(self, arch: Architecture, vision: VisionEncoder, lm: nn.Module, tokenizer: Any):
        super().__init__()
        self.arch, self.cfg, self.tokenizer = arch, arch.cfg, tokenizer
        self.vision = vision
        self.projector = ModalityProjector(arch.vision_config.hidden_size, lm.config.hidden_size, arch.factor)
        self.lm = lm
        self.image_token_id = tokenizer.convert_tokens_to_ids(arch.cfg.image_token) if tokenizer else -1
        self.image_tokens = arch.image_tokens
        self.image_placeholder = arch.cfg.image_token * arch.image_tokens
        self.embed_scale = embed_scale(lm)
        self.logit_softcap = getattr(lm.config, "final_logit_softcapping", None)
        self.loss_backend = "auto"  # see nanovlm.model.loss.BACKENDS
        # For uint8 images (the training loader's), normalised on the device; not saved in checkpoints.
        stats = lambda v: torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1)  # noqa: E731
        self.register_buffer("pixel_mean", stats(arch.transform.mean), persistent=False)
        self.register_buffer("pixel_std", stats(arch.transform.std), persistent=False)

    # ---------------------------------------------------------------- forward

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, sequence_ids: torch.Tensor,
                images: torch.Tensor | None, image_slots: torch.Tensor, loss_positions: torch.Tensor,
                loss_targets: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy over the answer tokens of a batch of (packed) rows.

        Inputs as `nanovlm.data.packing.collate_rows` makes them: rows of one or more samples, each
        with its own positions and attention (`sequence_ids`), and the loss positions worked out on
        the CPU. Static shapes and no host syncs, so it compiles without graph breaks.
        """
        if images is not None and images.dtype == torch.uint8:  # resized pixels, to be normalised here
            images = normalize_pixels(images, self.pixel_mean, self.pixel_std)
        embeds = self.embed(input_ids, images, image_slots)  # (B, T, D)
        mask = packed_attention_mask(self.lm.config, sequence_ids, embeds.dtype)
        hidden = self.lm.get_decoder()(inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids,
                                       use_cache=False).last_hidden_state  # (B, T, D)
        # The LM head only runs where there is a target, and in chunks: with 262k-token
        # vocabularies, (B, T, V) logits would dominate memory.
        # index_select, not [loss_positions]: its backward (index_add) takes the repeated padding
        # positions in parallel, where index_put(accumulate=True) on CUDA serialises them.
        hidden = hidden.flatten(0, 1).index_select(0, loss_positions)  # (A, D)
        head = self.lm.get_output_embeddings().weight  # (V, D), often tied to the input embedding
        return linear_cross_entropy(hidden, head, loss_targets, softcap=self.logit_softcap, backend=self.loss_backend)

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, images: torch.Tensor | None) -> torch.Tensor:
        """(B, T, V) next-token logits of padded prompts, as transformers computes them (tests, export checks)."""
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        hidden = self.lm.get_decoder()(inputs_embeds=self.embed(input_ids, images), attention_mask=attention_mask,
                                       position_ids=position_ids, use_cache=False).last_hidden_state
        logits = self.lm.get_output_embeddings()(hidden)
        cap = self.logit_softcap
        return torch.tanh(logits / cap) * cap if cap else logits

    @torch.inference_mode()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, images: torch.Tensor | None,
                 max_new_tokens: int = 32, do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
                 use_cache: bool = True) -> torch.Tensor:
        """Batched generation from left-padded prompts -> (B, <= max_new_tokens) new token ids.

        transformers' generate does the decoding loop: KV cache, stop at the end-of-turn tokens,
        greedy or sampling. Rows that stop early are padded with the pad token.
        """
        if attention_mask[:, -1].min() == 0:
            raise ValueError("generate expects left-padded prompts (tokenizer.padding_side = 'left')")
        config = self.generation_config()
        config.update(max_new_tokens=max_new_tokens, do_sample=do_sample, use_cache=use_cache, top_k=None,
                      temperature=temperature if do_sample else None, top_p=top_p if do_sample else None)
        # Blocks compiled for training have static shapes (a growing KV cache would recompile them every
        # token), and training's attention kernel may be FlexAttention, made for packed rows: generate eagerly
        # with SDPA.
        training_attention = self.lm.config._attn_implementation
        try:
            if training_attention == "flex_attention":
                self.lm.set_attn_implementation("sdpa")
            with torch.compiler.set_stance("force_eager"):
                embeds = self.embed(input_ids, images)
                return self.lm.generate(inputs_embeds=embeds, attention_mask=attention_mask, generation_config=config)
        finally:
            self.lm.set_attn_implementation(training_attention)

    # ---------------------------------------------------------------- counting

    def parameter_counts(self) -> dict[str, int]:
        count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731 (shared tensors counted once)
        return {"vision": count(self.vision), "projector": count(self.projector), "language": count(self.lm),
                "total": count(self), "trainable": sum(p.numel() for p in self.parameters() if p.requires_grad)}

    # ---------------------------------------------------------------- checkpoints

    def save_pretrained(self, path: str | Path, meta: dict[str, Any] | None = None) -> Path:
        """config.json + model.safetensors + tokenizer + preprocessor_config.json (+ meta.json), atomically."""
        with atomic_directory(path) as tmp:
            self.write_files(tmp, meta)
        return Path(path)

    def write_files(self, directory: Path, meta: dict[str, Any] | None = None) -> None:
        """The checkpoint files, written into an existing (temporary) directory: a transformers checkpoint
        (config, weights, tokenizer, image processor, processor, generation config) that
        `AutoModelForImageTextToText` / `AutoProcessor` load once `nanovlm` is imported."""
        from safetensors.torch import save_model

        self.hf_config().save_pretrained(directory)
        save_model(self, str(directory / WEIGHTS))  # handles tied embeddings; no pickle
        processor = self.processor()
        processor.save_pretrained(directory)  # tokenizer, chat template, processor_config.json
        processor.image_processor.save_pretrained(directory)  # preprocessor_config.json, for AutoImageProcessor
        self.generation_config().save_pretrained(directory)
        if meta is not None:
            write_json(directory / "meta.json", meta)

    def hf_config(self) -> NanoVLMConfig:
        """The transformers config: both backbones' configs, how they are joined, and the project's own config."""
        arch = self.arch
        # As dicts: a config object passed in would be shared, and NanoVLMConfig sets (None) attention on its parts.
        return NanoVLMConfig(vision_config=arch.vision_config.to_dict(), text_config=self.lm.config.to_dict(),
                             image_token=self.cfg.image_token, image_token_id=self.image_token_id,
                             image_size=arch.transform.size, pixel_shuffle_factor=arch.factor,
                             image_tokens=arch.image_tokens, vision_prefix_tokens=arch.prefix_tokens,
                             architectures=[HF_ARCHITECTURE], model=to_dict(self.cfg),
                             sources={"vision": arch.vision_source, "language": arch.language_source})

    def processor(self) -> NanoVLMProcessor:
        """The transformers processor giving this model's exact pixels and prompt ids."""
        image_processor = NanoVLMImageProcessor(**self.arch.transform.to_preprocessor())
        template = processor_chat_template(self.tokenizer.chat_template, self.cfg.image_token)
        return NanoVLMProcessor(image_processor, self.tokenizer, image_token=self.cfg.image_token,
                                image_tokens=self.arch.image_tokens, chat_template=template)

    def generation_config(self) -> Any:
        """Greedy decoding that stops at EOS or the end of the turn and never emits the image token."""
        from transformers import GenerationConfig

        tok = self.tokenizer
        return GenerationConfig(eos_token_id=stop_token_ids(tok), pad_token_id=tok.pad_token_id, bos_token_id=None,
                                suppress_tokens=[self.image_token_id], do_sample=False)

    @classmethod
    def from_pretrained(cls, path: str | Path, expect: ModelConfig | None = None,
                        device: str | torch.device = "cpu") -> "VisionLanguageModel":
        """Load a checkpoint directory (or hub repo id); `expect` checks it has that architecture."""
        from safetensors.torch import load_model

        path = _local_checkpoint(str(path))
        stored = read_json(path / "config.json")
        if stored.get("model_type") != "nanovlm":
            raise IncompatibleCheckpoint(f"{path} is not a nanovlm checkpoint (config.json model_type "
                                         f"{stored.get('model_type')!r})")
        cfg = from_dict(ModelConfig, stored["model"])
        if expect is not None:
            check_compatible(cfg, expect, str(path))
        arch = architecture_from_checkpoint(cfg, stored, path)
        model = _assemble(arch, pretrained=False, tokenizer=_load_checkpoint_tokenizer(path, cfg))
        try:
            missing, unexpected = load_model(model, str(path / WEIGHTS), strict=False, device=str(device))
        except RuntimeError as err:  # shape mismatch
            raise IncompatibleCheckpoint(f"{path}: weights do not fit the architecture: {err}") from None
        if missing or unexpected:
            raise IncompatibleCheckpoint(f"{path}: weights do not fit the architecture; missing: "
                                         f"{sorted(missing)[:5]}, unexpected: {sorted(unexpected)[:5]}")
        return model.to(device)


def check_compatible(found: ModelConfig, expect: ModelConfig, where: str) -> None:
    fields = {k: v for k, v in diff(found, expect).items() if k not in NON_ARCHITECTURE_FIELDS}
    if fields:
        lines = ", ".join(f"{k}: checkpoint {a!r} vs requested {b!r}" for k, (a, b) in fields.items())
        raise IncompatibleCheckpoint(f"checkpoint {where} has a different architecture ({lines}); "
                                     f"load it with its own config or start a new run")


def _local_checkpoint(path: str) -> Path:
    if os.path.isdir(path):
        return Path(path)
    if "/" not in path or os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint directory at {path!r}")
    from huggingface_hub import snapshot_download

    return Path(backbones.hub_call(path, lambda: snapshot_download(path), "checkpoint"))


def _load_checkpoint_tokenizer(path: Path, cfg: ModelConfig) -> Any:
    from transformers import AutoTokenizer

    return prepare_tokenizer(AutoTokenizer.from_pretrained(path), cfg.image_token)


def _tokenizer_for(arch: Architecture) -> Any:
    """The LM's tokenizer; with --random_init and no hub, the tiny stand-in of the same family."""
    try:
        return load_tokenizer(arch.language_source, arch.cfg.image_token)
    except backbones.BackboneUnavailable:
        entry = backbones.LANGUAGE_MODELS.get(arch.cfg.language_model)
        if not arch.cfg.random_init or entry is None:
            raise
        from nanovlm import tiny

        warnings.warn(f"tokenizer of {arch.language_source} unavailable offline; --random_init uses the tiny "
                      f"'{entry.tiny}' stand-in tokenizer (same special tokens and chat template)", stacklevel=2)
        return load_tokenizer(str(tiny.ensure(entry.tiny)), arch.cfg.image_token)


def _assemble(arch: Architecture, pretrained: bool, tokenizer: Any | None, vocab_size: int | None = None) -> VisionLanguageModel:
    """Backbones from transformers (pretrained weights or random init), projector, resized vocabulary."""
    from transformers import AutoModel, AutoModelForCausalLM

    with quiet_transformers():
        if pretrained:
            load = lambda fn, src, **kw: backbones.hub_call(src, lambda: fn(src, dtype=torch.float32, **kw), "weights")  # noqa: E731
            vision_model = load(AutoModel.from_pretrained, arch.vision_source, config=arch.vision_config)
            lm = load(AutoModelForCausalLM.from_pretrained, arch.language_source)
        else:
            vision_model = AutoModel.from_config(arch.vision_config, dtype=torch.float32)
            lm = AutoModelForCausalLM.from_config(arch.language_config, dtype=torch.float32)
    vision = VisionEncoder(vision_model, arch.prefix_tokens, _native_size(arch), arch.transform.size)
    # The vocabulary grows by the tokens the processor added (the image placeholder at least).
    old = lm.get_input_embeddings().num_embeddings
    new = vocab_size or max(old, len(tokenizer))
    if new != old:
        lm.resize_token_embeddings(new, mean_resizing=False)
        weight = lm.get_input_embeddings().weight
        if weight.device.type != "meta":
            with torch.no_grad():  # new rows start at the mean embedding, a neutral point
                weight[old:] = weight[:old].mean(0)
    return VisionLanguageModel(arch, vision, lm, tokenizer)


def _native_size(arch: Architecture) -> int:
    return int(getattr(arch.vision_config, "image_size", arch.transform.size))


def build_vlm(cfg: ModelConfig, meta: bool = False, arch: Architecture | None = None) -> VisionLanguageModel:
    """Build the VLM of `cfg`: pretrained backbones, or random ones with cfg.random_init / cfg.tiny.

    meta=True builds on the meta device (shapes only, no memory, no download): for counting.
    """
    arch = arch or resolve_architecture(cfg)
    if meta:
        with torch.device("meta"):
            # one row more for the image token; the exact tokenizer needs no counting
            model = _assemble(arch, pretrained=False, tokenizer=None,
                              vocab_size=arch.language_config.vocab_size + 1)
        return model
    pretrained = not cfg.random_init  # tiny stand-ins are "pretrained" from their local repo
    return _assemble(arch, pretrained=pretrained, tokenizer=_tokenizer_for(arch))
