"""The ComfyUI edge of the ops: the `custom_operations` namespace and a ModelPatcher that applies
LoRA patches to quantized weights at dequantization time instead of baking them into floats.

ComfyUI is imported lazily (inside functions) so this module imports without it.
"""
from __future__ import annotations

import functools

from .buffers import release_output_buffers
from .layers import LayerOptions, make_layer_namespace
from .tensor import QuantizedTensor


_RELEASE_KEY = "zimage_gguf_release_output_buffers"


def make_comfy_ops(options: LayerOptions = LayerOptions()):
    """A fresh ops namespace (one per loaded model) built on ComfyUI's `manual_cast` ops."""
    import comfy.ops

    return make_layer_namespace(comfy.ops.manual_cast, options, name="ZImageGGUFOps")


@functools.cache
def gguf_model_patcher_class():
    import comfy.lora
    import comfy.model_patcher
    import comfy.utils

    class QuantizedWeightPatch(comfy.model_patcher.LowVramPatch):
        """Applies a key's LoRA patches to the freshly dequantized weight on every use."""

    class GGUFModelPatcher(comfy.model_patcher.ModelPatcher):
        """ModelPatcher whose patches to quantized weights run per call, keeping weights quantized."""

        # Move LoRA patch tensors to the compute device once at load (faster per step, costs VRAM)
        # instead of per use; set per patcher by the loader node.
        patch_on_device = False

        def clone(self, *args, **kwargs):
            n = super().clone(*args, **kwargs)
            n.patch_on_device = self.patch_on_device
            return n

        def patch_weight_to_device(self, key, device_to=None, inplace_update=False, return_weight=False):
            weight, _, _ = comfy.model_patcher.get_key_weight(self.model, key)
            module_name, _, param = key.rpartition(".")
            module = comfy.utils.get_attr(self.model, module_name) if module_name else None
            attr = f"{param}_function"
            if (return_weight or key not in self.patches or not isinstance(weight, QuantizedTensor)
                    or not hasattr(module, attr)):
                return super().patch_weight_to_device(key, device_to, inplace_update, return_weight)
            if self.patch_on_device and device_to is not None:
                self.patches[key] = _move_tensors(self.patches[key], device_to)
            functions = [f for f in getattr(module, attr) if not isinstance(f, QuantizedWeightPatch)]
            functions.append(QuantizedWeightPatch(key, self.patches))
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


def as_gguf_patcher(patcher, patch_on_device: bool = False):
    """Make a freshly loaded ComfyUI ModelPatcher ours, in place.

    The object stays the same (ComfyUI may already track it as loaded, as it does for text
    encoders); only its class becomes our subclass, which adds methods and no state.
    """
    import comfy.model_patcher

    from comfy.patcher_extension import CallbacksMP

    cls = gguf_model_patcher_class()
    if type(patcher) not in (comfy.model_patcher.ModelPatcher, cls):
        raise TypeError(f"expected a plain ComfyUI ModelPatcher, got {type(patcher).__name__}")
    patcher.__class__ = cls
    patcher.patch_on_device = patch_on_device
    # Unloading a model (unload_all_models, /free, or making room) detaches its patcher: the
    # dequantization buffers go too. Callbacks are copied to clones.
    patcher.remove_callbacks_with_key(CallbacksMP.ON_DETACH, _RELEASE_KEY)
    patcher.add_callback_with_key(CallbacksMP.ON_DETACH, _RELEASE_KEY, release_output_buffers)
    return patcher
