"""The ComfyUI edge of the ops: the `custom_operations` namespaces and a ModelPatcher that applies
LoRA patches to quantized weights at dequantization time instead of baking them into floats.

Two namespaces: `make_layout_ops()` (ComfyUI with comfy-kitchen quantized tensors: ComfyUI's own
`manual_cast` layers and cast path, plus only what they cannot do for GGUF weights) and
`make_comfy_ops()` (a ComfyUI whose comfy-kitchen is missing: the pack's own dequantizing layers over
ops/runtime/tensor.py; ComfyUI older than 0.16.0 is not supported on either path, see README).

ComfyUI is imported lazily (inside functions) so this module imports without it.
"""
from __future__ import annotations

import dataclasses
import functools

from ..runtime.buffers import release_output_buffers
from .comfy_layout import available as comfy_layout_available
from .comfy_layout import embedding_rows, is_gguf_tensor, to_comfy_state_dict
from ..runtime.layers import LayerOptions, adopt_quantized_state, make_layer_namespace
from ..runtime.tensor import QuantizedTensor


_RELEASE_KEY = "zimage_gguf_release_output_buffers"


def make_comfy_ops(options: LayerOptions = LayerOptions()):
    """A fresh ops namespace (one per loaded model) built on ComfyUI's `manual_cast` ops."""
    import comfy.ops

    return make_layer_namespace(comfy.ops.manual_cast, options, name="ZImageGGUFOps")


@dataclasses.dataclass(frozen=True)
class ComfyLoadPlan:
    """How a GGUF state dict is handed to ComfyUI: through its quantized-tensor layer where it has one."""

    uses_layout: bool
    ops: type
    # True: the layers need ComfyUI's plain ModelPatcher (the pack's own layers); False: ComfyUI
    # picks its patcher (ModelPatcherDynamic under DynamicVRAM). comfy_compat.loader_options turns
    # this into the loader's keyword arguments, passing `disable_dynamic` only where it is needed.
    disable_dynamic: bool

    def loader_options(self, loader) -> dict:
        from .comfy_compat import loader_options

        return loader_options(loader, self.disable_dynamic)

    def reported_dtype(self, device, compute):
        """The dtype the weights report. On the CPU ComfyUI computes in float32: weights that say
        so reach F.linear undequantized (ComfyUI casts only on a dtype change), where the layout
        multiplies in cached slabs instead of dequantizing the whole weight first."""
        import torch

        if self.uses_layout and torch.device(device or "cpu").type == "cpu":
            return torch.float32
        return compute

    def state_dict(self, state_dict: dict) -> dict:
        return to_comfy_state_dict(state_dict) if self.uses_layout else state_dict


# Set to 1 to load through the pack's own layers even where ComfyUI has the layout layer, so the
# fallback path can be tested (and compared) on a current ComfyUI.
FORCE_PACK_LAYERS_ENV = "ZIMAGE_GGUF_FORCE_PACK_LAYERS"


def comfy_load_plan(lora_dtype=None) -> ComfyLoadPlan:
    """ComfyUI's own ops and patcher choice with GGML layouts where available (ComfyUI >= 0.8.0);
    otherwise, or with ZIMAGE_GGUF_FORCE_PACK_LAYERS=1 in the environment, the pack's dequantizing
    layers (`lora_dtype` there sets their patch dtype)."""
    import os

    if comfy_layout_available() and os.environ.get(FORCE_PACK_LAYERS_ENV, "") in ("", "0"):
        return ComfyLoadPlan(True, make_layout_ops(), disable_dynamic=False)
    return ComfyLoadPlan(False, make_comfy_ops(LayerOptions(dequant_dtype=lora_dtype)), disable_dynamic=True)


_LAYOUT_OPS_LAYERS = ("Linear", "Conv1d", "Conv2d", "Conv3d", "GroupNorm", "LayerNorm", "RMSNorm",
                      "ConvTranspose1d", "ConvTranspose2d")


@functools.cache
def make_layout_ops():
    """ComfyUI's `manual_cast` ops for a state dict of GGUF QuantizedTensors (ops/comfy_edge/comfy_layout.py).

    The forward passes and the cast path (`comfy.ops.cast_bias_weight`, DynamicVRAM's vbar path
    included) are ComfyUI's. Overridden, because ComfyUI's layers cannot do it for GGUF weights:
    - loading: ComfyUI's layers copy a state-dict tensor into their float parameter unless the
      model is loaded with assign=True, which ComfyUI does only under DynamicVRAM; a quantized
      weight cannot be copied into floats, so it is adopted as it is (and `layout_type` is set,
      which ComfyUI's vbar path reads to requantize a LoRA-patched weight);
    - Embedding: ComfyUI's casts the whole table before looking rows up, dequantizing all of a
      151,936 x 2560 Qwen3 vocabulary per encode; a GGUF table without LoRA gives only its rows.
    The namespace holds no per-model state (LoRA settings live on the patcher), so one serves all.
    """
    import comfy.ops

    from .comfy_layout import register

    register()
    base = comfy.ops.manual_cast

    class AdoptsGGUFWeights:
        def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                                  unexpected_keys, error_msgs):
            if not adopt_quantized_state(self, state_dict, prefix, missing_keys, error_msgs, is_gguf_tensor):
                return super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                                     unexpected_keys, error_msgs)
            weight = getattr(self, "weight", None)
            if is_gguf_tensor(weight):
                self.layout_type = weight._layout_cls

    members = {name: type(name, (AdoptsGGUFWeights, getattr(base, name)), {"__module__": __name__})
               for name in _LAYOUT_OPS_LAYERS if hasattr(base, name)}

    class Embedding(AdoptsGGUFWeights, base.Embedding):
        def forward_comfy_cast_weights(self, input, out_dtype=None):
            weight = self.weight
            if (is_gguf_tensor(weight) and not self.weight_function and self.max_norm is None
                    and getattr(self, "weight_lowvram_function", None) is None):
                rows = embedding_rows(weight, input, weight.dtype)
                return rows if out_dtype is None else rows.to(out_dtype)
            return super().forward_comfy_cast_weights(input, out_dtype)

    members["Embedding"] = Embedding
    return type("ZImageGGUFLayoutOps", (base,), members)


@functools.cache
def gguf_model_patcher_class():
    import comfy.lora
    import comfy.model_patcher
    import comfy.utils

    class QuantizedWeightPatch(comfy.model_patcher.LowVramPatch):
        """Applies a key's LoRA patches to the freshly dequantized weight on every use, in `dtype` when set."""

        dtype = None

        def __call__(self, weight):
            if self.dtype is None or weight.dtype == self.dtype:
                return super().__call__(weight)
            return super().__call__(weight.to(self.dtype)).to(weight.dtype)

    class GGUFModelPatcher(comfy.model_patcher.ModelPatcher):
        """ModelPatcher whose patches to quantized weights run per call, keeping weights quantized."""

        # Move LoRA patch tensors to the compute device once at load (faster per step, costs VRAM)
        # instead of per use; set per patcher by the loader node.
        patch_on_device = False
        # dtype LoRA patches are added in (None: the dtype ComfyUI dequantized the weight to)
        dequant_dtype = None

        def clone(self, *args, **kwargs):
            n = super().clone(*args, **kwargs)
            n.patch_on_device = self.patch_on_device
            n.dequant_dtype = self.dequant_dtype
            return n

        def patch_weight_to_device(self, key, device_to=None, inplace_update=False, return_weight=False, **options):
            # `options`: what newer ComfyUIs add (0.3x: force_cast=True, which asks for the weight
            # itself on the device); those calls go to ComfyUI's own method unchanged.
            weight, _, _ = comfy.model_patcher.get_key_weight(self.model, key)
            module_name, _, param = key.rpartition(".")
            module = comfy.utils.get_attr(self.model, module_name) if module_name else None
            attr = f"{param}_function"
            if (return_weight or any(options.values()) or key not in self.patches or not _is_quantized(weight)
                    or not hasattr(module, attr)):
                return super().patch_weight_to_device(key, device_to, inplace_update, return_weight, **options)
            if self.patch_on_device and device_to is not None:
                self.patches[key] = _move_tensors(self.patches[key], device_to)
            functions = [f for f in getattr(module, attr) if not isinstance(f, QuantizedWeightPatch)]
            patch = QuantizedWeightPatch(key, self.patches)
            patch.dtype = self.dequant_dtype
            functions.append(patch)
            setattr(module, attr, functions)

        def unpatch_model(self, device_to=None, unpatch_weights=True):
            super().unpatch_model(device_to, unpatch_weights)
            if unpatch_weights:
                for module in self.model.modules():
                    for attr in ("weight_function", "bias_function"):
                        functions = getattr(module, attr, None)
                        if functions and any(isinstance(f, QuantizedWeightPatch) for f in functions):
                            setattr(module, attr, [f for f in functions if not isinstance(f, QuantizedWeightPatch)])

    return GGUFModelPatcher


@functools.cache
def gguf_dynamic_patcher_class():
    import comfy.model_patcher

    class GGUFModelPatcherDynamic(comfy.model_patcher.ModelPatcherDynamic):
        """ComfyUI's DynamicVRAM patcher, plus the one thing it cannot do for every GGUF weight.

        On its vbar path ComfyUI applies a LoRA (`weight_lowvram_function`) to a weight that is not
        resident on the device, then requantizes the result into the weight's layout
        (`QuantizedTensor.from_float`) and keeps that. This pack has no quantizer for some GGML types
        (the 1- to 3-bit I-quants, TQ1_0/TQ2_0, MXFP4/NVFP4), so for weights of those types the LoRA
        moves to `weight_function`, which ComfyUI applies to the dequantized weight on every call
        (as the plain ModelPatcher does for offloaded weights) and never requantizes.
        """

        def load(self, *args, **kwargs):
            result = super().load(*args, **kwargs)
            lora_per_call_where_no_quantizer(self.model)
            return result

    return GGUFModelPatcherDynamic


def lora_per_call_where_no_quantizer(model) -> int:
    """Move LoRA patches of GGUF weights whose type this pack cannot quantize from ComfyUI's
    requantizing `<param>_lowvram_function` to the per-call `<param>_function` list; returns how many."""
    from ..ggml.quant_types import quant_type

    moved = 0
    for module in model.modules():
        for param in ("weight", "bias"):
            patch = getattr(module, f"{param}_lowvram_function", None)
            tensor = getattr(module, param, None)
            if patch is None or not is_gguf_tensor(tensor) or quant_type(tensor._params.ggml_type).quantizer is not None:
                continue
            setattr(module, f"{param}_lowvram_function", None)
            functions = [f for f in getattr(module, f"{param}_function", []) if f is not patch]
            setattr(module, f"{param}_function", functions + [patch])
            moved += 1
    return moved


def _is_quantized(weight) -> bool:
    return isinstance(weight, QuantizedTensor) or is_gguf_tensor(weight)


def _move_tensors(value, device):
    """Copy of a LoRA patch structure (tuples, lists, weight adapters) with its tensors on `device`."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, (list, tuple)):
        return type(value)(_move_tensors(v, device) for v in value)
    weights = getattr(value, "weights", None)
    if isinstance(weights, (list, tuple)):
        import copy

        moved = copy.copy(value)
        moved.weights = _move_tensors(weights, device)
        return moved
    return value


def as_gguf_patcher(patcher, patch_on_device: bool = False, dequant_dtype=None):
    """Make a freshly loaded ComfyUI ModelPatcher ours, in place.

    The object stays the same (ComfyUI may already track it as loaded, as it does for text
    encoders); only its class becomes our subclass, which adds methods and no state. A plain
    ModelPatcher becomes GGUFModelPatcher: it applies LoRA at cast time only for the modules it
    offloads, and on a full load would bake the LoRA into a float copy of the weight. A DynamicVRAM
    patcher (ComfyUI's ModelPatcherDynamic) already applies LoRA at cast time and keeps its
    behaviour, except for the types without a quantizer (GGUFModelPatcherDynamic).
    """
    import comfy.model_patcher

    from comfy.patcher_extension import CallbacksMP

    cls = gguf_model_patcher_class()
    if patcher.is_dynamic():
        dynamic = getattr(comfy.model_patcher, "ModelPatcherDynamic", None)
        if dynamic is not None and type(patcher) is dynamic:
            patcher.__class__ = gguf_dynamic_patcher_class()
    else:
        if type(patcher) not in (comfy.model_patcher.ModelPatcher, cls):
            from .comfy_compat import ComfyUIIncompatibleError, comfyui_version

            raise ComfyUIIncompatibleError(
                f"This ComfyUI ({comfyui_version()}) built the model with a patcher the Z-Image GGUF pack does not "
                f"know ({type(patcher).__module__}.{type(patcher).__qualname__}): update the pack.\n"
                "The pack applies LoRA to quantized weights through a subclass of ComfyUI's plain ModelPatcher.")
        patcher.__class__ = cls
        patcher.patch_on_device = patch_on_device
        patcher.dequant_dtype = dequant_dtype
    # Unloading a model (unload_all_models, /free, or making room) detaches its patcher: the
    # dequantization buffers go too. Callbacks are copied to clones.
    patcher.remove_callbacks_with_key(CallbacksMP.ON_DETACH, _RELEASE_KEY)
    patcher.add_callback_with_key(CallbacksMP.ON_DETACH, _RELEASE_KEY, release_output_buffers)
    return patcher
