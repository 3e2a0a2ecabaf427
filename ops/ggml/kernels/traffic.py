"""Memory traffic of a torch kernel, counted without running it: the bytes every operation writes
and reads, seen by a TorchDispatchMode on the `meta` device (shapes and dtypes, no data).

On a GPU every torch operation is one full pass through memory over its inputs and outputs, so
these counts are what the torch path costs there (the kernels take their accelerator branch on
`meta`: the accelerator chunk size and the accelerator-specific ops). Views and allocations move
no data and are not counted; in-place and `out=` operations count their output as written.
Reads count each input once, at its distinct elements (a broadcast scale counts its own size),
and gathers count their whole table: an upper bound for them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

_NO_DATA_MOVED = {
    torch.ops.aten.empty.memory_format,
    torch.ops.aten.empty_strided.default,
    torch.ops.aten.empty_like.default,
    torch.ops.aten.new_empty.default,
    torch.ops.aten.new_empty_strided.default,
    torch.ops.aten._unsafe_view.default,  # a view whose result does not alias (after a copy)
}


def _footprint(tensor: torch.Tensor) -> int:
    """Bytes of a tensor's distinct elements (broadcast dimensions, stride 0, count once)."""
    elements = 1
    for size, stride in zip(tensor.shape, tensor.stride()):
        if stride != 0:
            elements *= size
    return elements * tensor.element_size()


@dataclass
class Traffic(TorchDispatchMode):
    """Counts bytes written and read by each non-view operation run under it."""

    written: int = 0
    read: int = 0
    ops: list[str] = field(default_factory=list)

    def __post_init__(self):
        super().__init__()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        if not func.is_view and func not in _NO_DATA_MOVED:
            self.ops.append(str(func))
            self.written += sum(_footprint(t) for t in _tensors(result))
            # an out= target is only written; an in-place one (self) is read and written
            sources = (args, {name: value for name, value in kwargs.items() if name != "out"})
            self.read += sum(_footprint(t) for t in _tensors(sources))
        return result


def _tensors(tree) -> list[torch.Tensor]:
    return [t for t in tree_flatten(tree)[0] if isinstance(t, torch.Tensor)]


@dataclass(frozen=True)
class TrafficCount:
    written: int
    read: int
    output: int
    ops: int

    @property
    def written_ratio(self) -> float:
        return self.written / self.output

    @property
    def read_ratio(self) -> float:
        return self.read / self.output


def kernel_traffic(kernel, block_size: int, type_size: int, n_elements: int, dtype: torch.dtype) -> TrafficCount:
    """Bytes a kernel writes and reads dequantizing `n_elements` into a `dtype` output, on `meta`."""
    n_blocks = n_elements // block_size
    blocks = torch.empty((n_blocks, type_size), dtype=torch.uint8, device="meta")
    out = torch.empty((n_blocks, block_size), dtype=dtype, device="meta")
    kernel(blocks, out)  # builds the constant tables once, as a first real call does
    with Traffic() as traffic:
        kernel(blocks, out)
    return TrafficCount(traffic.written, traffic.read, out.numel() * out.element_size(), len(traffic.ops))
