"""Save Model as GGUF without ComfyUI: a stand-in ModelPatcher (model.diffusion_model, patches, backup)
and a stand-in calculate_weight that adds its patch tensors, as a merged LoRA would."""
from types import SimpleNamespace

import pytest
import torch
from gguf import GGMLQuantizationType as T

import zimage_factory as factory

from comfyui_zimage_gguf import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from comfyui_zimage_gguf.nodes.save_gguf import SaveGGUFError, merged_tensors, output_path, save_model_gguf
from comfyui_zimage_gguf.ops import dequantize, quantize
from comfyui_zimage_gguf.ops.gguf_file.reader import load_gguf
from comfyui_zimage_gguf.ops.runtime.tensor import QuantizedTensor

NARROW = dict(width=256, caption_width=256)


def add_patches(patches, weight, key):
    for delta in patches:
        weight = weight + delta
    return weight


def patcher_of(state, patches=None, backup=None):
    module = torch.nn.Module()
    for i, (name, value) in enumerate(state.items()):
        module.register_buffer(f"b{i}", value)
    module.state_dict = lambda: dict(state)
    return SimpleNamespace(model=SimpleNamespace(diffusion_model=module), patches=patches or {}, backup=backup or {})


def plain(tensor):
    return tensor.dequantize(torch.float32) if isinstance(tensor, QuantizedTensor) else tensor.float()


def narrow_state(quantized: bool = False):
    state = {}
    for spec in factory.zimage_tensor_specs(1, **NARROW):
        values = factory.tensor_values(0, spec)
        if quantized and len(spec.shape) == 2 and spec.shape[-1] % 32 == 0:
            raw = quantize(values, T.Q8_0).reshape(-1)
            state[spec.name] = QuantizedTensor(raw, T.Q8_0, spec.shape, torch.bfloat16)
        else:
            state[spec.name] = values.to(torch.bfloat16)
    return state


def test_node_is_registered():
    assert NODE_DISPLAY_NAME_MAPPINGS["ZImageSaveModelGGUF"] == "Save Model as GGUF (Z-Image pack)"
    node = NODE_CLASS_MAPPINGS["ZImageSaveModelGGUF"]
    assert node.OUTPUT_NODE and node.FUNCTION == "save"


@pytest.mark.parametrize("quantized", [False, True], ids=["bf16 model", "gguf model"])
def test_lora_patch_is_merged_before_quantizing(tmp_path, quantized):
    state = narrow_state(quantized)
    name = "layers.0.attention.qkv.weight"
    delta = torch.full(tuple(state[name].shape), 0.05)
    patcher = patcher_of(state, patches={"diffusion_model." + name: [delta]})
    out = save_model_gguf(patcher, tmp_path / "z.gguf", "Q8_0", add_patches)
    gguf_file = load_gguf(out)
    try:
        info = gguf_file.tensors[name]
        assert info.ggml_type == T.Q8_0
        saved = dequantize(gguf_file.raw_tensor(name), info.ggml_type, info.shape, torch.float32)
        base = plain(state[name])
        expected = base + delta
        assert float((saved - expected).abs().max()) < 0.01  # Q8_0 step of ~N(0, 0.02) + 0.05 rows
        assert float((saved - base).mean()) == pytest.approx(0.05, abs=1e-3)  # the patch is in
        unpatched = "layers.0.attention.out.weight"
        assert float((dequantize(gguf_file.raw_tensor(unpatched), T.Q8_0, gguf_file.tensors[unpatched].shape,
                                 torch.float32) - plain(state[unpatched])).mean()) == pytest.approx(0, abs=1e-3)
    finally:
        gguf_file.close()


def test_backup_weight_is_the_base_when_patches_were_applied_in_place():
    state = narrow_state()
    name = "layers.0.attention.out.weight"
    original = state[name].clone()
    state[name] = original + 1  # ComfyUI patched the weight in place...
    patcher = patcher_of(state, patches={"diffusion_model." + name: [torch.ones(original.shape)]},
                         backup={"diffusion_model." + name: SimpleNamespace(weight=original, inplace_update=False)})
    merged = {n: load() for n, _, _, load in merged_tensors(patcher, add_patches)}
    assert torch.equal(merged[name], original.float() + 1)  # ...but it is merged once, from the original


def test_existing_file_is_never_overwritten_a_counter_is_added(tmp_path):
    # before: the node had an `overwrite` input, so any workflow sent to /prompt could replace any
    # .gguf in models/diffusion_models (a loaded one included)
    assert "overwrite" not in NODE_CLASS_MAPPINGS["ZImageSaveModelGGUF"].INPUT_TYPES()["required"]
    patcher = patcher_of(narrow_state())
    (tmp_path / "z.gguf").write_bytes(b"old")
    assert save_model_gguf(patcher, tmp_path / "z.gguf", "Q8_0", add_patches) == tmp_path / "z_00001.gguf"
    assert save_model_gguf(patcher, tmp_path / "z.gguf", "Q8_0", add_patches) == tmp_path / "z_00002.gguf"
    assert (tmp_path / "z.gguf").read_bytes() == b"old"
    assert load_gguf(tmp_path / "z_00002.gguf").metadata["general.architecture"] == "lumina2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["z.gguf", "z_00001.gguf", "z_00002.gguf"]


def test_a_link_planted_under_the_name_is_left_alone(tmp_path):
    victim = tmp_path / "elsewhere.gguf"
    victim.write_bytes(b"precious")
    (tmp_path / "z.gguf").symlink_to(victim)
    assert save_model_gguf(patcher_of(narrow_state()), tmp_path / "z.gguf", "Q8_0", add_patches) == tmp_path / "z_00001.gguf"
    assert victim.read_bytes() == b"precious" and (tmp_path / "z.gguf").is_symlink()


def test_unknown_model_is_refused(tmp_path):
    patcher = patcher_of({"encoder.weight": torch.zeros(4, 4)})
    with pytest.raises(SaveGGUFError, match="Save Model as GGUF writes Z-Image models; this model's layout is unknown"):
        save_model_gguf(patcher, tmp_path / "z.gguf", "Q8_0", add_patches)
    assert list(tmp_path.iterdir()) == []


def test_output_name(tmp_path):
    assert output_path(str(tmp_path), "zimg-Q4_K_M") == tmp_path / "zimg-Q4_K_M.gguf"
    assert output_path(str(tmp_path), "a.gguf") == tmp_path / "a.gguf"
    with pytest.raises(SaveGGUFError, match="must be a plain name"):
        output_path(str(tmp_path), "../elsewhere")
