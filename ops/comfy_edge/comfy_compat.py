"""Which ComfyUI internals the pack uses, probed once (presence and keyword parameters) when it loads.

The pack touches ComfyUI at a few edges (docs/ARCHITECTURE.md, "Compatibility with ComfyUI
versions", says where each one is in ComfyUI 0.18.1 and in the newest sources). Each edge is a row
of INTERNALS; what a missing row costs depends on its path:

- LAYOUT: the fast path (GGML layouts in ComfyUI's quantized-tensor layer). Missing, the loaders
  use the pack's own dequantizing layers instead, and the pack logs one line saying why.
- LOADERS: needed on either path. Missing, the loader nodes raise ComfyUIIncompatibleError (one
  line naming what is missing and the ComfyUI version) instead of a traceback from inside ComfyUI.
- DYNAMIC: ComfyUI's DynamicVRAM patcher; without it ComfyUI has no DynamicVRAM, nothing to adapt.
- API: the image API's routes on ComfyUI's server (api/inserver.py checks them itself).

Nothing here imports ComfyUI at module level; `probe()` imports only modules ComfyUI has already
imported when it runs under ComfyUI.
"""
from __future__ import annotations

import dataclasses
import importlib
import inspect
import logging
import sys

from ...errors import ZImageGGUFError

log = logging.getLogger("comfyui_zimage_gguf")

LAYOUT, LOADERS, DYNAMIC, API = "layout", "loaders", "dynamic", "api"
DISABLE_DYNAMIC = "disable_dynamic"


class ComfyUIIncompatibleError(ZImageGGUFError, RuntimeError):
    """The running ComfyUI lacks an internal the pack's loaders need."""


@dataclasses.dataclass(frozen=True)
class Internal:
    """One ComfyUI name the pack imports, subclasses, patches or calls.

    `attribute` is a dotted path inside `module`; `keywords` are the keyword parameters the pack
    passes it (a callable taking **kwargs accepts any); `truthy`: the value must also be true.
    """

    module: str
    attribute: str
    path: str
    keywords: tuple[str, ...] = ()
    truthy: bool = False

    @property
    def name(self) -> str:
        return f"{self.module}.{self.attribute}"


INTERNALS: tuple[Internal, ...] = (
    # The fast path: GGML layouts registered in comfy.quant_ops (comfy-kitchen's QuantizedTensor).
    Internal("comfy.quant_ops", "_CK_AVAILABLE", LAYOUT, truthy=True),
    Internal("comfy.quant_ops", "QuantizedLayout", LAYOUT),
    Internal("comfy.quant_ops", "QuantizedTensor", LAYOUT),
    Internal("comfy.quant_ops", "QuantizedTensor._dequant_and_fallback", LAYOUT),
    Internal("comfy.quant_ops", "QuantizedTensor._copy_with", LAYOUT, keywords=("params", "clone_params")),
    Internal("comfy.quant_ops", "register_layout_class", LAYOUT),
    Internal("comfy.quant_ops", "register_layout_op", LAYOUT),
    # Either path: the loaders, the ops base, the plain patcher and its hooks.
    Internal("comfy.sd", "load_diffusion_model_state_dict", LOADERS, keywords=("model_options",)),
    Internal("comfy.sd", "load_text_encoder_state_dicts", LOADERS,
             keywords=("embedding_directory", "clip_type", "model_options")),
    Internal("comfy.sd", "load_clip", LOADERS, keywords=("ckpt_paths", "embedding_directory", "clip_type", "model_options")),
    Internal("comfy.sd", "CLIPType", LOADERS),
    Internal("comfy.ops", "manual_cast", LOADERS),
    Internal("comfy.model_patcher", "ModelPatcher", LOADERS),
    Internal("comfy.model_patcher", "ModelPatcher.patch_weight_to_device", LOADERS,
             keywords=("device_to", "inplace_update", "return_weight")),
    Internal("comfy.model_patcher", "ModelPatcher.unpatch_model", LOADERS, keywords=("device_to", "unpatch_weights")),
    Internal("comfy.model_patcher", "ModelPatcher.is_dynamic", LOADERS),
    Internal("comfy.model_patcher", "ModelPatcher.add_wrapper_with_key", LOADERS),
    Internal("comfy.model_patcher", "ModelPatcher.add_callback_with_key", LOADERS),
    Internal("comfy.model_patcher", "ModelPatcher.remove_callbacks_with_key", LOADERS),
    Internal("comfy.model_patcher", "LowVramPatch", LOADERS),
    Internal("comfy.model_patcher", "get_key_weight", LOADERS),
    Internal("comfy.patcher_extension", "WrappersMP.OUTER_SAMPLE", LOADERS),
    Internal("comfy.patcher_extension", "WrappersMP.DIFFUSION_MODEL", LOADERS),
    Internal("comfy.patcher_extension", "CallbacksMP.ON_DETACH", LOADERS),
    Internal("comfy.utils", "ProgressBar", LOADERS),
    Internal("comfy.utils", "get_attr", LOADERS),
    Internal("comfy.lora", "calculate_weight", LOADERS),
    Internal("comfy.model_management", "get_torch_device", LOADERS),
    Internal("comfy.model_management", "text_encoder_device", LOADERS),
    Internal("folder_paths", "get_folder_paths", LOADERS),
    Internal("folder_paths", "get_full_path_or_raise", LOADERS),
    Internal("folder_paths", "get_filename_list", LOADERS),
    # DynamicVRAM (ComfyUI 0.15+): absent means no DynamicVRAM, which the pack does not need.
    Internal("comfy.model_patcher", "ModelPatcherDynamic", DYNAMIC),
    Internal("comfy.model_patcher", "CoreModelPatcher", DYNAMIC),
    # The image API on ComfyUI's own server.
    Internal("server", "PromptServer.instance", API),
    Internal("execution", "validate_prompt", API),
    Internal("comfy.model_management", "interrupt_current_processing", API),
    Internal("folder_paths", "get_directory_by_type", API),
    Internal("folder_paths", "get_user_directory", API),
)


IMPORTABLE_BESIDE_COMFY = frozenset({"folder_paths"})


def _resolve(internal: Internal):
    """The object `internal` names, or None where its module or an attribute on the way is missing."""
    module = sys.modules.get(internal.module)
    top = internal.module.split(".")[0]
    if module is None and (top != internal.module and top in sys.modules
                           or internal.module in IMPORTABLE_BESIDE_COMFY and "comfy" in sys.modules):
        # a submodule of an imported ComfyUI package, or a light module of the same ComfyUI; never
        # `server` or `execution`, which import half of ComfyUI (and outside it could be anything)
        try:
            module = importlib.import_module(internal.module)
        except Exception:  # a module that fails to import is as missing as one that is absent
            return None
    if module is None:
        return None
    value = module
    for part in internal.attribute.split("."):
        if isinstance(value, type) and part in _class_dict(value):
            value = _class_dict(value)[part]  # classmethods stay recognisable as such
        else:
            value = getattr(value, part, None)
        if value is None:
            return None
    return value


def _class_dict(cls: type) -> dict:
    merged = {}
    for klass in reversed(cls.__mro__):
        merged.update(vars(klass))
    return merged


def accepts_keyword(function, keyword: str) -> bool:
    """Whether `function` takes `keyword` by name (or any keyword, via **kwargs). Unreadable: assumed yes."""
    function = getattr(function, "__func__", function)
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.name == keyword and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
               or p.kind is p.VAR_KEYWORD for p in parameters)


def _problem(internal: Internal) -> str | None:
    value = _resolve(internal)
    if value is None:
        return internal.name
    if internal.truthy and not value:
        return f"{internal.name} (False)"
    missing = [k for k in internal.keywords if not accepts_keyword(value, k)]
    if missing:
        return f"{internal.name}({', '.join(k + '=' for k in missing)})"
    return None


@dataclasses.dataclass(frozen=True)
class ProbeReport:
    """What the running ComfyUI lacks, by path."""

    comfyui_version: str
    missing: dict[str, tuple[str, ...]]
    serving: bool = False  # ComfyUI's server module is loaded (the API rows matter)

    def lacks(self, path: str) -> tuple[str, ...]:
        return self.missing.get(path, ())

    @property
    def layout_ok(self) -> bool:
        return not self.lacks(LAYOUT)


def comfyui_version() -> str:
    module = sys.modules.get("comfyui_version")
    return str(getattr(module, "__version__", "of unknown version"))


def under_comfyui() -> bool:
    return "comfy.model_management" in sys.modules or "comfyui_version" in sys.modules


_REPORT: list[ProbeReport] = []  # the probe of the running ComfyUI, once made


def probe() -> ProbeReport:
    """Probe every INTERNALS row; under ComfyUI once (the result is kept until `reset_probe()`)."""
    if _REPORT:
        return _REPORT[0]
    missing: dict[str, list[str]] = {}
    for internal in INTERNALS:
        problem = _problem(internal)
        if problem is not None:
            missing.setdefault(internal.path, []).append(problem)
    report = ProbeReport(comfyui_version(), {path: tuple(names) for path, names in missing.items()},
                         serving="server" in sys.modules)
    if under_comfyui():  # outside ComfyUI nothing is kept: ComfyUI may be imported later (tests)
        _REPORT.append(report)
    return report


def reset_probe() -> None:
    _REPORT.clear()


def describe_at_load(report: ProbeReport) -> list[str]:
    """The lines to log when the pack loads: one per path that lacks something (none when all is there)."""
    version = report.comfyui_version
    lines = []
    if report.lacks(LAYOUT):
        lines.append(f"Z-Image GGUF: ComfyUI {version} lacks {', '.join(report.lacks(LAYOUT))}: "
                     "GGUF models load through the pack's own dequantizing layers (update ComfyUI and comfy-kitchen "
                     "for the faster path)")
    if report.lacks(LOADERS):
        lines.append(f"Z-Image GGUF: ComfyUI {version} lacks {', '.join(report.lacks(LOADERS))}: the GGUF loader "
                     "nodes will refuse to load until ComfyUI or the pack is updated")
    if report.serving and report.lacks(API):
        lines.append(f"Z-Image GGUF: ComfyUI {version} lacks {', '.join(report.lacks(API))}: the image API "
                     "(/v1/images/generations) may be unavailable")
    return lines


def log_at_load() -> ProbeReport | None:
    """Under ComfyUI: probe, and log what is missing (one line per affected path). Elsewhere: nothing."""
    if not under_comfyui():
        return None
    report = probe()
    for line in describe_at_load(report):
        log.warning(line)
    return report


def require_loaders() -> None:
    """Raise ComfyUIIncompatibleError (one line, then details) when the loaders cannot work on this ComfyUI."""
    report = probe()
    lacking = report.lacks(LOADERS)
    if lacking:
        raise ComfyUIIncompatibleError(
            f"This ComfyUI ({report.comfyui_version}) lacks what the Z-Image GGUF loaders need: update ComfyUI "
            "or the pack.\n"
            f"Missing or changed in ComfyUI: {', '.join(lacking)}")


def dynamic_vram_default() -> bool:
    """Whether ComfyUI's loaders build DynamicVRAM patchers unless told otherwise (CoreModelPatcher)."""
    model_patcher = sys.modules.get("comfy.model_patcher")
    dynamic = getattr(model_patcher, "ModelPatcherDynamic", None)
    core = getattr(model_patcher, "CoreModelPatcher", None)
    return isinstance(dynamic, type) and isinstance(core, type) and issubclass(core, dynamic)


def loader_options(loader, needs_plain_patcher: bool) -> dict:
    """Keyword arguments that keep a ComfyUI loader off DynamicVRAM where `needs_plain_patcher`.

    The pack's own layers need ComfyUI's plain ModelPatcher; ComfyUI's layout path takes whatever
    patcher ComfyUI picks, so it passes nothing and does not depend on `disable_dynamic` (which
    ComfyUI may drop along with --disable-dynamic-vram). Where the plain patcher is needed and the
    loader has no such option, that is fine unless DynamicVRAM is ComfyUI's default; then the load
    cannot work and the error says so in one line.
    """
    if not needs_plain_patcher:
        return {}
    if accepts_keyword(loader, DISABLE_DYNAMIC):
        return {DISABLE_DYNAMIC: True}
    if not dynamic_vram_default():
        return {}
    report = probe()
    raise ComfyUIIncompatibleError(
        f"This ComfyUI ({report.comfyui_version}) needs ComfyUI's quantized-tensor layer for GGUF: update "
        "comfy-kitchen (pip install -U comfy-kitchen) and restart.\n"
        f"Without it the pack's own layers need a loader that can turn DynamicVRAM off, and "
        f"{getattr(loader, '__module__', '?')}.{getattr(loader, '__name__', '?')} has no {DISABLE_DYNAMIC} option. "
        f"Missing for the fast path: {', '.join(report.lacks(LAYOUT)) or 'nothing (ZIMAGE_GGUF_FORCE_PACK_LAYERS is set)'}")
