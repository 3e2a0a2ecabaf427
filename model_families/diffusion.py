"""Which diffusion model a GGUF file holds, how its tensor names map to ComfyUI's, and which
stored shapes ComfyUI's model does not expect.

Everything here works on names and shapes only (no torch, no ComfyUI), so detection runs before a
single tensor is read. Signatures, prefixes and shape fixes are tables; adding a model is a row.

Two kinds of Z-Image GGUF circulate and both must load:
  * city96 style: `general.architecture` names the family (`lumina2` for Z-Image), tensors carry
    ComfyUI's bare names, 1-D tensors are F32, pad tokens are stored as [1, dim];
  * stable-diffusion.cpp style: no metadata at all, names prefixed `model.diffusion_model.`,
    1-D tensors may be quantized or BF16, pad tokens stored 1-D as [dim].
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping

from ..errors import ModelDetectionError
from . import TEXT_ENCODER_FOLDER, TEXT_ENCODER_LOADER
from .pairing import caption_encoder

Shape = tuple[int, ...]

# Prefixes under which files store the diffusion model's own names, longest first so that
# `model.diffusion_model.` is not mistaken for `model.`.
KNOWN_PREFIXES: tuple[str, ...] = ("model.diffusion_model.", "diffusion_model.", "model.")

# Image-model architectures that city96's converter writes into `general.architecture`.
CITY96_ARCHITECTURES = frozenset(
    {"flux", "sd1", "sdxl", "sd3", "aura", "hidream", "cosmos", "ltxv", "hyvid", "wan", "lumina2", "qwen_image"}
)
# Words some converters write into `general.architecture` that say nothing about the model;
# such files are identified from their tensor names, like files without the field.
PLACEHOLDER_ARCHITECTURES = frozenset({"pig", "cow"})


@dataclass(frozen=True)
class DiffusionSignature:
    """One recognisable diffusion model layout.

    `keys` must all be present and `absent` must all be missing (names after prefix stripping).
    The model width is dim 0 of `width_key`; the caption (text-feature) width is dim
    `caption_dim` of `caption_key`. Empty `widths` / `caption_widths` accept any value.
    `key_format` says whose names the file uses: "comfy" (ComfyUI's own) or "diffusers"
    (which ComfyUI's loader converts itself).
    """

    family: str
    display_name: str
    keys: tuple[str, ...]
    absent: tuple[str, ...] = ()
    width_key: str | None = None
    widths: tuple[int, ...] = ()
    caption_key: str | None = None
    caption_dim: int = 1
    caption_widths: tuple[int, ...] = ()
    key_format: str = "comfy"

    def matches(self, shapes: Mapping[str, Shape]) -> bool:
        if not all(k in shapes for k in self.keys) or any(k in shapes for k in self.absent):
            return False
        if self.widths and _dim(shapes, self.width_key, 0) not in self.widths:
            return False
        if self.caption_widths and _dim(shapes, self.caption_key, self.caption_dim) not in self.caption_widths:
            return False
        return True


def _dim(shapes: Mapping[str, Shape], key: str | None, dim: int) -> int | None:
    shape = shapes.get(key) if key else None
    if shape is None or len(shape) <= dim:
        return None
    return int(shape[dim])


_NEXTDIT = ("cap_embedder.1.weight", "noise_refiner.0.attention.k_norm.weight")
_NEXTDIT_DIFFUSERS = ("cap_embedder.1.weight", "noise_refiner.0.attention.norm_k.weight")
_FLUX_BLOCKS = ("double_blocks.0.img_attn.proj.weight", "img_in.weight")
_UNET = "input_blocks.0.0.weight"

# First match wins: more specific rows come before the rows they refine.
DIFFUSION_SIGNATURES: tuple[DiffusionSignature, ...] = (
    DiffusionSignature("zimage_pixel", "Z-Image (pixel space)", _NEXTDIT + ("dec_net.cond_embed.weight",),
                       width_key="cap_embedder.1.weight", widths=(3840,), caption_key="cap_embedder.1.weight"),
    DiffusionSignature("zimage", "Z-Image", _NEXTDIT, width_key="cap_embedder.1.weight", widths=(3840,),
                       caption_key="cap_embedder.1.weight"),
    DiffusionSignature("lumina2", "Lumina Image 2.0", _NEXTDIT, width_key="cap_embedder.1.weight", widths=(2304,),
                       caption_key="cap_embedder.1.weight"),
    DiffusionSignature("nextdit", "NextDiT (Lumina 2 / Z-Image layout) of an unrecognised width", _NEXTDIT,
                       width_key="cap_embedder.1.weight", caption_key="cap_embedder.1.weight"),
    DiffusionSignature("zimage", "Z-Image (diffusers names)", _NEXTDIT_DIFFUSERS, width_key="cap_embedder.1.weight",
                       widths=(3840,), caption_key="cap_embedder.1.weight",
                       key_format="diffusers"),
    DiffusionSignature("qwen_image", "Qwen-Image", ("txt_norm.weight", "img_in.weight", "txt_in.weight"),
                       width_key="img_in.weight", caption_key="txt_in.weight"),
    DiffusionSignature("hunyuan_video", "HunyuanVideo", ("txt_in.individual_token_refiner.blocks.0.norm1.weight",),
                       width_key="img_in.proj.weight", caption_key="txt_in.input_embedder.weight"),
    DiffusionSignature("flux2", "FLUX.2", _FLUX_BLOCKS + ("double_stream_modulation_img.lin.weight",),
                       width_key="img_in.weight", caption_key="txt_in.weight"),
    DiffusionSignature("chroma", "Chroma", _FLUX_BLOCKS + ("distilled_guidance_layer.in_proj.weight",),
                       width_key="img_in.weight", caption_key="txt_in.weight"),
    DiffusionSignature("flux", "FLUX.1", _FLUX_BLOCKS, width_key="img_in.weight", caption_key="txt_in.weight"),
    DiffusionSignature("sd3", "Stable Diffusion 3", ("joint_blocks.0.context_block.attn.qkv.weight",),
                       width_key="x_embedder.proj.weight", caption_key="context_embedder.weight"),
    DiffusionSignature("sd3", "Stable Diffusion 3 (diffusers names)",
                       ("transformer_blocks.0.attn.add_q_proj.weight", "pos_embed.proj.weight"),
                       width_key="pos_embed.proj.weight", caption_key="context_embedder.weight", key_format="diffusers"),
    DiffusionSignature("flux", "FLUX.1 (diffusers names)",
                       ("transformer_blocks.0.attn.norm_added_k.weight", "single_transformer_blocks.0.proj_out.weight",
                        "x_embedder.weight"),
                       width_key="x_embedder.weight", caption_key="context_embedder.weight", key_format="diffusers"),
    DiffusionSignature("wan", "Wan", ("head.modulation", "blocks.0.self_attn.norm_q.weight"),
                       width_key="patch_embedding.weight", caption_key="text_embedding.0.weight"),
    DiffusionSignature("hidream", "HiDream-I1",
                       ("caption_projection.0.linear.weight", "double_stream_blocks.0.block.ff_i.shared_experts.w3.weight")),
    DiffusionSignature("pixart", "PixArt", ("adaln_single.emb.timestep_embedder.linear_1.bias", "pos_embed.proj.bias"),
                       caption_key="y_embedder.y_proj.fc1.weight"),
    DiffusionSignature("ltxv", "LTX-Video", ("adaln_single.emb.timestep_embedder.linear_1.bias",),
                       absent=("pos_embed.proj.bias",), width_key="patchify_proj.weight",
                       caption_key="caption_projection.linear_1.weight"),
    DiffusionSignature("cosmos", "Cosmos Predict2", ("blocks.0.mlp.layer1.weight", "blocks.0.adaln_modulation_cross_attn.1.weight")),
    DiffusionSignature("cosmos", "Cosmos 1", ("blocks.block0.blocks.0.block.attn.to_q.0.weight",)),
    DiffusionSignature("aura_flow", "AuraFlow", ("double_layers.0.attn.w1q.weight",),
                       width_key="cond_seq_linear.weight", caption_key="cond_seq_linear.weight"),
    DiffusionSignature("aura_flow", "AuraFlow (diffusers names)", ("joint_transformer_blocks.0.attn.add_k_proj.weight",),
                       caption_key="context_embedder.weight", key_format="diffusers"),
    DiffusionSignature("sdxl", "Stable Diffusion XL", (_UNET, "label_emb.0.0.weight"), width_key=_UNET,
                       caption_key="input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight"),
    DiffusionSignature("sd1", "Stable Diffusion 1.x", (_UNET, "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"),
                       width_key=_UNET, caption_key="input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
                       caption_widths=(768,)),
    DiffusionSignature("sd2", "Stable Diffusion 2.x", (_UNET, "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"),
                       width_key=_UNET, caption_key="input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
                       caption_widths=(1024,)),
    DiffusionSignature("sdxl", "Stable Diffusion XL (diffusers names)",
                       ("down_blocks.0.downsamplers.0.conv.weight", "add_embedding.linear_1.weight"),
                       width_key="conv_in.weight",
                       caption_key="down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight", key_format="diffusers"),
    DiffusionSignature("sd1", "Stable Diffusion 1.x (diffusers names)",
                       ("down_blocks.0.downsamplers.0.conv.weight", "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"),
                       width_key="conv_in.weight",
                       caption_key="down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight",
                       caption_widths=(768,), key_format="diffusers"),
)


@dataclass(frozen=True)
class OtherComponent:
    """A kind of file that is not a diffusion model, recognised to say which node and folder it needs.

    `use` is the node to load it with, `folder` where that node lists files from ("" when it is
    not needed at all); `advice` replaces the move-it line for files no loader here needs.
    """

    kind: str
    use: str
    folder: str = ""
    advice: str = ""
    any_keys: tuple[str, ...] = ()
    architectures: frozenset[str] = frozenset()
    general_types: frozenset[str] = frozenset()

    def matches(self, names: Mapping[str, Any], architecture: str | None, general_type: str | None) -> bool:
        return (
            any(k in names for k in self.any_keys)
            or architecture in self.architectures
            or general_type in self.general_types
        )


OTHER_COMPONENTS: tuple[OtherComponent, ...] = (
    OtherComponent("vision projector (mmproj)", TEXT_ENCODER_LOADER,
                   advice="Z-Image does not need it: give the text-encoder loader the LLM GGUF (the file without "
                          "'mmproj' in its name) and leave this file out.",
                   general_types=frozenset({"mmproj", "clip-vision"})),
    OtherComponent("text encoder", TEXT_ENCODER_LOADER, TEXT_ENCODER_FOLDER,
                   any_keys=("token_embd.weight", "blk.0.attn_q.weight",  # llama.cpp names
                             "model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",  # transformers
                             "encoder.block.0.layer.0.SelfAttention.q.weight", "enc.blk.0.attn_q.weight",  # T5
                             "text_model.encoder.layers.0.self_attn.q_proj.weight"),  # CLIP
                   architectures=frozenset({"llama", "qwen2", "qwen2vl", "qwen3", "qwen3vl", "gemma", "gemma2",
                                            "gemma3", "mistral3", "t5", "t5encoder", "clip"})),
    OtherComponent("VAE", "Load VAE", "models/vae",
                   any_keys=("decoder.conv_in.weight", "first_stage_model.decoder.conv_in.weight",
                             "vae.decoder.conv_in.weight")),
)


def wrong_file_message(name: str, kind: str, wanted: str, use: str, folder: str, advice: str = "",
                       details: str = "") -> str:
    """'<file> is a <kind>: load it with '<node>' from <folder>.' then what to do with the file."""
    where = f" from {folder}." if folder else "."
    head = f"{name} is a {kind}: load it with '{use}'{where}"
    lines = [head if len(head) <= 120 else f"This file is a {kind}: load it with '{use}'{where}"]
    lines.append(f"It is not a {wanted}. " + (
        advice or f"Move the file into ComfyUI/{folder}: '{use}' lists only that folder."))
    if details:
        lines.append(details)
    return "\n".join(lines)


@dataclass(frozen=True)
class DiffusionFileInfo:
    """What `detect_diffusion_model` learned about a file.

    `prefix` is the name prefix stripped from the diffusion model's tensors ("" for bare names);
    `style` is "city96" (architecture metadata present), "sdcpp" (no metadata, names under
    `model.diffusion_model.`) or "bare" (no metadata, ComfyUI or diffusers names as they are).
    `other_tensors` counts tensors outside the prefix (e.g. a VAE packed into the same file).
    """

    family: str
    display_name: str
    key_format: str
    prefix: str
    style: str
    architecture: str | None
    width: int | None
    caption_width: int | None
    caption_encoder: str | None
    n_tensors: int
    other_tensors: int


def _metadata_string(metadata: Mapping[str, Any] | None, key: str) -> str | None:
    value = (metadata or {}).get(key)
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("utf-8", "replace")
    return str(value)


def find_diffusion_prefix(names) -> str:
    """The first known prefix any name starts with, or "" when the names are bare."""
    names = list(names)
    for prefix in KNOWN_PREFIXES:
        if any(n.startswith(prefix) for n in names):
            return prefix
    return ""


def normalize_diffusion_keys(tensor_shapes: Mapping[str, Any]) -> dict[str, str]:
    """Map ComfyUI-side names to the names stored in the file: {new_name: old_name}.

    The diffusion model's prefix is stripped; tensors outside it (a VAE or text encoder packed
    into the same checkpoint) are left out, as ComfyUI's own loader does.
    """
    prefix = find_diffusion_prefix(tensor_shapes)
    return {name[len(prefix):]: name for name in tensor_shapes if name.startswith(prefix)}


def _file_info(signature, shapes: dict, n_stored: int, prefix: str, architecture) -> DiffusionFileInfo:
    """What a matched signature says about the file: family, key layout, style, widths."""
    declared = architecture if architecture not in PLACEHOLDER_ARCHITECTURES else None
    if declared is not None:
        style = "city96"
    elif prefix == "model.diffusion_model.":
        style = "sdcpp"
    else:
        style = "bare"
    return DiffusionFileInfo(
        family=signature.family,
        display_name=signature.display_name,
        key_format=signature.key_format,
        prefix=prefix,
        style=style,
        architecture=architecture,
        width=_dim(shapes, signature.width_key, 0),
        caption_width=_dim(shapes, signature.caption_key, signature.caption_dim),
        caption_encoder=caption_encoder(signature.family),
        n_tensors=len(shapes),
        other_tensors=n_stored - len(shapes),
    )


def detect_diffusion_model(
    metadata: Mapping[str, Any] | None,
    tensor_shapes: Mapping[str, Shape],
    source: str = "this GGUF file",
) -> DiffusionFileInfo:
    """Identify the diffusion model in a file from its metadata and tensor names/shapes.

    `tensor_shapes` holds the names as stored and shapes in torch order. `source` (usually the
    path) names the file in error messages. Raises `ModelDetectionError` for text encoders,
    VAEs and anything unrecognised.
    """
    architecture = _metadata_string(metadata, "general.architecture")
    general_type = _metadata_string(metadata, "general.type")
    if not tensor_shapes:
        raise ModelDetectionError(f"{os.path.basename(str(source))} holds no tensors, so no model: download it again.\n"
                                  f"{source}: the file holds no tensors")

    key_map = normalize_diffusion_keys(tensor_shapes)
    shapes = {new: tuple(int(d) for d in tensor_shapes[old]) for new, old in key_map.items()}
    prefix = find_diffusion_prefix(tensor_shapes)

    for signature in DIFFUSION_SIGNATURES:
        if signature.matches(shapes):
            return _file_info(signature, shapes, len(tensor_shapes), prefix, architecture)

    name = os.path.basename(str(source))
    for component in OTHER_COMPONENTS:
        if component.matches(tensor_shapes, architecture, general_type):
            found = f"architecture '{architecture}'" if architecture else "its tensor names"
            raise ModelDetectionError(wrong_file_message(
                name, component.kind, "diffusion model", component.use, component.folder, component.advice,
                f"{source}: a {component.kind} by {found}."))

    sample = ", ".join(sorted(tensor_shapes)[:6])
    known = ", ".join(dict.fromkeys(s.display_name for s in DIFFUSION_SIGNATURES if s.key_format == "comfy"))
    arch_note = f" (general.architecture = '{architecture}')" if architecture else " (no general.architecture)"
    raise ModelDetectionError(
        f"{name} holds no diffusion model this loader knows: check that it is a diffusion model GGUF.\n"
        f"{source}: no known diffusion model matches its {len(tensor_shapes)} tensors{arch_note}; "
        f"names found include: {sample}. Known models: {known}"
    )


@dataclass(frozen=True)
class ShapeFix:
    """Tensors some converters store with a shape ComfyUI's model does not declare.

    Only leading size-1 dimensions are ever added, so the innermost (row) dimension and hence
    the bytes of a quantized tensor stay valid: the loader reshapes without dequantizing.
    """

    families: frozenset[str]
    names: tuple[str, ...]
    stored_rank: int
    target_rank: int


SHAPE_FIXES: tuple[ShapeFix, ...] = (
    # stable-diffusion.cpp writes Z-Image's pad tokens as [dim]; ComfyUI declares them [1, dim].
    ShapeFix(frozenset({"zimage", "zimage_pixel"}), ("x_pad_token", "cap_pad_token", "siglip_pad_token"),
             stored_rank=1, target_rank=2),
)


def expected_shape_fixes(family: str, tensor_shapes: Mapping[str, Shape]) -> dict[str, Shape]:
    """{name: shape ComfyUI expects} for the tensors (ComfyUI-side names) stored in another shape."""
    fixes: dict[str, Shape] = {}
    for fix in SHAPE_FIXES:
        if family not in fix.families:
            continue
        for name in fix.names:
            shape = tensor_shapes.get(name)
            if shape is not None and len(shape) == fix.stored_rank:
                fixes[name] = (1,) * (fix.target_rank - fix.stored_rank) + tuple(int(d) for d in shape)
    return fixes
