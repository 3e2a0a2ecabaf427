"""Kernel for Q1_0, one sign bit per weight (ggml type 41, new in gguf-py after 0.19.0).

Block (ggml block_q1_0): an fp16 scale d, then qs[16], 128 bits, least significant bit first:
element j is bit j % 8 of byte j // 8, and its value is d where the bit is set, -d where it is
clear (gguf-py: np.where(bit, d, -d) in float32). q = +-1 times a float32 d is that value exactly,
so the shared BlockFormat writes it; each byte's eight signs are looked up at once, as the int8
bytes of one int64 word.
"""
from __future__ import annotations

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T
import torch

from .blocks import BlockFormat, byte_index, device_table, fp16_field, random_with_fp16_fields


@device_table
def _signs() -> np.ndarray:
    bits = (np.arange(256)[:, None] >> np.arange(8)) & 1
    return np.where(bits == 1, 1, -1).astype(np.int8).view("<i8").reshape(256)


def _unpack_q1_0(blocks: torch.Tensor) -> torch.Tensor:
    words = _signs(blocks.device, torch.int64).index_select(0, byte_index(blocks[:, 2:18]))
    return words.view(torch.int8).view(blocks.shape[0], 128)


def _scales_q1_0(blocks: torch.Tensor):
    return fp16_field(blocks, 0).float(), None


# |w| = d, below 1
TYPES = {
    T.Q1_0: (
        BlockFormat(GGML_QUANT_SIZES[T.Q1_0][0], scales=_scales_q1_0, unpack=_unpack_q1_0, widest=8 * 16),
        random_with_fp16_fields(T.Q1_0, {0: (1.0, True)}),
    ),
}
