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
dequantization, which `FALLBACKS` counts (and in strict mode refuses), as for `ops.runtime.tensor`.

The layout classes and op handlers are named module-level definitions in ops/comfy_edge/ggml_layouts.py,
which imports ComfyUI; `register()` imports it and registers them in one place, as
`comfy/quant_ops.py` registers its own layouts. Nothing here imports ComfyUI at module level, and
`register_if_loaded()` is a no-op where ComfyUI or its comfy-kitchen layer is absent
(`available()` says which).
"""
from __future__ import annotations

import functools
import sys

from gguf import GGMLQuantizationType

from .ggml_layout_params import (  # noqa: F401  (the edge's public names: the loaders, patchers and tests use them here)
    LAYOUT_PREFIX, GGMLParams, embedding_rows, gguf_type, is_gguf_tensor, layout_name, to_pack_tensor)
from ..runtime.tensor import QuantizedTensor as PackQuantizedTensor


def available() -> bool:
    """True when the running ComfyUI has comfy-kitchen's quantized tensors (ComfyUI >= 0.8.0 with
    comfy-kitchen) with every name `register()` uses (ops/comfy_edge/comfy_compat.py's LAYOUT rows)."""
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
    """Register one layout per GGML type with ComfyUI, the ops handled without a whole
    dequantization, and the counting fallback for every other op."""
    from comfy.quant_ops import QuantizedTensor, register_layout_class, register_layout_op

    from . import ggml_layouts

    for ggml_type, layout in ggml_layouts.LAYOUTS.items():
        register_layout_class(layout_name(ggml_type), layout)
    for op, handler in ggml_layouts.LAYOUT_OPS:
        register_layout_op(op, ggml_layouts.GGMLLayout)(handler)
    if getattr(QuantizedTensor._dequant_and_fallback, "uncounted", None) is None:
        QuantizedTensor._dequant_and_fallback = classmethod(ggml_layouts.counted_fallback)
    return dict(ggml_layouts.LAYOUTS)


def to_comfy_tensor(tensor: PackQuantizedTensor):
    """The same weight as a ComfyUI QuantizedTensor: same bytes (no copy), type, shape and dtype."""
    from comfy.quant_ops import QuantizedTensor

    register()
    return QuantizedTensor(tensor.raw, layout_name(tensor.ggml_type),
                           GGMLParams(tensor.ggml_type, tensor.dtype, tuple(tensor.shape)))


def to_comfy_state_dict(state_dict: dict) -> dict:
    """`state_dict` with every pack QuantizedTensor replaced by a ComfyUI one; other values as they are."""
    return {key: to_comfy_tensor(value) if isinstance(value, PackQuantizedTensor) else value
            for key, value in state_dict.items()}
