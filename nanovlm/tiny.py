"""Tiny offline stand-ins for every backbone family, saved exactly like Hugging Face hub repos.

    path = ensure("dinov3")        # -> ~/.cache/nanovlm/tiny-v1/dinov3 (built on first use)
    AutoModel.from_pretrained(path)  # the same call a hub id takes

Vision: siglip, dinov2, dinov3 (config.json + model.safetensors + preprocessor_config.json).
Language: smollm (Llama, SmolLM2-Instruct special tokens and chat template), smollm-base (no chat
template: ChatML is added by the processor), gemma (Gemma3 text, scaled embeddings, Gemma template).
Each LM carries a byte-level BPE tokenizer trained here on a fixed corpus. Everything is seeded, so
the same version builds the same files; bump VERSION when a definition below changes.
The cache lives in $NANOVLM_CACHE (default ~/.cache/nanovlm).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from nanovlm.backbones import HUB_CONFIGS

VERSION = "tiny-v1"
IMAGE_SIZE = 64
PATCH = 8  # 8x8 patch grid at 64 px: pixel shuffle 2 gives 16 image tokens

SIGLIP_MEAN_STD = ([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])
IMAGENET_MEAN_STD = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])

VISION = ("siglip", "dinov2", "dinov3")
LANGUAGE = ("smollm", "smollm-base", "gemma")


def cache_root() -> Path:
    return Path(os.environ.get("NANOVLM_CACHE", Path.home() / ".cache" / "nanovlm")) / VERSION


def ensure(name: str) -> Path:
    """Directory of the tiny stand-in `name`, building it atomically on first use."""
    if name not in VISION + LANGUAGE:
        raise ValueError(f"unknown tiny backbone {name!r}; valid: {', '.join(VISION + LANGUAGE)}")
    target = cache_root() / name
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        import torch

        # Builds seed torch's generator: fork it, so that a run which builds the cache on first use
        # initialises its own new weights exactly as a run that finds the cache built.
        with torch.random.fork_rng(devices=[]):
            (_build_vision if name in VISION else _build_language)(name, tmp)
        try:
            os.rename(tmp, target)  # atomic: readers see a complete repo or none
        except OSError:  # another process won the race; its copy is identical
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


# --------------------------------------------------------------------------- vision


def _vision_config(name: str) -> Any:
    from transformers import Dinov2Config, DINOv3ViTConfig, SiglipConfig

    common = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=IMAGE_SIZE, patch_size=PATCH)
    if name == "siglip":  # a full SiglipModel, as on the hub; we load only its vision tower
        text = dict(vocab_size=64, pad_token_id=1, bos_token_id=1, eos_token_id=2, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                    num_attention_heads=2, max_position_embeddings=16)
        return SiglipConfig(text_config=text, vision_config=dict(common, intermediate_size=128))
    if name == "dinov2":
        return Dinov2Config(**common, mlp_ratio=2)
    # like vits16plus: gated (SwiGLU) MLP, 4 registers, RoPE
    return DINOv3ViTConfig(**common, intermediate_size=128, num_register_tokens=4, use_gated_mlp=True, hidden_act="silu")


def _build_vision(name: str, out: Path) -> None:
    import torch
    from transformers import AutoModel

    torch.manual_seed(0)
    model = AutoModel.from_config(_vision_config(name))
    model.save_pretrained(out)
    mean, std = SIGLIP_MEAN_STD if name == "siglip" else IMAGENET_MEAN_STD
    resample = 2 if name == "dinov3" else 3  # as the real repos: bilinear for DINOv3, bicubic otherwise
    processor = {"do_resize": True, "do_rescale": True, "do_normalize": True, "rescale_factor": 1 / 255,
                 "image_mean": mean, "image_std": std, "resample": resample,
                 "size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE}}
    (out / "preprocessor_config.json").write_text(json.dumps(processor, indent=2))


# --------------------------------------------------------------------------- language

# Words the tiny tokenizer learns merges for: the synthetic VQA vocabulary plus common English.
_CORPUS_WORDS = (
    "what colour color is the shape it how many shapes are there where which answer question image picture "
    "red green blue yellow purple orange black white grey pink brown circle square triangle star rectangle "
    "left right top bottom middle centre center one two three four five 0 1 2 3 4 5 6 7 8 9 yes no a an of "
    "in on at to and or with this that you user assistant system model helpful please describe option "
    "letter choice choices given directly from A B C D E . , ? ! : ; ( ) ' \" - \n"
)

_SMOLLM_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
_GEMMA_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]


def _train_bpe(specials: list[str], vocab_size: int = 512) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    words = _CORPUS_WORDS.split(" ")
    # A fixed corpus of word sequences, so merges learn words with their leading space (" shape").
    text = " ".join(words)
    corpus = [text, " ".join(reversed(words)), " ".join(w.capitalize() for w in words)]
    tok.train_from_iterator(corpus * 8, trainer=trainer)
    return tok


def _tokenizer(name: str) -> Any:
    from transformers import PreTrainedTokenizerFast

    if name == "gemma":
        tok = PreTrainedTokenizerFast(tokenizer_object=_train_bpe(_GEMMA_SPECIALS), bos_token="<bos>",
                                      eos_token="<eos>", pad_token="<pad>", unk_token="<unk>",
                                      additional_special_tokens=["<start_of_turn>", "<end_of_turn>"])
        facts = json.loads((HUB_CONFIGS / "google--gemma-3-270m-it" / "tokenizer_facts.json").read_text())
        tok.chat_template = facts["chat_template_unverified_reference"]
        return tok
    real = "SmolLM2-360M-Instruct" if name == "smollm" else "SmolLM2-135M"
    meta = json.loads((HUB_CONFIGS / f"HuggingFaceTB--{real}" / "tokenizer_meta" / "tokenizer_config.json").read_text())
    tok = PreTrainedTokenizerFast(tokenizer_object=_train_bpe(_SMOLLM_SPECIALS), bos_token=meta["bos_token"],
                                  eos_token=meta["eos_token"], unk_token=meta["unk_token"],
                                  pad_token=meta.get("pad_token"), additional_special_tokens=_SMOLLM_SPECIALS[1:])
    if "chat_template" in meta:  # the real SmolLM2-Instruct template; the base model has none
        tok.chat_template = meta["chat_template"]
    return tok


def _language_config(name: str, tok: Any) -> Any:
    from transformers import Gemma3TextConfig, LlamaConfig

    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    common = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                  tie_word_embeddings=True, **ids)
    if name == "gemma":
        # Gemma specifics kept: head_dim independent of hidden size, sliding + full attention layers,
        # embeddings scaled by sqrt(hidden_size).
        return Gemma3TextConfig(**common, head_dim=32, query_pre_attn_scalar=32, sliding_window=64,
                                layer_types=["sliding_attention", "full_attention"])
    return LlamaConfig(**common, rope_theta=100000.0)


def _build_language(name: str, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    tok = _tokenizer(name)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(_language_config(name, tok))
    eos = [tok.eos_token_id] + ([tok.convert_tokens_to_ids("<end_of_turn>")] if name == "gemma" else [])
    model.generation_config = GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=eos,
                                               pad_token_id=tok.pad_token_id)
    model.save_pretrained(out)
    tok.save_pretrained(out)
