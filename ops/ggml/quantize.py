"""Public quantization entry point: float weights -> GGML bytes (see ops/ggml/quantizers)."""
from __future__ import annotations

import torch

from .quant_types import quant_type, rows_are_whole_blocks


def quantize(weights: torch.Tensor, ggml_type, chunk_elements: int | None = None,
             imatrix: torch.Tensor | None = None) -> torch.Tensor:
    """A float tensor -> its GGML blocks: uint8 of shape (*weights.shape[:-1], row_bytes), on weights' device.

    The last dimension must be a multiple of the type's block size (GGUF rows are whole blocks).
    Any float dtype; the blocks are quantized from float32 values, `chunk_elements` weights at a
    time (default: the type's own chunk, which bounds the search intermediates).
    `imatrix`: llama.cpp importance weights, one per column (the last dimension), for the types
    in imatrix_types(); the bytes are then ggml's quantize_chunk with those weights.
    """
    from ...errors import UnsupportedQuantTypeError, ZImageGGUFError

    qt = quant_type(ggml_type)
    if qt.quantizer is None:
        raise UnsupportedQuantTypeError(f"this pack cannot quantize to {qt.name}; it can write "
                                        + ", ".join(t.name for t in quantizable_types()))
    row = weights.shape[-1] if weights.dim() else 1
    if not rows_are_whole_blocks(qt.ggml_type, weights.shape):
        raise ZImageGGUFError(f"{qt.name} stores rows of whole {qt.block_size}-element blocks; "
                              f"a row of {row} elements does not fit")
    column_blocks = None
    if imatrix is not None:
        if not qt.quantizer.takes_imatrix:
            raise UnsupportedQuantTypeError(f"{qt.name} cannot be quantized with an importance matrix here; "
                                            "these types can: " + ", ".join(t.name for t in imatrix_types()))
        if imatrix.numel() != row:
            raise ZImageGGUFError(f"the importance matrix has {imatrix.numel()} weights but a row has {row} columns")
        column_blocks = imatrix.reshape(-1, qt.block_size).to(device=weights.device, dtype=torch.float32)
    flat = weights.reshape(-1, qt.block_size)
    out = torch.empty((flat.shape[0], qt.type_size), dtype=torch.uint8, device=weights.device)
    step = max(1, (chunk_elements or qt.quantizer.chunk_elements) // qt.block_size)
    for start in range(0, flat.shape[0], step):
        chunk = flat[start:start + step].to(torch.float32).contiguous()
        quant_weights = None
        if column_blocks is not None:  # block b of the flat tensor covers columns of block b % blocks_per_row
            index = torch.arange(start, start + chunk.shape[0], device=weights.device) % column_blocks.shape[0]
            quant_weights = column_blocks[index]
        out[start:start + step] = qt.quantizer(chunk, quant_weights)
    return out.reshape(*weights.shape[:-1], qt.row_bytes(row))


def quantizable_types():
    from .quant_types import QUANT_TYPES

    return [t for t, qt in QUANT_TYPES.items() if qt.quantizer is not None]


def imatrix_types():
    """The types that take an importance matrix (llama.cpp's imatrix), weighted as ggml weights them."""
    from .quant_types import QUANT_TYPES

    return [t for t, qt in QUANT_TYPES.items() if qt.quantizer is not None and qt.quantizer.takes_imatrix]
