"""The torch kernels' memory traffic on accelerators, counted on the `meta` device (no data, no
timing): every non-view op is a pass through device memory there, so the bytes written per byte of
output are what the torch path costs on CUDA, ROCm and MPS. Budget: at most 4x the output per
type, geometric mean at most 3x, for a Z-Image-sized weight (3840 x 10240) in every output dtype."""
import math

import pytest
import torch
from gguf import GGMLQuantizationType as T

from comfyui_zimage_gguf.ops import QUANT_TYPES
from comfyui_zimage_gguf.ops.ggml.kernels.traffic import Traffic, kernel_traffic

WEIGHT_ELEMENTS = 3840 * 10240
QUANTIZED = [t for t in QUANT_TYPES if t not in (T.F32, T.F16, T.BF16)]
DTYPES = [torch.float16, torch.bfloat16, torch.float32]
PER_TYPE_BUDGET = 4.0
MEAN_BUDGET = 3.0


def written_ratio(ggml_type, dtype) -> float:
    qt = QUANT_TYPES[ggml_type]
    return kernel_traffic(qt.kernel, qt.block_size, qt.type_size, WEIGHT_ELEMENTS, dtype).written_ratio


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("ggml_type", list(QUANT_TYPES), ids=lambda t: t.name)
def test_each_type_writes_at_most_four_times_its_output(ggml_type, dtype):
    assert written_ratio(ggml_type, dtype) <= PER_TYPE_BUDGET


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_geometric_mean_over_the_quantized_types_is_at_most_three(dtype):
    ratios = [written_ratio(t, dtype) for t in QUANTIZED]
    assert math.exp(sum(map(math.log, ratios)) / len(ratios)) <= MEAN_BUDGET


def test_the_count_is_deterministic():
    assert written_ratio(T.Q4_K, torch.float16) == written_ratio(T.Q4_K, torch.float16)


def test_counter_counts_outputs_of_data_ops_and_skips_views_and_allocations():
    a = torch.empty((4, 8), dtype=torch.float32, device="meta")
    b = torch.empty((4, 1), dtype=torch.float32, device="meta")
    out = torch.empty((4, 8), dtype=torch.float16, device="meta")
    with Traffic() as traffic:
        scratch = torch.empty((4, 8), dtype=torch.float32, device="meta")  # allocation: nothing moved
        flat = a.t().reshape(-1)[1:]  # flattening a transposed tensor copies it: counted once
        torch.mul(a, b, out=out)  # reads a (128 B) and b (16 B), writes out (64 B)
        scratch.add_(1)  # in place: reads and writes 128 B
    assert flat.shape == (31,)
    assert traffic.written == 128 + 64 + 128
    assert traffic.read == 128 + (128 + 16) + 128
    assert len(traffic.ops) == 3


def test_the_count_sees_the_accelerator_chunks():
    # 3840 x 10240 elements are more than one accelerator chunk (ACCELERATOR_CHUNK_ELEMENTS = 16M):
    # the count covers all of them, not a first one
    qt = QUANT_TYPES[T.Q8_0]
    half = kernel_traffic(qt.kernel, qt.block_size, qt.type_size, WEIGHT_ELEMENTS // 2, torch.float16)
    whole = kernel_traffic(qt.kernel, qt.block_size, qt.type_size, WEIGHT_ELEMENTS, torch.float16)
    assert whole.output == 2 * half.output and whole.ops > half.ops
    assert whole.written == pytest.approx(2 * half.written, rel=0.01)
