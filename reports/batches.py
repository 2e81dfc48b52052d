"""Synthetic micro-batches in exactly the training format, for timing a training step.

    batch = synthetic_batch(model, batch_size=4, seq_len=2048, packed=True, sample_len=256)
    batch["stats"]["sample_lens"]                  # the length of every sample (collate_rows), for the FLOPs count

Synthetic processed samples (random token ids with one image's placeholder block at the start,
labels = the ids with the image tokens ignored, random pixels at the encoder's input size), grouped
into rows by `nanovlm.data.packing.pack` and collated by `collate_rows`, so the collator's bucket
padding (blank images, ignored loss slots) is in the timing just as in training:

- unpacked (default): `batch_size` rows, each one sample of `seq_len` tokens;
- packed (`packed=True`): `batch_size` rows of `seq_len` tokens, each holding seq_len // sample_len
  samples of `sample_len` tokens, one image each, attention restricted to each sample; a
  remainder of the row (when sample_len does not divide seq_len) is padding.

Every text token of a sample has a loss (an upper bound on the LM head's cost: real samples train
on the answer only). Values do not matter, only shapes: timing and memory depend on those alone.
"""

from __future__ import annotations

from typing import Any

import torch

from nanovlm.data.packing import collate_rows, pack
from nanovlm.data.processors import IGNORE_INDEX

# How long a packed sample is by default: a single-image VQA sample of the Cauldron/FineVision kind
# is the image's 49-64 tokens plus a question and a short answer, some tens to a few hundred
# tokens; 256 is that order of size and divides the usual row lengths (2048 = 8 samples per row).
DEFAULT_SAMPLE_LEN = 256


def synthetic_sample(model: Any, length: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """One processed sample of `length` tokens, as the data pipeline makes them: the image's placeholder
    block first, then random text ids; labels = the ids with the image tokens ignored; random pixels."""
    image_tokens = model.arch.image_tokens
    vocab = model.lm.get_input_embeddings().num_embeddings
    ids = torch.randint(0, vocab, (length,), generator=generator)
    ids[ids == model.image_token_id] = 0  # text must not contain the image placeholder
    ids[:image_tokens] = model.image_token_id
    labels = ids.clone()
    labels[:image_tokens] = IGNORE_INDEX
    size = model.arch.transform.size
    return {"input_ids": ids, "labels": labels, "pixel_values": torch.randn(1, 3, size, size, generator=generator)}


def batch_layout(image_tokens: int, seq_len: int, packed: bool, sample_len: int) -> tuple[int, int]:
    """(sample length, samples per row); raises ValueError for a layout that cannot hold a sample."""
    length = sample_len if packed else seq_len
    what = f"sample_len {sample_len}" if packed else f"seq_len {seq_len}"
    if length <= image_tokens + 1:
        raise ValueError(f"{what} leaves no text: a sample must exceed the {image_tokens} image tokens per image "
                         f"of this model by at least 2")
    if length > seq_len:
        raise ValueError(f"sample_len {sample_len} does not fit a row of seq_len {seq_len}")
    return length, (seq_len // sample_len if packed else 1)


def synthetic_batch(model: Any, batch_size: int, seq_len: int, packed: bool = False,
                    sample_len: int = DEFAULT_SAMPLE_LEN, seed: int = 0) -> dict[str, Any]:
    """One micro-batch of `batch_size` rows of `seq_len` tokens, made by `pack` and `collate_rows` (CPU tensors).

    Unpacked: a row is one sample of seq_len tokens. Packed: a row holds seq_len // sample_len
    samples of sample_len tokens.
    """
    length, per_row = batch_layout(model.arch.image_tokens, seq_len, packed, sample_len)
    g = torch.Generator().manual_seed(seed)
    samples = [synthetic_sample(model, length, g) for _ in range(batch_size * per_row)]
    (rows, consumed, _), = list(pack(samples, batch_size, seq_len, packing=packed))
    assert consumed == len(samples) and all(len(row) == per_row for row in rows)
    return collate_rows(rows, seq_len, model.tokenizer.pad_token_id, model.image_token_id, model.arch.image_tokens)
