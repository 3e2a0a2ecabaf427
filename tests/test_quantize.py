"""Torch quantizers against the references: gguf-py for the legacy types, ggml's own output
(tests/fixtures/quantize/reference.npz, written by make_reference.py next to it) for the
K-quants and IQ4 types.
"""
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T, quants

from comfyui_zimage_gguf.errors import UnsupportedQuantTypeError, ZImageGGUFError
from comfyui_zimage_gguf.ops import QUANT_TYPES, dequantize
from comfyui_zimage_gguf.ops.ggml.quantize import quantize as quantize_tensor
from comfyui_zimage_gguf.ops.ggml.quantizers.common import correctly_rounded_sqrt, scalar_over

LEGACY = [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0]
SEARCHED = [T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K, T.IQ4_NL, T.IQ4_XS]
REFERENCE = Path(__file__).parent / "fixtures" / "quantize" / "reference.npz"
DATASETS = ["normal", "real_like"]
# The bar: at least 99.9% of blocks byte-identical; a differing block may differ only
# through float evaluation order, so its squared error is within 1e-6 relative of ggml's.
MIN_BLOCK_MATCH = 0.999
ERROR_TOLERANCE = 1e-6


def special_rows(rng: np.random.Generator, columns: int) -> np.ndarray:
    """Rows that exercise the branches: zeros, constants, one sign, tiny and huge values, ties."""
    rows = [
        np.zeros(columns),
        np.full(columns, 0.25),
        np.abs(rng.standard_normal(columns)),
        -np.abs(rng.standard_normal(columns)),
        rng.standard_normal(columns) * 1e-20,
        rng.standard_normal(columns) * 1e4,
        np.round(rng.standard_normal(columns) * 8) / 8,  # many equal magnitudes: first-max ties
        rng.standard_t(2, columns),
    ]
    return np.stack(rows).astype(np.float32)


@pytest.mark.parametrize("ggml_type", LEGACY, ids=lambda t: t.name)
def test_legacy_types_equal_gguf_py_bytes(ggml_type):
    rng = np.random.default_rng(7)
    weights = np.concatenate([rng.standard_normal((64, 1024)).astype(np.float32) * 0.02, special_rows(rng, 1024)])
    expected = quants.quantize(weights, ggml_type)
    got = quantize_tensor(torch.from_numpy(weights), ggml_type).numpy()
    assert got.shape == expected.shape
    assert np.array_equal(got, expected), f"{int((got != expected).any(axis=1).sum())} rows differ"


def _fixture_input(reference, dataset: str) -> torch.Tensor:
    bits = reference[f"input_{dataset}"].astype(np.uint32) << 16  # stored as bfloat16 bits
    return torch.from_numpy(bits.view(np.float32))


@pytest.fixture(scope="module")
def reference():
    return np.load(REFERENCE)


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("ggml_type", SEARCHED, ids=lambda t: t.name)
def test_k_and_iq4_types_match_ggml_blocks(reference, ggml_type, dataset):
    block_size, type_size = GGML_QUANT_SIZES[ggml_type]
    weights = _fixture_input(reference, dataset)
    expected = reference[f"{ggml_type.name}_{dataset}"].reshape(-1, type_size)
    got = quantize_tensor(weights, ggml_type).numpy().reshape(-1, type_size)
    equal = (got == expected).all(axis=1)
    print(f"{ggml_type.name} {dataset}: {int(equal.sum())}/{equal.size} blocks identical to ggml")
    assert equal.mean() >= MIN_BLOCK_MATCH, f"only {equal.mean():.4%} of blocks identical to ggml's"

    # Every differing block (none today) must not be worse than ggml's by more than rounding.
    values = weights.reshape(-1, block_size)
    for index in np.flatnonzero(~equal):
        ours = _block_error(got[index], values[index], ggml_type)
        theirs = _block_error(expected[index], values[index], ggml_type)
        assert ours <= theirs * (1 + ERROR_TOLERANCE), (index, ours, theirs)


def _block_error(raw: np.ndarray, values: torch.Tensor, ggml_type) -> float:
    restored = dequantize(torch.from_numpy(raw.copy()), ggml_type, values.shape, torch.float32)
    return float(((restored - values) ** 2).sum())


@pytest.mark.parametrize("ggml_type", SEARCHED, ids=lambda t: t.name)
def test_round_trip_error_is_ggml_error(reference, ggml_type):
    """The reconstruction error of our bytes equals ggml's (relative squared error, both datasets)."""
    for dataset in DATASETS:
        weights = _fixture_input(reference, dataset)
        ours = dequantize(quantize_tensor(weights, ggml_type).reshape(-1), ggml_type, weights.shape, torch.float32)
        ggml = dequantize(torch.from_numpy(reference[f"{ggml_type.name}_{dataset}"].reshape(-1).copy()),
                          ggml_type, weights.shape, torch.float32)
        signal = float((weights ** 2).sum())
        ours_error = float(((ours - weights) ** 2).sum()) / signal
        ggml_error = float(((ggml - weights) ** 2).sum()) / signal
        assert abs(ours_error - ggml_error) <= ERROR_TOLERANCE * ggml_error
        assert ours_error < 0.15  # the type actually reconstructs the weights


@pytest.mark.parametrize("ggml_type", SEARCHED, ids=lambda t: t.name)
def test_special_rows_round_trip(ggml_type):
    """Zero rows and rows below fp16's range (1e-20: the scales flush to zero, as in ggml) come back
    as zeros; every other special row stays finite and close."""
    rows = torch.from_numpy(special_rows(np.random.default_rng(3), 512))
    restored = dequantize(quantize_tensor(rows, ggml_type).reshape(-1), ggml_type, rows.shape, torch.float32)
    assert torch.isfinite(restored).all()
    for index, (row, back) in enumerate(zip(rows, restored)):
        if index in (0, 4):
            assert torch.equal(back.abs(), torch.zeros(512))
        else:
            assert float(((back - row) ** 2).sum()) <= 0.2 * float((row ** 2).sum()), index


@pytest.mark.parametrize("ggml_type", [T.Q8_0, T.Q4_K, T.IQ4_XS], ids=lambda t: t.name)
def test_chunking_does_not_change_bytes(ggml_type):
    weights = torch.randn(6, 2048, generator=torch.Generator().manual_seed(0))
    whole = quantize_tensor(weights, ggml_type)
    block_size = GGML_QUANT_SIZES[ggml_type][0]
    assert torch.equal(quantize_tensor(weights, ggml_type, chunk_elements=3 * block_size), whole)


def test_any_float_input_dtype_and_shape():
    weights = torch.randn(2, 3, 256, generator=torch.Generator().manual_seed(1))
    expected = quantize_tensor(weights.reshape(6, 256), T.Q6_K)
    got = quantize_tensor(weights.to(torch.bfloat16).float(), T.Q6_K)
    assert got.shape == (2, 3, 210)
    assert torch.equal(quantize_tensor(weights.to(torch.bfloat16), T.Q6_K), got)
    assert torch.equal(quantize_tensor(weights, T.Q6_K).reshape(6, 210), expected)


@pytest.mark.parametrize("ggml_type,dtype", [(T.F32, torch.float32), (T.F16, torch.float16), (T.BF16, torch.bfloat16)])
def test_float_types_are_plain_casts(ggml_type, dtype):
    weights = torch.randn(4, 64)
    raw = quantize_tensor(weights, ggml_type)
    assert torch.equal(raw.view(dtype), weights.to(dtype))


def test_row_that_is_not_whole_blocks_is_refused():
    with pytest.raises(ZImageGGUFError, match="Q4_K stores rows of whole 256-element blocks; a row of 100"):
        quantize_tensor(torch.zeros(2, 100), T.Q4_K)


def test_scalar_division_and_sqrt_round_once_like_c():
    """The two float32 operations where torch's CPU results differ from C's (see common.py)."""
    rng = np.random.default_rng(5)
    values = (10.0 ** rng.uniform(-20, 20, 200_000)).astype(np.float32)
    tensor = torch.from_numpy(values)
    assert np.array_equal(correctly_rounded_sqrt(tensor).numpy(), np.sqrt(values))
    assert np.array_equal(scalar_over(63, tensor).numpy(), np.float32(63) / values)


def test_quantizer_is_a_column_of_the_quant_type_table():
    writable = {t for t, qt in QUANT_TYPES.items() if qt.quantizer is not None}
    assert writable == {T.F32, T.F16, T.BF16, *LEGACY, *SEARCHED}


def test_type_without_quantizer_is_refused_with_the_list():
    with pytest.raises(UnsupportedQuantTypeError, match="cannot quantize to IQ2_XXS; it can write F32, F16, BF16, Q4_0"):
        quantize_tensor(torch.zeros(1, 256), T.IQ2_XXS)
