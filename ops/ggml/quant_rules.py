"""Which GGML type each tensor gets when a model is written as a llama.cpp "mix" (Q4_K_M, Q5_K_S...).

Data first: a mix is a base type plus per-tensor bumps; a family (diffusion arch or text encoder)
lists the tensors kept in full precision and the bumps of its tensors. Two families, after the
tools whose files users share:
  - "lumina2" (Z-Image): city96's ComfyUI-GGUF route, its convert.py (what stays F32/BF16/F16)
    followed by llama-quantize with its lcpp.patch (img_tensor_get_type: which tensors are
    quantized, which get a bigger type in the _S/_M/_L mixes, F16 where rows are not whole blocks);
  - "qwen3" (llama.cpp text encoders, `blk.N.*` names): llama.cpp's own llama_tensor_get_type for
    the mixes written here (tied output/token embedding, attn_v, attn_output, ffn_down).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Callable, Mapping, Union

import torch
from gguf import GGMLQuantizationType as T, LlamaFileType as F

from .quant_types import rows_are_whole_blocks


@dataclass(frozen=True)
class Mix:
    base: T
    file_type: F


MIXES: dict[str, Mix] = {
    "F32": Mix(T.F32, F.ALL_F32), "F16": Mix(T.F16, F.MOSTLY_F16), "BF16": Mix(T.BF16, F.MOSTLY_BF16),
    "Q8_0": Mix(T.Q8_0, F.MOSTLY_Q8_0), "Q6_K": Mix(T.Q6_K, F.MOSTLY_Q6_K),
    "Q5_K_M": Mix(T.Q5_K, F.MOSTLY_Q5_K_M), "Q5_K_S": Mix(T.Q5_K, F.MOSTLY_Q5_K_S),
    "Q5_1": Mix(T.Q5_1, F.MOSTLY_Q5_1), "Q5_0": Mix(T.Q5_0, F.MOSTLY_Q5_0),
    "Q4_K_M": Mix(T.Q4_K, F.MOSTLY_Q4_K_M), "Q4_K_S": Mix(T.Q4_K, F.MOSTLY_Q4_K_S),
    "Q4_1": Mix(T.Q4_1, F.MOSTLY_Q4_1), "Q4_0": Mix(T.Q4_0, F.MOSTLY_Q4_0),
    "IQ4_NL": Mix(T.IQ4_NL, F.MOSTLY_IQ4_NL), "IQ4_XS": Mix(T.IQ4_XS, F.MOSTLY_IQ4_XS),
    "Q3_K_L": Mix(T.Q3_K, F.MOSTLY_Q3_K_L), "Q3_K_M": Mix(T.Q3_K, F.MOSTLY_Q3_K_M),
    "Q3_K_S": Mix(T.Q3_K, F.MOSTLY_Q3_K_S), "Q2_K": Mix(T.Q2_K, F.MOSTLY_Q2_K),
}

# A bump's type for a mix: a type, or f(position, count) -> type for rules that depend on where
# the tensor sits (its layer among n, or its rank among the tensors the rule matched).
Choice = Union[T, Callable[[int, int], T]]


def use_more_bits(i: int, n: int) -> bool:
    """llama.cpp: the first and last eighth of the layers, and every third one between."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


@dataclass(frozen=True)
class Bump:
    """Tensors whose name contains one of `patterns` get `types[mix]` instead of the mix's base type."""

    what: str
    patterns: tuple[str, ...]
    types: Mapping[str, Choice]
    # how the position is counted: "match" (rank among this rule's tensors) or "layer" (blk.N / layers.N)
    position: str = "match"


@dataclass(frozen=True)
class Family:
    name: str
    keep: tuple[str, ...]  # name substrings never quantized
    bumps: tuple[Bump, ...]
    # ggml's rule that a tensor needs two real dimensions (trailing 1s do not count) to be quantized
    min_quantized_dims: int = 2
    tied_output: tuple[str, ...] = ()  # the output matrix (llama.cpp's OUTPUT category)
    small_elements: int = 0  # tensors up to this size stay F32 (city96's convert.py: 1024)
    # bare nn.Parameters (not a layer's weight) that would be BF16: written F32. city96's loader
    # views only F32/F16 data to the tensor's shape, so a BF16 [1, 3840] pad token reaches
    # load_state_dict as 7680 bytes and fails (measured: ComfyUI-GGUF 795e451); its convert.py keeps
    # such parameters in F32 for other archs ("keys_hiprec").
    f32_parameters: tuple[str, ...] = ()
    extra: dict = field(default_factory=dict)


LUMINA2 = Family(
    name="lumina2",
    keep=("t_embedder.", "x_embedder.", "final_layer.", "cap_embedder.", "context_refiner.", "noise_refiner."),
    small_elements=1024,
    f32_parameters=("x_pad_token", "cap_pad_token"),
    bumps=(
        Bump("to_v / attn_v", ("attn_v.weight", ".to_v.weight", ".v.weight", ".attn.w1v.weight", ".attn.w2v.weight",
                               "_attn.v_proj.weight"),
             {"Q2_K": T.Q3_K, "Q3_K_M": lambda i, n: T.Q5_K if i < 2 else T.Q4_K, "Q3_K_L": T.Q5_K,
              "Q4_K_M": T.Q6_K, "Q5_K_M": T.Q6_K, "Q4_K_S": lambda i, n: T.Q5_K if i < 4 else T.Q4_K}),
        Bump("fused qkv", ("attn_qkv.weight", "attn.qkv.weight", "attention.qkv.weight"),
             {"Q3_K_M": T.Q4_K, "Q3_K_L": T.Q4_K, "Q4_K_M": T.Q5_K, "Q5_K_M": T.Q6_K}),
        Bump("ffn down", ("ffn_down", ".ffn.2.weight", ".ff.net.2.weight", ".mlp.layer2.weight",
                          ".adaln_modulation_mlp.2.weight", ".feed_forward.w2.weight"),
             {"Q3_K_M": T.Q4_K, "Q3_K_L": T.Q5_K, "Q4_K_S": T.Q5_K, "Q4_K_M": T.Q6_K, "Q5_K_M": T.Q6_K,
              "Q4_0": T.Q4_1, "Q5_0": T.Q5_1}),
    ),
)

_K_MIXES = ("Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K",
            "Q4_0", "Q4_1", "Q5_0", "Q5_1")

QWEN3 = Family(
    name="qwen3",
    keep=("_norm.weight",),
    tied_output=("output.weight", "token_embd.weight"),
    bumps=(
        Bump("attn_v", ("attn_v.weight",),
             {"Q2_K": T.Q4_K,  # n_gqa >= 4 for every Qwen3 size (llama.cpp: Q3_K below)
              "Q3_K_M": lambda i, n: T.Q5_K if i < 2 else T.Q4_K, "Q3_K_L": T.Q5_K,
              "IQ4_NL": T.Q5_K, "IQ4_XS": T.Q5_K,
              "Q4_K_M": lambda i, n: T.Q6_K if use_more_bits(i, n) else T.Q4_K,
              "Q5_K_M": lambda i, n: T.Q6_K if use_more_bits(i, n) else T.Q5_K,
              "Q4_K_S": lambda i, n: T.Q5_K if i < 4 else T.Q4_K}),
        Bump("ffn_down", ("ffn_down",),
             {"Q2_K": T.Q3_K,
              "Q3_K_M": lambda i, n: T.Q5_K if i < n // 16 else T.Q4_K, "Q3_K_L": T.Q5_K,
              "Q4_K_M": lambda i, n: T.Q6_K if use_more_bits(i, n) else T.Q4_K,
              "Q5_K_M": lambda i, n: T.Q6_K if use_more_bits(i, n) else T.Q5_K,
              "Q4_K_S": lambda i, n: T.Q5_K if i < n // 8 else T.Q4_K,
              "IQ4_NL": lambda i, n: T.Q5_K if i < n // 8 else T.IQ4_NL,
              "IQ4_XS": lambda i, n: T.Q5_K if i < n // 8 else T.IQ4_XS}, position="layer"),
        Bump("attn_output", ("attn_output.weight",), {"Q2_K": T.Q3_K, "Q3_K_M": T.Q4_K, "Q3_K_L": T.Q5_K}),
    ),
    extra={"tied_output_mixes": _K_MIXES + ("IQ4_NL", "IQ4_XS")},
)

FAMILIES = {f.name: f for f in (LUMINA2, QWEN3)}
# A quantized type whose block does not divide a tensor's rows falls back to this type.
ROW_FALLBACK = T.F16
_LAYER = re.compile(r"(?:^|\.)(?:blk|layers)\.(\d+)\.")


def ggml_dims(shape) -> int:
    """ggml_n_dims: dimensions up to the last one above 1, counted from the innermost (torch's last)."""
    ne = list(reversed(tuple(shape)))
    return max([i + 1 for i, n in enumerate(ne) if n > 1], default=1)


def kept_type(source_dtype: torch.dtype, shape) -> T:
    """What city96's convert.py writes for a tensor that stays unquantized (it counts torch's
    dimensions: pad tokens [1, dim] are 2-D there and stay BF16, though ggml sees them as 1-D)."""
    small = len(shape) <= 1 or math.prod(shape) <= LUMINA2.small_elements
    if source_dtype in (torch.float32, torch.bfloat16) and small:
        return T.F32
    return T.BF16 if source_dtype == torch.bfloat16 else T.F16


FLOAT_BASES = (T.F32, T.F16, T.BF16)


def _quantized(rules: Family, name: str, shape) -> bool:
    return (ggml_dims(shape) >= rules.min_quantized_dims and math.prod(shape) > rules.small_elements
            and not any(k in name for k in rules.keep))


def _unquantized_type(rules: Family, chosen: Mix, name: str, dtype: torch.dtype, shape) -> T:
    if rules is LUMINA2:
        small = len(shape) <= 1 or math.prod(shape) <= rules.small_elements
        kept = chosen.base if chosen.base in FLOAT_BASES and not small else kept_type(dtype, shape)
        if kept == T.BF16 and name in rules.f32_parameters:
            return T.F32
        return kept
    if ggml_dims(shape) == 1:
        return T.F32
    return chosen.base if chosen.base in FLOAT_BASES else T.F16


def plan_types(tensors: Mapping[str, tuple[tuple[int, ...], torch.dtype]], mix: str, family: str) -> dict[str, T]:
    """{name: (shape, source dtype)} in file order -> {name: GGML type} for the mix."""
    chosen = MIXES[mix]
    rules = FAMILIES[family]
    n_layers = 1 + max((int(m.group(1)) for name in tensors if (m := _LAYER.search(name))), default=-1)
    counts = {b.what: sum(any(p in name for p in b.patterns) for name in tensors) for b in rules.bumps}
    seen = dict.fromkeys(counts, 0)
    plan = {}
    for name, (shape, dtype) in tensors.items():
        if chosen.base in FLOAT_BASES or not _quantized(rules, name, shape):
            plan[name] = _unquantized_type(rules, chosen, name, dtype, shape)
            continue
        ggml_type = chosen.base
        if name in rules.tied_output and mix in rules.extra.get("tied_output_mixes", ()):
            ggml_type = T.Q6_K
        for bump in rules.bumps:
            if any(p in name for p in bump.patterns):
                choice = bump.types.get(mix)
                if bump.position == "layer":
                    layer = _LAYER.search(name)
                    position, count = (int(layer.group(1)) if layer else 0), n_layers
                else:
                    position, count = seen[bump.what], counts[bump.what]
                seen[bump.what] += 1
                if choice is not None:
                    ggml_type = choice(position, count) if callable(choice) else choice
                break
        if not rows_are_whole_blocks(ggml_type, shape):
            ggml_type = ROW_FALLBACK
        plan[name] = ggml_type
    return plan
