"""Whole GGML rows: a row of a quantized matrix is an independent run of whole blocks, so a view
that keeps the rows, or a lookup of some rows, needs no dequantization of the rest. Used by both
the pack's QuantizedTensor (tensor.py, layers.py) and ComfyUI's GGML layouts (comfy_layout.py)."""
from __future__ import annotations

import math

import torch

from .dequant import dequantize


def row_view_shape(shape, size) -> list[int] | None:
    """`size` with its -1 resolved when a view of `shape` to it keeps every row whole (same number of
    elements, same last dimension), else None: such a view can stay quantized."""
    size, numel = [int(s) for s in size], math.prod(shape)
    if -1 in size:
        known = math.prod(s for s in size if s != -1)
        size[size.index(-1)] = numel // max(known, 1)
    if size and math.prod(size) == numel and size[-1] == shape[-1]:
        return size
    return None


def embedding_rows(raw: torch.Tensor, ggml_type, shape, ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Rows `ids` of a (rows, row_len) GGML table stored as the bytes `raw`, in `dtype` on ids'
    device, dequantizing only those rows."""
    n_rows, row_len = shape
    rows = raw.view(n_rows, -1).index_select(0, ids.reshape(-1).to(raw.device))
    rows = rows.to(ids.device, non_blocking=True)
    return dequantize(rows, ggml_type, (rows.shape[0], row_len), dtype).reshape(*ids.shape, row_len)
