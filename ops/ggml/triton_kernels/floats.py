"""Triton kernels for the float types F32, F16, BF16 (a "block" is one value): widened exactly to
float32, then rounded once to the output type, as torch's copy_ does."""
import triton
import triton.language as tl
from gguf import GGMLQuantizationType as T

from . import TritonKernel
from .common import program_blocks, store_values

BLOCKS_PER_PROGRAM = 1024


@triton.jit
def _float_values(src, dst, n_blocks, WORD: tl.constexpr, SOURCE: tl.constexpr, BLOCKS: tl.constexpr):
    b, exists = program_blocks(n_blocks, BLOCKS)
    word = tl.load(src.to(tl.pointer_type(WORD), bitcast=True) + b, mask=exists, other=0)
    if SOURCE == tl.bfloat16:
        values = (word.to(tl.uint32) << 16).to(tl.float32, bitcast=True)
    else:
        values = word.to(SOURCE, bitcast=True).to(tl.float32)
    store_values(dst, b, exists, values[:, None], 1)


@triton.jit(do_not_specialize=["n_blocks"])
def bf16(src, dst, n_blocks, BLOCKS: tl.constexpr):
    _float_values(src, dst, n_blocks, tl.uint16, tl.bfloat16, BLOCKS)


@triton.jit(do_not_specialize=["n_blocks"])
def f16(src, dst, n_blocks, BLOCKS: tl.constexpr):
    _float_values(src, dst, n_blocks, tl.uint16, tl.float16, BLOCKS)


@triton.jit(do_not_specialize=["n_blocks"])
def f32(src, dst, n_blocks, BLOCKS: tl.constexpr):
    _float_values(src, dst, n_blocks, tl.uint32, tl.float32, BLOCKS)


KERNELS = [
    TritonKernel(T.BF16, bf16, BLOCKS_PER_PROGRAM, src_alignment=2, scale_fields=(0,)),
    TritonKernel(T.F16, f16, BLOCKS_PER_PROGRAM, src_alignment=2, scale_fields=(0,)),
    TritonKernel(T.F32, f32, BLOCKS_PER_PROGRAM, src_alignment=4),
]
