"""GGUF weights as ComfyUI's own quantized tensors: GGML layouts for `comfy.quant_ops`.

ComfyUI (0.8.0 and later) keeps quantized weights as comfy-kitchen `QuantizedTensor`s: raw data
(`_qdata`) plus a registered `QuantizedLayout` that knows how to dequantize it. Its cast path
(`comfy.ops.cast_bias_weight`, the DynamicVRAM vbar path included), its memory estimates and its
pinned-memory and offload code all recognise such tensors. Here each GGML type is a layout
(`ZImageGGUF_<TYPE>`, one name per type because ComfyUI requantizes a LoRA-patched weight with
`QuantizedTensor.from_float(x, module.layout_type)`, which passes no other way to say the type);
the params carry the GGML type, the logical shape and the compute dtype, `_qdata` is the
zero-copy view of the file's memory map, `dequantize` is this pack's kernel table and `quantize`
its torch quantizers (for the types that have one).

Ops handled without dequantizing the whole weight (beyond comfy-kitchen's moves, clones and
copies): `linear` (or, outside inference mode, the `t` it decomposes into) and `convolution`
dequantize the weight for that one call, `embedding` only the
rows it looks up, and row-preserving views stay quantized. Anything else falls back to a whole
dequantization, which `FALLBACKS` counts (and in strict mode refuses), as for `ops.tensor`.

Nothing here imports ComfyUI at module level; `register()` does, and is a no-op where ComfyUI or
its comfy-kitchen layer is absent (`available()` says which).
"""
from __future__ import annotations

import dataclasses
import functools
import sys

import torch
import torch.nn.functional as F
from gguf import GGMLQuantizationType

from .buffers import DEQUANT_POOL
from .dequant import dequantize
from .linear import quantized_linear
from .quant_types import QUANT_TYPES
from .rows import embedding_rows as raw_embedding_rows, row_view_shape
from .tensor import FALLBACKS
from .tensor import QuantizedTensor as PackQuantizedTensor

LAYOUT_PREFIX = "ZImageGGUF_"


def layout_name(ggml_type) -> str:
    return LAYOUT_PREFIX + GGMLQuantizationType(ggml_type).name


@dataclasses.dataclass(frozen=True)
class GGMLParams:
    """What a GGML weight needs besides its bytes. No tensor fields: moving a weight moves `_qdata` only."""

    ggml_type: GGMLQuantizationType
    orig_dtype: torch.dtype  # the compute dtype the weight reports and dequantizes to
    orig_shape: tuple[int, ...]

    # comfy-kitchen's QuantizedTensor calls these three on its params.
    def to_device(self, device) -> "GGMLParams":
        return self

    def clone(self) -> "GGMLParams":
        return dataclasses.replace(self)

    def copy_from(self, src: "GGMLParams", non_blocking: bool = False) -> None:
        if (src.ggml_type, tuple(src.orig_shape)) != (self.ggml_type, tuple(self.orig_shape)):
            from ..errors import ZImageGGUFError

            raise ZImageGGUFError(
                f"cannot copy a {src.ggml_type.name} tensor of shape {list(src.orig_shape)} into a "
                f"{self.ggml_type.name} GGUF weight of shape {list(self.orig_shape)}; quantized weights "
                "are only replaced, never overwritten with other data")
        object.__setattr__(self, "orig_dtype", src.orig_dtype)


def available() -> bool:
    """True when the running ComfyUI has comfy-kitchen's quantized tensors (ComfyUI >= 0.8.0 with
    comfy-kitchen) with every name `register()` uses (ops/comfy_compat.py's LAYOUT rows)."""
    from .comfy_compat import probe

    return probe().layout_ok


def register_if_loaded() -> bool:
    """Register the layouts when ComfyUI is already imported (the pack being loaded by ComfyUI)."""
    if "comfy.quant_ops" not in sys.modules or not available():
        return False
    register()
    return True


@functools.cache
def register() -> dict[GGMLQuantizationType, type]:
    """Register one layout per GGML type with ComfyUI, and the ops handled without a whole dequantization."""
    from comfy.quant_ops import QuantizedLayout, QuantizedTensor, register_layout_class, register_layout_op

    class GGMLLayout(QuantizedLayout):
        Params = GGMLParams
        GGML_TYPE: GGMLQuantizationType

        @classmethod
        def quantize(cls, tensor, scale=None, stochastic_rounding=0, inplace_ops=False, **_kwargs):
            # ComfyUI's arguments for fp8 (a scale, a stochastic-rounding seed) do not apply to
            # GGML blocks, whose scales come from the data: the quantizers are deterministic.
            from .quantize import quantize

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

    layouts = {}
    for ggml_type in QUANT_TYPES:
        layout = type(f"GGMLLayout_{ggml_type.name}", (GGMLLayout,), {"GGML_TYPE": ggml_type, "__module__": __name__})
        register_layout_class(layout_name(ggml_type), layout)
        layouts[ggml_type] = layout

    aten = torch.ops.aten

    @register_layout_op(aten.linear.default, GGMLLayout)
    def _linear(qt, args, kwargs):
        input, weight, bias = (list(args) + [None])[:3]
        bias = _plain(kwargs.get("bias", bias))
        if is_gguf_tensor(weight) and weight.device.type == "cpu" and not is_gguf_tensor(input):
            # ComfyUI hands the weight over undequantized when it already has the compute dtype:
            # on the CPU the product then runs in cached slabs of rows (ops/linear.py).
            return quantized_linear(input, to_pack_tensor(weight), bias, weight.dtype)
        return F.linear(_plain(input), _plain(weight), bias)

    @register_layout_op(aten.t.default, GGMLLayout)
    def _transpose(qt, args, kwargs):
        # Outside inference mode F.linear reaches here as t(weight) followed by addmm.
        return _plain(args[0]).t()

    @register_layout_op(aten.convolution.default, GGMLLayout)
    def _convolution(qt, args, kwargs):
        return aten.convolution.default(*[_plain(a) for a in args], **kwargs)

    @register_layout_op(aten.embedding.default, GGMLLayout)
    def _embedding(qt, args, kwargs):
        weight, indices = args[0], args[1]
        if not is_gguf_tensor(weight):
            return aten.embedding.default(*[_plain(a) for a in args], **kwargs)
        return embedding_rows(weight, indices, weight.dtype)

    def _row_view(qt, args, kwargs):
        tensor, size = args[0], args[1]
        rows_kept = row_view_shape(tensor.shape, size)
        if rows_kept is not None:
            params = dataclasses.replace(tensor._params, orig_shape=tuple(rows_kept))
            return tensor._copy_with(params=params, clone_params=False)
        return _fallback(aten.view.default, (tensor, list(size)), kwargs)

    register_layout_op(aten.view.default, GGMLLayout)(_row_view)
    register_layout_op(aten._unsafe_view.default, GGMLLayout)(_row_view)

    original_fallback = QuantizedTensor.__dict__["_dequant_and_fallback"].__func__

    def _fallback(func, args, kwargs):
        return original_fallback(QuantizedTensor, func, args, kwargs)

    def _counted_fallback(cls, func, args, kwargs):
        # The tripwire of ops/tensor.py for this layout: a whole GGUF weight dequantized by an op
        # nobody handles (outside a layer's forward) is counted, and refused in strict mode.
        for arg in _flat(args) + _flat(kwargs):
            if is_gguf_tensor(arg):
                FALLBACKS.record(func, _Described(arg))
        return original_fallback(cls, func, args, kwargs)

    if not getattr(QuantizedTensor._dequant_and_fallback, "_zimage_gguf_counted", False):
        _counted_fallback._zimage_gguf_counted = True
        QuantizedTensor._dequant_and_fallback = classmethod(_counted_fallback)
    return layouts


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


def _plain(value):
    return value.dequantize() if is_gguf_tensor(value) else value


def is_gguf_tensor(value) -> bool:
    """A comfy QuantizedTensor in one of this pack's GGML layouts."""
    return str(getattr(value, "_layout_cls", "")).startswith(LAYOUT_PREFIX) and isinstance(
        getattr(value, "_params", None), GGMLParams)


def to_comfy_tensor(tensor: PackQuantizedTensor):
    """The same weight as a ComfyUI QuantizedTensor: same bytes (no copy), type, shape and dtype."""
    from comfy.quant_ops import QuantizedTensor

    register()
    return QuantizedTensor(tensor.raw, layout_name(tensor.ggml_type),
                           GGMLParams(tensor.ggml_type, tensor.dtype, tuple(tensor.shape)))


def gguf_type(value):
    """The GGML type of a quantized GGUF weight of either kind (the pack's tensor or a ComfyUI one in
    these layouts); None for anything else."""
    if isinstance(value, PackQuantizedTensor):
        return value.ggml_type
    return value._params.ggml_type if is_gguf_tensor(value) else None


def to_pack_tensor(tensor) -> PackQuantizedTensor:
    """A comfy GGML QuantizedTensor as the pack's own tensor over the same bytes."""
    params = tensor._params
    return PackQuantizedTensor(tensor._qdata, params.ggml_type, params.orig_shape, params.orig_dtype)


def to_comfy_state_dict(state_dict: dict) -> dict:
    """`state_dict` with every pack QuantizedTensor replaced by a ComfyUI one; other values as they are."""
    return {key: to_comfy_tensor(value) if isinstance(value, PackQuantizedTensor) else value
            for key, value in state_dict.items()}


def embedding_rows(weight, ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Rows `ids` of a GGML-layout table in `dtype`, on ids' device, dequantizing only those rows."""
    return raw_embedding_rows(weight._qdata, weight._params.ggml_type, tuple(weight.shape), ids, dtype)
