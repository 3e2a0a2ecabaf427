"""Every kernel in the quant-type table against gguf-py's reference dequantization, through the
same checks: float32 output equals `gguf.quants.dequantize` value for value (NaN where it has
NaN), float16 and bfloat16 output equals that float32 result cast once. Family-specific edge
cases live in test_kernels_<family>.py."""
import dataclasses

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from helpers.kernel_checks import assert_identical, check_all_dtypes, reference, run_kernel

from comfyui_zimage_gguf.ops import QUANT_TYPES
from comfyui_zimage_gguf.ops.ggml.kernels import MODULES
from comfyui_zimage_gguf.ops.ggml.kernels import blocks as kernel_blocks
from comfyui_zimage_gguf.ops.ggml.kernels.blocks import ChunkFormat, gather_runs

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
ALL_TYPES = list(QUANT_TYPES)
CHUNKED_TYPES = [t for t, qt in QUANT_TYPES.items() if isinstance(qt.kernel, ChunkFormat)]
by_name = dict(ids=lambda t: t.name)


def check(raw: np.ndarray, ggml_type, kernel=None) -> None:
    check_all_dtypes(raw, ggml_type, kernel or QUANT_TYPES[ggml_type].kernel, DTYPES)


def random_blocks(ggml_type, n_blocks: int, seed: int) -> np.ndarray:
    return QUANT_TYPES[ggml_type].random_blocks(n_blocks, np.random.default_rng(seed))


def test_every_registration_is_one_record_with_a_kernel_and_a_block_generator():
    registered = [t for module in MODULES for t in module.TYPES]
    assert len(registered) == len(set(registered)) == len(QUANT_TYPES)
    for ggml_type, qt in QUANT_TYPES.items():
        assert (qt.block_size, qt.type_size) == GGML_QUANT_SIZES[ggml_type]
        assert callable(qt.kernel) and callable(qt.random_blocks)


@pytest.mark.parametrize("ggml_type", ALL_TYPES, **by_name)
def test_random_blocks_match_gguf(ggml_type):
    check(random_blocks(ggml_type, 37, seed=1), ggml_type)


@pytest.mark.parametrize("ggml_type", ALL_TYPES, **by_name)
def test_single_block(ggml_type):
    check(random_blocks(ggml_type, 1, seed=2), ggml_type)


@pytest.mark.parametrize("ggml_type", ALL_TYPES, **by_name)
def test_no_blocks(ggml_type):
    qt = QUANT_TYPES[ggml_type]
    out = run_kernel(qt.kernel, ggml_type, torch.empty((0, qt.type_size), dtype=torch.uint8), torch.float16)
    assert out.shape == (0, qt.block_size)


@pytest.mark.parametrize("ggml_type", CHUNKED_TYPES, **by_name)
def test_many_chunks_with_a_partial_last_chunk(ggml_type):
    # A budget of a few blocks (at least 4 per chunk): 13 blocks run as several chunks, the last partial.
    kernel = QUANT_TYPES[ggml_type].kernel
    per_block = max(kernel.block_size, kernel.widest)
    small = dataclasses.replace(kernel, cpu_chunk_elements=4 * per_block)
    check(random_blocks(ggml_type, 13, seed=4), ggml_type, small)


@pytest.mark.parametrize("ggml_type", CHUNKED_TYPES, **by_name)
def test_per_block_state_over_several_spans(ggml_type, monkeypatch):
    # CPUs compute the scales (block_state) for spans of chunks: 13 blocks in chunks of 4 and
    # spans of 8 blocks run as spans of 8 and 5, the second ending in a partial chunk.
    kernel = QUANT_TYPES[ggml_type].kernel
    per_block = max(kernel.block_size, kernel.widest)
    small = dataclasses.replace(kernel, cpu_chunk_elements=4 * per_block)
    monkeypatch.setattr(kernel_blocks, "CPU_STATE_ELEMENTS", 8 * kernel.block_size)
    check(random_blocks(ggml_type, 13, seed=14), ggml_type, small)


@pytest.mark.parametrize("ggml_type", ALL_TYPES, **by_name)
def test_blocks_at_an_odd_byte_offset(ggml_type):
    # Raw bytes sliced out of a larger buffer (as from a memory-mapped file) need not be aligned.
    raw = random_blocks(ggml_type, 5, seed=5)
    buffer = torch.zeros(raw.size + 1, dtype=torch.uint8)
    buffer[1:] = torch.from_numpy(raw).reshape(-1)
    blocks = buffer[1:].reshape(raw.shape)
    assert_identical(run_kernel(QUANT_TYPES[ggml_type].kernel, ggml_type, blocks, torch.float32),
                     reference(raw, ggml_type))


@pytest.mark.parametrize("ggml_type", ALL_TYPES, **by_name)
def test_strided_block_rows(ggml_type):
    raw = random_blocks(ggml_type, 10, seed=6)
    every_other = torch.from_numpy(raw)[::2]
    assert_identical(run_kernel(QUANT_TYPES[ggml_type].kernel, ggml_type, every_other, torch.float32),
                     reference(np.ascontiguousarray(raw[::2]), ggml_type))


@pytest.mark.parametrize("ggml_type", ALL_TYPES, **by_name)
def test_raw_bytes_stay_untouched(ggml_type):
    # Raw bytes are usually the file's read-only memory map.
    raw = torch.from_numpy(random_blocks(ggml_type, 4, seed=7))
    before = raw.clone()
    for dtype in DTYPES:
        run_kernel(QUANT_TYPES[ggml_type].kernel, ggml_type, raw, dtype)
    assert torch.equal(raw, before)


@pytest.mark.parametrize("ggml_type", ALL_TYPES, **by_name)
def test_random_blocks_are_valid_and_moderate(ggml_type):
    raw = random_blocks(ggml_type, 64, seed=8)
    assert raw.dtype == np.uint8 and raw.shape == (64, GGML_QUANT_SIZES[ggml_type][1])
    values = reference(raw, ggml_type)
    assert torch.isfinite(values).all()
    assert 0.01 < values.abs().max() < 1.5


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16], ids=str)
@pytest.mark.parametrize("run", [32, 64])
def test_gather_runs_makes_a_permuted_view_contiguous(dtype, run):
    # planes (k, m, c, run) viewed as (m, c, k, run), as the K-quant unpackers return q
    planes = torch.randint(-100, 100, (4, 7, 3, run)).to(dtype)
    view = planes.permute(1, 2, 0, 3)
    gathered = gather_runs(view)
    assert gathered.is_contiguous() and gathered.dtype == dtype
    assert torch.equal(gathered, view.contiguous())


def test_gather_runs_leaves_what_it_cannot_gather():
    contiguous = torch.zeros(4, 32, dtype=torch.uint8)
    assert gather_runs(contiguous) is contiguous
    short_runs = torch.zeros(2, 5, 12, dtype=torch.uint8).transpose(0, 1)  # 12-byte runs: not int64 words
    assert gather_runs(short_runs) is short_runs
    strided_runs = torch.zeros(2, 5, 64, dtype=torch.uint8)[..., :32].transpose(0, 1)  # runs of a wider base
    assert gather_runs(strided_runs) is strided_runs
    columns = torch.zeros(32, 8, dtype=torch.uint8).t()  # last dimension not contiguous
    assert gather_runs(columns) is columns


@pytest.mark.parametrize("piece", [1, 5, 64])
def test_bf16_to_float16_in_float32_pieces_is_torchs_conversion(piece, monkeypatch):
    # CPUs convert BF16 weights to float16 through float32 pieces: every bit pattern, pieces
    # with a short last one, against torch's direct bfloat16 -> float16 copy
    from comfyui_zimage_gguf.ops.ggml.kernels import legacy

    monkeypatch.setattr(legacy, "_FLOAT32_PIECE", piece)
    every = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)
    got = QUANT_TYPES[GGMLQuantizationType.BF16]
    out = torch.empty(every.numel(), dtype=torch.float16)
    got.kernel(every.view(torch.uint8).view(-1, 2), out.view(-1, 1))
    expected = every.to(torch.float16)
    same = (out.view(torch.int16) == expected.view(torch.int16)) | (out.isnan() & expected.isnan())
    assert bool(same.all())
