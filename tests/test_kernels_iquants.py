"""The I-quant kernels against gguf-py's numpy reference.

gguf-py cannot quantize I-quants, so the inputs are the module's random valid blocks plus
hand-made edge cases: zero and largest-finite fp16 scales, all-0x00 and all-0xFF payloads.
"""
import dataclasses

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as Q
from gguf import quants as gguf_quants

from comfyui_zimage_gguf.ops import QUANT_TYPES, dequantize
from comfyui_zimage_gguf.ops.ggml.kernels import iquants

from helpers.kernel_checks import run_kernel

IQUANTS = [Q.IQ1_S, Q.IQ1_M, Q.IQ2_XXS, Q.IQ2_XS, Q.IQ2_S, Q.IQ3_XXS, Q.IQ3_S, Q.IQ4_NL, Q.IQ4_XS]
LARGEST_FP16 = 65504.0


def reference(raw: np.ndarray, ggml_type) -> torch.Tensor:
    block_size = GGML_QUANT_SIZES[ggml_type][0]
    return torch.from_numpy(gguf_quants.dequantize(raw, ggml_type)).reshape(raw.shape[0], block_size)


def kernel(ggml_type, raw: np.ndarray, dtype=torch.float32) -> torch.Tensor:
    return run_kernel(QUANT_TYPES[ggml_type].kernel, ggml_type, torch.from_numpy(raw), dtype)


def with_scale(ggml_type, payload_byte: int, n_blocks: int, scale: float) -> np.ndarray:
    """Blocks whose bytes are all `payload_byte` except the fp16 block scale, set to `scale`."""
    blocks = np.full((n_blocks, GGML_QUANT_SIZES[ggml_type][1]), payload_byte, dtype=np.uint8)
    scale_bits = int(np.array(scale, dtype=np.float16).view(np.uint16))
    if ggml_type == Q.IQ1_M:
        # IQ1_M keeps its scale in the top nibbles of its four trailing uint16 words
        for word in range(4):
            nibble = (scale_bits >> (4 * word)) & 0xF
            byte = 48 + 2 * word + 1
            blocks[:, byte] = (blocks[:, byte] & 0x0F) | (nibble << 4)
    else:
        blocks[:, 0] = scale_bits & 0xFF
        blocks[:, 1] = scale_bits >> 8
    return blocks


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal bit patterns: stricter than torch.equal, which takes -0.0 for 0.0."""
    word = torch.int32 if a.element_size() == 4 else torch.int16
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.view(word), b.view(word))


def assert_matches_reference(ggml_type, raw: np.ndarray):
    expected = reference(raw, ggml_type)
    got = kernel(ggml_type, raw)
    assert torch.equal(got, expected)
    assert same_bits(got, expected)
    for dtype in (torch.float16, torch.bfloat16):
        assert same_bits(kernel(ggml_type, raw, dtype), expected.to(dtype)), dtype


@pytest.mark.parametrize("ggml_type", IQUANTS, ids=lambda t: t.name)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_blocks_match_gguf_bit_for_bit(ggml_type, seed):
    raw = QUANT_TYPES[ggml_type].random_blocks(777, np.random.default_rng(seed))
    assert_matches_reference(ggml_type, raw)


@pytest.mark.parametrize("ggml_type", IQUANTS, ids=lambda t: t.name)
def test_a_single_block_and_no_blocks(ggml_type):
    assert_matches_reference(ggml_type, QUANT_TYPES[ggml_type].random_blocks(1, np.random.default_rng(7)))
    block_size, type_size = GGML_QUANT_SIZES[ggml_type]
    empty = run_kernel(QUANT_TYPES[ggml_type].kernel, ggml_type, torch.empty((0, type_size), dtype=torch.uint8), torch.float16)
    assert empty.shape == (0, block_size) and empty.dtype == torch.float16


@pytest.mark.parametrize("ggml_type", IQUANTS, ids=lambda t: t.name)
@pytest.mark.parametrize("payload_byte", [0x00, 0xFF, 0x5A])
@pytest.mark.parametrize("scale", [0.0, -0.0, LARGEST_FP16, -LARGEST_FP16, 2.0**-24])
def test_edge_case_blocks_match_gguf(ggml_type, payload_byte, scale):
    assert_matches_reference(ggml_type, with_scale(ggml_type, payload_byte, 3, scale))


@pytest.mark.parametrize("ggml_type", IQUANTS, ids=lambda t: t.name)
def test_largest_scale_overflows_float16_exactly_like_a_cast(ggml_type):
    raw = with_scale(ggml_type, 0xFF, 1, LARGEST_FP16)
    half = kernel(ggml_type, raw, torch.float16)
    assert torch.isinf(half).any(), "65504 times the largest grid value must exceed float16"
    assert torch.equal(half, reference(raw, ggml_type).half())


@pytest.mark.parametrize("ggml_type", IQUANTS, ids=lambda t: t.name)
@pytest.mark.parametrize("rows", [1, 3])
def test_dequantize_entry_point_reshapes_odd_row_counts(ggml_type, rows):
    block_size = GGML_QUANT_SIZES[ggml_type][0]
    cols = 3 * block_size
    raw = QUANT_TYPES[ggml_type].random_blocks(rows * 3, np.random.default_rng(rows))
    got = dequantize(torch.from_numpy(raw).reshape(-1), ggml_type, (rows, cols), torch.float16)
    assert got.shape == (rows, cols) and got.dtype == torch.float16
    assert torch.equal(got, reference(raw, ggml_type).reshape(rows, cols).half())


@pytest.mark.parametrize("ggml_type", IQUANTS, ids=lambda t: t.name)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_chunked_run_covers_every_block_including_a_short_last_chunk(ggml_type, dtype):
    block_size = GGML_QUANT_SIZES[ggml_type][0]
    small = dataclasses.replace(QUANT_TYPES[ggml_type].kernel, cpu_chunk_elements=4 * block_size)
    raw = QUANT_TYPES[ggml_type].random_blocks(10, np.random.default_rng(5))
    got = run_kernel(small, ggml_type, torch.from_numpy(raw), dtype)
    assert same_bits(got, reference(raw, ggml_type).to(dtype))


@pytest.mark.parametrize("piece_rows", [1, 3, 13, 64])
def test_iq4_xs_float16_scaled_in_float32_pieces(piece_rows, monkeypatch):
    # IQ4_XS to float16 on CPUs: gathered into the output, then scaled through float32 pieces of
    # piece_rows blocks (the last one short): every piece, rounded once, as gguf-py's float32 cast
    monkeypatch.setattr(iquants, "_FLOAT32_PIECE_ROWS", piece_rows)
    raw = QUANT_TYPES[Q.IQ4_XS].random_blocks(13, np.random.default_rng(21))
    got = kernel(Q.IQ4_XS, raw, torch.float16)
    assert same_bits(got, reference(raw, Q.IQ4_XS).half())


@pytest.mark.parametrize("ggml_type", IQUANTS, ids=lambda t: t.name)
def test_code_paths_for_other_devices_give_the_same_result(ggml_type, monkeypatch):
    # on CPU rows are moved as single 8/16-byte words (complex128 among them); MPS has no
    # complex128, so MPS and CUDA take the plain paths, run here on CPU
    monkeypatch.setattr(iquants, "_cpu_word_views", lambda device: False)
    raw = QUANT_TYPES[ggml_type].random_blocks(50, np.random.default_rng(6))
    expected = reference(raw, ggml_type)
    for dtype in (torch.float32, torch.float16):
        assert torch.equal(kernel(ggml_type, raw, dtype), expected.to(dtype))
