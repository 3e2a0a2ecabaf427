"""Fused Triton dequantization kernels: one program reads its blocks once and writes their values once.

Importing this package never imports Triton; `registry()` does, the first time a caller asks for a
Triton kernel (ops.ggml.dequant, the tests, `bench --compile-check`), and returns {} without Triton.

Adding a type family: a module here (e.g. `iquants.py`) that defines `KERNELS`, a list of
`TritonKernel`s, and its name in `FAMILIES` below. Nothing else changes: ops.ggml.dequant, the
interpreter tests (tests/test_triton_kernels.py: every registered type, bit for bit against the
torch kernel) and the compile check (cli/bench_compile.py) all loop over the registry.

The kernel contract (see legacy.py for the simplest examples, common.py for the shared helpers):

    @triton.jit(do_not_specialize=["n_blocks"])  # one compile per output dtype, whatever the count
    def kernel(src, dst, n_blocks, *tables, BLOCKS: tl.constexpr)

- `src`: the raw blocks, uint8, contiguous: block i is bytes [i * type_size, (i + 1) * type_size).
- `dst`: the values, float16, bfloat16 or float32 (the kernel reads the type from the pointer:
  `dst.dtype.element_ty`), contiguous: block i's values are [i * block_size, (i + 1) * block_size).
- `n_blocks`: how many blocks there are; program p handles blocks [p * BLOCKS, (p + 1) * BLOCKS)
  and masks those >= n_blocks (the last program may be partly empty).
- `tables`: constant tables (codebooks), one pointer each, in the order of `TritonKernel.tables`;
  they live on the device once per (device, table) and are not counted as block traffic.

Rules that keep it exact and one-pass:
- Compute in float32 in exactly the torch kernel's order of operations (which is gguf-py's), then
  round once to dst's type (`common.store_values`); the launch passes `enable_fp_fusion=False`,
  so `d * q - m` is never fused into an FMA with one rounding instead of two.
- Read every byte of a block exactly once: per-field loads (`common.load_bytes`) whose byte ranges
  tile the block, widths powers of two; fp16 fields as two bytes (`common.fp16_at`), never a
  misaligned wider load. Rearrange in registers (tl.join / tl.permute / tl.reshape), never by
  loading a byte twice. The compile check counts the bytes each load and store moves.
- No loops: every instruction runs once per thread, which keeps the PTX count simple.
- Integer work on uint8/int32 as on a GPU; the interpreter (numpy) and the compiler must agree,
  which the tests (interpreter) and the compile check (real compiler, sm_75..sm_90) cover together.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import os
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

# One entry per family module; adding a family is one name here.
FAMILIES = ("floats", "legacy", "kquants", "iq4", "iquants", "fp4_ternary", "sign_bits")

OUTPUT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@dataclass(frozen=True)
class TritonKernel:
    """One GGML type's Triton kernel and how to launch it."""

    ggml_type: Any  # gguf.GGMLQuantizationType
    fn: Any  # the @triton.jit function, with the signature in the module docstring
    blocks_per_program: int
    num_warps: int = 4
    # Constant tables, in the kernel's argument order: builders of numpy arrays, called once per device.
    tables: tuple[Callable[[], np.ndarray], ...] = field(default=())
    # Byte alignment the kernel needs of `src` (a float type reading 2- or 4-byte words).
    src_alignment: int = 1
    # Byte offsets of the block's fp16 scale fields: the tests write extreme scales there (zero,
    # subnormal, tiny, large) on top of the type's random blocks.
    scale_fields: tuple[int, ...] = ()

    @property
    def name(self) -> str:
        return self.ggml_type.name


def interpreting() -> bool:
    """Whether Triton runs kernels in its interpreter (TRITON_INTERPRET=1, read when kernels are defined)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on")


@functools.lru_cache(maxsize=None)
def _load() -> tuple[dict, str | None]:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception as error:  # noqa: BLE001 - a broken install must not break the torch path
        return {}, f"triton does not import ({type(error).__name__}: {error})"
    kernels = {}
    for family in FAMILIES:
        module = importlib.import_module(f"{__name__}.{family}")
        for kernel in module.KERNELS:
            kernels[kernel.ggml_type] = kernel
    return kernels, None


def registry() -> dict:
    """GGML type -> TritonKernel for every type with a Triton kernel; {} without Triton."""
    return _load()[0]


def unavailable_reason() -> str | None:
    """Why Triton kernels cannot run at all (Triton missing or broken), or None."""
    return _load()[1]


@functools.lru_cache(maxsize=None)
def _device_table(build: Callable[[], np.ndarray], device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(build())).to(device)


def launch(kernel: TritonKernel, blocks: torch.Tensor, out: torch.Tensor, blocks_per_program: int | None = None) -> None:
    """Dequantize (n_blocks, type_size) uint8 `blocks` into `out` ((n_blocks, block_size), contiguous,
    float16/bfloat16/float32, same device). `blocks_per_program` overrides the kernel's (tests use
    small programs so that few blocks still span several, the last partly masked)."""
    import triton

    n_blocks = blocks.shape[0]
    if n_blocks == 0:
        return
    if not blocks.is_contiguous() or blocks.data_ptr() % kernel.src_alignment:
        blocks = blocks.clone(memory_format=torch.contiguous_format)
    per_program = blocks_per_program or kernel.blocks_per_program
    tables = [_device_table(build, blocks.device) for build in kernel.tables]
    grid = (triton.cdiv(n_blocks, per_program),)
    with torch.cuda.device(blocks.device) if blocks.device.type == "cuda" else contextlib.nullcontext():
        kernel.fn[grid](blocks, out, n_blocks, *tables, BLOCKS=per_program,
                        num_warps=kernel.num_warps, enable_fp_fusion=False)
