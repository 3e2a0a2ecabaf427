"""Public dequantization entry point."""
from __future__ import annotations

import math

import torch

from .quant_types import quant_type


def dequantize(data: torch.Tensor, ggml_type, shape, dtype: torch.dtype = torch.float16) -> torch.Tensor:
    """Dequantize raw GGML blocks.

    `data` is a uint8 tensor holding the raw blocks (any shape; it is read as a flat byte run),
    `ggml_type` a `gguf.GGMLQuantizationType`; returns a tensor of `shape` and `dtype` on
    `data`'s device.
    """
    qt = quant_type(ggml_type)
    shape = tuple(int(s) for s in shape)
    n_elements = math.prod(shape)
    n_blocks = n_elements // qt.block_size
    if n_elements % qt.block_size or data.numel() != n_blocks * qt.type_size:
        from ..errors import ZImageGGUFError

        raise ZImageGGUFError(
            f"{qt.name} data of {data.numel()} bytes does not hold a tensor of shape {list(shape)} "
            f"({n_elements} elements; {qt.name} stores {qt.block_size} elements in {qt.type_size} bytes)"
        )
    blocks = data.reshape(n_blocks, qt.type_size)
    return qt.kernel(blocks, dtype).reshape(shape)
