"""Fake ComfyUI modules shaped like a given ComfyUI's internals, for the compatibility guards' tests.

`fake_comfyui(...)` returns {module name: module} to put in sys.modules. The default shape is the
newest sources read for docs/ARCHITECTURE.md (ComfyUI 0.38.1): loaders that still take
`disable_dynamic`, `ModelPatcher.patch_weight_to_device(..., force_cast=False)`, DynamicVRAM as the
default patcher (`CoreModelPatcher` is `ModelPatcherDynamic`), comfy-kitchen's layout registry.
Each keyword turns one thing into what a newer or broken install could have instead.
Only signatures and names are real here: the loaders record their calls and return a patcher.
"""
from __future__ import annotations

import types


def _module(name: str, **members) -> types.ModuleType:
    module = types.ModuleType(name)
    for key, value in members.items():
        setattr(module, key, value)
    return module


def fake_comfyui(*, version="0.38.1", loader_takes_disable_dynamic=True, dynamic_vram_default=True,
                 has_dequant_and_fallback=True, comfy_kitchen=True, copy_with_takes_clone_params=True,
                 has_dynamic_patcher=True, has_text_encoder_loader=True, calls=None):
    """{module name: module} of a fake ComfyUI; `calls` (a list) records every loader call as (name, kwargs)."""
    calls = calls if calls is not None else []

    class QuantizedLayout:
        pass

    class QuantizedTensor:
        if copy_with_takes_clone_params:
            def _copy_with(self, qdata=None, params=None, clone_params=True):
                return self
        else:
            def _copy_with(self, qdata=None, params=None):
                return self

        if has_dequant_and_fallback:
            @classmethod
            def _dequant_and_fallback(cls, func, args, kwargs):
                return func(*args, **kwargs)

    layouts, layout_ops = {}, {}

    def register_layout_class(name, cls):
        layouts[name] = cls

    def register_layout_op(torch_op, layout_cls):
        def decorator(handler):
            layout_ops.setdefault(torch_op, {})[layout_cls] = handler
            return handler
        return decorator

    quant_ops = _module("comfy.quant_ops", _CK_AVAILABLE=comfy_kitchen, QuantizedTensor=QuantizedTensor,
                        register_layout_class=register_layout_class, LAYOUTS=layouts, LAYOUT_OPS=layout_ops)
    if comfy_kitchen:  # the stub comfy.quant_ops defines neither without comfy-kitchen
        quant_ops.QuantizedLayout = QuantizedLayout
        quant_ops.register_layout_op = register_layout_op

    class ModelPatcher:
        def __init__(self, model=None, load_device=None, offload_device=None, size=0, weight_inplace_update=False,
                     fast_disk=False):
            self.model, self.load_device, self.patches, self.callbacks = model, load_device, {}, {}
            self.weight_calls = []

        def is_dynamic(self):
            return False

        def patch_weight_to_device(self, key, device_to=None, inplace_update=False, return_weight=False,
                                   force_cast=False):
            self.weight_calls.append((key, force_cast))

        def unpatch_model(self, device_to=None, unpatch_weights=True):
            pass

        def add_wrapper_with_key(self, wrapper_type, key, wrapper):
            pass

        def add_callback_with_key(self, call_type, key, callback):
            self.callbacks.setdefault(call_type, {}).setdefault(key, []).append(callback)

        def remove_callbacks_with_key(self, call_type, key):
            self.callbacks.get(call_type, {}).pop(key, None)

    class ModelPatcherDynamic(ModelPatcher):
        def is_dynamic(self):
            return True

    class LowVramPatch:
        def __init__(self, key, patches, convert_func=None, set_func=None):
            self.key, self.patches = key, patches

    model_patcher = _module("comfy.model_patcher", ModelPatcher=ModelPatcher, LowVramPatch=LowVramPatch,
                            get_key_weight=lambda model, key: (None, None, None))
    model_patcher.CoreModelPatcher = ModelPatcher
    if has_dynamic_patcher:
        model_patcher.ModelPatcherDynamic = ModelPatcherDynamic
        if dynamic_vram_default:
            model_patcher.CoreModelPatcher = ModelPatcherDynamic

    def _patcher(disable_dynamic):
        return (ModelPatcher if disable_dynamic else model_patcher.CoreModelPatcher)(object(), "cpu", "cpu")

    if loader_takes_disable_dynamic:
        def load_diffusion_model_state_dict(sd, model_options={}, metadata=None, disable_dynamic=False):
            calls.append(("load_diffusion_model_state_dict", {"disable_dynamic": disable_dynamic}))
            return _patcher(disable_dynamic)

        def load_text_encoder_state_dicts(state_dicts=[], embedding_directory=None, clip_type=None, model_options={},
                                          disable_dynamic=False):
            calls.append(("load_text_encoder_state_dicts", {"disable_dynamic": disable_dynamic}))
            return types.SimpleNamespace(patcher=_patcher(disable_dynamic))
    else:
        def load_diffusion_model_state_dict(sd, model_options={}, metadata=None):
            calls.append(("load_diffusion_model_state_dict", {}))
            return _patcher(False)

        def load_text_encoder_state_dicts(state_dicts=[], embedding_directory=None, clip_type=None, model_options={}):
            calls.append(("load_text_encoder_state_dicts", {}))
            return types.SimpleNamespace(patcher=_patcher(False))

    def load_clip(ckpt_paths, embedding_directory=None, clip_type=None, model_options={}, disable_dynamic=False):
        raise AssertionError("not used by these tests")

    sd = _module("comfy.sd", load_diffusion_model_state_dict=load_diffusion_model_state_dict, load_clip=load_clip,
                 CLIPType=types.SimpleNamespace(STABLE_DIFFUSION=1, LUMINA2=2))
    if has_text_encoder_loader:
        sd.load_text_encoder_state_dicts = load_text_encoder_state_dicts

    class Layer:
        comfy_cast_weights = False

    manual_cast = type("manual_cast", (), {name: type(name, (Layer,), {}) for name in (
        "Linear", "Conv1d", "Conv2d", "Conv3d", "Embedding", "LayerNorm", "GroupNorm", "RMSNorm")})
    modules = {
        "comfyui_version": _module("comfyui_version", __version__=version),
        "comfy": _module("comfy"),
        "comfy.quant_ops": quant_ops,
        "comfy.model_patcher": model_patcher,
        "comfy.sd": sd,
        "comfy.ops": _module("comfy.ops", manual_cast=manual_cast),
        "comfy.patcher_extension": _module(
            "comfy.patcher_extension",
            WrappersMP=types.SimpleNamespace(OUTER_SAMPLE="outer_sample", DIFFUSION_MODEL="diffusion_model"),
            CallbacksMP=types.SimpleNamespace(ON_DETACH="on_detach")),
        "comfy.utils": _module("comfy.utils", ProgressBar=object, get_attr=lambda obj, name: obj),
        "comfy.lora": _module("comfy.lora", calculate_weight=lambda patches, weight, key: weight),
        "comfy.model_management": _module("comfy.model_management", get_torch_device=lambda: "cpu",
                                          text_encoder_device=lambda: "cpu"),
        "folder_paths": _module("folder_paths", get_folder_paths=lambda name: [], get_full_path_or_raise=None,
                                get_filename_list=lambda name: []),
    }
    modules["folder_paths"].get_full_path_or_raise = lambda folder, name: name
    for name, module in modules.items():
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(modules[parent], child, module)
    return modules
