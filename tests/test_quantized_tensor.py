import copy
import pickle

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as T, quants

from comfyui_zimage_gguf.errors import ZImageGGUFError
from comfyui_zimage_gguf.ops.runtime.tensor import FALLBACKS, FallbackDequantization, QuantizedTensor

# ComfyUI runs every node under inference mode, where a tensor subclass sees other aten ops
# (`aten.to.dtype_layout` instead of `_to_copy`); everything that moves data runs under all three.
GRAD_MODES = {"inference_mode": torch.inference_mode, "no_grad": torch.no_grad, "grad": torch.enable_grad}


@pytest.fixture(params=list(GRAD_MODES))
def grad_mode(request):
    with GRAD_MODES[request.param]():
        yield request.param


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


MOVES = {
    "detach": lambda t: t.detach(),
    "clone": lambda t: t.clone(),
    "to_device_copy": lambda t: t.to("cpu", copy=True),
    "to_device": lambda t: t.to("cpu"),
    "to_torch_device": lambda t: t.to(torch.device("cpu")),
    "to_device_dtype": lambda t: t.to("cpu", torch.bfloat16),
    "to_keywords": lambda t: t.to(device="cpu", dtype=torch.float32, non_blocking=True),
    "to_bf16": lambda t: t.to(torch.bfloat16),
    "to_f32": lambda t: t.to(torch.float32),
    "to_other": lambda t: t.to(torch.zeros(1, dtype=torch.bfloat16)),
    "cpu": lambda t: t.cpu(),
    "type_as": lambda t: t.type(torch.float16),
    "deepcopy": lambda t: copy.deepcopy(t),
    "parameter": lambda t: torch.nn.Parameter(t, requires_grad=False),
    "parameter_data_to": lambda t: torch.nn.Parameter(t, requires_grad=False).data.to("cpu"),
    "pickle": lambda t: pickle.loads(pickle.dumps(t)),
}


@pytest.mark.parametrize("op", list(MOVES))
def test_identity_survives_moves_and_copies(op, grad_mode):
    op = MOVES[op]
    qt, _ = make()
    out = op(qt)
    assert isinstance(out, QuantizedTensor)
    assert out.ggml_type == T.Q8_0 and out.shape == qt.shape
    assert torch.equal(out.raw, qt.raw)
    assert torch.equal(out.dequantize(torch.float32), qt.dequantize(torch.float32))


def test_to_without_change_returns_the_same_tensor(grad_mode):
    qt, _ = make()
    assert qt.to("cpu") is qt and qt.to(torch.float16) is qt
    assert qt.to("cpu", copy=True) is not qt


def test_module_moves_keep_weights_quantized(grad_mode):
    qt, _ = make()
    layer = torch.nn.Linear(64, 8, bias=False)
    layer.weight = torch.nn.Parameter(qt, requires_grad=False)
    for move in (lambda m: m.to("cpu"), lambda m: m.to(torch.bfloat16), lambda m: m.cpu(),
                 lambda m: m.to("cpu", torch.float16), lambda m: m.half(), lambda m: m.float()):
        move(layer)
        assert isinstance(layer.weight, QuantizedTensor) and torch.equal(layer.weight.raw, qt.raw)
        assert isinstance(layer.weight.data, QuantizedTensor)


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


def test_other_ops_run_on_dequantized_values_and_are_counted():
    qt, _ = make()
    dense = qt.dequantize()
    with FALLBACKS.allowed() as counter:
        before = counter.count
        assert torch.equal(qt * 2, dense * 2)
        assert torch.equal(qt.t(), dense.t())
        assert torch.equal(torch.cat([qt, qt]), torch.cat([dense, dense]))
        assert not isinstance(qt + 1, QuantizedTensor)
        assert counter.count - before == 5  # cat dequantizes both inputs
        assert counter.ops["aten.mul.Tensor"] >= 1


def test_tripwire_refuses_a_whole_weight_dequantization_in_strict_mode(grad_mode):
    qt, _ = make()
    with pytest.raises(FallbackDequantization, match=r"aten\.mul\.Tensor dequantized a whole Q8_0 weight"):
        qt * 2


def test_wrong_byte_count_is_a_clear_error():
    with pytest.raises(ZImageGGUFError, match="needs 68 bytes"):
        QuantizedTensor(torch.zeros(10, dtype=torch.uint8), T.Q8_0, (2, 32))
