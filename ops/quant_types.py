"""One table of GGML types, one record each: block size, bytes per block, the torch kernel that
dequantizes it, a generator of random valid blocks (for tests and the benchmark) and, for the
types this pack can write, the torch quantizer (ops/quantizers; None for the others).

A kernel takes a uint8 tensor of shape (n_blocks, type_size) and writes the values into `out`, a
contiguous float tensor of shape (n_blocks, block_size) on the same device, in out's dtype. In
float32 its values equal gguf-py's reference `gguf.quants.dequantize` bit for bit.
"""
from __future__ import annotations

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
        return row_elements // self.block_size * self.type_size


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
    from ..errors import UnsupportedQuantTypeError

    try:
        return QUANT_TYPES[GGMLQuantizationType(ggml_type)]
    except (KeyError, ValueError):
        name = getattr(ggml_type, "name", ggml_type)
        raise UnsupportedQuantTypeError(
            f"GGML type {name} cannot be dequantized by this pack; supported: "
            + ", ".join(t.name for t in QUANT_TYPES)
        ) from None
