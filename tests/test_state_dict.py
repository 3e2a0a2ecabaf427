"""ops/runtime/state_dict.py: the one way a state dict is built from an opened GGUF file (the loader nodes
and `ops.runtime.state_dict.quantized_state_dict` both go through it)."""
from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as T, quants

from comfyui_zimage_gguf import load_gguf
from comfyui_zimage_gguf.errors import ModelDetectionError
from comfyui_zimage_gguf.ops.runtime.state_dict import SMALL_TENSOR_ELEMENTS, build_state_dict, quantized_state_dict
from comfyui_zimage_gguf.ops.runtime.tensor import QuantizedTensor

# name -> (shape, type); "big" is just large enough to stay quantized, the others are small.
TENSORS = {
    "big.weight": ((SMALL_TENSOR_ELEMENTS // 256, 256), T.Q8_0),
    "norm.weight": ((64,), T.F32),
    "small.weight": ((4, 32), T.Q4_0),
}


@pytest.fixture(scope="module")
def gguf_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("state_dict") / "model.gguf"
    rng = np.random.default_rng(7)
    writer = gguf.GGUFWriter(str(path), arch="test")
    for name, (shape, ggml_type) in TENSORS.items():
        values = rng.uniform(-1, 1, shape).astype(np.float32)
        data = values if ggml_type == T.F32 else quants.quantize(values, ggml_type)
        writer.add_tensor(name, data, raw_dtype=None if ggml_type == T.F32 else ggml_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _reference(gguf_file, name):
    info = gguf_file.tensors[name]
    raw = gguf_file.raw_tensor(name).numpy()
    return torch.from_numpy(quants.dequantize(raw, info.ggml_type).reshape(info.shape).astype(np.float32))


def test_large_tensors_stay_quantized_over_the_files_memory_small_ones_become_float32(gguf_path):
    gguf_file = load_gguf(gguf_path)
    state_dict, stats = build_state_dict(gguf_file, torch.bfloat16)

    assert list(state_dict) == list(TENSORS)
    big = state_dict["big.weight"]
    assert isinstance(big, QuantizedTensor) and big.dtype == torch.bfloat16 and big.ggml_type == T.Q8_0
    assert big.raw.data_ptr() == gguf_file.raw_tensor("big.weight").data_ptr()  # zero-copy
    assert torch.equal(big.dequantize(torch.float32), _reference(gguf_file, "big.weight"))
    for name in ("norm.weight", "small.weight"):
        value = state_dict[name]
        assert type(value) is torch.Tensor and value.dtype == torch.float32
        assert torch.equal(value, _reference(gguf_file, name))

    assert dict(stats.type_counts) == {"Q8_0": 1, "F32": 1, "Q4_0": 1}
    assert stats.file_bytes == sum(info.n_bytes for info in gguf_file.tensors.values())
    assert stats.path == str(gguf_path)


def test_names_rename_and_select_shapes_reshape_and_progress_counts_bytes(gguf_path):
    gguf_file = load_gguf(gguf_path)
    calls = []
    state_dict, stats = build_state_dict(
        gguf_file, torch.float16, names={"model.big": "big.weight", "model.small": "small.weight"},
        shapes={"model.small": (128,)}, progress=lambda done, total: calls.append((done, total)))

    assert list(state_dict) == ["model.big", "model.small"]
    assert state_dict["model.small"].shape == (128,)
    assert torch.equal(state_dict["model.small"], _reference(gguf_file, "small.weight").reshape(128))
    total = gguf_file.tensors["big.weight"].n_bytes + gguf_file.tensors["small.weight"].n_bytes
    assert calls == [(gguf_file.tensors["big.weight"].n_bytes, total), (total, total)]
    assert stats.file_bytes == total


def test_a_shape_of_another_element_count_names_the_file_and_tensor(gguf_path):
    gguf_file = load_gguf(gguf_path)
    with pytest.raises(ModelDetectionError, match=r"model\.gguf: tensor small\.weight holds \[4, 32\]; cannot view it as \[4, 16\]"):
        build_state_dict(gguf_file, torch.float16, names={"s": "small.weight"}, shapes={"s": (4, 16)})


def test_quantized_state_dict_is_the_builder_with_nothing_dequantized(gguf_path):
    gguf_file = load_gguf(gguf_path)
    state_dict = quantized_state_dict(gguf_file, torch.bfloat16)

    assert list(state_dict) == list(TENSORS)
    for name, (shape, ggml_type) in TENSORS.items():
        value = state_dict[name]
        assert isinstance(value, QuantizedTensor), name
        assert value.shape == shape and value.ggml_type == ggml_type and value.dtype == torch.bfloat16
        assert value.raw.data_ptr() == gguf_file.raw_tensor(name).data_ptr()
        assert torch.equal(value.dequantize(torch.float32), _reference(gguf_file, name))


def test_shapes_lists_every_tensor_in_file_order(gguf_path):
    gguf_file = load_gguf(gguf_path)
    assert gguf_file.shapes == {name: shape for name, (shape, _) in TENSORS.items()}
    assert list(gguf_file.shapes) == list(TENSORS)
