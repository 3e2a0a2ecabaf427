"""Public dequantization entry point."""
from __future__ import annotations

import math

import torch

from ..errors import ZImageGGUFError
from .quant_types import quant_type


def dequantize(data: torch.Tensor, ggml_type, shape, dtype: torch.dtype = torch.float16,
               out: torch.Tensor | None = None) -> torch.Tensor:
    """Dequantize raw GGML blocks.

    `data` is a uint8 tensor holding the raw blocks (any shape; it is read as a flat byte run),
    `ggml_type` a `gguf.GGMLQuantizationType`; returns a tensor of `shape` and `dtype` on
    `data`'s device. With `out` (a contiguous tensor of that shape, dtype and device) the values
    are written there and `out` is returned: a caller that keeps one buffer for many weights
    saves allocating (on a CPU: page-faulting) fresh memory every call.
    """
    qt = quant_type(ggml_type)
    shape = tuple(int(s) for s in shape)
    n_elements = math.prod(shape)
    n_blocks = n_elements // qt.block_size
    if n_elements % qt.block_size or data.numel() != n_blocks * qt.type_size:
        raise ZImageGGUFError(
            f"{qt.name} data of {data.numel()} bytes does not hold a tensor of shape {list(shape)} "
            f"({n_elements} elements; {qt.name} stores {qt.block_size} elements in {qt.type_size} bytes)"
        )
    if out is None:
        out = torch.empty(shape, dtype=dtype, device=data.device)
    elif (tuple(out.shape) != shape or out.dtype != dtype or out.device != data.device
          or not out.is_contiguous()):
        raise ZImageGGUFError(
            f"out must be a contiguous {dtype} tensor of shape {list(shape)} on {data.device}; got "
            f"{'a non-contiguous ' if not out.is_contiguous() else ''}{out.dtype} tensor of shape "
            f"{list(out.shape)} on {out.device}"
        )
    qt.kernel(data.reshape(n_blocks, qt.type_size), out.view(n_blocks, qt.block_size))
    return out
