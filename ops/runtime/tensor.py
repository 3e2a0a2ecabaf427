"""QuantizedTensor: a GGML-quantized weight that model code sees as an ordinary float tensor.

It holds the raw GGML blocks (a uint8 tensor, usually a zero-copy view of the file's memory
map), the GGML type and the logical shape, and reports a float *compute* dtype — never uint8 —
so code doing `x.to(weight.dtype)` keeps working on every backend (MPS included).

Operations that only move or relabel data (`.to(device)`, `.to(dtype)`, `.clone()`,
`.detach()`, `copy_` from another quantized tensor, `new_empty`, row-preserving views) keep
the data quantized. Anything else dequantizes the tensor first and runs on plain floats, so
unknown uses are correct, just not memory-saving. `nbytes` reports the real (quantized) size,
which is what ComfyUI's memory planner should budget for.
"""
from __future__ import annotations

import os
from contextlib import contextmanager

import torch
from gguf import GGMLQuantizationType

from ..ggml.dequant import dequantize
from ..ggml.quant_types import quant_type, rows_are_whole_blocks
from ..ggml.rows import row_view_shape

aten = torch.ops.aten
_NBYTES_DESCRIPTOR = torch.Tensor.nbytes


class QuantizedTensor(torch.Tensor):
    raw: torch.Tensor
    ggml_type: GGMLQuantizationType

    @staticmethod
    def __new__(cls, raw: torch.Tensor, ggml_type, shape, dtype: torch.dtype = torch.float16):
        shape = torch.Size(int(s) for s in shape)
        ggml_type = GGMLQuantizationType(ggml_type)
        qt = quant_type(ggml_type)
        expected = qt.tensor_bytes(shape) if rows_are_whole_blocks(ggml_type, shape) else None
        if raw.dtype != torch.uint8 or raw.numel() != expected:
            from ...errors import ZImageGGUFError

            needs = f"{expected} bytes" if expected is not None else f"rows of whole {qt.block_size}-element blocks"
            raise ZImageGGUFError(
                f"{ggml_type.name} tensor of shape {list(shape)} needs {needs}; got {raw.numel()} {raw.dtype} values"
            )
        self = torch.Tensor._make_wrapper_subclass(cls, shape, dtype=dtype, device=raw.device, requires_grad=False)
        self.raw = raw.reshape(-1)
        self.ggml_type = ggml_type
        return self

    def __repr__(self, *, tensor_contents=None):
        return (
            f"QuantizedTensor({self.ggml_type.name}, shape={list(self.shape)}, dtype={self.dtype}, "
            f"device={self.device}, {self.raw.numel()} bytes)"
        )

    def dequantize(self, dtype: torch.dtype | None = None, device=None, out: torch.Tensor | None = None) -> torch.Tensor:
        """Plain tensor of the logical shape in `dtype` (default: the reported compute dtype).

        With `device`, the raw bytes move there first and are dequantized there; with `out`, the
        values are written into it (see `ops.dequantize`).
        """
        raw = self.raw
        if device is not None and raw.device != torch.device(device):
            raw = raw.to(device, non_blocking=True)
        return dequantize(raw, self.ggml_type, self.shape, dtype or self.dtype, out=out)

    def _rewrap(self, raw: torch.Tensor, *, shape=None, dtype: torch.dtype | None = None) -> "QuantizedTensor":
        return QuantizedTensor(raw, self.ggml_type, self.shape if shape is None else shape, dtype or self.dtype)

    def __reduce_ex__(self, protocol):
        return (QuantizedTensor, (self.raw, self.ggml_type, tuple(self.shape), self.dtype))

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if getattr(func, "__self__", None) is _NBYTES_DESCRIPTOR:
            return args[0].raw.nbytes
        if func is torch.Tensor.untyped_storage:
            return args[0].raw.untyped_storage()
        # Unlike the default, never re-wrap plain results (a dequantized tensor) as this class.
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **(kwargs or {}))

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        handler = _HANDLERS.get(func)
        if handler is not None:
            result = handler(*args, **kwargs)
            if result is not NotImplemented:
                return result
        return func(*_dequantize_all(args, func), **_dequantize_all(kwargs, func))


class FallbackDequantization(RuntimeError):
    """A whole quantized weight was dequantized by an operation the tensor does not handle."""


class FallbackCounter:
    """Counts (and in strict mode refuses) whole-weight dequantizations outside the layers.

    Layers dequantize through `QuantizedTensor.dequantize()` and are not counted. Anything else
    that reaches the dispatch fallback costs a full float copy of the weight: a path that should
    have kept it quantized (a `.to()` overload under inference mode was one). Tests run strict
    (tests/conftest.py), so a torch or ComfyUI change that brings such a path back fails CI.
    Set ZIMAGE_GGUF_STRICT=1 to make a running ComfyUI raise on one too.
    """

    def __init__(self):
        self.count = 0
        self.ops: dict[str, int] = {}
        self.strict = os.environ.get("ZIMAGE_GGUF_STRICT", "") not in ("", "0")

    def record(self, func, tensor: "QuantizedTensor"):
        name = str(func)
        if self.strict:
            raise FallbackDequantization(
                f"{name} dequantized a whole {tensor.ggml_type.name} weight of shape {list(tensor.shape)} "
                "outside a layer's forward (strict mode); handle the op in ops/runtime/tensor.py"
            )
        self.count += 1
        self.ops[name] = self.ops.get(name, 0) + 1

    @contextmanager
    def allowed(self):
        """Within this block fallbacks are counted, never refused (tests of the fallback itself)."""
        previous, self.strict = self.strict, False
        try:
            yield self
        finally:
            self.strict = previous


FALLBACKS = FallbackCounter()


def _dequantize_all(value, func):
    if isinstance(value, QuantizedTensor):
        FALLBACKS.record(func, value)
        return value.dequantize()
    if isinstance(value, (list, tuple)):
        return type(value)(_dequantize_all(v, func) for v in value)
    if isinstance(value, dict):
        return {k: _dequantize_all(v, func) for k, v in value.items()}
    return value


def _alias(self, *args, **kwargs):
    return self._rewrap(self.raw)


def _clone(self, memory_format=None):
    return self._rewrap(self.raw.clone())


def _to_copy(self, dtype=None, layout=None, device=None, pin_memory=None, non_blocking=False, memory_format=None):
    raw = self.raw
    if device is not None and torch.device(device) != raw.device:
        raw = raw.to(device=device, non_blocking=non_blocking)
    elif pin_memory:
        raw = raw.pin_memory()
    else:
        raw = raw.clone()
    return self._rewrap(raw, dtype=dtype)


def _to(self, dtype=None, device=None, non_blocking=False, copy=False, pin_memory=None):
    """Every `to` overload: a device change moves the raw bytes, a dtype change relabels the
    compute dtype; with nothing to change (and no copy asked for) the tensor itself comes back."""
    dtype = dtype or self.dtype
    device = self.raw.device if device is None else torch.device(device)
    if device.type == self.raw.device.type and device.index is None:
        device = self.raw.device
    if device == self.raw.device and dtype == self.dtype and not copy and not pin_memory:
        return self
    return _to_copy(self, dtype=dtype, device=device, non_blocking=non_blocking, pin_memory=pin_memory)


def _to_dtype_layout(self, *, dtype=None, layout=None, device=None, pin_memory=None, non_blocking=False,
                     copy=False, memory_format=None):
    return _to(self, dtype, device, non_blocking, copy, pin_memory)


def _to_device(self, device, dtype, non_blocking=False, copy=False, memory_format=None):
    return _to(self, dtype, device, non_blocking, copy)


def _to_dtype(self, dtype, non_blocking=False, copy=False, memory_format=None):
    return _to(self, dtype, None, non_blocking, copy)


def _to_other(self, other, non_blocking=False, copy=False, memory_format=None):
    return _to(self, other.dtype, other.device, non_blocking, copy)


def _copy_(self, src, non_blocking=False):
    if isinstance(src, QuantizedTensor) and src.ggml_type == self.ggml_type and src.shape == self.shape:
        self.raw.copy_(src.raw, non_blocking=non_blocking)
        return self
    from ...errors import ZImageGGUFError

    raise ZImageGGUFError(
        f"cannot copy {'a ' + src.ggml_type.name if isinstance(src, QuantizedTensor) else 'float'} tensor of shape "
        f"{list(src.shape)} into a {self.ggml_type.name} GGUF weight of shape {list(self.shape)}; "
        "quantized weights are only replaced, never overwritten with other data"
    )


def _new_empty(self, size, dtype=None, layout=None, device=None, pin_memory=None):
    size = torch.Size(size)
    qt = quant_type(self.ggml_type)
    wants_float = dtype is not None and dtype != self.dtype
    if wants_float or not size or not rows_are_whole_blocks(qt.ggml_type, size):
        return torch.empty(size, dtype=dtype or self.dtype, device=device or self.device)
    raw = torch.empty(qt.tensor_bytes(size), dtype=torch.uint8, device=device or self.device)
    return self._rewrap(raw, shape=size)


def _view(self, size):
    """Views that keep whole rows of blocks (e.g. [3840] <-> [1, 3840]) stay quantized."""
    rows_kept = row_view_shape(self.shape, size)
    return NotImplemented if rows_kept is None else self._rewrap(self.raw, shape=rows_kept)


def _has_compatible_shallow_copy_type(self, source):
    """`param.data = new` (Module._apply) swaps in place only between two quantized tensors."""
    return isinstance(self, QuantizedTensor) == isinstance(source, QuantizedTensor)


def _is_pinned(self, device=None):
    return self.raw.is_pinned()


def _pin_memory(self, device=None):
    return self._rewrap(self.raw.pin_memory())


_HANDLERS = {
    aten.detach.default: _alias,
    aten.alias.default: _alias,
    aten.clone.default: _clone,
    aten._to_copy.default: _to_copy,
    aten.to.dtype_layout: _to_dtype_layout,
    aten.to.device: _to_device,
    aten.to.dtype: _to_dtype,
    aten.to.other: _to_other,
    aten.copy_.default: _copy_,
    aten.new_empty.default: _new_empty,
    aten.view.default: _view,
    aten._unsafe_view.default: _view,
    aten.reshape.default: _view,
    aten.is_pinned.default: _is_pinned,
    aten._has_compatible_shallow_copy_type.default: _has_compatible_shallow_copy_type,
    aten._pin_memory.default: _pin_memory,
    aten.pin_memory.default: _pin_memory,
}
