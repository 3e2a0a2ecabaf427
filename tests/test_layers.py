import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gguf import GGMLQuantizationType as T, quants

from comfyui_zimage_gguf.ops.runtime.layers import LayerOptions, make_layer_namespace
from comfyui_zimage_gguf.ops.runtime.tensor import QuantizedTensor


def quantized(shape, ggml_type=T.Q8_0, seed=0, scale=0.1):
    values = (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)
    raw = torch.from_numpy(quants.quantize(values, ggml_type).reshape(-1).view(np.uint8).copy())
    return QuantizedTensor(raw, ggml_type, shape, torch.float32)


def load(layer, **tensors):
    missing, unexpected = layer.load_state_dict(tensors, strict=False)
    assert not unexpected
    return layer


ops = make_layer_namespace()


@pytest.mark.parametrize("ggml_type", [T.Q8_0, T.Q4_0, T.Q5_1, T.F16])
def test_linear_equals_float_linear_on_dequantized_weight(ggml_type):
    w, b = quantized((96, 64), ggml_type), quantized((64 * 0 + 96,), T.F32, seed=3)
    layer = load(ops.Linear(64, 96), weight=w, bias=b)
    x = torch.randn(5, 64)
    assert isinstance(layer.weight, QuantizedTensor) and layer.weight.ggml_type == ggml_type
    assert torch.equal(layer(x), F.linear(x, w.dequantize(torch.float32), b.dequantize(torch.float32)))


def test_linear_without_bias_in_half_precision():
    w = quantized((32, 64))
    layer = load(ops.Linear(64, 32, bias=False), weight=w)
    x = torch.randn(4, 64, dtype=torch.bfloat16)
    out = layer(x)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, F.linear(x, w.dequantize(torch.bfloat16)))


def test_conv2d():
    w = quantized((8, 4, 2, 16), T.F16)
    layer = load(ops.Conv2d(4, 8, (2, 16)), weight=w, bias=quantized((8,), T.F32))
    x = torch.randn(1, 4, 6, 20)
    expected = F.conv2d(x, w.dequantize(torch.float32), layer.bias.dequantize(torch.float32))
    assert torch.equal(layer(x), expected)


def test_embedding_looks_up_rows_without_dequantizing_the_table():
    w = quantized((1000, 64), T.Q4_0)
    layer = load(ops.Embedding(1000, 64), weight=w)
    ids = torch.tensor([[0, 999, 17], [5, 5, 3]])
    assert torch.equal(layer(ids), F.embedding(ids, w.dequantize(torch.float32)))


@pytest.mark.parametrize("kind", ["LayerNorm", "RMSNorm"])
def test_norms(kind):
    w = quantized((64,), T.F32, scale=1.0)
    layer = getattr(ops, kind)(64)
    tensors = {"weight": w}
    if kind == "LayerNorm":
        tensors["bias"] = quantized((64,), T.F16, seed=4)
    load(layer, **tensors)
    x = torch.randn(3, 64)
    if kind == "LayerNorm":
        expected = F.layer_norm(x, (64,), w.dequantize(torch.float32), tensors["bias"].dequantize(torch.float32), layer.eps)
    else:
        expected = F.rms_norm(x, (64,), w.dequantize(torch.float32), layer.eps)
    assert torch.equal(layer(x), expected)


def test_group_norm():
    w, b = quantized((64,), T.F32, scale=1.0), quantized((64,), T.F32, seed=2)
    layer = load(ops.GroupNorm(8, 64), weight=w, bias=b)
    x = torch.randn(2, 64, 3, 3)
    assert torch.equal(layer(x), F.group_norm(x, 8, w.dequantize(torch.float32), b.dequantize(torch.float32), layer.eps))


def test_lora_style_weight_functions_apply_after_dequantization():
    w = quantized((16, 32))
    layer = load(ops.Linear(32, 16, bias=False), weight=w)
    delta = torch.randn(16, 32)
    layer.weight_function = [lambda weight: weight + delta]
    x = torch.randn(2, 32)
    assert torch.equal(layer(x), F.linear(x, w.dequantize(torch.float32) + delta))


def test_shape_mismatch_is_reported_by_name():
    layer = ops.Linear(64, 32)
    with pytest.raises(RuntimeError, match=r"size mismatch for weight: the file holds \[48, 64\]"):
        layer.load_state_dict({"weight": quantized((48, 64))}, strict=False)


def test_two_namespaces_do_not_share_options():
    fp32_ops = make_layer_namespace(options=LayerOptions(dequant_dtype=torch.float32))
    fp16_ops = make_layer_namespace(options=LayerOptions(dequant_dtype=torch.float16))
    a, b = fp32_ops.Linear(32, 16, bias=False), fp16_ops.Linear(32, 16, bias=False)
    assert a.layer_options.dequant_dtype == torch.float32
    assert b.layer_options.dequant_dtype == torch.float16
    assert ops.Linear(32, 16).layer_options.dequant_dtype is None
    w = quantized((16, 32), T.Q4_0)
    load(a, weight=w), load(b, weight=w)
    x = torch.randn(2, 32)
    assert torch.equal(a(x), F.linear(x, w.dequantize(torch.float32)))
    assert torch.equal(b(x), F.linear(x, w.dequantize(torch.float16).float()))


def test_plain_bias_beside_a_quantized_weight_is_loaded():
    w = quantized((16, 32))
    bias = torch.randn(16)
    layer = ops.Linear(32, 16)
    layer.bias.data.fill_(float("nan"))
    load(layer, weight=w, bias=bias)
    x = torch.randn(2, 32)
    assert torch.equal(layer(x), F.linear(x, w.dequantize(torch.float32), bias))


def test_weights_dequantized_for_consecutive_layers_do_not_clobber_results():
    # Layers reuse one CPU output buffer for the dequantized weight; results must stay correct.
    first, second = quantized((64, 32), T.Q4_0, seed=5), quantized((32, 64), T.Q8_0, seed=6)
    a = load(ops.Linear(32, 64, bias=False), weight=first)
    b = load(ops.Linear(64, 32, bias=False), weight=second)
    x = torch.randn(3, 32)
    hidden = a(x)
    out = b(hidden)
    assert torch.equal(hidden, F.linear(x, first.dequantize(torch.float32)))
    assert torch.equal(out, F.linear(hidden, second.dequantize(torch.float32)))
    again = a(x)
    assert torch.equal(again, hidden)


def test_public_dequantize_never_hands_out_the_reused_buffer():
    w = quantized((16, 32), T.Q8_0)
    layer = load(ops.Linear(32, 16, bias=False), weight=w)
    kept = w.dequantize(torch.float32)
    snapshot = kept.clone()
    layer(torch.randn(2, 32))
    assert torch.equal(kept, snapshot)
