"""What the pack's GGML layouts in ComfyUI's quantized-tensor layer are made of, without ComfyUI:
the params a weight carries, the layout names, and how to recognise and read such a tensor.
ops/comfy_edge/ggml_layouts.py (the layout classes, imported only when registering) and ops/comfy_edge/comfy_layout.py
(registration, conversion) both build on it."""
from __future__ import annotations

import dataclasses

import torch
from gguf import GGMLQuantizationType

from ..ggml.rows import embedding_rows as raw_embedding_rows
from ..runtime.tensor import QuantizedTensor as PackQuantizedTensor

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
            from ...errors import ZImageGGUFError

            raise ZImageGGUFError(
                f"cannot copy a {src.ggml_type.name} tensor of shape {list(src.orig_shape)} into a "
                f"{self.ggml_type.name} GGUF weight of shape {list(self.orig_shape)}; quantized weights "
                "are only replaced, never overwritten with other data")
        object.__setattr__(self, "orig_dtype", src.orig_dtype)


def plain(value):
    """A GGML-layout tensor dequantized; anything else as it is."""
    return value.dequantize() if is_gguf_tensor(value) else value


def is_gguf_tensor(value) -> bool:
    """A comfy QuantizedTensor in one of this pack's GGML layouts."""
    return str(getattr(value, "_layout_cls", "")).startswith(LAYOUT_PREFIX) and isinstance(
        getattr(value, "_params", None), GGMLParams)


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


def embedding_rows(weight, ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Rows `ids` of a GGML-layout table in `dtype`, on ids' device, dequantizing only those rows."""
    return raw_embedding_rows(weight._qdata, weight._params.ggml_type, tuple(weight.shape), ids, dtype)
