"""Dequantizing layers: weights stay quantized in memory and are dequantized per call.

`make_layer_namespace(base, options)` builds a fresh namespace class whose Linear, Conv1d/2d/3d,
Embedding, LayerNorm, GroupNorm and RMSNorm subclass the matching classes of `base` — ComfyUI's
`comfy.ops.manual_cast` inside ComfyUI, or a plain-torch namespace without it. Each call returns
new classes bound to their own `LayerOptions`, so two models loaded with different settings never
share state.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .buffers import OUTPUT_BUFFERS
from .linear import quantized_linear
from ..ggml.rows import embedding_rows
from .tensor import QuantizedTensor


@dataclass(frozen=True)
class LayerOptions:
    # dtype weights are dequantized to before LoRA patches are applied; None: the input's dtype
    dequant_dtype: torch.dtype | None = None


class TorchLayers:
    """Plain-torch base namespace (used where ComfyUI is absent: tests, CLI)."""

    Linear = torch.nn.Linear
    Conv1d = torch.nn.Conv1d
    Conv2d = torch.nn.Conv2d
    Conv3d = torch.nn.Conv3d
    Embedding = torch.nn.Embedding
    LayerNorm = torch.nn.LayerNorm
    GroupNorm = torch.nn.GroupNorm
    RMSNorm = torch.nn.RMSNorm


def materialize(tensor, dtype: torch.dtype, device, reuse_buffer: bool = False) -> torch.Tensor | None:
    """A plain tensor of `dtype` on `device`: quantized data moves as raw bytes, then dequantizes there.

    `reuse_buffer`: a quantized tensor is dequantized into this thread's CPU output buffer (see
    ops/runtime/buffers.py), valid until the thread's next such call.
    """
    if tensor is None:
        return None
    if isinstance(tensor, QuantizedTensor):
        out = OUTPUT_BUFFERS.get(tensor.shape, dtype, device) if reuse_buffer else None
        return tensor.dequantize(dtype, device, out=out)
    return tensor.to(device=device, dtype=dtype)


def adopt_quantized_state(module, state_dict, prefix, missing_keys, error_msgs, is_quantized) -> bool:
    """Adopt a layer's quantized weight (and the plain tensors beside it, e.g. an F32 bias) as they
    are, with no copy into a float parameter. False, touching nothing, when neither weight nor bias
    is quantized (the caller then loads the usual way)."""
    own = {name: state_dict.get(prefix + name) for name in ("weight", "bias")}
    if not any(is_quantized(value) for value in own.values()):
        return False
    for name, value in own.items():
        current = getattr(module, name, None)
        if value is None:
            if current is not None and name == "weight":
                missing_keys.append(prefix + name)
            continue
        if current is not None and current.shape != value.shape:
            error_msgs.append(f"size mismatch for {prefix}{name}: the file holds {list(value.shape)}, "
                              f"the model expects {list(current.shape)}")
            continue
        setattr(module, name, torch.nn.Parameter(value, requires_grad=False))
    return True


class DequantLayerMixin:
    """Shared by every dequantizing layer: state-dict loading and weight/bias casting."""

    layer_options: LayerOptions = LayerOptions()
    comfy_cast_weights = True
    weight_function: list = []
    bias_function: list = []

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        if not adopt_quantized_state(self, state_dict, prefix, missing_keys, error_msgs,
                                     lambda value: isinstance(value, QuantizedTensor)):
            return super()._load_from_state_dict(
                state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
            )

    def cast_bias_weight(self, input: torch.Tensor, dtype: torch.dtype | None = None):
        """Dequantized (and LoRA-patched) weight and bias in the input's dtype, on its device."""
        compute_dtype = dtype or input.dtype
        if not compute_dtype.is_floating_point:
            compute_dtype = self._float_dtype()
        patch_dtype = self.layer_options.dequant_dtype or compute_dtype
        # the weight lives for this one call only
        weight = materialize(self.weight, patch_dtype, input.device, reuse_buffer=True)
        for fn in self.weight_function:
            weight = fn(weight)
        bias = materialize(getattr(self, "bias", None), patch_dtype, input.device)
        if bias is not None:
            for fn in self.bias_function:
                bias = fn(bias)
            bias = bias.to(compute_dtype)
        return weight.to(compute_dtype), bias

    def _float_dtype(self) -> torch.dtype:
        return self.weight.dtype if self.weight.dtype.is_floating_point else torch.float32


class _DequantLinear(DequantLayerMixin):
    def forward_comfy_cast_weights(self, input):
        weight = self.weight
        if (input.device.type == "cpu" and isinstance(weight, QuantizedTensor) and weight.raw.device.type == "cpu"
                and not self.weight_function and not self.bias_function and input.dtype.is_floating_point
                and self.layer_options.dequant_dtype in (None, input.dtype)):
            # no patches to apply to the whole weight: dequantize and multiply in slabs of rows
            bias = materialize(getattr(self, "bias", None), input.dtype, input.device)
            return quantized_linear(input, weight, bias, input.dtype)
        weight, bias = self.cast_bias_weight(input)
        return F.linear(input, weight, bias)


class _DequantConv(DequantLayerMixin):
    def forward_comfy_cast_weights(self, input, *args, **kwargs):
        weight, bias = self.cast_bias_weight(input)
        return self._conv_forward(input, weight, bias, *args, **kwargs)


class _DequantEmbedding(DequantLayerMixin):
    def forward_comfy_cast_weights(self, input, out_dtype=None):
        dtype = out_dtype or self._float_dtype()
        weight = self.weight
        if isinstance(weight, QuantizedTensor) and not self.weight_function and self.max_norm is None:
            return embedding_rows(weight.raw, weight.ggml_type, tuple(weight.shape), input, dtype)
        weight = materialize(weight, self.layer_options.dequant_dtype or dtype, input.device)
        for fn in self.weight_function:
            weight = fn(weight)
        return F.embedding(
            input, weight.to(dtype), self.padding_idx, self.max_norm, self.norm_type,
            self.scale_grad_by_freq, self.sparse,
        )


class _DequantLayerNorm(DequantLayerMixin):
    def forward_comfy_cast_weights(self, input):
        weight, bias = (None, None) if self.weight is None else self.cast_bias_weight(input)
        return F.layer_norm(input, self.normalized_shape, weight, bias, self.eps)


class _DequantGroupNorm(DequantLayerMixin):
    def forward_comfy_cast_weights(self, input):
        weight, bias = (None, None) if self.weight is None else self.cast_bias_weight(input)
        return F.group_norm(input, self.num_groups, weight, bias, self.eps)


class _DequantRMSNorm(DequantLayerMixin):
    def forward_comfy_cast_weights(self, input):
        weight = None if self.weight is None else self.cast_bias_weight(input)[0]
        return F.rms_norm(input, self.normalized_shape, weight, self.eps)


_LAYER_MIXINS = {
    "Linear": _DequantLinear,
    "Conv1d": _DequantConv,
    "Conv2d": _DequantConv,
    "Conv3d": _DequantConv,
    "Embedding": _DequantEmbedding,
    "LayerNorm": _DequantLayerNorm,
    "GroupNorm": _DequantGroupNorm,
    "RMSNorm": _DequantRMSNorm,
}


def make_layer_namespace(base=TorchLayers, options: LayerOptions = LayerOptions(), name: str = "GGUFOps"):
    """A new namespace class with dequantizing versions of `base`'s layers, bound to `options`."""
    members = {"layer_options": options}
    for layer_name, mixin in _LAYER_MIXINS.items():
        base_layer = getattr(base, layer_name, None)
        if base_layer is None:
            continue
        body = {"layer_options": options, "__module__": __name__}
        if not hasattr(base_layer, "forward_comfy_cast_weights"):
            # Without ComfyUI nothing routes forward() through the cast path; do it here.
            body["forward"] = mixin.forward_comfy_cast_weights
        members[layer_name] = type(layer_name, (mixin, base_layer), body)
    return type(name, (base,), members)
