"""Models that follow the installed files: one id per Z-Image GGUF paired with a Qwen3-4B encoder and a VAE.

Every GGUF in the diffusion-model folders that the loader's own detection (`detect_diffusion_model`)
calls Z-Image becomes `z-image-turbo-<quant>` (e.g. `z-image-turbo-Q4_K_M`; the quant is read from the
file name, else the file's most common matrix type). It is paired with a text encoder the encoder
loader's detection calls Qwen3-4B (a llama.cpp GGUF, or a safetensors file of that shape), preferring
one of the same quant, then the largest; and with a 16-channel (Flux-type) VAE, preferring
`ae.safetensors`. The id then runs the pack's own workflow with those files: no export step.

Headers only are read, once per file version (path, size, mtime).
"""
from __future__ import annotations

import json
import os
import re
import struct
from collections import Counter
from dataclasses import asdict, dataclass

from ..errors import ZImageGGUFError
from ..model_families.diffusion import detect_diffusion_model
from ..model_families.pairing import DIFFUSION_MODELS
from ..model_families.text_encoders import ENCODER_ARCHS, comfy_te_model, detect_text_encoder, encoder_config

MODEL_PREFIX = "z-image-turbo"
ZIMAGE_FAMILIES = ("zimage",)
ENCODER = DIFFUSION_MODELS["zimage"].encoders[0]  # "Qwen3-4B"
PREFERRED_VAE = "ae.safetensors"
VAE_LATENT_CHANNELS = 16
_QUANT = re.compile(r"(?:^|[-_.])(I?Q\d(?:_[0-9]|_K)?(?:_[SMLX]{1,2})?|TQ\d_\d|MXFP4|NVFP4|BF16|F16|F32)(?=[-_.]|$)",
                    re.IGNORECASE)


@dataclass(frozen=True)
class InstalledModel:
    id: str
    unet: str
    clip: str
    vae: str
    created: int

    def as_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class _FileInfo:
    kind: str | None  # "zimage", "encoder", "vae" or None
    quant: str | None
    size: int
    mtime: int


_CACHE: dict[str, tuple[tuple[int, int], _FileInfo]] = {}


def quant_label(file_name: str) -> str | None:
    """'z_image_turbo-Q4_K_M.gguf' -> 'Q4_K_M' (upper case), or None when the name has none."""
    stem = os.path.basename(file_name).rsplit(".", 1)[0]
    found = _QUANT.findall(stem)
    return found[-1].upper() if found else None


def _safetensors_shapes(path: str) -> dict[str, tuple[int, ...]]:
    with open(path, "rb") as file:
        (length,) = struct.unpack("<Q", file.read(8))
        if length > 100_000_000:
            raise ValueError("safetensors header too large")
        header = json.loads(file.read(length))
    return {name: tuple(entry["shape"]) for name, entry in header.items() if name != "__metadata__"}


def _classify_gguf(path: str) -> tuple[str | None, str | None]:
    from ..ops.gguf_file.reader import load_gguf

    with load_gguf(path) as gguf_file:
        shapes, metadata = gguf_file.shapes, gguf_file.metadata
        by_bytes = Counter()
        for info in gguf_file.tensors.values():
            if len(info.shape) >= 2:
                by_bytes[info.ggml_type.name] += info.n_bytes
        main_type = by_bytes.most_common(1)[0][0] if by_bytes else None
        if gguf_file.architecture in ENCODER_ARCHS:
            arch = detect_text_encoder(metadata, shapes, path)
            config = encoder_config(arch, metadata, shapes, path)
            return ("encoder" if comfy_te_model(config).display == ENCODER else None), main_type
        info = detect_diffusion_model(metadata, shapes, source=path)
        return ("zimage" if info.family in ZIMAGE_FAMILIES else None), main_type


def _classify_safetensors(path: str) -> str | None:
    shapes = _safetensors_shapes(path)
    for name, shape in shapes.items():
        if name.endswith("decoder.conv_in.weight") and len(shape) == 4:
            return "vae" if shape[1] == VAE_LATENT_CHANNELS else None
    embed = shapes.get("model.embed_tokens.weight")
    if embed is not None and len(embed) == 2 and "model.layers.0.self_attn.q_norm.weight" in shapes:
        # Qwen3 (q/k norms) of Qwen3-4B's width
        return "encoder" if embed[1] == 2560 else None
    return None


def classify(path: str) -> _FileInfo:
    """What a model file is for this catalog; unreadable or foreign files are kind None."""
    try:
        stat = os.stat(path)
    except OSError:
        return _FileInfo(None, None, 0, 0)
    key = (stat.st_size, stat.st_mtime_ns)
    cached = _CACHE.get(path)
    if cached is not None and cached[0] == key:
        return cached[1]
    kind, main_type = None, None
    try:
        if path.lower().endswith(".gguf"):
            kind, main_type = _classify_gguf(path)
        elif path.lower().endswith((".safetensors", ".sft")):
            kind = _classify_safetensors(path)
    except (ZImageGGUFError, OSError, ValueError, KeyError, struct.error):
        kind = None
    info = _FileInfo(kind, quant_label(path) or main_type, stat.st_size, int(stat.st_mtime))
    _CACHE[path] = (key, info)
    return info


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", os.path.basename(name).rsplit(".", 1)[0]).strip("-")


def pair_installed(diffusion_files, encoder_files, vae_files) -> list[InstalledModel]:
    """Each argument: [(name as the loader lists it, full path)]. One model per Z-Image GGUF that has a
    Qwen3-4B encoder and a VAE to go with it; none when either is missing."""
    unets = [(name, classify(path)) for name, path in diffusion_files if name.lower().endswith(".gguf")]
    unets = [(name, info) for name, info in unets if info.kind == "zimage"]
    encoders = [(name, info) for name, info in ((n, classify(p)) for n, p in encoder_files) if info.kind == "encoder"]
    vaes = [(name, info) for name, info in ((n, classify(p)) for n, p in vae_files) if info.kind == "vae"]
    if not (unets and encoders and vaes):
        return []
    vae_name, vae = min(vaes, key=lambda item: (os.path.basename(item[0]) != PREFERRED_VAE, item[0]))
    models, taken = [], set()
    # a file whose name carries its quant gets the plain id first; a second one of that quant its name
    for unet_name, unet in sorted(unets, key=lambda item: (quant_label(item[0]) is None, item[0])):
        clip_name, clip = min(encoders, key=lambda item: (item[1].quant != unet.quant, -item[1].size, item[0]))
        model_id = f"{MODEL_PREFIX}-{unet.quant}" if unet.quant else f"{MODEL_PREFIX}-{_slug(unet_name)}"
        if model_id in taken:
            model_id = f"{MODEL_PREFIX}-{_slug(unet_name)}"
        taken.add(model_id)
        models.append(InstalledModel(model_id, unet_name, clip_name, vae_name, max(unet.mtime, clip.mtime, vae.mtime)))
    return models


def _gguf_files(roots) -> list[tuple[str, str]]:
    """(name relative to its root, '/'-separated, as the pack's loaders list it; full path) of every GGUF."""
    found = {}
    for root in roots:
        if not os.path.isdir(root):
            continue
        for dirpath, _, names in os.walk(root, followlinks=True):
            for name in names:
                if name.lower().endswith(".gguf"):
                    path = os.path.join(dirpath, name)
                    found.setdefault(os.path.relpath(path, root).replace(os.sep, "/"), path)
    return sorted(found.items())


def comfyui_installed_models() -> list[InstalledModel]:
    """The pairs in a running ComfyUI's model folders (models/diffusion_models and unet, text_encoders and
    clip, vae, plus extra_model_paths), named as the pack's loaders and VAELoader list them."""
    import folder_paths  # ComfyUI's

    def listed(folder: str):
        return [(name, folder_paths.get_full_path(folder, name)) for name in folder_paths.get_filename_list(folder)]

    return pair_installed(
        _gguf_files(folder_paths.get_folder_paths("diffusion_models")),
        _gguf_files(folder_paths.get_folder_paths("text_encoders")) + listed("text_encoders"),
        listed("vae"),
    )
