"""From an opened GGUF file to a state dict of quantized tensors (no ComfyUI needed).

Large tensors become `QuantizedTensor`s over zero-copy views of the file's memory map. Small
ones (norms, biases, pad tokens: below SMALL_TENSOR_ELEMENTS) become ordinary float tensors at
load — quantized or BF16 1-D tensors as stable-diffusion.cpp writes them then need no special
handling anywhere in the model, for a few kilobytes of memory.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import torch

from ..ggml.dequant import dequantize
from .tensor import QuantizedTensor

SMALL_TENSOR_ELEMENTS = 1 << 16


@dataclass
class LoadStats:
    path: str
    type_counts: Counter = field(default_factory=Counter)
    file_bytes: int = 0
    dequantized_at_load: list = field(default_factory=list)

    def summary(self) -> str:
        types = ", ".join(f"{name} x{count}" for name, count in self.type_counts.most_common())
        return f"{sum(self.type_counts.values())} tensors ({types}), {self.file_bytes / 2**30:.2f} GiB"


def quantized_state_dict(gguf_file, dtype: torch.dtype = torch.float16) -> dict:
    """Every tensor of an opened GGUF file (ops.gguf_file.reader.load_gguf) as a `QuantizedTensor` (zero-copy;
    `dtype` is the float type it reports and dequantizes to by default), in file order: the builder
    below with no tensor too small to stay quantized."""
    return build_state_dict(gguf_file, dtype, small_tensor_elements=0)[0]


def build_state_dict(gguf_file, compute_dtype: torch.dtype, *, names: dict[str, str] | None = None,
                     shapes: dict[str, tuple] | None = None, progress=None,
                     small_tensor_elements: int = SMALL_TENSOR_ELEMENTS) -> tuple[dict, LoadStats]:
    """State dict for a model from `gguf_file`.

    `names` maps the wanted key -> the tensor's name in the file (default: same names);
    `shapes` gives a logical shape for keys whose stored shape differs (same element count).
    `progress(done_bytes, total_bytes)` is called as tensors are prepared. Tensors of fewer than
    `small_tensor_elements` elements become float32 tensors; 0 keeps every tensor quantized.
    """
    names = names or {name: name for name in gguf_file.tensors}
    shapes = shapes or {}
    stats = LoadStats(str(gguf_file.path))
    total = sum(gguf_file.tensors[old].n_bytes for old in names.values())
    done = 0
    state_dict = {}
    for key, old in names.items():
        info = gguf_file.tensors[old]
        shape = tuple(shapes.get(key, info.shape))
        if math.prod(shape) != math.prod(info.shape):
            from ...errors import ModelDetectionError

            raise ModelDetectionError(
                f"{gguf_file.path}: tensor {old} holds {list(info.shape)}; cannot view it as {list(shape)}"
            )
        raw = gguf_file.raw_tensor(old)
        stats.type_counts[info.ggml_type.name] += 1
        stats.file_bytes += info.n_bytes
        if math.prod(shape) < small_tensor_elements:
            state_dict[key] = dequantize(raw, info.ggml_type, shape, torch.float32)
        else:
            state_dict[key] = QuantizedTensor(raw, info.ggml_type, shape, compute_dtype)
        done += info.n_bytes
        if progress is not None:
            progress(done, total)
    return state_dict, stats
