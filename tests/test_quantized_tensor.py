import copy
import pickle

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as T, quants

from comfyui_zimage_gguf.errors import ZImageGGUFError
from comfyui_zimage_gguf.ops.tensor import QuantizedTensor


def make(shape=(8, 64), ggml_type=T.Q8_0, dtype=torch.float16, seed=0):
    values = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    raw = torch.from_numpy(quants.quantize(values, ggml_type).reshape(-1).view(np.uint8).copy())
    return QuantizedTensor(raw, ggml_type, shape, dtype), values


def test_reports_logical_shape_and_compute_dtype_never_uint8():
    qt, _ = make()
    assert qt.shape == (8, 64) and qt.dtype == torch.float16 and qt.numel() == 512
    assert qt.nbytes == qt.raw.numel() == 8 * 2 * 34  # the real, quantized size
    x = torch.ones(3, 64)
    assert x.to(qt.dtype).dtype == torch.float16


def test_dequantize_matches_gguf_reference():
    qt, values = make(ggml_type=T.Q4_0)
    ref = quants.dequantize(quants.quantize(values, T.Q4_0), T.Q4_0)
    assert torch.equal(qt.dequantize(torch.float32), torch.from_numpy(ref))


@pytest.mark.parametrize("op", [
    lambda t: t.detach(), lambda t: t.clone(), lambda t: t.to("cpu", copy=True),
    lambda t: t.to(torch.bfloat16), lambda t: t.to(torch.float32), lambda t: copy.deepcopy(t),
    lambda t: torch.nn.Parameter(t, requires_grad=False), lambda t: pickle.loads(pickle.dumps(t)),
])
def test_identity_survives_moves_and_copies(op):
    qt, _ = make()
    out = op(qt)
    assert isinstance(out, QuantizedTensor)
    assert out.ggml_type == T.Q8_0 and out.shape == qt.shape
    assert torch.equal(out.raw, qt.raw)
    assert torch.equal(out.dequantize(torch.float32), qt.dequantize(torch.float32))


def test_to_dtype_changes_reported_dtype_only():
    qt, _ = make()
    out = qt.to(torch.float32)
    assert out.dtype == torch.float32 and out.raw.dtype == torch.uint8
    assert out.dequantize().dtype == torch.float32


def test_copy_between_quantized_tensors_and_refusal_of_float_data():
    a, _ = make(seed=1)
    b, _ = make(seed=2)
    a.copy_(b)
    assert torch.equal(a.raw, b.raw)
    with pytest.raises(ZImageGGUFError, match="Q8_0 GGUF weight"):
        a.copy_(torch.zeros(8, 64))


def test_new_empty_stays_quantized_for_block_rows():
    qt, _ = make()
    empty = qt.new_empty((4, 64))
    assert isinstance(empty, QuantizedTensor) and empty.raw.numel() == 4 * 2 * 34
    odd = qt.new_empty((3, 5))
    assert not isinstance(odd, QuantizedTensor) and odd.dtype == torch.float16


def test_row_preserving_reshape_stays_quantized():
    qt, _ = make(shape=(1, 64))
    flat = qt.reshape(64)
    assert isinstance(flat, QuantizedTensor) and flat.shape == (64,)
    back = flat.view(1, -1)
    assert isinstance(back, QuantizedTensor) and back.shape == (1, 64)


def test_other_ops_run_on_dequantized_values():
    qt, _ = make()
    dense = qt.dequantize()
    assert torch.equal(qt * 2, dense * 2)
    assert torch.equal(qt.t(), dense.t())
    assert torch.equal(torch.cat([qt, qt]), torch.cat([dense, dense]))
    assert not isinstance(qt + 1, QuantizedTensor)


def test_wrong_byte_count_is_a_clear_error():
    with pytest.raises(ZImageGGUFError, match="needs 68 bytes"):
        QuantizedTensor(torch.zeros(10, dtype=torch.uint8), T.Q8_0, (2, 32))
