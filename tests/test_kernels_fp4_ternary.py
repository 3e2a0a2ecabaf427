"""Ternary (TQ1_0, TQ2_0) and FP4 (MXFP4, NVFP4) kernels against gguf-py's reference.

float32 output must equal `gguf.quants.dequantize` value for value; float16 and bfloat16
output must equal that float32 result cast to the dtype.
"""
import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T, quants

from helpers import kernel_checks
from helpers.kernel_checks import assert_identical, reference

from comfyui_zimage_gguf.ops.ggml.kernels import fp4_ternary, legacy
from comfyui_zimage_gguf.ops import QUANT_TYPES

KERNELS = {t: QUANT_TYPES[t].kernel for t in fp4_ternary.TYPES}
RANDOM_BLOCKS = {t: QUANT_TYPES[t].random_blocks for t in fp4_ternary.TYPES}
QUANTIZABLE = [T.TQ1_0, T.TQ2_0, T.MXFP4]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def check_all_dtypes(raw: np.ndarray, ggml_type: T) -> None:
    kernel_checks.check_all_dtypes(raw, ggml_type, KERNELS[ggml_type], DTYPES)


def every_byte_value(n_blocks: int, type_size: int) -> np.ndarray:
    """Blocks whose bytes run through 0..255 at every position (one column per byte offset)."""
    return ((np.arange(n_blocks)[:, None] + 37 * np.arange(type_size)[None, :]) % 256).astype(np.uint8)


@pytest.mark.parametrize("ggml_type", QUANTIZABLE, ids=lambda t: t.name)
def test_quantized_weights_with_odd_row_count_match_gguf(ggml_type):
    weights = np.random.default_rng(0).standard_normal((3, 512)).astype(np.float32)
    check_all_dtypes(quants.quantize(weights, ggml_type), ggml_type)


@pytest.mark.parametrize("ggml_type", [T.TQ1_0, T.TQ2_0], ids=lambda t: t.name)
def test_ternary_every_byte_value(ggml_type):
    # Including bytes a quantizer never writes (TQ1_0 uses 0..242): decoding must still agree.
    raw = every_byte_value(256, GGML_QUANT_SIZES[ggml_type][1])
    raw[:, -2:] = np.frombuffer(np.float16(0.25).tobytes(), np.uint8)
    check_all_dtypes(raw, ggml_type)


@pytest.mark.parametrize("scale", [0.0, 65504.0, -65504.0, 2.0**-24, np.inf, np.nan], ids=str)
@pytest.mark.parametrize("ggml_type", [T.TQ1_0, T.TQ2_0], ids=lambda t: t.name)
def test_ternary_extreme_fp16_scales(ggml_type, scale):
    raw = RANDOM_BLOCKS[ggml_type](8, np.random.default_rng(3))
    raw[:, -2:] = np.frombuffer(np.float16(scale).tobytes(), np.uint8)
    check_all_dtypes(raw, ggml_type)


def test_mxfp4_every_exponent_and_nibble():
    # Scales from 2^-128 (subnormal float32) to 2^127 (overflowing to inf once multiplied),
    # each with all 256 byte values of the FP4 pairs.
    raw = np.empty((256 * 16, 17), dtype=np.uint8)
    raw[:, 0] = np.repeat(np.arange(256), 16)
    raw[:, 1:] = np.tile(np.arange(256, dtype=np.uint8).reshape(16, 16), (256, 1))
    check_all_dtypes(raw, T.MXFP4)


def test_nvfp4_every_scale_code_and_nibble():
    # All 256 UE4M3 codes, including 0x7F (NaN, read as zero) and codes with the unused top bit.
    raw = np.empty((64 * 8, 36), dtype=np.uint8)
    raw[:, 0:4] = np.arange(256, dtype=np.uint8).reshape(64, 4).repeat(8, axis=0)
    raw[:, 4:] = np.tile(np.arange(256, dtype=np.uint8).reshape(8, 32), (64, 1))
    check_all_dtypes(raw, T.NVFP4)
