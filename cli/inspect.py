"""`python -m comfyui_zimage_gguf inspect FILE`: what a GGUF holds and what it pairs with (no ComfyUI)."""
from __future__ import annotations

import os
from collections import Counter

from ..errors import ModelDetectionError, ZImageGGUFError
from ..nodes.families.diffusion import detect_diffusion_model
from ..nodes.families.pairing import DIFFUSION_MODELS, KNOWN_ENCODERS, describe_width
from ..ops.reader import load_gguf
from ..nodes.families.text_encoders import ENCODER_ARCHS, comfy_te_model, detect_text_encoder, encoder_config

DIFFUSION_LOADER = "Load Diffusion Model (GGUF, Z-Image pack)"
TEXT_ENCODER_LOADER = "Load Text Encoder (GGUF, Z-Image pack)"


def describe(path) -> list[str]:
    gguf_file = load_gguf(path)
    shapes = gguf_file.shapes
    types = Counter(info.ggml_type.name for info in gguf_file.tensors.values())
    size = sum(info.n_bytes for info in gguf_file.tensors.values())
    lines = [
        f"file:         {path}",
        f"GGUF:         v{gguf_file.version}, {len(gguf_file.metadata)} metadata keys, {len(shapes)} tensors, "
        f"{size / 2**30:.2f} GiB of tensor data",
        f"architecture: {gguf_file.architecture or '(none: no general.architecture key)'}",
        "tensor types: " + ", ".join(f"{name} x{count}" for name, count in types.most_common()),
    ]
    if gguf_file.architecture in ENCODER_ARCHS:
        arch = detect_text_encoder(gguf_file.metadata, shapes, path)
        config = encoder_config(arch, gguf_file.metadata, shapes, path)
        try:
            known = comfy_te_model(config)
        except ModelDetectionError as error:
            known, holds = None, f"a {arch.arch} text model that ComfyUI has no encoder for ({error})"
        else:
            holds = f"{known.display} text encoder (ComfyUI '{known.comfy_name}')"
        users = [m.display for m in DIFFUSION_MODELS.values() if known and known.display in m.encoders]
        lines += [
            f"holds:        {holds}",
            f"config:       {config.n_layers} layers, hidden {config.hidden_size}, heads {config.n_heads} "
            f"(kv {config.n_kv_heads}, dim {config.head_dim}), ffn {config.intermediate_size}, "
            f"vocab {config.vocab_size}, rope base {config.rope_theta:g}, rms eps {config.rms_eps:g}",
            f"load with:    {TEXT_ENCODER_LOADER}",
            "pairs with:   " + (", ".join(users) if users else "no diffusion model in this pack's table"),
        ]
        return lines
    info = detect_diffusion_model(gguf_file.metadata, shapes, source=path)
    lines += [
        f"holds:        {info.display_name} diffusion model ({info.style} style, width {info.width}, "
        f"prefix '{info.prefix}')",
        f"load with:    {DIFFUSION_LOADER}",
    ]
    if info.caption_width:
        encoders = [e.display for e in KNOWN_ENCODERS if e.width == info.caption_width]
        expected = info.caption_encoder or describe_width(info.caption_width)
        lines.append(f"pairs with:   {expected} text encoder ({info.caption_width} wide)"
                     + (f"; same width: {', '.join(encoders)}" if len(encoders) > 1 else ""))
    return lines


def add_inspect_parser(subparsers) -> None:
    parser = subparsers.add_parser("inspect", help="print what a GGUF file holds and what it pairs with")
    parser.add_argument("files", nargs="+", metavar="FILE")


def run_inspect(args) -> int:
    status = 0
    for path in args.files:
        if not os.path.isfile(path):
            print(f"error: {path}: no such file")
            status = 1
            continue
        try:
            print("\n".join(describe(path)))
        except ZImageGGUFError as error:
            print(f"error: {error}")
            status = 1
    return status
