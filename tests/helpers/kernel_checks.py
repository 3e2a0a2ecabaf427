"""Shared checks for the kernel tests: gguf-py's reference and exact comparison."""
import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T, quants


def reference(raw: np.ndarray, ggml_type: T) -> torch.Tensor:
    """gguf-py's float32 dequantization of uint8 blocks, as (n_blocks, block_size)."""
    block_size = GGML_QUANT_SIZES[ggml_type][0]
    with np.errstate(invalid="ignore", over="ignore"):  # inf/NaN scales and bit patterns, as in ggml
        values = np.array(quants.dequantize(raw, ggml_type), dtype=np.float32)
    return torch.from_numpy(values).reshape(-1, block_size)


def assert_identical(got: torch.Tensor, expected: torch.Tensor) -> None:
    assert got.dtype == expected.dtype and got.shape == expected.shape
    nan = torch.isnan(expected)
    assert torch.equal(torch.isnan(got), nan)
    mismatch = (got != expected) & ~nan
    assert not mismatch.any(), f"{int(mismatch.sum())} values differ, first at {mismatch.nonzero()[0].tolist()}"


def run_kernel(kernel, ggml_type: T, blocks: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The kernel's (n_blocks, block_size) output in `dtype`, in a fresh tensor."""
    out = torch.empty((blocks.shape[0], GGML_QUANT_SIZES[ggml_type][0]), dtype=dtype, device=blocks.device)
    kernel(blocks, out)
    return out


def check_all_dtypes(raw: np.ndarray, ggml_type: T, kernel, dtypes) -> None:
    """The kernel's output in each dtype equals gguf-py's float32 result cast to that dtype."""
    expected = reference(raw, ggml_type)
    blocks = torch.from_numpy(raw).reshape(-1, GGML_QUANT_SIZES[ggml_type][1])
    for dtype in dtypes:
        assert_identical(run_kernel(kernel, ggml_type, blocks, dtype), expected.to(dtype))
