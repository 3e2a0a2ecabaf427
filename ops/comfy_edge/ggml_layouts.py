"""The GGML layouts: one `QuantizedLayout` per GGML type for ComfyUI's quantized tensors, and the
ops they handle without dequantizing a whole weight. This module imports ComfyUI (comfy-kitchen
through `comfy.quant_ops`) at module level: only ops/comfy_edge/comfy_layout.register() imports it, when
ComfyUI is there, and registers what it defines (LAYOUTS, LAYOUT_OPS, counted_fallback).
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from comfy.quant_ops import QuantizedLayout, QuantizedTensor
from gguf import GGMLQuantizationType

from ..runtime.buffers import DEQUANT_POOL
from ..ggml.dequant import dequantize
from .ggml_layout_params import GGMLParams, embedding_rows, is_gguf_tensor, layout_name, plain, to_pack_tensor
from ..runtime.linear import quantized_linear
from ..ggml.quant_types import QUANT_TYPES
from ..ggml.rows import row_view_shape
from ..runtime.tensor import FALLBACKS

aten = torch.ops.aten


class GGMLLayout(QuantizedLayout):
    """A GGML-quantized weight: `_qdata` holds the file's blocks, the params its type, shape and dtype."""

    Params = GGMLParams
    GGML_TYPE: GGMLQuantizationType

    @classmethod
    def quantize(cls, tensor, scale=None, stochastic_rounding=0, inplace_ops=False, **_kwargs):
        # ComfyUI's arguments for fp8 (a scale, a stochastic-rounding seed) do not apply to
        # GGML blocks, whose scales come from the data: the quantizers are deterministic.
        from ..ggml.quantize import quantize

        raw = quantize(tensor.detach(), cls.GGML_TYPE).reshape(-1)
        return raw, GGMLParams(cls.GGML_TYPE, tensor.dtype, tuple(tensor.shape))

    @classmethod
    def dequantize(cls, qdata, params):
        out = DEQUANT_POOL.empty(params.orig_shape, params.orig_dtype) if qdata.device.type == "cpu" else None
        return dequantize(qdata, params.ggml_type, params.orig_shape, params.orig_dtype, out=out)

    @classmethod
    def get_plain_tensors(cls, qtensor):
        return (qtensor._qdata,)

    @classmethod
    def state_dict_tensors(cls, qdata, params):
        return {"": qdata}


# One subclass per GGML type (ComfyUI names a layout, not a type, when it requantizes a LoRA-patched
# weight): GGMLLayout_Q4_K etc., module-level names registered as ZImageGGUF_<TYPE>.
LAYOUTS: dict[GGMLQuantizationType, type[GGMLLayout]] = {
    ggml_type: type(f"GGMLLayout_{ggml_type.name}", (GGMLLayout,), {"GGML_TYPE": ggml_type, "__module__": __name__})
    for ggml_type in QUANT_TYPES
}
globals().update({layout.__name__: layout for layout in LAYOUTS.values()})


def linear(qt, args, kwargs):
    input, weight, bias = (list(args) + [None])[:3]
    bias = plain(kwargs.get("bias", bias))
    if is_gguf_tensor(weight) and weight.device.type == "cpu" and not is_gguf_tensor(input):
        # ComfyUI hands the weight over undequantized when it already has the compute dtype:
        # on the CPU the product then runs in cached slabs of rows (ops/runtime/linear.py).
        return quantized_linear(input, to_pack_tensor(weight), bias, weight.dtype)
    return F.linear(plain(input), plain(weight), bias)


def transpose(qt, args, kwargs):
    # Outside inference mode F.linear reaches here as t(weight) followed by addmm.
    return plain(args[0]).t()


def convolution(qt, args, kwargs):
    return aten.convolution.default(*[plain(a) for a in args], **kwargs)


def embedding(qt, args, kwargs):
    weight, indices = args[0], args[1]
    if not is_gguf_tensor(weight):
        return aten.embedding.default(*[plain(a) for a in args], **kwargs)
    return embedding_rows(weight, indices, weight.dtype)


def row_view(qt, args, kwargs):
    tensor, size = args[0], args[1]
    rows_kept = row_view_shape(tensor.shape, size)
    if rows_kept is not None:
        params = dataclasses.replace(tensor._params, orig_shape=tuple(rows_kept))
        return tensor._copy_with(params=params, clone_params=False)
    return _uncounted_fallback(QuantizedTensor, aten.view.default, (tensor, list(size)), kwargs)


LAYOUT_OPS = ((aten.linear.default, linear), (aten.t.default, transpose), (aten.convolution.default, convolution),
              (aten.embedding.default, embedding), (aten.view.default, row_view), (aten._unsafe_view.default, row_view))

# comfy-kitchen's own fallback, kept before register() wraps it
_uncounted_fallback = QuantizedTensor.__dict__["_dequant_and_fallback"].__func__
_uncounted_fallback = getattr(_uncounted_fallback, "uncounted", _uncounted_fallback)


def counted_fallback(cls, func, args, kwargs):
    """The tripwire of ops/runtime/tensor.py for these layouts: a whole GGUF weight dequantized by an op
    nobody handles (outside a layer's forward) is counted, and refused in strict mode."""
    for arg in _flat(args) + _flat(kwargs):
        if is_gguf_tensor(arg):
            FALLBACKS.record(func, _Described(arg))
    return _uncounted_fallback(cls, func, args, kwargs)


counted_fallback.uncounted = _uncounted_fallback


class _Described:
    """What FALLBACKS.record reports about a tensor (ggml_type, shape), for a comfy QuantizedTensor."""

    def __init__(self, tensor):
        self.ggml_type = tensor._params.ggml_type
        self.shape = tensor.shape


def _flat(value) -> list:
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [item for v in value for item in _flat(v)]
    return [value]
