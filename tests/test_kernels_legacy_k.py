"""Float, legacy and K-quant kernels against gguf-py's reference dequantization: real quantized
weights and extreme scales (the checks every kernel shares are in test_kernels.py).

float32 output must equal `gguf.quants.dequantize` value for value (NaN where it has NaN);
float16 and bfloat16 output must equal that float32 result cast to the dtype.
"""
import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T, quants

from helpers import kernel_checks
from helpers.kernel_checks import assert_identical, reference

from comfyui_zimage_gguf.ops import QUANT_TYPES
from comfyui_zimage_gguf.ops.ggml.kernels import kquants, legacy

FAMILY = [*legacy.TYPES, *kquants.TYPES]
KERNELS = {t: QUANT_TYPES[t].kernel for t in FAMILY}
RANDOM_BLOCKS = {t: QUANT_TYPES[t].random_blocks for t in FAMILY}
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
