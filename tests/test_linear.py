"""ops/runtime/linear.py: the CPU Linear that dequantizes and multiplies a slab of rows at a time."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gguf import GGMLQuantizationType as T, quants

from comfyui_zimage_gguf.ops.runtime import linear
from comfyui_zimage_gguf.ops.runtime.layers import LayerOptions, make_layer_namespace
from comfyui_zimage_gguf.ops.runtime.tensor import QuantizedTensor


def quantized(rows, cols, ggml_type, seed=0):
    values = np.random.default_rng(seed).standard_normal((rows, cols)).astype(np.float32) * 0.02
    raw = torch.from_numpy(quants.quantize(values, ggml_type).reshape(-1).view(np.uint8).copy())
    return QuantizedTensor(raw, ggml_type, (rows, cols), torch.float32)


@pytest.mark.parametrize("ggml_type", [T.Q8_0, T.Q4_0, T.F16])
@pytest.mark.parametrize("slab_elements", [64 * 20, 64 * 32, 1 << 23])  # uneven slabs, two, one
def test_slabs_give_the_whole_weight_product(monkeypatch, ggml_type, slab_elements):
    # Thin products may take other BLAS kernels than the whole one, so equal up to float rounding
    # here; at real widths the sums come out bit for bit the same (next test).
    monkeypatch.setattr(linear, "SLAB_ELEMENTS", slab_elements)
    weight = quantized(45, 64, ggml_type)
    x = torch.randn(2, 5, 64)
    bias = torch.randn(45)
    expected = F.linear(x, weight.dequantize(torch.float32), bias)
    got = linear.quantized_linear(x, weight, bias, torch.float32)
    assert got.shape == (2, 5, 45)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(linear.quantized_linear(x, weight, None, torch.float32),
                               F.linear(x, weight.dequantize(torch.float32)), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shape", [(10240, 3840), (3840, 10240)])  # Z-Image's feed-forward matrices
def test_slabs_at_real_width_equal_the_whole_product_bit_for_bit(shape):
    values = torch.randn(shape, generator=torch.Generator().manual_seed(0)) * 0.02
    weight = QuantizedTensor(values.half().view(torch.uint8).reshape(-1), T.F16, shape, torch.float32)
    assert linear.slab_rows(weight) < shape[0]
    x = torch.randn(1, 37, shape[1])
    bias = torch.randn(shape[0])
    assert torch.equal(linear.quantized_linear(x, weight, bias, torch.float32),
                       F.linear(x, weight.dequantize(torch.float32), bias))


def test_slab_rows_cover_about_the_slab_size(monkeypatch):
    monkeypatch.setattr(linear, "SLAB_ELEMENTS", 1000)
    assert linear.slab_rows(quantized(40, 64, T.Q8_0)) == 14  # 15 rows at most: 14 + 14 + 12, not 15 + 15 + 10
    assert linear.slab_rows(quantized(4, 2048, T.Q8_0)) == 1
    monkeypatch.setattr(linear, "SLAB_ELEMENTS", 1 << 23)
    assert linear.slab_rows(quantized(10240, 3840, T.Q8_0)) == 2048  # 5 slabs of 7.9 M weights


@pytest.mark.parametrize("grad_mode", [torch.inference_mode, torch.no_grad])
def test_linear_layer_uses_slabs_and_keeps_its_weight_quantized(monkeypatch, grad_mode):
    monkeypatch.setattr(linear, "SLAB_ELEMENTS", 64 * 16)
    calls = []
    real = linear.quantized_linear
    monkeypatch.setattr("comfyui_zimage_gguf.ops.runtime.layers.quantized_linear",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    ops = make_layer_namespace(options=LayerOptions())
    with grad_mode():
        layer = ops.Linear(64, 45)
        weight = quantized(45, 64, T.Q4_0)
        layer.weight = torch.nn.Parameter(weight, requires_grad=False)
        x = torch.randn(3, 64)
        out = layer(x)
    assert calls == [1]
    assert isinstance(layer.weight, QuantizedTensor)
    torch.testing.assert_close(out, F.linear(x, weight.dequantize(torch.float32), layer.bias), rtol=1e-6, atol=1e-6)


def test_patched_weight_takes_the_whole_weight_path(monkeypatch):
    monkeypatch.setattr("comfyui_zimage_gguf.ops.runtime.layers.quantized_linear",
                        lambda *a, **k: pytest.fail("a patched weight must be dequantized whole"))
    ops = make_layer_namespace(options=LayerOptions())
    layer = ops.Linear(64, 45, bias=False)
    weight = quantized(45, 64, T.Q8_0)
    layer.weight = torch.nn.Parameter(weight, requires_grad=False)
    layer.weight_function = [lambda w: w * 2]
    x = torch.randn(3, 64)
    with torch.inference_mode():
        assert torch.equal(layer(x), F.linear(x, weight.dequantize(torch.float32) * 2))
