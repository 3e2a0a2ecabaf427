"""The load-time guards against ComfyUI internals that moved (ops/comfy_edge/comfy_compat.py), on fake ComfyUIs.

The fakes (helpers/fake_comfy_internals.py) are shaped like the newest ComfyUI sources, with one
thing changed per test: a loader without `disable_dynamic`, DynamicVRAM as the default patcher, a
patcher whose `patch_weight_to_device` takes `force_cast`, a layout registry without comfy-kitchen,
`QuantizedTensor` without `_dequant_and_fallback`. Each must give a working load (the right path, the
loader called with arguments it takes) or the pack's one-line error.
"""
import logging
import sys

import pytest

from helpers.fake_comfy_internals import fake_comfyui

from comfyui_zimage_gguf.nodes import comfy_version, loaders
from comfyui_zimage_gguf.ops.comfy_edge import comfy_compat, comfy_ops
from comfyui_zimage_gguf.ops.comfy_edge.comfy_compat import ComfyUIIncompatibleError


@pytest.fixture
def comfyui(monkeypatch):
    """Install a fake ComfyUI: `comfyui(**shape)` returns the list its loaders record calls in."""
    def install(**shape):
        calls = []
        for name in [n for n in sys.modules if n == "comfy" or n.startswith("comfy.")]:
            monkeypatch.delitem(sys.modules, name)
        for name, module in fake_comfyui(calls=calls, **shape).items():
            monkeypatch.setitem(sys.modules, name, module)
        monkeypatch.delitem(sys.modules, "server", raising=False)
        comfy_compat.reset_probe()
        for cached in (comfy_ops.make_layout_ops, comfy_ops.gguf_model_patcher_class,
                       comfy_ops.gguf_dynamic_patcher_class):
            cached.cache_clear()
        return calls

    yield install
    comfy_compat.reset_probe()
    for cached in (comfy_ops.make_layout_ops, comfy_ops.gguf_model_patcher_class, comfy_ops.gguf_dynamic_patcher_class):
        cached.cache_clear()


def load_through_plan(loader_name="load_diffusion_model_state_dict"):
    """What the loader nodes do around ComfyUI's loader: plan, options, call (tensors left out)."""
    plan = comfy_ops.comfy_load_plan()
    loader = getattr(sys.modules["comfy.sd"], loader_name)
    options = plan.loader_options(loader)
    if loader_name == "load_diffusion_model_state_dict":
        return plan, loader({}, model_options={"custom_operations": plan.ops}, **options)
    return plan, loader([{}], embedding_directory=[], clip_type=1, model_options={}, **options).patcher


def first_line(error) -> str:
    return str(error.value).splitlines()[0]


def test_the_newest_shape_loads_on_the_fast_path_without_disable_dynamic(comfyui, monkeypatch):
    # ComfyUI 0.38.1's shape with its loaders' disable_dynamic gone, DynamicVRAM the default:
    # the layout path passes nothing and gets ComfyUI's DynamicVRAM patcher.
    monkeypatch.delenv(comfy_ops.FORCE_PACK_LAYERS_ENV, raising=False)
    calls = comfyui(loader_takes_disable_dynamic=False, dynamic_vram_default=True)
    assert not any(comfy_compat.probe().lacks(path) for path in (comfy_compat.LAYOUT, comfy_compat.LOADERS))
    for loader_name in ("load_diffusion_model_state_dict", "load_text_encoder_state_dicts"):
        plan, patcher = load_through_plan(loader_name)
        assert plan.uses_layout and patcher.is_dynamic()
    assert calls == [("load_diffusion_model_state_dict", {}), ("load_text_encoder_state_dicts", {})]


def test_the_fast_path_passes_no_disable_dynamic_even_where_loaders_take_it(comfyui, monkeypatch):
    monkeypatch.delenv(comfy_ops.FORCE_PACK_LAYERS_ENV, raising=False)
    calls = comfyui(loader_takes_disable_dynamic=True, dynamic_vram_default=True)
    plan, patcher = load_through_plan()
    assert plan.uses_layout and patcher.is_dynamic()
    assert calls == [("load_diffusion_model_state_dict", {"disable_dynamic": False})]  # the default: not passed


@pytest.mark.parametrize("shape, missing", [
    ({"has_dequant_and_fallback": False}, "comfy.quant_ops.QuantizedTensor._dequant_and_fallback"),
    ({"comfy_kitchen": False}, "comfy.quant_ops._CK_AVAILABLE (False)"),
    ({"comfy_kitchen": False}, "comfy.quant_ops.register_layout_op"),
    ({"copy_with_takes_clone_params": False}, "comfy.quant_ops.QuantizedTensor._copy_with(clone_params=)"),
], ids=["no-dequant-and-fallback", "no-comfy-kitchen", "registry-without-layout-ops", "copy-with-changed"])
def test_a_changed_layout_layer_logs_one_line_and_loads_through_the_pack_layers(comfyui, monkeypatch, caplog, shape,
                                                                                missing):
    monkeypatch.delenv(comfy_ops.FORCE_PACK_LAYERS_ENV, raising=False)
    calls = comfyui(version="0.38.1", **shape)
    with caplog.at_level(logging.WARNING, logger="comfyui_zimage_gguf"):
        comfy_version.check_comfyui()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "\n" not in lines[0], lines
    assert lines[0].startswith("Z-Image GGUF: ComfyUI 0.38.1 lacks ") and missing in lines[0]
    assert "pack's own dequantizing layers" in lines[0]

    plan, patcher = load_through_plan()
    assert not plan.uses_layout
    assert not patcher.is_dynamic()  # the pack's layers get the plain patcher they need
    assert calls == [("load_diffusion_model_state_dict", {"disable_dynamic": True})]


def test_pack_layers_without_disable_dynamic_load_where_dynamic_vram_is_not_the_default(comfyui, monkeypatch):
    calls = comfyui(loader_takes_disable_dynamic=False, dynamic_vram_default=False, has_dequant_and_fallback=False)
    plan, patcher = load_through_plan()
    assert not plan.uses_layout and not patcher.is_dynamic()
    assert calls == [("load_diffusion_model_state_dict", {})]


def test_pack_layers_without_disable_dynamic_under_dynamic_vram_refuse_in_one_line(comfyui, monkeypatch):
    calls = comfyui(loader_takes_disable_dynamic=False, dynamic_vram_default=True, comfy_kitchen=False)
    with pytest.raises(ComfyUIIncompatibleError) as raised:
        load_through_plan()
    assert first_line(raised) == ("This ComfyUI (0.38.1) needs ComfyUI's quantized-tensor layer for GGUF: update "
                                  "comfy-kitchen (pip install -U comfy-kitchen) and restart.")
    assert "load_diffusion_model_state_dict has no disable_dynamic option" in str(raised.value)
    assert type(raised.value).__module__ == "ZImageGGUF"
    assert calls == []  # refused before ComfyUI was asked to load anything


def test_forced_pack_layers_use_disable_dynamic_where_the_loader_takes_it(comfyui, monkeypatch):
    monkeypatch.setenv(comfy_ops.FORCE_PACK_LAYERS_ENV, "1")
    calls = comfyui(dynamic_vram_default=True)
    plan, patcher = load_through_plan("load_text_encoder_state_dicts")
    assert not plan.uses_layout and not patcher.is_dynamic()
    assert calls == [("load_text_encoder_state_dicts", {"disable_dynamic": True})]


@pytest.mark.parametrize("load", [
    lambda: loaders.load_diffusion_gguf("/nowhere/z_image_turbo-Q8_0.gguf"),
    lambda: loaders.load_text_encoder("/nowhere/Qwen3-4B-Q8_0.gguf"),
], ids=["diffusion", "text-encoder"])
def test_a_missing_loader_makes_the_nodes_raise_the_one_line_error(comfyui, load):
    comfyui(version="0.39.0", has_text_encoder_loader=False)
    with pytest.raises(ComfyUIIncompatibleError) as raised:
        load()  # refused before the (absent) file is opened
    assert first_line(raised) == ("This ComfyUI (0.39.0) lacks what the Z-Image GGUF loaders need: update ComfyUI or "
                                  "the pack.")
    assert "comfy.sd.load_text_encoder_state_dicts" in str(raised.value)


def test_the_patcher_passes_newer_keywords_to_comfyui(comfyui):
    comfyui()
    patcher_class = comfy_ops.gguf_model_patcher_class()
    patcher = patcher_class(object(), "cpu", "cpu")
    patcher.patch_weight_to_device("blocks.0.weight", device_to="cpu", force_cast=True)
    patcher.patch_weight_to_device("blocks.1.weight", device_to="cpu")
    assert patcher.weight_calls == [("blocks.0.weight", True), ("blocks.1.weight", False)]


def test_a_comfyui_without_the_dynamic_patcher_still_wraps_plain_patchers(comfyui):
    comfyui(has_dynamic_patcher=False)
    patcher = sys.modules["comfy.model_patcher"].ModelPatcher(object(), "cpu", "cpu")
    assert type(comfy_ops.as_gguf_patcher(patcher)) is comfy_ops.gguf_model_patcher_class()
    assert comfy_compat.probe().lacks(comfy_compat.DYNAMIC) == (
        "comfy.model_patcher.ModelPatcherDynamic",)


def test_an_unknown_patcher_class_is_refused_in_one_line(comfyui):
    comfyui(version="0.40.0")
    base = sys.modules["comfy.model_patcher"].ModelPatcher
    other = type("ModelPatcherCompiled", (base,), {})(object(), "cpu", "cpu")
    with pytest.raises(ComfyUIIncompatibleError) as raised:
        comfy_ops.as_gguf_patcher(other)
    assert first_line(raised).startswith("This ComfyUI (0.40.0) built the model with a patcher the Z-Image GGUF "
                                         "pack does not know")


def test_nothing_is_logged_or_kept_outside_comfyui(monkeypatch, caplog):
    for name in [n for n in sys.modules if n in ("comfy", "comfyui_version") or n.startswith("comfy.")]:
        monkeypatch.delitem(sys.modules, name)
    comfy_compat.reset_probe()
    with caplog.at_level(logging.WARNING, logger="comfyui_zimage_gguf"):
        comfy_version.check_comfyui()
    assert caplog.records == []
    assert not comfy_compat.probe().layout_ok and comfy_compat._REPORT == []


def test_the_probe_reads_keyword_parameters():
    def takes(a, disable_dynamic=False):
        pass

    def takes_any(a, **kwargs):
        pass

    def takes_positional_only(disable_dynamic, /):
        pass

    assert comfy_compat.accepts_keyword(takes, "disable_dynamic")
    assert comfy_compat.accepts_keyword(takes_any, "disable_dynamic")
    assert not comfy_compat.accepts_keyword(takes_positional_only, "disable_dynamic")
    assert not comfy_compat.accepts_keyword(lambda a: a, "disable_dynamic")
