"""Torch quantizers: float weights -> GGML blocks, byte for byte what ggml's reference quantizers write.

A quantizer takes a float32 tensor (n_blocks, block_size) and returns uint8 (n_blocks, type_size).
The legacy types equal gguf-py's `quants.quantize`; the K-quants and IQ4 types follow ggml's
reference path without an importance matrix (what llama-quantize writes), operation for operation
in float32 (see common.py for why sums are loops). Vectorised over blocks; float32 only, so the
same code runs on CPU, CUDA and MPS.

`quantize_tensor` is the entry point: any float tensor whose rows are whole blocks, processed in
chunks that bound the working memory of the candidate searches.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T

from . import iq4, kquants, legacy

BlockQuantizer = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Quantizer:
    """A GGML type's block quantizer and the chunk (in weights) it handles at once."""

    quantize_blocks: BlockQuantizer
    # Weights per chunk: the searches hold (group, candidates, groups) float32 intermediates,
    # 16-21 candidates, so they take smaller chunks than the one-pass legacy types.
    chunk_elements: int

    def __call__(self, blocks: torch.Tensor) -> torch.Tensor:
        return self.quantize_blocks(blocks)


def _float_copy(dtype: torch.dtype) -> BlockQuantizer:
    def convert(blocks: torch.Tensor) -> torch.Tensor:
        return blocks.to(dtype).view(torch.uint8)

    return convert


_ONE_PASS = 1 << 20
_SEARCH = 1 << 16

QUANTIZERS: dict[T, Quantizer] = {
    T.F32: Quantizer(_float_copy(torch.float32), _ONE_PASS),
    T.F16: Quantizer(_float_copy(torch.float16), _ONE_PASS),
    T.BF16: Quantizer(_float_copy(torch.bfloat16), _ONE_PASS),
    **{t: Quantizer(f, _ONE_PASS) for t, f in legacy.QUANTIZERS.items()},
    **{t: Quantizer(f, _SEARCH) for t, f in kquants.QUANTIZERS.items()},
    **{t: Quantizer(f, _SEARCH) for t, f in iq4.QUANTIZERS.items()},
}


def quantize_tensor(weights: torch.Tensor, ggml_type, quantizer: Quantizer | None = None) -> torch.Tensor:
    """A float tensor -> its GGML bytes: uint8 of shape (*weights.shape[:-1], row_bytes), on weights' device.

    The last dimension must be a multiple of the type's block size (GGUF rows are whole blocks).
    """
    ggml_type = T(ggml_type)
    quantizer = quantizer or QUANTIZERS[ggml_type]
    block_size, type_size = GGML_QUANT_SIZES[ggml_type]
    row = weights.shape[-1] if weights.dim() else 1
    if row % block_size:
        raise ValueError(f"{ggml_type.name} stores rows of whole {block_size}-element blocks; "
                         f"a row of {row} elements does not fit")
    flat = weights.reshape(-1, block_size)
    out = torch.empty((flat.shape[0], type_size), dtype=torch.uint8, device=weights.device)
    step = max(1, quantizer.chunk_elements // block_size)
    for start in range(0, flat.shape[0], step):
        chunk = flat[start:start + step].to(torch.float32).contiguous()
        out[start:start + step] = quantizer(chunk)
    return out.reshape(*weights.shape[:-1], row // block_size * type_size)
