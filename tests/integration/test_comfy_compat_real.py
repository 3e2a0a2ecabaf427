"""The load-time guards (ops/comfy_edge/comfy_compat.py) on the real ComfyUI 0.18.1, with its internals reshaped
the way newer sources could have them: each must give a working load or the pack's one-line error.

In this process, on the CPU: a full-width one-layer Z-Image Q8_0 GGUF is loaded through the loader
node's function and one sampling step is run; a "working load" gives exactly the output of the same
path on the unchanged ComfyUI (the same layers run on the same weights).

Run: COMFYUI_PATH=/tmp/ComfyUI /tmp/comfy-venv/bin/python -m pytest tests/integration/test_comfy_compat_real.py
"""
from __future__ import annotations

import gc
import inspect

import pytest
import torch

from comfyui_zimage_gguf.ops.comfy_edge import comfy_compat
from comfyui_zimage_gguf.ops.comfy_edge.comfy_compat import ComfyUIIncompatibleError
from comfyui_zimage_gguf.ops.comfy_edge.comfy_layout import is_gguf_tensor
from comfyui_zimage_gguf.ops.comfy_edge.comfy_ops import FORCE_PACK_LAYERS_ENV
from comfyui_zimage_gguf.ops.runtime.tensor import QuantizedTensor as PackQuantizedTensor

import comfy_inprocess as inprocess  # noqa: E402  (tests/integration is on pytest's pythonpath)
pytestmark = pytest.mark.skipif(not inprocess.COMFYUI_PATH, reason=inprocess.SKIP_REASON)

CPU = torch.device("cpu")
LATENT_SHAPE = (1, 16, 8, 8)
CAPTION = (1, 12, 2560)


@pytest.fixture(scope="module")
def comfy():
    try:
        comfy = inprocess.import_comfy()
    except inprocess.ComfyUnavailable as error:
        pytest.skip(str(error))
    import comfy.quant_ops  # noqa: F401
    import comfyui_version  # noqa: F401  (ComfyUI's own server has it imported; the messages name it)
    yield comfy
    comfy_compat.reset_probe()
    comfy.model_management.unload_all_models()
    gc.collect()


@pytest.fixture(scope="module")
def model_path(comfy):
    factory = inprocess.factory_module("zimage_factory")
    return str(factory.cached_model("zimage_gguf", n_layers=1, style="city96", type_rule={"matrix": "Q8_0"}, seed=0))


@pytest.fixture(scope="module")
def inputs():
    generator = torch.Generator().manual_seed(0)
    return torch.randn(LATENT_SHAPE, generator=generator), torch.randn(CAPTION, generator=generator) * 0.5


@pytest.fixture
def reshaped(comfy, monkeypatch):
    """Probe afresh in the test and again after it (the monkeypatches are undone by then)."""
    comfy_compat.reset_probe()
    monkeypatch.setenv(FORCE_PACK_LAYERS_ENV, "0")
    yield monkeypatch
    comfy_compat.reset_probe()


def load_and_step(comfy, model_path, inputs):
    from comfyui_zimage_gguf.nodes import loaders

    patcher = loaders.load_diffusion_gguf(model_path, None, False, CPU)
    output = inprocess.sample_steps(comfy, patcher, *inputs)
    weight = patcher.model.diffusion_model.layers[0].attention.qkv.weight
    comfy.model_management.unload_all_models()
    return output, weight


@pytest.fixture(scope="module")
def reference(comfy, model_path, inputs):
    """One step on each load path of the unchanged ComfyUI."""
    outputs = {}
    with pytest.MonkeyPatch.context() as monkeypatch:
        for path, force in (("layout", "0"), ("pack_layers", "1")):
            monkeypatch.setenv(FORCE_PACK_LAYERS_ENV, force)
            comfy_compat.reset_probe()
            outputs[path], _ = load_and_step(comfy, model_path, inputs)
    comfy_compat.reset_probe()
    return outputs


def without_disable_dynamic(loader):
    """`loader` with the newest-sources shape minus its `disable_dynamic` parameter."""
    parameters = [p for p in inspect.signature(loader).parameters.values() if p.name != "disable_dynamic"]
    calls = []

    def reshaped(*args, **kwargs):
        assert "disable_dynamic" not in kwargs
        calls.append(kwargs)
        return loader(*args, **kwargs)

    reshaped.__signature__ = inspect.Signature(parameters)
    reshaped.calls = calls
    return reshaped


def test_a_loader_without_disable_dynamic_loads_on_the_fast_path(comfy, model_path, inputs, reference, reshaped):
    loader = without_disable_dynamic(comfy.sd.load_diffusion_model_state_dict)
    reshaped.setattr(comfy.sd, "load_diffusion_model_state_dict", loader)
    assert comfy_compat.probe().layout_ok
    output, weight = load_and_step(comfy, model_path, inputs)
    assert len(loader.calls) == 1 and is_gguf_tensor(weight)
    assert torch.equal(output, reference["layout"])


def test_pack_layers_without_disable_dynamic_load_where_dynamic_vram_is_off(comfy, model_path, inputs, reference,
                                                                            reshaped):
    loader = without_disable_dynamic(comfy.sd.load_diffusion_model_state_dict)
    reshaped.setattr(comfy.sd, "load_diffusion_model_state_dict", loader)
    reshaped.setenv(FORCE_PACK_LAYERS_ENV, "1")
    output, weight = load_and_step(comfy, model_path, inputs)
    assert len(loader.calls) == 1 and isinstance(weight, PackQuantizedTensor)
    assert torch.equal(output, reference["pack_layers"])


def test_pack_layers_without_disable_dynamic_under_dynamic_vram_is_one_line(comfy, model_path, reshaped):
    from comfyui_zimage_gguf.nodes import loaders

    loader = without_disable_dynamic(comfy.sd.load_diffusion_model_state_dict)
    reshaped.setattr(comfy.sd, "load_diffusion_model_state_dict", loader)
    reshaped.setattr(comfy.model_patcher, "CoreModelPatcher", comfy.model_patcher.ModelPatcherDynamic)
    reshaped.setenv(FORCE_PACK_LAYERS_ENV, "1")
    with pytest.raises(ComfyUIIncompatibleError) as raised:
        loaders.load_diffusion_gguf(model_path, None, False, CPU)
    assert str(raised.value).splitlines()[0] == (
        "This ComfyUI (0.18.1) needs ComfyUI's quantized-tensor layer for GGUF: update comfy-kitchen "
        "(pip install -U comfy-kitchen) and restart.")
    assert loader.calls == []


def test_without_dequant_and_fallback_the_pack_layers_load(comfy, model_path, inputs, reference, reshaped, caplog):
    import comfy.quant_ops

    # the pack's own counting wrapper sits on the class itself once registered: remove whatever is there
    reshaped.delattr(comfy.quant_ops.QuantizedTensor, "_dequant_and_fallback")
    report = comfy_compat.probe()
    assert report.lacks(comfy_compat.LAYOUT) == ("comfy.quant_ops.QuantizedTensor._dequant_and_fallback",)
    lines = comfy_compat.describe_at_load(report)
    assert lines == ["Z-Image GGUF: ComfyUI 0.18.1 lacks comfy.quant_ops.QuantizedTensor._dequant_and_fallback: GGUF "
                     "models load through the pack's own dequantizing layers (update ComfyUI and comfy-kitchen for "
                     "the faster path)"]
    output, weight = load_and_step(comfy, model_path, inputs)
    assert isinstance(weight, PackQuantizedTensor)
    assert torch.equal(output, reference["pack_layers"])


def test_a_missing_text_encoder_loader_is_one_line(comfy, model_path, reshaped):
    from comfyui_zimage_gguf.nodes import loaders

    reshaped.delattr(comfy.sd, "load_text_encoder_state_dicts")
    with pytest.raises(ComfyUIIncompatibleError) as raised:
        loaders.load_text_encoder(model_path)
    assert str(raised.value).splitlines() == [
        "This ComfyUI (0.18.1) lacks what the Z-Image GGUF loaders need: update ComfyUI or the pack.",
        "Missing or changed in ComfyUI: comfy.sd.load_text_encoder_state_dicts"]
