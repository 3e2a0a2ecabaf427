"""The ComfyUI node classes: thin; they call the reader, detection, key maps and ops modules.

ComfyUI modules are imported inside methods so this module imports without ComfyUI.
"""
from __future__ import annotations

import logging
import os

import torch

from ..errors import IncompatibleModelError, ModelDetectionError
from ..ops.comfy_ops import as_gguf_patcher, make_comfy_ops
from ..ops.dtype_policy import dtype_for
from ..ops.layers import LayerOptions
from .families.diffusion import detect_diffusion_model, expected_shape_fixes, normalize_diffusion_keys
from .families.pairing import check_encoder_matches_model
from ..ops.reader import load_gguf
from ..ops.state_dict import build_state_dict
from .families.text_encoders import (
    comfy_config_kwargs, comfy_te_model, detect_text_encoder, encoder_config, hf_names, qk_permute_heads,
    unpermute_qk_rows,
)

log = logging.getLogger("comfyui_zimage_gguf")

DTYPE_CHOICES = {"auto": None, "float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
CLIP_TYPES = [
    "lumina2", "stable_diffusion", "stable_cascade", "sd3", "stable_audio", "mochi", "ltxv", "pixart", "cosmos",
    "wan", "hidream", "chroma", "ace", "omnigen2", "qwen_image", "hunyuan_image", "flux2", "ovis", "longcat_image",
]
# Which encoders (compat.KnownEncoder.display) a CLIP type's models were trained with, for the
# types whose models take one llama-style encoder; other types are not checked here.
CLIP_TYPE_ENCODERS = {
    "lumina2": ("Qwen3-4B", "Gemma-2-2B"),
    "qwen_image": ("Qwen2.5-VL-7B",),
    "flux2": ("Qwen3-4B", "Qwen3-8B", "Mistral-Small-3.2-24B"),
}
# detection families (families/diffusion.py) -> pairing.DIFFUSION_MODELS keys
COMPAT_FAMILY = {"zimage": "z_image", "zimage_pixel": "z_image"}

# Last encoder loaded through our node per output width, as (file name, family): only used to
# name the file and model in mismatch messages, never to change behaviour.
_ENCODER_FILES_BY_WIDTH: dict[int, tuple[str, str]] = {}


def _gguf_files(folder_name: str) -> list[str]:
    import folder_paths

    found = set()
    for root in folder_paths.get_folder_paths(folder_name):
        if not os.path.isdir(root):
            continue
        for dirpath, _, files in os.walk(root, followlinks=True):
            for name in files:
                if name.lower().endswith(".gguf"):
                    found.add(os.path.relpath(os.path.join(dirpath, name), root).replace(os.sep, "/"))
    return sorted(found)


def _progress_bar():
    """A UI progress bar (in percent of the file's tensor bytes prepared)."""
    import comfy.utils

    bar = comfy.utils.ProgressBar(100)
    return lambda done, all_bytes: bar.update_absolute(int(100 * done / max(all_bytes, 1)), 100)


class ZImageGGUFDiffusionModelLoader:
    """Loads a diffusion model (Z-Image and the other families ComfyUI detects) from a GGUF file."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "unet_name": (_gguf_files("diffusion_models"), {
                    "tooltip": "GGUF diffusion model from models/diffusion_models or models/unet "
                               "(city96 or stable-diffusion.cpp conversions)."}),
                "dequant_dtype": (list(DTYPE_CHOICES), {
                    "default": "auto",
                    "tooltip": "Float type weights are dequantized to before LoRA patches apply. auto: the "
                               "compute type (bf16 where supported, fp16 on Apple GPUs without bf16)."}),
                "patch_on_device": ("BOOLEAN", {
                    "default": False,
                    "tooltip": "Keep LoRA patch weights on the GPU: faster per step, uses more VRAM."}),
            }
        }

    RETURN_TYPES = ("MODEL",)
    OUTPUT_TOOLTIPS = ("The diffusion model; weights stay quantized and are dequantized per layer.",)
    FUNCTION = "load_unet"
    CATEGORY = "loaders/Z-Image GGUF"
    DESCRIPTION = "Load a GGUF diffusion model (Z-Image Turbo and others) with on-the-fly dequantization."

    def load_unet(self, unet_name, dequant_dtype="auto", patch_on_device=False):
        import comfy.model_management
        import folder_paths

        path = folder_paths.get_full_path_or_raise("diffusion_models", unet_name)
        return (load_diffusion_gguf(path, DTYPE_CHOICES[dequant_dtype], patch_on_device,
                                    comfy.model_management.get_torch_device()),)


def load_diffusion_gguf(path, dequant_dtype=None, patch_on_device=False, device=None):
    import comfy.sd

    gguf_file = load_gguf(path)
    shapes = gguf_file.shapes
    info = detect_diffusion_model(gguf_file.metadata, shapes, source=path)
    names = normalize_diffusion_keys(shapes)
    fixes = expected_shape_fixes(info.family, {new: shapes[old] for new, old in names.items()})
    choice = dtype_for(device or "cpu", dequant_dtype)
    state_dict, stats = build_state_dict(gguf_file, choice.compute, names=names, shapes=fixes,
                                         progress=_progress_bar())
    ops = make_comfy_ops(LayerOptions(dequant_dtype=dequant_dtype and choice.dequant))
    patcher = comfy.sd.load_diffusion_model_state_dict(
        state_dict, model_options={"custom_operations": ops}, disable_dynamic=True)
    if patcher is None:
        raise ModelDetectionError(
            f"{path}: ComfyUI did not recognise the {info.display_name} model in this file "
            f"({len(names)} tensors under prefix '{info.prefix}')")
    patcher = as_gguf_patcher(patcher, patch_on_device)
    if info.caption_width:
        _install_caption_check(patcher, path, info)
    log.info("Z-Image GGUF: %s: %s (%s style), %s, compute %s", os.path.basename(path), info.display_name,
             info.style, stats.summary(), str(choice.compute).replace("torch.", ""))
    return patcher


def _install_caption_check(patcher, path, info):
    """Stop a wrong text encoder before sampling starts, instead of `mat1 and mat2` inside the model."""
    import comfy.patcher_extension as ext

    def check(width):
        if width == info.caption_width:
            return
        encoder, family = _ENCODER_FILES_BY_WIDTH.get(width, ("the text encoder in use", None))
        check_encoder_matches_model(encoder, width, os.path.basename(path),
                                    COMPAT_FAMILY.get(info.family, info.family), info.caption_width,
                                    encoder_family=family)
        raise IncompatibleModelError(
            f"{os.path.basename(path)} ({info.display_name}) takes {info.caption_width}-wide text features; "
            f"{encoder} gives {width}")

    def outer_sample(executor, *args, **kwargs):
        for conds in (getattr(executor.class_obj, "conds", None) or {}).values():
            for cond in conds or ():
                features = cond.get("cross_attn") if isinstance(cond, dict) else None
                if isinstance(features, torch.Tensor):
                    check(features.shape[-1])
        return executor(*args, **kwargs)

    def diffusion_model(executor, x, timesteps, context=None, *args, **kwargs):
        if isinstance(context, torch.Tensor):
            check(context.shape[-1])
        return executor(x, timesteps, context, *args, **kwargs)

    patcher.add_wrapper_with_key(ext.WrappersMP.OUTER_SAMPLE, "zimage_gguf_caption_check", outer_sample)
    patcher.add_wrapper_with_key(ext.WrappersMP.DIFFUSION_MODEL, "zimage_gguf_caption_check", diffusion_model)


class ZImageGGUFTextEncoderLoader:
    """Loads a text encoder from a llama.cpp-format GGUF (Qwen3, Qwen2.5(-VL), Llama) or safetensors."""

    @classmethod
    def INPUT_TYPES(cls):
        import folder_paths

        files = sorted(set(_gguf_files("text_encoders")) | set(folder_paths.get_filename_list("text_encoders")))
        return {
            "required": {
                "clip_name": (files, {
                    "tooltip": "Text encoder from models/text_encoders or models/clip: a llama.cpp GGUF "
                               "(e.g. Qwen3-4B for Z-Image) or a safetensors file."}),
                "type": (CLIP_TYPES, {
                    "default": "lumina2",
                    "tooltip": "Which model family the encoder serves; lumina2 covers Z-Image (Qwen3-4B)."}),
            },
            "optional": {
                "device": (["default", "cpu"], {"advanced": True, "tooltip": "cpu: run the encoder on the CPU."}),
            },
        }

    RETURN_TYPES = ("CLIP",)
    OUTPUT_TOOLTIPS = ("The text encoder; GGUF weights stay quantized.",)
    FUNCTION = "load_clip"
    CATEGORY = "loaders/Z-Image GGUF"
    DESCRIPTION = "Load a text encoder from a llama.cpp GGUF, with its config read from the file's metadata."

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
    import comfy.sd
    import folder_paths

    model_options = dict(model_options or {})
    clip_type_enum = getattr(comfy.sd.CLIPType, clip_type.upper(), comfy.sd.CLIPType.STABLE_DIFFUSION)
    embeddings = folder_paths.get_folder_paths("embeddings")
    if not path.lower().endswith(".gguf"):
        return comfy.sd.load_clip(ckpt_paths=[path], embedding_directory=embeddings, clip_type=clip_type_enum,
                                  model_options=model_options)

    gguf_file = load_gguf(path)
    shapes = gguf_file.shapes
    arch = detect_text_encoder(gguf_file.metadata, shapes, path)
    config = encoder_config(arch, gguf_file.metadata, shapes, path)
    known = comfy_te_model(config)
    _check_clip_type(path, clip_type, known)
    names = {hf: cpp for cpp, hf in hf_names(arch, shapes, path).items()}
    choice = dtype_for(device or "cpu")
    state_dict, stats = build_state_dict(gguf_file, choice.compute, names=names, progress=_progress_bar())
    for hf, cpp in names.items():
        heads = qk_permute_heads(arch, cpp, config)
        if heads:
            state_dict[hf] = _unpermute(state_dict[hf], heads)
    model_options["custom_operations"] = make_comfy_ops(LayerOptions())
    model_options[f"{known.comfy_name}_model_config"] = comfy_config_kwargs(config)
    clip = comfy.sd.load_text_encoder_state_dicts([state_dict], embedding_directory=embeddings,
                                                  clip_type=clip_type_enum, model_options=model_options,
                                                  disable_dynamic=True)
    clip.patcher = as_gguf_patcher(clip.patcher)
    _ENCODER_FILES_BY_WIDTH[config.hidden_size] = (os.path.basename(path), config.family)
    log.info("Z-Image GGUF: %s: %s text encoder (%s, %d layers, %d wide), %s, compute %s", os.path.basename(path),
             known.display, arch.arch, config.n_layers, config.hidden_size, stats.summary(),
             str(choice.compute).replace("torch.", ""))
    return clip


def _check_clip_type(path, clip_type, known):
    expected = CLIP_TYPE_ENCODERS.get(clip_type)
    if expected and known.display not in expected:
        better = [t for t, encoders in CLIP_TYPE_ENCODERS.items() if known.display in encoders]
        hint = f"pick type '{better[0]}' for this encoder, or " if better else ""
        raise IncompatibleModelError(
            f"{os.path.basename(path)} is a {known.display} text encoder ({known.width} wide), but type "
            f"'{clip_type}' expects {' or '.join(expected)}: {hint}load a {expected[0]} encoder for '{clip_type}'")


def _unpermute(tensor, n_heads):
    from ..ops.tensor import QuantizedTensor

    if isinstance(tensor, QuantizedTensor):
        rows = tensor.raw.view(tensor.shape[0], -1)
        return tensor._rewrap(unpermute_qk_rows(rows, n_heads).contiguous().reshape(-1))
    return unpermute_qk_rows(tensor, n_heads).contiguous()


NODE_CLASS_MAPPINGS = {
    "ZImageGGUFDiffusionModelLoader": ZImageGGUFDiffusionModelLoader,
    "ZImageGGUFTextEncoderLoader": ZImageGGUFTextEncoderLoader,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "ZImageGGUFDiffusionModelLoader": "Load Diffusion Model (GGUF, Z-Image pack)",
    "ZImageGGUFTextEncoderLoader": "Load Text Encoder (GGUF, Z-Image pack)",
}
