"""ComfyUI's own paths to a GGUF weight (the GGML layout's `dequantize`, a ComfyUI Linear's cast path,
the layout Embedding) follow the pack's dequantization backend switch: with
ZIMAGE_GGUF_DEQUANT_BACKEND=triton they run the Triton kernels (here in Triton's interpreter, on the
CPU: no GPU in this environment), with `torch` the torch kernels, and both give the same bits.

Run: COMFYUI_PATH=/tmp/ComfyUI /tmp/comfy-venv/bin/python -m pytest tests/integration/test_triton_backend_comfy.py
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q

from comfyui_zimage_gguf.ops import dequantize
from comfyui_zimage_gguf.ops.ggml import triton_kernels
from comfyui_zimage_gguf.ops.ggml.dequant import BACKEND_ENV
from comfyui_zimage_gguf.ops.ggml.quant_types import QUANT_TYPES
from comfyui_zimage_gguf.ops.runtime.tensor import QuantizedTensor

import comfy_inprocess as inprocess  # noqa: E402  (tests/integration is on pytest's pythonpath)
from helpers.triton_interpreter import interpreted_registry

pytestmark = pytest.mark.skipif(not inprocess.COMFYUI_PATH, reason=inprocess.SKIP_REASON)
pytest.importorskip("triton", reason="triton is not installed in ComfyUI's environment")


@pytest.fixture(scope="module")
def comfy():
    return inprocess.import_comfy_with_layouts()


@pytest.fixture(scope="module")
def interpreted():
    with interpreted_registry() as registry:
        yield registry


@pytest.fixture
def launches(interpreted, monkeypatch):
    """Names of the types each Triton launch dequantized, the launches themselves still running."""
    names = []
    real_launch = triton_kernels.launch
    monkeypatch.setattr(triton_kernels, "launch", lambda kernel, *a, **k: names.append(kernel.name) or
                        real_launch(kernel, *a, **k))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    return names


def _comfy_weight(ggml_type, shape, dtype, seed=0):
    from comfyui_zimage_gguf.ops.comfy_edge.comfy_layout import to_comfy_tensor

    qt = QUANT_TYPES[ggml_type]
    raw = qt.random_blocks(int(np.prod(shape)) // qt.block_size, np.random.default_rng(seed))
    pack = QuantizedTensor(torch.from_numpy(raw.reshape(-1).copy()), ggml_type, shape, dtype)
    return pack, to_comfy_tensor(pack)


def _bits(tensor):
    return tensor.view({2: torch.int16, 4: torch.int32}[tensor.element_size()])


@pytest.mark.parametrize("ggml_type", [Q.Q4_K, Q.Q8_0, Q.IQ4_XS], ids=lambda t: t.name)
def test_layout_dequantize_runs_the_chosen_backend(comfy, launches, monkeypatch, ggml_type):
    pack, weight = _comfy_weight(ggml_type, (8, 512), torch.bfloat16)
    monkeypatch.setenv(BACKEND_ENV, "triton")
    with torch.inference_mode():
        via_triton = weight.dequantize()
    assert launches == [ggml_type.name]
    monkeypatch.setenv(BACKEND_ENV, "torch")
    with torch.inference_mode():
        via_torch = weight.dequantize()
    assert launches == [ggml_type.name]
    assert torch.equal(_bits(via_triton), _bits(via_torch))
    assert torch.equal(_bits(via_torch), _bits(dequantize(pack.raw, ggml_type, (8, 512), torch.bfloat16, backend="torch")))


def test_comfy_linear_and_embedding_dequantize_through_the_backend_switch(comfy, launches, monkeypatch):
    from comfyui_zimage_gguf.ops.comfy_edge.comfy_ops import make_layout_ops

    ops = make_layout_ops()
    pack, weight = _comfy_weight(Q.Q5_K, (64, 256), torch.float32)
    layer = ops.Linear(256, 64, bias=False)
    layer.load_state_dict({"weight": weight})
    x = torch.randn(3, 256)
    monkeypatch.setenv(BACKEND_ENV, "triton")
    with torch.inference_mode():
        got = layer(x)
    assert "Q5_K" in launches
    expected = torch.nn.functional.linear(x, dequantize(pack.raw, Q.Q5_K, (64, 256), torch.float32, backend="torch"))
    assert torch.equal(got, expected)

    launches.clear()
    embedding = ops.Embedding(64, 256)
    with torch.inference_mode():
        _, table = _comfy_weight(Q.Q6_K, (64, 256), torch.bfloat16, seed=1)
        embedding.load_state_dict({"weight": table})
        rows = embedding(torch.tensor([[3, 63, 0]]))
    assert launches == ["Q6_K"]
    assert rows.shape == (1, 3, 256)
