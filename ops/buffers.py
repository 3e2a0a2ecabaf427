"""Reused CPU output buffers for the layers' dequantized weights.

A layer's dequantized weight lives only for one matmul. On the CPU, allocating it fresh every
call costs more than the dequantization: glibc hands big blocks back to the OS on free, so each
new one is page-faulted in again (measured in a real ComfyUI: about half of a GGUF sampling step).
The layers therefore dequantize into `OUTPUT_BUFFERS.get(...)`: one grow-only buffer per thread
and dtype, whose contents are valid only until that thread's next request. Accelerators get no
buffer (`get` returns None): their caching allocators already reuse memory.
"""
from __future__ import annotations

import math
import threading

import torch


class OutputBuffers:
    def __init__(self):
        self._local = threading.local()

    def get(self, shape, dtype: torch.dtype, device) -> torch.Tensor | None:
        """A contiguous tensor of `shape` and `dtype` over this thread's buffer, or None off the CPU."""
        if torch.device(device).type != "cpu":
            return None
        numel = math.prod(shape)
        buffers = self._local.__dict__.setdefault("buffers", {})
        buffer = buffers.get(dtype)
        if buffer is None or buffer.numel() < numel:
            buffer = buffers[dtype] = torch.empty(numel, dtype=dtype)
        return buffer[:numel].view(shape)


OUTPUT_BUFFERS = OutputBuffers()
