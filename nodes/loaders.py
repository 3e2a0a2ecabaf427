"""The ComfyUI node classes: thin; they call the reader, detection, key maps and ops modules.

ComfyUI modules are imported inside methods so this module imports without ComfyUI.
"""
from __future__ import annotations

import ctypes
import functools
import logging
import os
import sys
import weakref

import torch

from ..errors import IncompatibleModelError, ModelDetectionError, ZImageGGUFError
from ..ops.comfy_edge.comfy_compat import require_loaders
from ..ops.comfy_edge.comfy_ops import as_gguf_patcher, comfy_load_plan
from ..ops.runtime.dtype_policy import dtype_for
from ..ops.gguf_file.reader import load_gguf
from ..ops.runtime.state_dict import build_state_dict
from ..model_families import DIFFUSION_LOADER, TEXT_ENCODER_LOADER
from ..model_families.diffusion import (
    OTHER_COMPONENTS, detect_diffusion_model, expected_shape_fixes, normalize_diffusion_keys,
)
from ..model_families.pairing import check_clip_type, check_encoder_matches_model
from ..model_families.text_encoders import (
    ENCODER_ARCHS, comfy_config_kwargs, comfy_te_model, detect_text_encoder, encoder_config, hf_names,
    qk_permute_heads, unpermute_qk_rows,
)

log = logging.getLogger("comfyui_zimage_gguf")

DTYPE_CHOICES = {"auto": None, "float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
CLIP_TYPES = [
    "lumina2", "stable_diffusion", "stable_cascade", "sd3", "stable_audio", "mochi", "ltxv", "pixart", "cosmos",
    "wan", "hidream", "chroma", "ace", "omnigen2", "qwen_image", "hunyuan_image", "flux2", "ovis", "longcat_image",
]

# Key under which the text encoder's identity travels in every conditioning our encoder node
# makes (ComfyUI copies a conditioning's dict into the sampler's conds), so the diffusion model's
# width check names the encoder that made the features, not the last one loaded.
ENCODER_TAG = "zimage_gguf_text_encoder"

# ---------------------------------------------------------------------------------------------
# Which files each loader lists

DIFFUSION_TOOLTIPS = {
    "unet_name": "The diffusion model GGUF (e.g. z_image_turbo-Q8_0.gguf), from models/diffusion_models or "
                 "models/unet. Text encoder GGUFs are not listed here: they go in the text encoder loader.",
    "dequant_dtype": "lora_dtype: the precision a LoRA's patches are added to the weights in (saved workflows call this "
                     "input dequant_dtype; it does not change how weights without a LoRA are dequantized). "
                     "auto: the precision the model runs in. "
                     "Only matters with a LoRA: pick float32 if a LoRA's effect looks wrong or washed out (slower); "
                     "without a LoRA, leave auto.",
    "patch_on_device": "Keep LoRA weights on the GPU. Turn on for faster steps with a LoRA when you have VRAM to "
                       "spare; leave off if you run out of VRAM. No effect without a LoRA.",
}
TEXT_ENCODER_TOOLTIPS = {
    "clip_name": "The text encoder, from models/text_encoders or models/clip: for Z-Image a Qwen3-4B GGUF (e.g. "
                 "Qwen3-4B-Instruct-2507-Q8_0.gguf) or qwen_3_4b.safetensors. Diffusion model GGUFs are not listed "
                 "here.",
    "type": "Which model the encoder is for. lumina2 is right for Z-Image and Z-Image Turbo; change it only for "
            "another model (qwen_image for Qwen-Image, flux2 for FLUX.2).",
    "device": "default: where ComfyUI runs text encoders. Pick cpu to save GPU memory for the diffusion model; "
              "encoding a prompt then takes longer.",
}

DIFFUSION, TEXT_ENCODER, OTHER = "diffusion", "text_encoder", "other"
# path -> (size, mtime_ns, kind): header reads are repeated only for new or changed files
_KIND_CACHE: dict[str, tuple[int, int, str | None]] = {}


def gguf_kind(path: str) -> str | None:
    """DIFFUSION, TEXT_ENCODER, OTHER (a VAE, a vision projector) or None (cannot tell), from the header only.

    Cached by (path, size, mtime): the loaders' lists are rebuilt on every /object_info.
    """
    try:
        stat = os.stat(path)
    except OSError:
        return None
    cached = _KIND_CACHE.get(path)
    if cached is not None and cached[:2] == (stat.st_size, stat.st_mtime_ns):
        return cached[2]
    kind = _classify(path)
    _KIND_CACHE[path] = (stat.st_size, stat.st_mtime_ns, kind)
    return kind


def _classify(path: str) -> str | None:
    try:
        with load_gguf(path) as gguf_file:
            architecture, shapes, metadata = gguf_file.architecture, gguf_file.shapes, gguf_file.metadata
            if architecture in ENCODER_ARCHS:
                return TEXT_ENCODER
            try:
                detect_diffusion_model(metadata, shapes, source=path)
                return DIFFUSION
            except ModelDetectionError:
                general_type = metadata.get("general.type")
                for component in OTHER_COMPONENTS:
                    if component.matches(shapes, architecture, general_type):
                        return TEXT_ENCODER if component.kind == "text encoder" else OTHER
                return None
    except (ZImageGGUFError, OSError, ValueError):
        return None  # unreadable: listed, so that picking it shows the reason


def list_gguf_files(roots, kind: str | None = None) -> list[str]:
    """.gguf names (relative, '/'-separated) under `roots`; with `kind`, those of that kind or of unknown kind."""
    found = set()
    for root in roots:
        if not os.path.isdir(root):
            continue
        for dirpath, _, files in os.walk(root, followlinks=True):
            for name in files:
                if not name.lower().endswith(".gguf"):
                    continue
                path = os.path.join(dirpath, name)
                if kind is not None and gguf_kind(path) not in (kind, None):
                    continue
                found.add(os.path.relpath(path, root).replace(os.sep, "/"))
    return sorted(found)


def _gguf_files(folder_name: str, kind: str | None = None) -> list[str]:
    import folder_paths

    return list_gguf_files(folder_paths.get_folder_paths(folder_name), kind)


def _progress_bar():
    """A UI progress bar (in percent of the file's tensor bytes prepared)."""
    import comfy.utils

    bar = comfy.utils.ProgressBar(100)
    return lambda done, all_bytes: bar.update_absolute(int(100 * done / max(all_bytes, 1)), 100)


class ZImageGGUFDiffusionModelLoader:
    """Loads a diffusion model (Z-Image and the other families ComfyUI detects) from a GGUF file."""

    SEARCH_ALIASES = [
        "unet gguf", "gguf loader", "diffusion model gguf", "gguf unet", "load gguf", "unet loader gguf",
        "UnetLoaderGGUF", "z-image", "zimage", "z-image turbo", "z image turbo",
    ]

    @classmethod
    def INPUT_TYPES(cls):
        tips = DIFFUSION_TOOLTIPS
        return {
            "required": {
                "unet_name": (_gguf_files("diffusion_models", DIFFUSION), {"tooltip": tips["unet_name"]}),
                # The input keeps its name so saved workflows load; the editor labels it for what it does.
                "dequant_dtype": (list(DTYPE_CHOICES), {"default": "auto", "display_name": "lora_dtype",
                                                        "tooltip": tips["dequant_dtype"]}),
                "patch_on_device": ("BOOLEAN", {"default": False, "tooltip": tips["patch_on_device"]}),
            }
        }

    RETURN_TYPES = ("MODEL",)
    OUTPUT_TOOLTIPS = ("The diffusion model; weights stay quantized and are dequantized per layer.",)
    FUNCTION = "load_unet"
    CATEGORY = "loaders/Z-Image GGUF"
    DESCRIPTION = ("Load a GGUF diffusion model (Z-Image Turbo and others ComfyUI knows), like the GGUF Unet "
                   "loader, keeping the weights quantized in memory.")

    def load_unet(self, unet_name, dequant_dtype="auto", patch_on_device=False):
        import comfy.model_management
        import folder_paths

        path = folder_paths.get_full_path_or_raise("diffusion_models", unet_name)
        return (load_diffusion_gguf(path, DTYPE_CHOICES[dequant_dtype], patch_on_device,
                                    comfy.model_management.get_torch_device()),)


def _dtype_name(dtype) -> str:
    return str(dtype).replace("torch.", "")


def load_diffusion_gguf(path, dequant_dtype=None, patch_on_device=False, device=None):
    require_loaders()
    import comfy.sd

    gguf_file = load_gguf(path)
    shapes = gguf_file.shapes
    info = detect_diffusion_model(gguf_file.metadata, shapes, source=path)
    names = normalize_diffusion_keys(shapes)
    fixes = expected_shape_fixes(info.family, {new: shapes[old] for new, old in names.items()})
    choice = dtype_for(device or "cpu", dequant_dtype)
    plan = comfy_load_plan(dequant_dtype and choice.dequant)
    loader = comfy.sd.load_diffusion_model_state_dict
    loader_options = plan.loader_options(loader)  # before the tensors are read: it may refuse this ComfyUI
    state_dict, stats = build_state_dict(gguf_file, plan.reported_dtype(device, choice.compute), names=names, shapes=fixes,
                                         progress=_progress_bar())
    patcher = loader(plan.state_dict(state_dict), model_options={"custom_operations": plan.ops}, **loader_options)
    if patcher is None:
        raise ModelDetectionError(
            f"ComfyUI did not recognise the {info.display_name} model in {os.path.basename(path)}: "
            "is your ComfyUI recent enough for it?\n"
            f"{path}: {len(names)} tensors under prefix '{info.prefix}'")
    patcher = as_gguf_patcher(patcher, patch_on_device, dequant_dtype and choice.dequant)
    if info.caption_width:
        _install_caption_check(patcher, path, info)
    compute = patcher.model.get_dtype_inference()
    patches = f", LoRA patches in {_dtype_name(dequant_dtype and choice.dequant)}" if dequant_dtype else ""
    log.info("Z-Image GGUF: %s: %s, %s; ComfyUI computes in %s (weights dequantized per layer to it%s)",
             os.path.basename(path), info.display_name, stats.summary(), _dtype_name(compute), patches)
    return patcher


def _install_caption_check(patcher, path, info):
    """Stop a wrong text encoder before sampling starts, instead of `mat1 and mat2` inside the model."""
    import comfy.patcher_extension as ext

    model_file = os.path.basename(path)

    def check(width, encoder=None):
        if width == info.caption_width:
            return
        encoder = encoder or {}
        stacked = info.caption_width // encoder["width"] if encoder.get("width") else 1
        check_encoder_matches_model(
            encoder.get("file", "the text encoder in use"), encoder.get("width") or width, model_file, info.family,
            info.caption_width, encoder_family=encoder.get("family"), encoder_display=encoder.get("display"),
            model_display=info.display_name)
        raise IncompatibleModelError(  # the table accepted the encoder, yet the features do not fit
            f"{model_file} ({info.display_name}) takes {info.caption_width}-wide text features, but got {width}: "
            f"check the text encoder.\nText encoder: {encoder.get('file', 'unknown')} (x{stacked} layers)")

    def outer_sample(executor, *args, **kwargs):
        for conds in (getattr(executor.class_obj, "conds", None) or {}).values():
            for cond in conds or ():
                features = cond.get("cross_attn") if isinstance(cond, dict) else None
                if isinstance(features, torch.Tensor):
                    check(features.shape[-1], cond.get(ENCODER_TAG))
        return executor(*args, **kwargs)

    def diffusion_model(executor, x, timesteps, context=None, *args, **kwargs):
        if isinstance(context, torch.Tensor):
            check(context.shape[-1])
        return executor(x, timesteps, context, *args, **kwargs)

    patcher.add_wrapper_with_key(ext.WrappersMP.OUTER_SAMPLE, "zimage_gguf_caption_check", outer_sample)
    patcher.add_wrapper_with_key(ext.WrappersMP.DIFFUSION_MODEL, "zimage_gguf_caption_check", diffusion_model)


class ZImageGGUFTextEncoderLoader:
    """Loads a text encoder from a llama.cpp-format GGUF (Qwen3, Qwen2.5(-VL), Llama) or safetensors."""

    SEARCH_ALIASES = [
        "clip gguf", "text encoder gguf", "qwen gguf", "gguf loader", "gguf clip", "clip loader gguf",
        "load clip gguf", "qwen3 gguf", "qwen3-4b", "CLIPLoaderGGUF", "z-image", "zimage", "z-image turbo",
    ]

    @classmethod
    def INPUT_TYPES(cls):
        import folder_paths

        files = sorted(set(_gguf_files("text_encoders", TEXT_ENCODER)) | set(folder_paths.get_filename_list("text_encoders")))
        tips = TEXT_ENCODER_TOOLTIPS
        return {
            "required": {
                "clip_name": (files, {"tooltip": tips["clip_name"]}),
                "type": (CLIP_TYPES, {"default": "lumina2", "tooltip": tips["type"]}),
            },
            "optional": {
                "device": (["default", "cpu"], {"advanced": True, "tooltip": tips["device"]}),
            },
        }

    RETURN_TYPES = ("CLIP",)
    OUTPUT_TOOLTIPS = ("The text encoder; GGUF weights stay quantized.",)
    FUNCTION = "load_clip"
    CATEGORY = "loaders/Z-Image GGUF"
    DESCRIPTION = ("Load a text encoder (CLIP) from a llama.cpp GGUF such as Qwen3-4B, like the GGUF CLIP loader, "
                   "with its config read from the file.")

    def load_clip(self, clip_name, type="lumina2", device="default"):
        import comfy.model_management
        import folder_paths

        path = folder_paths.get_full_path_or_raise("text_encoders", clip_name)
        model_options = {}
        if device == "cpu":
            model_options["load_device"] = model_options["offload_device"] = torch.device("cpu")
        compute_device = model_options.get("load_device") or comfy.model_management.text_encoder_device()
        return (load_text_encoder(path, type, model_options, compute_device),)


def load_text_encoder(path, clip_type="lumina2", model_options=None, device=None):
    require_loaders()
    import comfy.sd
    import folder_paths

    model_options = dict(model_options or {})
    clip_type_enum = getattr(comfy.sd.CLIPType, clip_type.upper(), comfy.sd.CLIPType.STABLE_DIFFUSION)
    embeddings = folder_paths.get_folder_paths("embeddings")
    if not path.lower().endswith(".gguf"):
        clip = comfy.sd.load_clip(ckpt_paths=[path], embedding_directory=embeddings, clip_type=clip_type_enum,
                                  model_options=model_options)
        tag_encoder(clip, {"file": os.path.basename(path)})
        show_encode_progress(clip)
        return_freed_memory_at_first_encode(clip)
        return clip

    gguf_file = load_gguf(path)
    shapes = gguf_file.shapes
    arch = detect_text_encoder(gguf_file.metadata, shapes, path)
    config = encoder_config(arch, gguf_file.metadata, shapes, path)
    known = comfy_te_model(config)
    check_clip_type(os.path.basename(path), clip_type, known)
    names = {hf: cpp for cpp, hf in hf_names(arch, shapes, path).items()}
    choice = dtype_for(device or "cpu")
    plan = comfy_load_plan()
    loader = comfy.sd.load_text_encoder_state_dicts
    loader_options = plan.loader_options(loader)
    state_dict, stats = build_state_dict(gguf_file, plan.reported_dtype(device, choice.compute), names=names,
                                         progress=_progress_bar())
    for hf, cpp in names.items():
        heads = qk_permute_heads(arch, cpp, config)
        if heads:
            state_dict[hf] = _unpermute(state_dict[hf], heads)
    state_dict = plan.state_dict(state_dict)
    model_options["custom_operations"] = plan.ops
    model_options[f"{known.comfy_name}_model_config"] = comfy_config_kwargs(config)
    clip = loader([state_dict], embedding_directory=embeddings, clip_type=clip_type_enum, model_options=model_options,
                  **loader_options)
    clip.patcher = as_gguf_patcher(clip.patcher)
    tag_encoder(clip, {"file": os.path.basename(path), "display": known.display, "family": config.family,
                       "width": config.hidden_size})
    show_encode_progress(clip)
    return_freed_memory_at_first_encode(clip)
    log.info("Z-Image GGUF: %s: %s text encoder (%d layers, %d wide), %s; ComfyUI computes in %s "
             "(weights dequantized per layer to it)", os.path.basename(path), known.display, config.n_layers,
             config.hidden_size, stats.summary(), _dtype_name(_clip_compute_dtype(clip)))
    return clip


def _clip_compute_dtype(clip):
    """The dtype ComfyUI's text-encoder code computes in: its patcher's forced cast, else the model's."""
    forced = clip.patcher.object_patches.get("manual_cast_dtype")
    if forced is not None:
        return forced
    return next(iter(getattr(clip.cond_stage_model, "dtypes", None) or ()), None) or clip.patcher.model_dtype()


def tag_encoder(clip, encoder: dict) -> None:
    """Make every conditioning this CLIP encodes carry `encoder` (file, model, family, width) under ENCODER_TAG.

    The tag is set on the CLIP's text model, which ComfyUI's CLIP.clone() shares, so clones made by
    LoRA loaders or CLIP Set Last Layer keep it; each loaded encoder has its own text model.
    """
    def wrap(encode):
        def encode_token_weights(token_weight_pairs):
            out = encode(token_weight_pairs)
            extra = dict(out[2]) if len(out) > 2 and isinstance(out[2], dict) else {}
            extra[ENCODER_TAG] = dict(encoder)
            return (out[0], out[1], extra) + tuple(out[3:])
        return encode_token_weights

    _wrap_encode(clip.cond_stage_model, wrap)


def return_freed_memory_at_first_encode(clip) -> None:
    """Hand the C heap's free pages back to the system once, when this encoder first encodes.

    Torch frees a swapped-out encoder's weights into glibc's heap, which keeps most of them mapped:
    the process's RssAnon then grows with every encoder swap although the memory is free (measured
    on a real server, 20 swaps of a 701 MiB Qwen3-4B-shaped GGUF: +9% from the first five swaps'
    peak to the last five's). In ComfyUI the previous encoder is dropped when the loader's new output
    replaces it in the cache, before the first encode; malloc_trim then returns its pages."""
    pending = [True]

    def wrap(encode):
        def encode_token_weights(token_weight_pairs):
            if pending:
                pending.clear()
                _malloc_trim()
            return encode(token_weight_pairs)
        return encode_token_weights

    _wrap_encode(clip.cond_stage_model, wrap)


@functools.lru_cache(maxsize=None)
def _libc_malloc_trim():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim  # glibc; musl has no malloc_trim
    except (OSError, AttributeError):
        return None


def _malloc_trim() -> None:
    trim = _libc_malloc_trim()
    if trim is not None:
        trim(0)


def _wrap_encode(model, wrap) -> None:
    """Set `model.encode_token_weights = wrap(encode)`, `encode` calling what was there before, without
    a reference from the model to itself. A bound method of the model kept in its own __dict__ is a
    reference cycle: every swapped-out encoder then stayed in memory until Python's next full
    garbage collection, and ComfyUI logged "Potential memory leak detected with model
    ZImageTEModel_" on each swap (its LoadedModel saw the patcher gone but the model alive)."""
    earlier = model.__dict__.get("encode_token_weights")  # an earlier wrapper: a plain function
    if earlier is not None:
        encode = earlier
    else:
        method, model_ref = type(model).encode_token_weights, weakref.ref(model)

        def encode(token_weight_pairs):
            return method(model_ref(), token_weight_pairs)
    model.encode_token_weights = wrap(encode)


def _comfy_progress_bar(total: int):
    import comfy.utils

    return comfy.utils.ProgressBar(total)


def show_encode_progress(clip, progress_bar=_comfy_progress_bar) -> int:
    """Show prompt encoding in ComfyUI's progress bar, one step per transformer layer (the longest
    ModuleList of the text model; Qwen3-4B: 36), on the node that encodes (CLIP Text Encode). On a
    CPU an encode takes tens of seconds; ComfyUI's progress hook also lets a user interrupt between
    layers. Returns the number of layers found (0: nothing shown). Set on the text model, which
    clones share, like tag_encoder."""
    import torch.nn as nn

    model = clip.cond_stage_model
    layers = max((m for m in model.modules() if isinstance(m, nn.ModuleList)), key=len, default=())
    if len(layers) < 2:
        return 0
    encoding, count = {"bar": None}, len(layers)  # the hooks hold no module: no reference cycle

    def after_layer(index):
        def hook(module, args, output):
            if encoding["bar"] is not None:
                encoding["bar"].update_absolute(index + 1, count)
        return hook

    for index, layer in enumerate(layers):
        layer.register_forward_hook(after_layer(index))

    def wrap(encode):
        def encode_token_weights(token_weight_pairs):
            encoding["bar"] = progress_bar(count)
            try:
                return encode(token_weight_pairs)
            finally:
                encoding["bar"] = None
        return encode_token_weights

    _wrap_encode(model, wrap)
    return count


def _unpermute(tensor, n_heads):
    from ..ops.runtime.tensor import QuantizedTensor

    if isinstance(tensor, QuantizedTensor):
        rows = tensor.raw.view(tensor.shape[0], -1)
        return tensor._rewrap(unpermute_qk_rows(rows, n_heads).contiguous().reshape(-1))
    return unpermute_qk_rows(tensor, n_heads).contiguous()


NODE_CLASS_MAPPINGS = {
    "ZImageGGUFDiffusionModelLoader": ZImageGGUFDiffusionModelLoader,
    "ZImageGGUFTextEncoderLoader": ZImageGGUFTextEncoderLoader,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "ZImageGGUFDiffusionModelLoader": DIFFUSION_LOADER,
    "ZImageGGUFTextEncoderLoader": TEXT_ENCODER_LOADER,
}
