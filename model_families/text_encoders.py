"""llama.cpp LLM GGUFs (Qwen3, Qwen3-VL, Qwen2/2.5, Qwen2/2.5-VL, Llama) -> what ComfyUI's `Llama2_` needs.

Pure functions over plain data, so they run without files or ComfyUI: `metadata` maps GGUF keys
to python values, `tensor_shapes` maps tensor names to shapes in torch order ([out, in] for
matrices), as the pack's reader gives them (`GGUFFile.shapes`).

ComfyUI builds its text encoders from hard-coded configs (`Qwen3_4BConfig` ...); a GGUF carries
its own hyperparameters, so the loader derives the config from the file, checks it against the
tensor shapes and hands ComfyUI the matching dataclass kwargs.
"""
from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ..errors import IncompatibleModelError, ModelDetectionError
from . import DIFFUSION_FOLDER, DIFFUSION_LOADER
from .diffusion import CITY96_ARCHITECTURES, find_diffusion_prefix, wrong_file_message
from .pairing import KNOWN_ENCODERS, KnownEncoder, encoders_of_width


@dataclass(frozen=True)
class EncoderArch:
    arch: str  # general.architecture; llama.cpp also uses it as the prefix of the hyperparameter keys
    family: str  # the ComfyUI family it feeds (compat.KnownEncoder.family)
    permuted_qk: bool  # llama.cpp's converter interleaved the two rotary halves of every q/k head
    qkv_bias: bool
    qk_norm: bool
    vision_language: bool = False  # text half of a VL model; its vision tower ships as a separate mmproj GGUF


ENCODER_ARCHS: dict[str, EncoderArch] = {
    row.arch: row
    for row in (
        EncoderArch("qwen3", "qwen3", permuted_qk=False, qkv_bias=False, qk_norm=True),
        EncoderArch("qwen3vl", "qwen3", permuted_qk=False, qkv_bias=False, qk_norm=True, vision_language=True),
        EncoderArch("qwen2", "qwen25", permuted_qk=False, qkv_bias=True, qk_norm=False),
        # llama.cpp writes Qwen2-VL and Qwen2.5-VL text models alike as "qwen2vl"
        EncoderArch("qwen2vl", "qwen25", permuted_qk=False, qkv_bias=True, qk_norm=False, vision_language=True),
        EncoderArch("llama", "llama", permuted_qk=True, qkv_bias=False, qk_norm=False),
    )
}

VISION_PROJECTOR_ARCH = "clip"  # llama.cpp mmproj files

# ---------------------------------------------------------------------------------------------
# Tensor names

GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
BLOCK_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
BIAS_NAMES = frozenset({"attn_q.bias", "attn_k.bias", "attn_v.bias"})
QK_NORM_NAMES = frozenset({"attn_q_norm.weight", "attn_k_norm.weight"})
# Llama 3.1 rope-scaling factors: ComfyUI computes its own rotary tables and has no such weight.
IGNORED_NAMES = frozenset({"rope_freqs.weight"})

_HF_GLOBAL = {hf: cpp for cpp, hf in GLOBAL_NAMES.items()}
_HF_BLOCK = {hf: cpp for cpp, hf in BLOCK_NAMES.items()}
_CPP_BLOCK_RE = re.compile(r"blk\.(\d+)\.(.+)")
_HF_BLOCK_RE = re.compile(r"model\.layers\.(\d+)\.(.+)")


def hf_name(llama_cpp_name: str) -> str:
    """llama.cpp tensor name -> HF/ComfyUI name; KeyError for a name no text model here has."""
    if llama_cpp_name in GLOBAL_NAMES:
        return GLOBAL_NAMES[llama_cpp_name]
    match = _CPP_BLOCK_RE.fullmatch(llama_cpp_name)
    if match and match[2] in BLOCK_NAMES:
        return f"model.layers.{match[1]}.{BLOCK_NAMES[match[2]]}"
    raise KeyError(llama_cpp_name)


def llama_cpp_name(hf: str) -> str:
    """HF/ComfyUI name -> llama.cpp tensor name (the inverse of hf_name)."""
    if hf in _HF_GLOBAL:
        return _HF_GLOBAL[hf]
    match = _HF_BLOCK_RE.fullmatch(hf)
    if match and match[2] in _HF_BLOCK:
        return f"blk.{match[1]}.{_HF_BLOCK[match[2]]}"
    raise KeyError(hf)


def block_tensor_suffixes(arch: EncoderArch) -> list[str]:
    """The per-block llama.cpp tensors a model of this arch holds (all required)."""
    return [
        s
        for s in BLOCK_NAMES
        if (s not in BIAS_NAMES or arch.qkv_bias) and (s not in QK_NORM_NAMES or arch.qk_norm)
    ]


def hf_names(arch: EncoderArch | str, tensor_names: Iterable[str], path="") -> dict[str, str]:
    """llama.cpp name -> HF name for every tensor ComfyUI needs; drops IGNORED_NAMES.

    Raises ModelDetectionError for tensors this arch does not have (an unknown name, or a q/k/v
    bias in a Qwen3 file): ComfyUI would drop them silently and compute something else.
    """
    arch = _arch_row(arch, path)
    allowed = set(block_tensor_suffixes(arch))
    out, foreign = {}, []
    for name in tensor_names:
        if name in IGNORED_NAMES:
            continue
        match = _CPP_BLOCK_RE.fullmatch(name)
        if name in GLOBAL_NAMES or (match and match[2] in allowed):
            out[name] = hf_name(name)
        else:
            foreign.append(name)
    if foreign:
        raise ModelDetectionError(
            f"{path}: tensors that a llama.cpp '{arch.arch}' text model does not have: {_sample(foreign)}. "
            "The file is mislabelled or holds a different model."
        )
    return out


# ---------------------------------------------------------------------------------------------
# q/k row order

def qk_permute_heads(arch: EncoderArch | str, llama_cpp_tensor_name: str, config: "EncoderConfig") -> int | None:
    """How many heads the rows of this tensor were interleaved over by llama.cpp, or None if untouched."""
    if not _arch_row(arch).permuted_qk:
        return None
    match = _CPP_BLOCK_RE.fullmatch(llama_cpp_tensor_name)
    kind = match[2].split(".")[0] if match else None
    return {"attn_q": config.n_heads, "attn_k": config.n_kv_heads}.get(kind)


def unpermute_qk_rows(rows, n_heads: int):
    """Undo llama.cpp's q/k permutation along dim 0 (rows = output features).

    llama.cpp stores each head's two rotary halves interleaved ([a0, b0, a1, b1, ...]) where HF
    keeps them split ([a0, a1, ..., b0, b1, ...]). Whole rows move, so this works on float
    weights and biases and equally on quantized data viewed as (rows, bytes_per_row): blocks
    never straddle rows. Accepts torch tensors and numpy arrays.
    """
    n_rows = rows.shape[0]
    if n_rows % (2 * n_heads):
        raise ValueError(f"{n_rows} rows cannot be split into {n_heads} heads of two rotary halves")
    return rows.reshape(n_heads, n_rows // n_heads // 2, 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


# ---------------------------------------------------------------------------------------------
# Config

@dataclass(frozen=True)
class EncoderConfig:
    arch: str
    family: str
    n_layers: int
    hidden_size: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    intermediate_size: int
    rope_theta: float
    rms_eps: float
    vocab_size: int
    max_position: int
    has_lm_head: bool  # an untied output.weight is present
    source: str = field(default="", compare=False)  # the file, for messages


_MISSING = object()


def encoder_config(
    arch: EncoderArch | str, metadata: Mapping, tensor_shapes: Mapping[str, tuple], path=""
) -> EncoderConfig:
    """Read the hyperparameters from `<arch>.*` metadata and check every tensor's shape against them."""
    row = _arch_row(arch, path)
    prefix = row.arch

    def meta(key, kind, default=_MISSING):
        value = metadata.get(f"{prefix}.{key}", default)
        if value is _MISSING:
            raise ModelDetectionError(f"{path}: metadata key {prefix}.{key} is missing; llama.cpp writes it for every '{prefix}' model")
        return kind(value)

    if "token_embd.weight" not in tensor_shapes:
        raise ModelDetectionError(f"{path}: no token_embd.weight tensor; found {_sample(tensor_shapes)}")
    hidden = meta("embedding_length", int)
    n_heads = meta("attention.head_count", int)
    if n_heads <= 0 or hidden <= 0:
        raise ModelDetectionError(f"{path}: metadata {prefix}.embedding_length = {hidden}, {prefix}.attention.head_count = {n_heads}; both must be positive")
    head_dim = meta("attention.key_length", int, hidden // n_heads)
    config = EncoderConfig(
        arch=row.arch,
        family=row.family,
        n_layers=meta("block_count", int),
        hidden_size=hidden,
        n_heads=n_heads,
        n_kv_heads=meta("attention.head_count_kv", int, n_heads),
        head_dim=head_dim,
        intermediate_size=meta("feed_forward_length", int),
        rope_theta=meta("rope.freq_base", float, 10000.0),  # llama.cpp's default when absent
        rms_eps=meta("attention.layer_norm_rms_epsilon", float),
        vocab_size=int(tensor_shapes["token_embd.weight"][0]),
        max_position=meta("context_length", int),
        has_lm_head="output.weight" in tensor_shapes,
        source=str(path),
    )
    declared_vocab = metadata.get(f"{prefix}.vocab_size")
    if declared_vocab is not None and int(declared_vocab) != config.vocab_size:
        raise ModelDetectionError(
            f"{path}: metadata {prefix}.vocab_size = {declared_vocab} but token_embd.weight has "
            f"{config.vocab_size} rows (shape {list(tensor_shapes['token_embd.weight'])})"
        )
    _check_layers(row, config, tensor_shapes, path)
    _check_shapes(row, config, tensor_shapes, path)
    return config


def _dims(config: EncoderConfig) -> dict[str, tuple[int, str]]:
    """Each symbolic dimension: its value and the metadata it comes from (for error messages)."""
    p = config.arch
    hidden = (config.hidden_size, f"{p}.embedding_length = {config.hidden_size}")
    heads = f"{p}.attention.head_count = {config.n_heads}"
    kv = f"{p}.attention.head_count_kv = {config.n_kv_heads}"
    head_dim = f"head size {config.head_dim} ({p}.attention.key_length, else embedding_length / head_count)"
    return {
        "hidden": hidden,
        "vocab": (config.vocab_size, f"token_embd.weight rows = {config.vocab_size}"),
        "ffn": (config.intermediate_size, f"{p}.feed_forward_length = {config.intermediate_size}"),
        "q": (config.n_heads * config.head_dim, f"{heads} x {head_dim}"),
        "kv": (config.n_kv_heads * config.head_dim, f"{kv} x {head_dim}"),
        "head_dim": (config.head_dim, head_dim),
    }


# expected shape of each tensor, in symbolic dimensions of _dims
TENSOR_DIMS: dict[str, tuple[str, ...]] = {
    "token_embd.weight": ("vocab", "hidden"),
    "output_norm.weight": ("hidden",),
    "output.weight": ("vocab", "hidden"),
    "attn_norm.weight": ("hidden",),
    "attn_q.weight": ("q", "hidden"),
    "attn_k.weight": ("kv", "hidden"),
    "attn_v.weight": ("kv", "hidden"),
    "attn_output.weight": ("hidden", "q"),
    "attn_q.bias": ("q",),
    "attn_k.bias": ("kv",),
    "attn_v.bias": ("kv",),
    "attn_q_norm.weight": ("head_dim",),
    "attn_k_norm.weight": ("head_dim",),
    "ffn_norm.weight": ("hidden",),
    "ffn_gate.weight": ("ffn", "hidden"),
    "ffn_up.weight": ("ffn", "hidden"),
    "ffn_down.weight": ("hidden", "ffn"),
}


def _check_layers(row: EncoderArch, config: EncoderConfig, tensor_shapes: Mapping, path) -> None:
    blocks = {int(m[1]) for m in map(_CPP_BLOCK_RE.fullmatch, tensor_shapes) if m}
    if blocks != set(range(config.n_layers)):
        raise ModelDetectionError(
            f"{path}: metadata {row.arch}.block_count = {config.n_layers} but the file has blocks "
            f"{_ranges(blocks)}"
        )
    required = ["token_embd.weight", "output_norm.weight"] + [
        f"blk.{i}.{s}" for i in range(config.n_layers) for s in block_tensor_suffixes(row)
    ]
    missing = [n for n in required if n not in tensor_shapes]
    if missing:
        raise ModelDetectionError(f"{path}: a '{row.arch}' text model needs tensors the file lacks: {_sample(missing)}")


def _check_shapes(row: EncoderArch, config: EncoderConfig, tensor_shapes: Mapping, path) -> None:
    dims = _dims(config)
    for name, shape in tensor_shapes.items():
        match = _CPP_BLOCK_RE.fullmatch(name)
        symbols = TENSOR_DIMS.get(match[2] if match else name)
        if symbols is None:
            continue
        expected = [dims[s][0] for s in symbols]
        if list(shape) != expected:
            because = "; ".join(dict.fromkeys(dims[s][1] for s in symbols))
            raise ModelDetectionError(
                f"{path}: tensor {name} has shape {list(shape)} but the metadata ({because}) says {expected}. "
                "The metadata and the weights disagree: the file is damaged or was written by a broken converter."
            )


# ---------------------------------------------------------------------------------------------
# ComfyUI side

def comfy_te_model(config: EncoderConfig) -> KnownEncoder:
    """The ComfyUI text-encoder model this config builds, found by family and width."""
    matches = encoders_of_width(config.hidden_size, config.family)
    if len(matches) != 1:
        known = ", ".join(f"{e.width} ({e.display}, {e.comfy_name})" for e in KNOWN_ENCODERS if e.family == config.family)
        raise ModelDetectionError(
            f"{config.source}: a '{config.arch}' text model {config.hidden_size} wide is not one ComfyUI has a text "
            f"encoder for; known {config.family} widths: {known}"
        )
    return matches[0]


def comfy_te_model_name(config: EncoderConfig) -> str:
    """ComfyUI's key for the model ('qwen3_4b', 'qwen25_7b', 'llama' ...)."""
    return comfy_te_model(config).comfy_name


def comfy_config_kwargs(config: EncoderConfig) -> dict:
    """Keyword arguments for the ComfyUI config dataclass (e.g. Qwen3_4BConfig) built from the file.

    They go in as `model_options[f"{name}_model_config"]`, which ComfyUI's SDClipModel merges into
    the dataclass kwargs. head_dim, qkv_bias and q/k norms are class constants there, not fields:
    a file that disagrees with them cannot be built and is refused here.
    """
    target = comfy_te_model(config)
    if config.head_dim != target.head_dim:
        raise IncompatibleModelError(
            f"{config.source}: head size {config.head_dim} ({config.arch}.attention.key_length), but ComfyUI's "
            f"{target.comfy_config} fixes it at {target.head_dim}; ComfyUI cannot build this {config.arch} model as {target.comfy_name}"
        )
    return {
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.n_kv_heads,
        "max_position_embeddings": config.max_position,
        "rms_norm_eps": config.rms_eps,
        "rope_theta": config.rope_theta,
        "lm_head": config.has_lm_head,
    }


# ---------------------------------------------------------------------------------------------
# Detection

def detect_text_encoder(metadata: Mapping, tensor_names: Iterable[str], path="") -> EncoderArch:
    """The arch row of a llama.cpp text-model GGUF, or ModelDetectionError saying what the file is instead."""
    names = list(tensor_names)
    arch = metadata.get("general.architecture")
    supported = ", ".join(ENCODER_ARCHS)
    if arch in ENCODER_ARCHS:
        if "token_embd.weight" in names and "blk.0.attn_q.weight" in names:
            return ENCODER_ARCHS[arch]
        raise ModelDetectionError(
            f"{path}: general.architecture is '{arch}' but the file holds none of a llama.cpp text model's tensors "
            f"(token_embd.weight, blk.0.attn_q.weight); found {_sample(names)}"
        )
    sdcpp_diffusion = find_diffusion_prefix(names) == "model.diffusion_model."
    name = os.path.basename(str(path)) or "this file"
    if arch in CITY96_ARCHITECTURES or sdcpp_diffusion:
        found = f"general.architecture = '{arch}'" if arch in CITY96_ARCHITECTURES else "tensors named model.diffusion_model.*"
        raise ModelDetectionError(wrong_file_message(
            name, "diffusion model", "text encoder", DIFFUSION_LOADER, DIFFUSION_FOLDER,
            details=f"{path}: a diffusion model GGUF ({found}). This loader takes an LLM GGUF such as "
                    "Qwen3-4B-Instruct-2507-Q8_0.gguf."))
    if arch == VISION_PROJECTOR_ARCH:
        raise ModelDetectionError(
            f"{name} is a vision projector (mmproj), not a text model: load the LLM GGUF without 'mmproj' in its name.\n"
            f"{path}: general.architecture = 'clip' (a llama.cpp mmproj file); Z-Image does not need it."
        )
    what = f"general.architecture = '{arch}'" if arch is not None else "no general.architecture key"
    raise ModelDetectionError(
        f"{name} is not a text encoder this loader supports: use a Qwen3, Qwen2.5 or Llama GGUF from llama.cpp.\n"
        f"{path}: {what} is not a text encoder this loader supports (supported llama.cpp archs: {supported}); "
        f"the file has {len(names)} tensors: {_sample(names)}"
    )


def _arch_row(arch: EncoderArch | str, path="") -> EncoderArch:
    if isinstance(arch, EncoderArch):
        return arch
    try:
        return ENCODER_ARCHS[arch]
    except KeyError:
        raise ModelDetectionError(
            f"{path}: '{arch}' is not a supported llama.cpp text-model arch; supported: {', '.join(ENCODER_ARCHS)}"
        ) from None


def _sample(names: Iterable[str], limit: int = 8) -> str:
    names = list(names)
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "") if names else "(none)"


def _ranges(indices: set[int]) -> str:
    if not indices:
        return "none"
    ordered = sorted(indices)
    runs, start = [], ordered[0]
    for prev, cur in zip(ordered, ordered[1:] + [None]):
        if cur != prev + 1:
            runs.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = cur
    return ", ".join(runs)
