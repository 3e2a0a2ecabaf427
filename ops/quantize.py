"""Public quantization entry point: float weights -> GGML bytes (see ops/quantizers)."""
from __future__ import annotations

import torch

from .quant_types import quant_type


def quantize(weights: torch.Tensor, ggml_type, chunk_elements: int | None = None) -> torch.Tensor:
    """A float tensor -> its GGML blocks: uint8 of shape (*weights.shape[:-1], row_bytes), on weights' device.

    The last dimension must be a multiple of the type's block size (GGUF rows are whole blocks).
    Any float dtype; the blocks are quantized from float32 values, `chunk_elements` weights at a
    time (default: the type's own chunk, which bounds the search intermediates).
    """
    from ..errors import UnsupportedQuantTypeError, ZImageGGUFError

    qt = quant_type(ggml_type)
    if qt.quantizer is None:
        raise UnsupportedQuantTypeError(f"this pack cannot quantize to {qt.name}; it can write "
                                        + ", ".join(t.name for t in quantizable_types()))
    row = weights.shape[-1] if weights.dim() else 1
    if row % qt.block_size:
        raise ZImageGGUFError(f"{qt.name} stores rows of whole {qt.block_size}-element blocks; "
                              f"a row of {row} elements does not fit")
    flat = weights.reshape(-1, qt.block_size)
    out = torch.empty((flat.shape[0], qt.type_size), dtype=torch.uint8, device=weights.device)
    step = max(1, (chunk_elements or qt.quantizer.chunk_elements) // qt.block_size)
    for start in range(0, flat.shape[0], step):
        out[start:start + step] = qt.quantizer(flat[start:start + step].to(torch.float32).contiguous())
    return out.reshape(*weights.shape[:-1], qt.row_bytes(row))


def quantizable_types():
    from .quant_types import QUANT_TYPES

    return [t for t, qt in QUANT_TYPES.items() if qt.quantizer is not None]
