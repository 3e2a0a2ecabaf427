"""Public dequantization entry point, and the choice between the torch and the Triton kernels.

Backends: "torch" (ops/ggml/kernels: every type, every device), "triton" (ops/ggml/triton_kernels: fused
one-pass kernels for CUDA and ROCm tensors) and "auto", the default: Triton for a CUDA/ROCm tensor
when `triton` imports and the type has a Triton kernel, torch otherwise (CPU, MPS, no Triton).
Under "auto", a Triton kernel that fails to compile or launch logs one line and that type stays
on torch for the rest of the process. The choice comes from `dequantize(..., backend=)` or, when
that is None, the environment variable ZIMAGE_GGUF_DEQUANT_BACKEND (auto|torch|triton). Every
caller in the pack (layers, the CPU slab Linear, ComfyUI's GGML layout, LoRA, embeddings) goes
through `dequantize`, so they all follow it.
"""
from __future__ import annotations

import logging
import math
import os

import torch

from ...errors import ZImageGGUFError
from . import triton_kernels
from .quant_types import QuantType, quant_type

BACKEND_ENV = "ZIMAGE_GGUF_DEQUANT_BACKEND"
BACKENDS = ("auto", "torch", "triton")

log = logging.getLogger(__name__)
# Types whose Triton kernel failed at run time under "auto": they stay on torch in this process.
_TRITON_FAILED: set = set()


def dequantize(data: torch.Tensor, ggml_type, shape, dtype: torch.dtype = torch.float16,
               out: torch.Tensor | None = None, backend: str | None = None) -> torch.Tensor:
    """Dequantize raw GGML blocks.

    `data` is a uint8 tensor holding the raw blocks (any shape; it is read as a flat byte run),
    `ggml_type` a `gguf.GGMLQuantizationType`; returns a tensor of `shape` and `dtype` on
    `data`'s device. With `out` (a contiguous tensor of that shape, dtype and device) the values
    are written there and `out` is returned: a caller that keeps one buffer for many weights
    saves allocating (on a CPU: page-faulting) fresh memory every call. `backend`: "auto", "torch"
    or "triton" (see the module docstring); "triton" on CPU tensors needs TRITON_INTERPRET=1.
    """
    choice = resolve_backend(backend)
    qt = quant_type(ggml_type)
    shape = tuple(int(s) for s in shape)
    n_elements = math.prod(shape)
    n_blocks = n_elements // qt.block_size
    if n_elements % qt.block_size or data.numel() != n_blocks * qt.type_size:
        raise ZImageGGUFError(
            f"{qt.name} data of {data.numel()} bytes does not hold a tensor of shape {list(shape)} "
            f"({n_elements} elements; {qt.name} stores {qt.block_size} elements in {qt.type_size} bytes)"
        )
    if out is None:
        out = torch.empty(shape, dtype=dtype, device=data.device)
    elif (tuple(out.shape) != shape or out.dtype != dtype or out.device != data.device
          or not out.is_contiguous()):
        raise ZImageGGUFError(
            f"out must be a contiguous {dtype} tensor of shape {list(shape)} on {data.device}; got "
            f"{'a non-contiguous ' if not out.is_contiguous() else ''}{out.dtype} tensor of shape "
            f"{list(out.shape)} on {out.device}"
        )
    blocks, values = data.reshape(n_blocks, qt.type_size), out.view(n_blocks, qt.block_size)
    if not _ran_triton(qt, blocks, values, choice):
        qt.kernel(blocks, values)
    return out


def resolve_backend(backend: str | None = None) -> str:
    """The backend a call uses: `backend` if given, else $ZIMAGE_GGUF_DEQUANT_BACKEND, else "auto"."""
    source = f"backend={backend!r}"
    if backend is None:
        backend = os.environ.get(BACKEND_ENV, "").strip().lower() or "auto"
        source = f"{BACKEND_ENV}={backend}"
    if backend not in BACKENDS:
        raise ZImageGGUFError(f"unknown dequantization backend ({source}); expected one of {', '.join(BACKENDS)}")
    return backend


def triton_refusal(qt: QuantType, device: torch.device, dtype: torch.dtype) -> str | None:
    """Why the Triton kernel cannot dequantize this type on this device into this dtype, or None."""
    reason = triton_kernels.unavailable_reason()
    if reason:
        return reason
    if qt.ggml_type not in triton_kernels.registry():
        return f"{qt.name} has no Triton kernel (types with one: {', '.join(k.name for k in triton_kernels.registry())})"
    if dtype not in triton_kernels.OUTPUT_DTYPES:
        return f"the Triton kernels write float16, bfloat16 or float32, not {dtype}"
    if device.type == "cpu" and not triton_kernels.interpreting():
        return "the tensor is on the CPU; Triton kernels run on CUDA/ROCm devices (or on the CPU with TRITON_INTERPRET=1)"
    if device.type not in ("cpu", "cuda"):
        return f"Triton does not run on {device.type} tensors"
    return None


def _auto_uses_triton(device: torch.device) -> bool:
    """Whether "auto" tries Triton on this device: CUDA and ROCm (torch calls both "cuda")."""
    return device.type == "cuda"


def _ran_triton(qt: QuantType, blocks: torch.Tensor, values: torch.Tensor, backend: str) -> bool:
    """Dequantize with the Triton kernel if the backend says so; False: the torch kernel must run."""
    if backend == "torch":
        return False
    if backend == "auto":
        if not _auto_uses_triton(blocks.device) or qt.ggml_type in _TRITON_FAILED:
            return False
        if triton_refusal(qt, blocks.device, values.dtype):
            return False
        try:
            triton_kernels.launch(triton_kernels.registry()[qt.ggml_type], blocks, values)
        except Exception as error:  # noqa: BLE001 - any compile/launch failure falls back, once per type
            _TRITON_FAILED.add(qt.ggml_type)
            log.warning("Triton %s dequantization failed (%s); using the torch kernel for %s from now on",
                        qt.name, _first_line(error), qt.name)
            return False
        return True
    refusal = triton_refusal(qt, blocks.device, values.dtype)
    if refusal:
        raise ZImageGGUFError(f"cannot dequantize {qt.name} with backend triton: {refusal}")
    try:
        triton_kernels.launch(triton_kernels.registry()[qt.ggml_type], blocks, values)
    except Exception as error:  # noqa: BLE001 - one clear line instead of a compiler traceback
        raise ZImageGGUFError(f"the Triton kernel for {qt.name} failed: {_first_line(error)}") from error
    return True


def _first_line(error: BaseException) -> str:
    """The root cause of an exception in one line (a Triton CompilationError's own text is source code)."""
    while error.__cause__ is not None:
        error = error.__cause__
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0] if lines else ''}"[:300]
