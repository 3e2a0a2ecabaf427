"""Where kernels put their result: fresh memory, or (on request, CPU only) a reused buffer.

A layer's dequantized weight lives only for one matmul. On the CPU, allocating it fresh every
call costs more than the dequantization: glibc hands big blocks back to the OS on free, so each
new one is page-faulted in again (measured in a real ComfyUI: about half of a GGUF sampling step).
Inside `reused_output()` the kernels write into one grow-only buffer per thread and dtype instead;
the result is then valid only until the next dequantization in that thread. Accelerators keep
fresh allocations: their caching allocators already reuse memory.
"""
from __future__ import annotations

import math
import threading
from contextlib import contextmanager

import torch

_state = threading.local()


@contextmanager
def reused_output():
    previous = getattr(_state, "active", False)
    _state.active = True
    try:
        yield
    finally:
        _state.active = previous


def new_output(shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    if device.type != "cpu" or not getattr(_state, "active", False):
        return torch.empty(shape, dtype=dtype, device=device)
    numel = math.prod(shape)
    buffers = _state.__dict__.setdefault("buffers", {})
    buffer = buffers.get(dtype)
    if buffer is None or buffer.numel() < numel:
        buffer = buffers[dtype] = torch.empty(numel, dtype=dtype, device=device)
    return buffer[:numel].view(shape)
