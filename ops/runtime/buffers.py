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
import mmap
import sys
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


class FreedBufferPool:
    """CPU memory for dequantized weights that is reused once nothing refers to it any more.

    Unlike `OutputBuffers` (valid until the thread's next request), a tensor from `empty()` is
    the caller's for as long as the caller, or any view or storage made from it, holds it: ComfyUI's
    cast path and its fallback dequantize through one entry point (the layout's `dequantize`),
    so nothing may be overwritten behind a caller's back. Each buffer is an anonymous memory map
    wrapped with `torch.frombuffer`; a torch storage over it holds a reference to the map, so a
    map referenced by this pool alone (refcount 2: the list and getrefcount's argument) is free.
    Its pages stay faulted in between uses, which is what saves the time (see the module doc).

    At most `max_buffers` maps (one is enough when each weight is dropped before the next is
    dequantized, as a layer's forward does), each up to `max_bytes`; otherwise, and off the CPU,
    the caller gets a fresh tensor. `release()` drops the maps (memory in use is freed once its
    holder lets go).
    """

    _FREE_REFCOUNT = 2

    def __init__(self, max_bytes: int = MAX_BUFFER_BYTES, max_buffers: int = 4):
        self.max_bytes = max_bytes
        self.max_buffers = max_buffers
        self._lock = threading.Lock()
        self._maps: list[mmap.mmap] = []

    def empty(self, shape, dtype: torch.dtype) -> torch.Tensor:
        """An uninitialised contiguous CPU tensor of `shape` and `dtype`, over a free pooled map where one fits."""
        numel = math.prod(shape)
        nbytes = numel * dtype.itemsize
        if nbytes == 0 or nbytes > self.max_bytes:
            return torch.empty(shape, dtype=dtype)
        with self._lock:
            index = self._free_index(nbytes)
            if index is None:
                return torch.empty(shape, dtype=dtype)
            return torch.frombuffer(self._maps[index], dtype=dtype, count=numel).view(shape)

    def _free_index(self, nbytes: int) -> int | None:
        free = [i for i in range(len(self._maps)) if sys.getrefcount(self._maps[i]) == self._FREE_REFCOUNT]
        fitting = [i for i in free if len(self._maps[i]) >= nbytes]
        if fitting:
            return min(fitting, key=lambda i: len(self._maps[i]))
        if free:  # grow: replace the largest free map that is too small
            index = max(free, key=lambda i: len(self._maps[i]))
            self._maps[index] = mmap.mmap(-1, nbytes)
            return index
        if len(self._maps) < self.max_buffers:
            self._maps.append(mmap.mmap(-1, nbytes))
            return len(self._maps) - 1
        return None

    def held_bytes(self) -> int:
        with self._lock:
            return sum(len(m) for m in self._maps)

    def release(self) -> None:
        with self._lock:
            self._maps.clear()


DEQUANT_POOL = FreedBufferPool()


def release_output_buffers(*_args, **_kwargs) -> None:
    """Drop every thread's output buffers and the pooled maps (usable as a callback: ignores its arguments)."""
    OUTPUT_BUFFERS.release()
    DEQUANT_POOL.release()
