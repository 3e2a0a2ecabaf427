"""Names: a Z-Image diffusion model under diffusers names -> ComfyUI's, and the GGUF architecture to
write for the model found (Qwen3 text encoders: conversion/encoder_names.py)."""
from __future__ import annotations

import re
from typing import Callable

import torch

from ..errors import ConvertError, ModelDetectionError
from ..model_families.diffusion import detect_diffusion_model
from .sources import Source, SourceTensor

# Diffusion families this converter writes, and the architecture / type rules city96 uses for them.
ARCHITECTURES = {"zimage": "lumina2", "lumina2": "lumina2", "nextdit": "lumina2"}

# diffusers' ZImageTransformer2DModel names -> ComfyUI's (the names of comfy/utils.py z_image_to_diffusers).
# Inside a block (layers.N, noise_refiner.N, context_refiner.N): renamed parts; to_q/to_k/to_v are
# stacked (rows q, k, v) into attention.qkv. Top level: the "2-1" (patch 2, frame 1) embedder and
# final layer lose their prefix. Every other name is the same in both.
DIFFUSERS_BLOCK_RENAMES = {
    "attention.norm_q.weight": "attention.q_norm.weight",
    "attention.norm_k.weight": "attention.k_norm.weight",
    "attention.to_out.0.weight": "attention.out.weight",
    "attention.to_out.0.bias": "attention.out.bias",
}
DIFFUSERS_QKV = ("attention.to_q.", "attention.to_k.", "attention.to_v.")
DIFFUSERS_TOP_RENAMES = {"all_final_layer.2-1.": "final_layer.", "all_x_embedder.2-1.": "x_embedder."}
DIFFUSERS_ZIMAGE_MARKER = "noise_refiner.0.attention.norm_k.weight"
_BLOCK = re.compile(r"^((?:layers|noise_refiner|context_refiner)\.\d+)\.(.+)$")


def _stacked(parts: list[SourceTensor]) -> Callable[[], torch.Tensor]:
    return lambda: torch.cat([p.load() for p in parts], dim=0)


def zimage_from_diffusers(source: Source, tensors: list[SourceTensor]) -> list[SourceTensor]:
    """Z-Image tensors under diffusers names -> ComfyUI names (q, k, v stacked into qkv)."""
    out, qkv = [], {}
    for tensor in tensors:
        block = _BLOCK.match(tensor.name)
        if block:
            prefix, rest = block.groups()
            if rest.startswith(DIFFUSERS_QKV):
                part = DIFFUSERS_QKV.index(rest[:len(DIFFUSERS_QKV[0])])
                key = f"{prefix}.attention.qkv.{rest[len(DIFFUSERS_QKV[0]):]}"
                if key not in qkv:
                    qkv[key] = [None, None, None]
                    out.append(key)  # placeholder, keeps the source order
                qkv[key][part] = tensor
                continue
            rest = DIFFUSERS_BLOCK_RENAMES.get(rest, rest)
            out.append(SourceTensor(f"{prefix}.{rest}", tensor.shape, tensor.dtype, tensor.load))
            continue
        name = tensor.name
        for old, new in DIFFUSERS_TOP_RENAMES.items():
            if name.startswith(old):
                name = new + name[len(old):]
        out.append(SourceTensor(name, tensor.shape, tensor.dtype, tensor.load))
    for index, item in enumerate(out):
        if isinstance(item, str):
            parts = qkv[item]
            missing = [f"to_{'qkv'[i]}" for i, p in enumerate(parts) if p is None]
            if missing:
                raise ConvertError(f"{source.path.name}: {item} needs to_q, to_k and to_v; {', '.join(missing)} "
                                   f"missing\n{source.path}")
            if len({p.shape[1:] for p in parts}) != 1:
                raise ConvertError(f"{source.path.name}: to_q/to_k/to_v of {item} have different widths "
                                   f"{[list(p.shape) for p in parts]}\n{source.path}")
            shape = (sum(p.shape[0] for p in parts),) + parts[0].shape[1:]
            out[index] = SourceTensor(item, shape, parts[0].dtype, _stacked(parts))
    return out


def diffusion_tensors(source: Source) -> tuple[str, list[SourceTensor]]:
    """The diffusion model's tensors under ComfyUI names, and the GGUF architecture to write."""
    tensors = source.tensors
    marker = next((t.name for t in tensors if t.name.endswith(DIFFUSERS_ZIMAGE_MARKER)), None)
    if marker is not None:
        prefix = marker[:-len(DIFFUSERS_ZIMAGE_MARKER)]
        tensors = zimage_from_diffusers(source, [SourceTensor(t.name[len(prefix):], t.shape, t.dtype, t.load)
                                                 for t in tensors if t.name.startswith(prefix)])
    shapes = {t.name: t.shape for t in tensors}
    try:
        info = detect_diffusion_model(source.metadata, shapes, str(source.path))
    except ModelDetectionError as e:
        raise ConvertError(f"{source.path.name}: unknown model layout, convert writes Z-Image models\n{e}") from None
    architecture = ARCHITECTURES.get(info.family)
    if architecture is None or info.key_format != "comfy":
        raise ConvertError(f"{source.path.name} holds {info.display_name}; convert writes Z-Image / Lumina 2 models "
                           f"in ComfyUI's layout\n{source.path}")
    kept = [SourceTensor(t.name[len(info.prefix):], t.shape, t.dtype, t.load)
            for t in tensors if t.name.startswith(info.prefix)]
    return architecture, kept
