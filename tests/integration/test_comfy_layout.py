"""ops/comfy_edge/comfy_layout.py inside a real ComfyUI (in this process, on the CPU): GGUF weights as
ComfyUI's own QuantizedTensors keep every guarantee of the pack's tensor.

Run: COMFYUI_PATH=/tmp/ComfyUI /tmp/comfy-venv/bin/python -m pytest tests/integration/test_comfy_layout.py
"""
from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q

from comfyui_zimage_gguf.ops import dequantize, quantize
from comfyui_zimage_gguf.ops.ggml.quant_types import QUANT_TYPES
from comfyui_zimage_gguf.ops.runtime.tensor import FALLBACKS, FallbackDequantization, QuantizedTensor


import comfy_inprocess as inprocess  # noqa: E402  (tests/integration is on pytest's pythonpath)
pytestmark = pytest.mark.skipif(not inprocess.COMFYUI_PATH, reason=inprocess.SKIP_REASON)

GRAD_MODES = {"inference_mode": torch.inference_mode, "no_grad": torch.no_grad, "grad": contextlib.nullcontext}


@pytest.fixture(scope="module")
def comfy():
    return inprocess.import_comfy_with_layouts()


def _pack_tensor(ggml_type, shape, dtype=torch.float32, seed=0):
    qt = QUANT_TYPES[ggml_type]
    rng = np.random.default_rng(seed)
    n_blocks = int(np.prod(shape)) // qt.block_size
    raw = torch.from_numpy(qt.random_blocks(n_blocks, rng).reshape(-1).copy())
    return QuantizedTensor(raw, ggml_type, shape, dtype)


def _comfy_tensor(ggml_type=Q.Q8_0, shape=(64, 256), dtype=torch.float32, seed=0):
    from comfyui_zimage_gguf.ops.comfy_edge.comfy_layout import to_comfy_tensor

    pack = _pack_tensor(ggml_type, shape, dtype, seed)
    return pack, to_comfy_tensor(pack)


@pytest.mark.parametrize("ggml_type", list(QUANT_TYPES), ids=lambda t: t.name)
def test_every_type_dequantizes_like_the_kernel_table_and_reports_its_float_dtype(comfy, ggml_type):
    import comfy.quant_ops

    pack, weight = _comfy_tensor(ggml_type, (8, 256), torch.bfloat16)
    assert isinstance(weight, comfy.quant_ops.QuantizedTensor)
    assert weight.dtype == torch.bfloat16 and weight.shape == (8, 256)
    assert weight._qdata.data_ptr() == pack.raw.data_ptr()  # zero copy
    assert weight.nbytes == pack.raw.nbytes < 8 * 256 * 2 or ggml_type in (Q.F32, Q.F16, Q.BF16)
    assert torch.equal(weight.dequantize(), dequantize(pack.raw, ggml_type, (8, 256), torch.bfloat16))


@pytest.mark.parametrize("mode", GRAD_MODES)
def test_moves_clones_copies_and_module_moves_keep_the_data_quantized(comfy, mode):
    import comfy.quant_ops

    with GRAD_MODES[mode]():
        pack, weight = _comfy_tensor()
        expected = weight.dequantize().clone()
        moved = [weight.to("cpu"), weight.to(torch.device("cpu"), copy=True), weight.clone(), weight.detach(),
                 weight.to(torch.float16)]
        for tensor in moved:
            assert isinstance(tensor, comfy.quant_ops.QuantizedTensor) and tensor.nbytes == pack.raw.nbytes
        assert moved[-1].dtype == torch.float16
        assert torch.equal(moved[1].dequantize(), expected)

        target = _comfy_tensor(seed=1)[1].clone()
        target.copy_(weight)
        assert torch.equal(target.dequantize(), expected)

        layer = comfy.ops.manual_cast.Linear(256, 64, bias=False)
        layer.weight = torch.nn.Parameter(weight, requires_grad=False)
        layer.to("cpu")
        layer.to(torch.float16)
        assert isinstance(layer.weight, comfy.quant_ops.QuantizedTensor) and layer.weight.dtype == torch.float16
        assert layer.weight.nbytes == pack.raw.nbytes


def test_copy_from_another_shape_or_type_is_refused_naming_both(comfy):
    from comfyui_zimage_gguf.errors import ZImageGGUFError

    _, weight = _comfy_tensor(Q.Q8_0, (64, 256))
    _, other_shape = _comfy_tensor(Q.Q8_0, (32, 512))
    with pytest.raises(ZImageGGUFError, match=r"Q8_0 tensor of shape \[32, 512\].*Q8_0 GGUF weight of shape \[64, 256\]"):
        weight.clone().copy_(other_shape)
    _, other_type = _comfy_tensor(Q.Q4_0, (64, 256))
    with pytest.raises(TypeError, match="Layout mismatch"):
        weight.clone().copy_(other_type)


def test_comfy_memory_accounting_sees_the_quantized_size(comfy):
    import comfy.memory_management
    import comfy.model_management

    pack, weight = _comfy_tensor(Q.Q4_K, (256, 1024))
    layer = comfy.ops.manual_cast.Linear(1024, 256, bias=False)
    layer.weight = torch.nn.Parameter(weight, requires_grad=False)
    assert comfy.model_management.module_size(layer) == pack.raw.nbytes == 256 * 1024 * 144 // 256
    assert comfy.memory_management.vram_aligned_size(weight) == (pack.raw.nbytes + 1023) // 1024 * 1024
    # ComfyUI's gather/scatter of a layer's tensors into one buffer keeps the weight quantized
    gathered = torch.empty(comfy.memory_management.vram_aligned_size([weight]), dtype=torch.uint8)
    comfy.model_management.cast_to_gathered([weight], gathered)
    (view,) = comfy.memory_management.interpret_gathered_like([weight], gathered)
    assert torch.equal(view.dequantize(), weight.dequantize())


@pytest.mark.parametrize("mode", GRAD_MODES)
def test_comfy_layers_compute_with_gguf_weights_through_their_own_cast_path(comfy, mode):
    from comfyui_zimage_gguf.ops.comfy_edge.comfy_ops import make_layout_ops

    ops = make_layout_ops()
    with GRAD_MODES[mode]():
        pack, weight = _comfy_tensor(Q.Q4_K, (64, 256))
        layer = ops.Linear(256, 64, bias=True)
        bias = torch.randn(64)
        layer.load_state_dict({"weight": weight, "bias": bias})
        x = torch.randn(3, 256)
        expected = torch.nn.functional.linear(x, pack.dequantize(), bias)
        assert torch.equal(layer(x), expected)  # float32: ComfyUI passes the weight as it is
        assert torch.allclose(layer(x.to(torch.bfloat16)).float(), expected, rtol=0.02, atol=0.05)
        assert layer.layout_type == "ZImageGGUF_Q4_K"


def test_embedding_looks_up_rows_without_dequantizing_the_table(comfy, monkeypatch):
    from comfyui_zimage_gguf.ops.ggml import rows as row_lookup
    from comfyui_zimage_gguf.ops.comfy_edge.comfy_ops import make_layout_ops

    embedding = make_layout_ops().Embedding(1000, 512)
    with torch.inference_mode():
        pack, table = _comfy_tensor(Q.Q6_K, (1000, 512), torch.bfloat16)
        embedding.load_state_dict({"weight": table})
    ids = torch.tensor([[3, 999, 0, 3]])
    elements = []
    real = row_lookup.dequantize  # ops/ggml/rows.py: the one embedding-row lookup of both tensor kinds
    monkeypatch.setattr(row_lookup, "dequantize", lambda data, *a, **k: elements.append(a[1]) or real(data, *a, **k))
    for out_dtype in (None, torch.float32, torch.float16):
        rows = embedding(ids, out_dtype=out_dtype)
        assert rows.dtype == (out_dtype or torch.bfloat16)
        assert torch.equal(rows.to(torch.bfloat16), pack.dequantize()[ids])
    assert elements == [(4, 512)] * 3  # four rows each time, never the table


def test_row_preserving_views_stay_quantized_and_other_ops_trip_the_tripwire(comfy):
    import comfy.quant_ops

    _, weight = _comfy_tensor(Q.Q8_0, (64, 256))
    view = weight.view(1, 64, 256)
    assert isinstance(view, comfy.quant_ops.QuantizedTensor) and view.shape == (1, 64, 256)
    with pytest.raises(FallbackDequantization, match=r"Q8_0 weight of shape \[64, 256\]"):
        weight * 2
    with FALLBACKS.allowed() as counter:
        before = counter.count
        assert torch.equal(weight * 2, weight.dequantize() * 2)
        assert counter.count == before + 1


@pytest.mark.parametrize("ggml_type", [Q.Q8_0, Q.Q4_K, Q.F16], ids=lambda t: t.name)
def test_from_float_requantizes_into_the_same_layout(comfy, ggml_type):
    """ComfyUI's vbar path requantizes a LoRA-patched weight with from_float(x, module.layout_type)."""
    import comfy.quant_ops

    pack, weight = _comfy_tensor(ggml_type, (16, 256))
    patched = weight.dequantize() + 0.01
    requantized = comfy.quant_ops.QuantizedTensor.from_float(patched, weight._layout_cls, scale="recalculate",
                                                              stochastic_rounding=7)
    assert requantized._layout_cls == weight._layout_cls and requantized.shape == weight.shape
    assert torch.equal(requantized._qdata, quantize(patched, ggml_type).reshape(-1))
    weight.clone().copy_(requantized)  # what ComfyUI then does with it


def test_from_float_into_a_type_without_quantizer_names_what_can_be_written(comfy):
    import comfy.quant_ops

    from comfyui_zimage_gguf.errors import UnsupportedQuantTypeError

    with pytest.raises(UnsupportedQuantTypeError, match="cannot quantize to IQ2_XXS.*Q8_0"):
        comfy.quant_ops.QuantizedTensor.from_float(torch.randn(4, 256), "ZImageGGUF_IQ2_XXS")


def test_state_dict_conversion_is_zero_copy_and_keeps_float_tensors(comfy):
    from comfyui_zimage_gguf.ops.comfy_edge.comfy_layout import to_comfy_state_dict

    pack = _pack_tensor(Q.Q5_K, (32, 256))
    pad = torch.randn(1, 3840)
    converted = to_comfy_state_dict({"w": pack, "pad": pad})
    assert converted["pad"] is pad
    assert converted["w"]._qdata.data_ptr() == pack.raw.data_ptr()


def test_cpu_linear_forward_takes_the_slab_product_and_equals_the_pack_layers(comfy, monkeypatch):
    """ComfyUI's cast path over the layout gives what the pack's own layers give, on a Z-Image FFN
    weight (10240 x 3840, Q8_0), through the CPU slab product (no whole float weight). Speed is the
    end-to-end benchmark's business (benchmarks/bench_e2e.py), not a timed test's."""
    from comfyui_zimage_gguf.ops.runtime import linear
    from comfyui_zimage_gguf.ops.comfy_edge.comfy_layout import to_comfy_tensor
    from comfyui_zimage_gguf.ops.comfy_edge.comfy_ops import make_comfy_ops, make_layout_ops

    calls = []
    real = linear.quantized_linear
    monkeypatch.setattr("comfyui_zimage_gguf.ops.comfy_edge.ggml_layouts.quantized_linear",
                        lambda *a, **k: calls.append(a[1].shape) or real(*a, **k))
    x = torch.randn(16, 3840)
    with torch.inference_mode():  # as ComfyUI runs its nodes: the state dict is made in there too
        pack = _pack_tensor(Q.Q8_0, (10240, 3840), torch.float32)
        old = make_comfy_ops().Linear(3840, 10240, bias=False)
        old.load_state_dict({"weight": pack})
        new = make_layout_ops().Linear(3840, 10240, bias=False)
        new.load_state_dict({"weight": to_comfy_tensor(pack)})
        calls.clear()
        out = new(x)
        assert torch.equal(old(x), out)
        assert torch.equal(out, torch.nn.functional.linear(x, dequantize(pack.raw, Q.Q8_0, pack.shape, torch.float32)))
    assert calls and all(tuple(shape) == (10240, 3840) for shape in calls)


def test_dynamic_vram_lora_stays_per_call_for_types_without_a_quantizer(comfy, monkeypatch):
    """ComfyUI's ModelPatcherDynamic requantizes a LoRA-patched weight (from_float into the layer's
    layout) on its vbar path; for a type the pack cannot quantize the LoRA must move to the per-call
    weight_function instead. No CUDA here: the patcher is made for a CUDA device and its vbar left
    out (_vbar_get -> None), so what is tested is what ComfyUI's own load() leaves on each module,
    then the forward through ComfyUI's (non-vbar) cast path."""
    import comfy.model_patcher
    from comfy.weight_adapter.lora import LoRAAdapter

    from comfyui_zimage_gguf.ops.comfy_edge.comfy_ops import as_gguf_patcher, gguf_dynamic_patcher_class, make_layout_ops

    ops = make_layout_ops()
    model = torch.nn.Module()
    model.iq = ops.Linear(256, 16, bias=False)
    model.q8 = ops.Linear(256, 16, bias=False)
    iq_pack, iq_weight = _comfy_tensor(Q.IQ2_XXS, (16, 256))
    _, q8_weight = _comfy_tensor(Q.Q8_0, (16, 256), seed=1)
    model.load_state_dict({"iq.weight": iq_weight, "q8.weight": q8_weight})
    model.model_loaded_weight_memory = 0
    device = torch.device("cuda", 0)
    patcher = comfy.model_patcher.ModelPatcherDynamic(model, device, torch.device("cpu"))
    assert patcher.is_dynamic()
    patcher = as_gguf_patcher(patcher)
    assert type(patcher) is gguf_dynamic_patcher_class()
    monkeypatch.setattr(patcher, "_vbar_get", lambda create=False: None)
    up, down = torch.randn(16, 4) * 0.1, torch.randn(4, 256) * 0.1
    patches = {f"{name}.weight": LoRAAdapter(set(), (up, down, None, None, None, None)) for name in ("iq", "q8")}
    patcher.add_patches(patches, 1.0)
    try:
        patcher.load(device)
        assert model.iq.weight_lowvram_function is None
        assert [type(f) for f in model.iq.weight_function] == [comfy.model_patcher.LowVramPatch]
        assert isinstance(model.q8.weight_lowvram_function, comfy.model_patcher.LowVramPatch)  # Q8_0 requantizes
        assert model.q8.weight_function == []
        x = torch.randn(3, 256)
        with torch.inference_mode():
            expected = torch.nn.functional.linear(x, iq_pack.dequantize() + up @ down)
            assert torch.allclose(model.iq(x), expected, atol=1e-5)
        assert type(patcher.clone()) is gguf_dynamic_patcher_class()
        # A later load without the LoRA leaves nothing behind.
        plain = patcher.clone()
        plain.patches = {}
        plain.patches_uuid = "no-lora"
        monkeypatch.setattr(plain, "_vbar_get", lambda create=False: None)
        plain.load(device)
        assert model.iq.weight_function == [] and model.iq.weight_lowvram_function is None
    finally:
        patcher.detach()
