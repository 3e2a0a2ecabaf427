"""One table of GGML types, one record each: block size, bytes per block, the torch kernel that
dequantizes it, a generator of random valid blocks (for tests and the benchmark) and, for the
types this pack can write, the torch quantizer (ops/ggml/quantizers; None for the others).

A kernel takes a uint8 tensor of shape (n_blocks, type_size) and writes the values into `out`, a
contiguous float tensor of shape (n_blocks, block_size) on the same device, in out's dtype. In
float32 its values equal gguf-py's reference `gguf.quants.dequantize` bit for bit.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from .kernels import MODULES
from .quantizers import QUANTIZERS, Quantizer

Kernel = Callable[[torch.Tensor, torch.Tensor], None]
# (n_blocks, numpy Generator) -> uint8 array (n_blocks, type_size) of valid blocks, finite scales
RandomBlocks = Callable[[int, np.random.Generator], np.ndarray]


@dataclass(frozen=True)
class QuantType:
    ggml_type: GGMLQuantizationType
    block_size: int
    type_size: int
    kernel: Kernel
    random_blocks: RandomBlocks
    quantizer: Quantizer | None = None

    @property
    def name(self) -> str:
        return self.ggml_type.name

    def row_bytes(self, row_elements: int) -> int:
        return tensor_bytes(self.ggml_type, (row_elements,))

    def tensor_bytes(self, shape) -> int:
        return tensor_bytes(self.ggml_type, shape)


def rows_are_whole_blocks(ggml_type, shape) -> bool:
    """Whether each row of a tensor of `shape` (torch order: the last dimension is a row) is a whole
    number of `ggml_type`'s blocks, as GGML stores them. Any GGML type gguf-py knows, supported or not."""
    block_size, _ = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
    return (shape[-1] if len(shape) else 1) % block_size == 0


def tensor_bytes(ggml_type, shape) -> int:
    """Bytes a tensor of `shape` (torch order) takes in `ggml_type`; ValueError when its rows are not
    whole blocks (see rows_are_whole_blocks). The one place the size formula lives."""
    ggml_type = GGMLQuantizationType(ggml_type)
    block_size, type_size = GGML_QUANT_SIZES[ggml_type]
    if not rows_are_whole_blocks(ggml_type, shape):
        raise ValueError(f"{ggml_type.name} stores rows of whole {block_size}-element blocks; "
                         f"a tensor of shape {list(shape)} has rows of {shape[-1]} elements")
    return math.prod(shape) // block_size * type_size


QUANT_TYPES: dict[GGMLQuantizationType, QuantType] = {
    ggml_type: QuantType(ggml_type, *GGML_QUANT_SIZES[ggml_type], kernel, random_blocks, QUANTIZERS.get(ggml_type))
    for module in MODULES
    for ggml_type, (kernel, random_blocks) in module.TYPES.items()
}

# Types whose raw bytes are already a torch float tensor: no dequantization needed.
FLOAT_TYPES: dict[GGMLQuantizationType, torch.dtype] = {
    GGMLQuantizationType.F32: torch.float32,
    GGMLQuantizationType.F16: torch.float16,
    GGMLQuantizationType.BF16: torch.bfloat16,
}


def quant_type(ggml_type) -> QuantType:
    from ...errors import UnsupportedQuantTypeError

    try:
        return QUANT_TYPES[GGMLQuantizationType(ggml_type)]
    except (KeyError, ValueError):
        name = getattr(ggml_type, "name", ggml_type)
        raise UnsupportedQuantTypeError(
            f"GGML type {name} cannot be dequantized by this pack; supported: "
            + ", ".join(t.name for t in QUANT_TYPES)
        ) from None
