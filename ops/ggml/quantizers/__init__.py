"""Torch quantizers: float weights -> GGML blocks, byte for byte what ggml's reference quantizers write.

A quantizer takes a float32 tensor (n_blocks, block_size) and returns uint8 (n_blocks, type_size).
The legacy types equal gguf-py's `quants.quantize`; the K-quants and IQ4 types follow ggml's
reference path without an importance matrix (what llama-quantize writes), and the K and IQ4
types also ggml's importance-matrix path (llama-quantize --imatrix), operation for operation
in float32 (see common.py for why sums are loops). Vectorised over blocks; float32 only, so the
same code runs on CPU, CUDA and MPS.

QUANTIZERS feeds the `quantizer` column of ops.ggml.quant_types; ops.ggml.quantize is the entry point.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from gguf import GGMLQuantizationType as T

from . import iq4, kquants, legacy

BlockQuantizer = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Quantizer:
    """A GGML type's block quantizer and the chunk (in weights) it handles at once."""

    quantize_blocks: BlockQuantizer
    # Weights per chunk: the searches hold (group, candidates, groups) float32 intermediates,
    # 16-21 candidates, so they take smaller chunks than the one-pass legacy types.
    chunk_elements: int
    # Whether quantize_blocks takes importance weights (llama.cpp's imatrix, one per column,
    # laid out like blocks) as a second argument, weighting as ggml does.
    takes_imatrix: bool = False

    def __call__(self, blocks: torch.Tensor, quant_weights: torch.Tensor | None = None) -> torch.Tensor:
        if quant_weights is None:
            return self.quantize_blocks(blocks)
        return self.quantize_blocks(blocks, quant_weights)


def _float_copy(dtype: torch.dtype) -> BlockQuantizer:
    def convert(blocks: torch.Tensor) -> torch.Tensor:
        return blocks.to(dtype).view(torch.uint8)

    return convert


_ONE_PASS = 1 << 20
_SEARCH = 1 << 20

QUANTIZERS: dict[T, Quantizer] = {
    T.F32: Quantizer(_float_copy(torch.float32), _ONE_PASS),
    T.F16: Quantizer(_float_copy(torch.float16), _ONE_PASS),
    T.BF16: Quantizer(_float_copy(torch.bfloat16), _ONE_PASS),
    **{t: Quantizer(f, _ONE_PASS) for t, f in legacy.QUANTIZERS.items()},
    **{t: Quantizer(f, _SEARCH, t in kquants.IMATRIX_TYPES) for t, f in kquants.QUANTIZERS.items()},
    **{t: Quantizer(f, _SEARCH, t in iq4.IMATRIX_TYPES) for t, f in iq4.QUANTIZERS.items()},
}
