"""Float, legacy and K-quant kernels against gguf-py's reference dequantization.

float32 output must equal `gguf.quants.dequantize` value for value (NaN where it has NaN);
float16 and bfloat16 output must equal that float32 result cast to the dtype.
"""
import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T, quants

from helpers import kernel_checks
from helpers.kernel_checks import assert_identical, reference

from comfyui_zimage_gguf.ops.kernels import kquants, legacy
from comfyui_zimage_gguf.ops.kernels import blocks as kernel_blocks

KERNELS = {**legacy.KERNELS, **kquants.KERNELS}
RANDOM_BLOCKS = {**legacy.RANDOM_BLOCKS, **kquants.RANDOM_BLOCKS}
QUANTIZABLE = [T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]

# Byte offsets of the fp16 scale fields in each block (ggml's block structs).
FP16_FIELDS = {
    T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0],
    T.Q2_K: [80, 82], T.Q3_K: [108], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208],
}


def check_all_dtypes(raw: np.ndarray, ggml_type: T) -> None:
    kernel_checks.check_all_dtypes(raw, ggml_type, KERNELS[ggml_type], DTYPES)


def quantized_bytes(ggml_type: T, shape, seed: int = 0) -> np.ndarray:
    weights = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    return np.ascontiguousarray(quants.quantize(weights, ggml_type)).view(np.uint8)


@pytest.mark.parametrize("ggml_type", QUANTIZABLE, ids=lambda t: t.name)
def test_quantized_weights_with_odd_row_count_match_gguf(ggml_type):
    check_all_dtypes(quantized_bytes(ggml_type, (3, 512)), ggml_type)


@pytest.mark.parametrize("ggml_type", list(KERNELS), ids=lambda t: t.name)
def test_random_blocks_match_gguf(ggml_type):
    check_all_dtypes(RANDOM_BLOCKS[ggml_type](37, np.random.default_rng(1)), ggml_type)


@pytest.mark.parametrize("ggml_type", list(KERNELS), ids=lambda t: t.name)
def test_single_block(ggml_type):
    check_all_dtypes(RANDOM_BLOCKS[ggml_type](1, np.random.default_rng(2)), ggml_type)


@pytest.mark.parametrize("ggml_type", [T.F32, T.F16, T.BF16], ids=lambda t: t.name)
def test_float_types_keep_nan_and_inf(ggml_type):
    # Every bit pattern of the 16-bit types (every high half for F32): NaNs, infinities, subnormals.
    raw = np.arange(1 << 16, dtype=np.uint32).astype("<u2").view(np.uint8)
    if ggml_type == T.F32:
        raw = (np.arange(1 << 16, dtype=np.uint32) << 16 | 0x1234).astype("<u4").view(np.uint8)
    check_all_dtypes(raw.reshape(-1, GGML_QUANT_SIZES[ggml_type][1]), ggml_type)


@pytest.mark.parametrize("scale", [0.0, 65504.0, -65504.0, 2.0**-24, 6.1e-5, np.inf, np.nan], ids=str)
@pytest.mark.parametrize("ggml_type", list(FP16_FIELDS), ids=lambda t: t.name)
def test_extreme_fp16_scales(ggml_type, scale):
    raw = RANDOM_BLOCKS[ggml_type](8, np.random.default_rng(3))
    scale_bytes = np.frombuffer(np.float16(scale).tobytes(), np.uint8)
    for offset in FP16_FIELDS[ggml_type]:
        raw[:, offset : offset + 2] = scale_bytes
    check_all_dtypes(raw, ggml_type)


@pytest.mark.parametrize("ggml_type", list(KERNELS), ids=lambda t: t.name)
def test_many_chunks_with_a_partial_last_chunk(ggml_type, monkeypatch):
    # A budget of a few blocks: every kernel then runs several chunks, the last one partial.
    monkeypatch.setattr(kernel_blocks, "CPU_CHUNK_ELEMENTS", 10 * GGML_QUANT_SIZES[ggml_type][1])
    check_all_dtypes(RANDOM_BLOCKS[ggml_type](13, np.random.default_rng(4)), ggml_type)


@pytest.mark.parametrize("ggml_type", list(KERNELS), ids=lambda t: t.name)
def test_blocks_at_an_odd_byte_offset(ggml_type):
    # Raw bytes sliced out of a larger buffer (as from a memory-mapped file) need not be aligned.
    raw = RANDOM_BLOCKS[ggml_type](5, np.random.default_rng(5))
    buffer = torch.zeros(raw.size + 1, dtype=torch.uint8)
    buffer[1:] = torch.from_numpy(raw).reshape(-1)
    blocks = buffer[1:].reshape(raw.shape)
    assert_identical(kernel_checks.run_kernel(KERNELS[ggml_type], ggml_type, blocks, torch.float32), reference(raw, ggml_type))


@pytest.mark.parametrize("ggml_type", [T.F16, T.Q8_0, T.Q4_K], ids=lambda t: t.name)
def test_output_is_a_fresh_tensor(ggml_type):
    # Callers (e.g. LoRA patching) may modify the weight in place; the raw bytes must survive.
    raw = torch.from_numpy(RANDOM_BLOCKS[ggml_type](4, np.random.default_rng(6)))
    before = raw.clone()
    kernel_checks.run_kernel(KERNELS[ggml_type], ggml_type, raw, torch.float16).add_(1)
    assert torch.equal(raw, before)


@pytest.mark.parametrize("ggml_type", list(KERNELS), ids=lambda t: t.name)
def test_random_blocks_are_valid_and_moderate(ggml_type):
    raw = RANDOM_BLOCKS[ggml_type](64, np.random.default_rng(7))
    assert raw.dtype == np.uint8 and raw.shape == (64, GGML_QUANT_SIZES[ggml_type][1])
    values = reference(raw, ggml_type)
    assert torch.isfinite(values).all()
    assert values.abs().max() < 1.5
    assert values.abs().max() > 0.05
