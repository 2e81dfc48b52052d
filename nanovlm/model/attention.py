"""Attention masks for packed rows: causal inside each sample, nothing across samples.

    mask = packed_attention_mask(lm.config, sequence_ids, dtype)   # pass as the decoder's attention_mask
    lm.model(inputs_embeds=..., attention_mask=mask, position_ids=positions)

`sequence_ids` (B, T) numbers the samples of each row (0, 0, 0, 1, 1, 2, ...; a row's padding tail
is one more "sample" that nothing attends to from outside). The collator makes it on the CPU, so
building the mask needs no look at device values (no host sync), unlike transformers' own packed
detection from position ids, which checks `.all()` on the device in eager mode.

The mask comes from transformers' own mask functions (`masking_utils`), so each attention
implementation gets what it expects: a (B, 1, T, T) boolean tensor for SDPA (fine on CPU and for
short rows), an additive float mask for eager, and a FlexAttention `BlockMask` (no T x T tensor;
blocks outside every sample are skipped) for `flex_attention`. Models with sliding-window layers
(Gemma 3) get a {"full_attention", "sliding_attention"} dict, with the window counted inside the
row, which is the window inside the sample because a sample's tokens are contiguous.

The BlockMask is made here, by one compiled `create_block_mask`: transformers' `flex_attention_mask`
calls `create_block_mask(_compile=True)`, a path torch has deprecated, which wraps the function in
a new `torch.compile` at every call and whose `warnings.warn` breaks the graph of a traced forward
(three breaks per forward for Gemma 3).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn.attention.flex_attention import create_block_mask

# Implementations that take a prepared mask; flash-attention's varlen path takes cumulative
# sequence lengths instead (not wired up: use flex_attention on CUDA).
SUPPORTED = ("sdpa", "eager", "flex_attention")


_compiled_create_block_mask: Any = None  # made on first use: see compiled_create_block_mask


def compiled_create_block_mask(*args: Any) -> Any:
    """`create_block_mask`, compiled: it builds the block mask from the mask function block by block, without
    the (B, 1, T, T) tensor it materialises eagerly, and compiles once per row shape. The compiled function is
    made on first use, since making it imports inductor: 2 s that a process without FlexAttention (every
    CPU run and command) need not spend."""
    global _compiled_create_block_mask
    if _compiled_create_block_mask is None:
        _compiled_create_block_mask = torch.compile(create_block_mask)
    return _compiled_create_block_mask(*args)


def packed_attention_mask(config: Any, sequence_ids: torch.Tensor, dtype: torch.dtype) -> Any:
    """The decoder's attention mask (or per-layer-type dict) for rows of packed samples."""
    from transformers.masking_utils import (ALL_MASK_ATTENTION_FUNCTIONS, and_masks, causal_mask_function,
                                            packed_sequence_mask_function, sliding_window_causal_mask_function)

    impl = config._attn_implementation
    if impl not in SUPPORTED:
        raise ValueError(f"packed rows need one of the attention implementations {SUPPORTED}; the language model "
                         f"uses {impl!r}")
    batch, length = sequence_ids.shape
    same_sample = packed_sequence_mask_function(sequence_ids)

    def build(pattern):
        mask_function = and_masks(pattern, same_sample)
        if impl == "flex_attention":  # (batch, head, q, kv) mask functions are flex mask_mods
            return compiled_create_block_mask(mask_function, batch, None, length, length, sequence_ids.device)
        return ALL_MASK_ATTENTION_FUNCTIONS[impl](
            batch_size=batch, q_length=length, kv_length=length, mask_function=mask_function,
            attention_mask=None, allow_is_causal_skip=False, use_vmap=False, dtype=dtype, config=config,
            device=sequence_ids.device)

    layer_types = set(getattr(config, "layer_types", None) or ())
    if "sliding_attention" not in layer_types:
        return build(causal_mask_function)
    return {"full_attention": build(causal_mask_function),
            "sliding_attention": build(sliding_window_causal_mask_function(config.sliding_window))}
