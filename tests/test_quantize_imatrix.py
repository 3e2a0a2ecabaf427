"""Quantizing with llama.cpp's importance matrix: bytes against ggml's own output with the same
per-column weights (the `*_imatrix` arrays of tests/fixtures/quantize/reference.npz, written by
make_reference.py next to it, which passes the stored `imatrix` row to ggml_quantize_chunk).
"""
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T

from comfyui_zimage_gguf.errors import UnsupportedQuantTypeError, ZImageGGUFError
from comfyui_zimage_gguf.ops import dequantize
from comfyui_zimage_gguf.ops.ggml.quantize import imatrix_types, quantize

REFERENCE = Path(__file__).parent / "fixtures" / "quantize" / "reference.npz"
DATASETS = ["normal", "real_like"]
WEIGHTED = [T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K, T.IQ4_NL, T.IQ4_XS]
MIN_BLOCK_MATCH = 0.999


def _bf16(bits: np.ndarray) -> torch.Tensor:
    return torch.from_numpy((bits.astype(np.uint32) << 16).view(np.float32))


@pytest.fixture(scope="module")
def reference():
    return np.load(REFERENCE)


def test_the_weighted_types_are_the_documented_ones():
    assert imatrix_types() == WEIGHTED


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("ggml_type", WEIGHTED, ids=lambda t: t.name)
def test_imatrix_blocks_match_ggml(reference, ggml_type, dataset):
    _, type_size = GGML_QUANT_SIZES[ggml_type]
    weights = _bf16(reference[f"input_{dataset}"])
    imatrix = _bf16(reference["imatrix"])
    expected = reference[f"{ggml_type.name}_{dataset}_imatrix"].reshape(-1, type_size)
    got = quantize(weights, ggml_type, imatrix=imatrix).numpy().reshape(-1, type_size)
    equal = (got == expected).all(axis=1)
    print(f"{ggml_type.name} {dataset} imatrix: {int(equal.sum())}/{equal.size} blocks identical to ggml")
    assert equal.mean() >= MIN_BLOCK_MATCH, f"only {equal.mean():.4%} of blocks identical to ggml's"
    # The weights are used: ggml's imatrix bytes differ from its unweighted ones, and so do ours.
    unweighted = reference[f"{ggml_type.name}_{dataset}"].reshape(-1, type_size)
    assert (expected != unweighted).any(axis=1).mean() > 0.5


@pytest.mark.parametrize("ggml_type", WEIGHTED, ids=lambda t: t.name)
def test_imatrix_lowers_the_weighted_error(reference, ggml_type):
    """What an importance matrix is for: error weighted by column importance goes down."""
    weights = _bf16(reference["input_normal"])
    imatrix = _bf16(reference["imatrix"])

    def weighted_error(raw):
        restored = dequantize(raw.reshape(-1), ggml_type, weights.shape, torch.float32)
        return float((imatrix * (restored - weights) ** 2).sum())

    assert weighted_error(quantize(weights, ggml_type, imatrix=imatrix)) < weighted_error(quantize(weights, ggml_type))


@pytest.mark.parametrize("ggml_type", WEIGHTED, ids=lambda t: t.name)
def test_chunks_and_batch_dims_keep_the_column_weights(reference, ggml_type):
    """Chunks that start mid-row and a 3-D weight still give every block its own columns' weights."""
    weights = _bf16(reference["input_real_like"])
    imatrix = _bf16(reference["imatrix"])
    whole = quantize(weights, ggml_type, imatrix=imatrix)
    block = GGML_QUANT_SIZES[ggml_type][0]
    chunked = quantize(weights.view(2, 4, -1), ggml_type, chunk_elements=3 * block, imatrix=imatrix)
    assert torch.equal(chunked.reshape(whole.shape), whole)


def test_type_without_imatrix_path_is_refused_with_the_list():
    with pytest.raises(UnsupportedQuantTypeError, match=r"Q8_0 cannot be quantized with an importance matrix.*"
                                                        r"Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS"):
        quantize(torch.randn(2, 256), T.Q8_0, imatrix=torch.ones(256))


def test_imatrix_of_the_wrong_width_is_refused():
    with pytest.raises(ZImageGGUFError, match="512 weights but a row has 256 columns"):
        quantize(torch.randn(2, 256), T.Q4_K, imatrix=torch.ones(512))
