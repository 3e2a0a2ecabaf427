"""Reused CPU output buffers for the layers' dequantized weights: bounded, and released on demand.

A layer's dequantized weight lives only for one matmul. On the CPU, allocating it fresh every
call costs more than the dequantization: glibc hands big blocks back to the OS on free, so each
new one is page-faulted in again (measured in a real ComfyUI: about half of a GGUF sampling step).
The layers therefore dequantize into `OUTPUT_BUFFERS.get(...)`: one buffer per thread and dtype,
grown to the largest weight seen, whose contents are valid only until that thread's next request.

Bounds: a weight above MAX_BUFFER_BYTES gets a fresh tensor instead (nothing kept), and a
thread's buffers go when the thread ends. `release()` drops every thread's buffers (memory in use
by a caller is freed once the caller lets go); the ComfyUI patchers call it when a model is
unloaded (`unload_all_models`, `/free`, or making room). Accelerators get no buffer (`get`
returns None): their caching allocators already reuse memory.
"""
from __future__ import annotations

import math
import threading
import weakref

import torch

MAX_BUFFER_BYTES = 1 << 30


class _ThreadBuffers:
    def __init__(self):
        self.by_dtype: dict[torch.dtype, torch.Tensor] = {}


class OutputBuffers:
    def __init__(self, max_bytes: int = MAX_BUFFER_BYTES):
        self.max_bytes = max_bytes
        self._local = threading.local()
        self._all = weakref.WeakSet()  # every live thread's buffers, for release() and held_bytes()

    def get(self, shape, dtype: torch.dtype, device) -> torch.Tensor | None:
        """A contiguous tensor of `shape` and `dtype` over this thread's buffer; None off the CPU
        or above the size bound (the caller then allocates)."""
        if torch.device(device).type != "cpu":
            return None
        numel = math.prod(shape)
        if numel * dtype.itemsize > self.max_bytes:
            return None
        mine = getattr(self._local, "buffers", None)
        if mine is None:
            mine = self._local.buffers = _ThreadBuffers()
            self._all.add(mine)
        buffer = mine.by_dtype.get(dtype)
        if buffer is None or buffer.numel() < numel:
            mine.by_dtype.pop(dtype, None)  # free the old one before allocating the new one
            buffer = mine.by_dtype[dtype] = torch.empty(numel, dtype=dtype)
        return buffer[:numel].view(shape)

    def held_bytes(self) -> int:
        return sum(b.nbytes for mine in list(self._all) for b in list(mine.by_dtype.values()))

    def release(self) -> None:
        for mine in list(self._all):
            mine.by_dtype.clear()


OUTPUT_BUFFERS = OutputBuffers()


def release_output_buffers(*_args, **_kwargs) -> None:
    """Drop every thread's output buffers (usable as a callback: ignores its arguments)."""
    OUTPUT_BUFFERS.release()
