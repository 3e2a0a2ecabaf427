"""Both code paths of every kernel, the CPU one and the accelerator one (run here on the CPU with the
device decisions forced): their output must carry the same bits as gguf-py's float32 reference (float32) and as that result
rounded once (float16, bfloat16), with the scales of a chunk mixed (zero, subnormal, tiny, large,
infinite, NaN). On CUDA, ROCm and MPS the kernels take this path (`blocks.fused_arithmetic`,
`iquants._cpu_word_views`); CPUs take the other one, checked in the other kernel tests."""
import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T

from helpers.kernel_checks import reference, run_kernel

from comfyui_zimage_gguf.ops import QUANT_TYPES
from comfyui_zimage_gguf.ops.ggml.kernels import blocks as kernel_blocks
from comfyui_zimage_gguf.ops.ggml.kernels import iquants

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
QUANTIZED = [t for t in QUANT_TYPES if t not in (T.F32, T.F16, T.BF16)]

# Byte offsets of each type's fp16 scale fields (ggml's block structs); IQ1_M spreads its scale
# over four nibbles and MXFP4/NVFP4 have byte scales: those get every scale code instead.
FP16_FIELDS = {
    T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0],
    T.Q2_K: [80, 82], T.Q3_K: [108], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208],
    T.TQ1_0: [52], T.TQ2_0: [64], T.Q1_0: [0],
    T.IQ1_S: [0], T.IQ2_XXS: [0], T.IQ2_XS: [0], T.IQ2_S: [0], T.IQ3_XXS: [0], T.IQ3_S: [0],
    T.IQ4_NL: [0], T.IQ4_XS: [0],
}
MIXED_SCALES = np.array([0.0, -0.0, 2.0**-24, -3 * 2.0**-20, 6.1e-5, 1e-3, -0.7, 3.0, 900.0,
                         65504.0, -65504.0, np.inf, -np.inf, np.nan], dtype=np.float16)


@pytest.fixture(autouse=True, params=["cpu", "accelerator"])
def code_path(request, monkeypatch):
    if request.param == "accelerator":
        monkeypatch.setattr(kernel_blocks, "fused_arithmetic", lambda device: True)
        monkeypatch.setattr(iquants, "_cpu_word_views", lambda device: False)
    return request.param


def assert_same_bits(got: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal values with equal signs of zero; NaN exactly where expected has NaN."""
    assert got.dtype == expected.dtype and got.shape == expected.shape
    nan = torch.isnan(expected)
    assert torch.equal(torch.isnan(got), nan)
    bits = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}[got.dtype]
    mismatch = (got.view(bits) != expected.view(bits)) & ~nan
    assert not mismatch.any(), f"{int(mismatch.sum())} values differ, first at {mismatch.nonzero()[0].tolist()}"


def check(raw: np.ndarray, ggml_type: T) -> None:
    expected = reference(raw, ggml_type)
    blocks = torch.from_numpy(raw)
    for dtype in DTYPES:
        assert_same_bits(run_kernel(QUANT_TYPES[ggml_type].kernel, ggml_type, blocks, dtype), expected.to(dtype))


def mixed_scale_blocks(ggml_type: T, seed: int) -> np.ndarray:
    raw = QUANT_TYPES[ggml_type].random_blocks(3 * len(MIXED_SCALES), np.random.default_rng(seed))
    if ggml_type in (T.MXFP4, T.NVFP4):
        scale_bytes = 1 if ggml_type == T.MXFP4 else 4
        codes = np.arange(raw.shape[0] * scale_bytes) % 256
        raw[:, :scale_bytes] = codes.reshape(raw.shape[0], scale_bytes)
        return raw
    if ggml_type == T.IQ1_M:
        return raw  # its scale's nibbles are random bytes already
    scales = np.resize(MIXED_SCALES, raw.shape[0]).view(np.uint8).reshape(-1, 2)
    for k, offset in enumerate(FP16_FIELDS[ggml_type]):
        raw[:, offset : offset + 2] = np.roll(scales, k, axis=0)
    return raw


@pytest.mark.parametrize("ggml_type", QUANTIZED, ids=lambda t: t.name)
def test_random_blocks(ggml_type):
    check(QUANT_TYPES[ggml_type].random_blocks(37, np.random.default_rng(1)), ggml_type)


@pytest.mark.parametrize("ggml_type", QUANTIZED, ids=lambda t: t.name)
def test_mixed_extreme_scales_in_one_chunk(ggml_type):
    check(mixed_scale_blocks(ggml_type, seed=2), ggml_type)


@pytest.mark.parametrize("ggml_type", QUANTIZED, ids=lambda t: t.name)
def test_every_byte_value_in_the_quants(ggml_type):
    # Blocks whose payload bytes run through all 256 values, at moderate scales.
    raw = QUANT_TYPES[ggml_type].random_blocks(64, np.random.default_rng(3))
    payload = np.arange(raw.size, dtype=np.int64).reshape(raw.shape) % 256
    fields = FP16_FIELDS.get(ggml_type, [])
    keep = np.zeros(raw.shape[1], dtype=bool)
    for offset in fields:
        keep[offset : offset + 2] = True
    if ggml_type in (T.MXFP4, T.NVFP4, T.IQ1_M):
        keep[: {T.MXFP4: 1, T.NVFP4: 4, T.IQ1_M: 0}[ggml_type]] = True
    raw[:, ~keep] = payload[:, ~keep]
    if ggml_type == T.IQ1_M:
        raw = raw.copy()
        raw[:, 49:56:2] = (raw[:, 49:56:2] & 0x0F) | 0x20  # scale nibbles: a moderate fp16 value
    check(raw, ggml_type)


@pytest.mark.parametrize("ggml_type", QUANTIZED, ids=lambda t: t.name)
def test_strided_and_unaligned_blocks(ggml_type):
    raw = QUANT_TYPES[ggml_type].random_blocks(10, np.random.default_rng(4))
    buffer = torch.zeros(raw.size + 1, dtype=torch.uint8)
    buffer[1:] = torch.from_numpy(raw).reshape(-1)
    unaligned = buffer[1:].reshape(raw.shape)
    expected = reference(raw, ggml_type)
    for dtype in DTYPES:
        assert_same_bits(run_kernel(QUANT_TYPES[ggml_type].kernel, ggml_type, unaligned[::2], dtype),
                         expected[::2].to(dtype))
