"""The Triton kernels (ops/ggml/triton_kernels) run in Triton's interpreter on CPU tensors and equal the
torch kernels bit for bit, in float16, bfloat16 and float32, for every registered type; and the
backend switch of ops.dequantize. The compiler's side (PTX, bytes per program) is
tests/test_triton_compile_check.py; a real GPU run is `bench --gpu-check` (not run here).

TRITON_INTERPRET=1 must be set when the kernels are defined: the `interpreted` fixture
(tests/helpers/triton_interpreter.py) sets it for this module and (re)loads the kernel modules
under it; other tests keep the environment they had.
"""
import logging

import numpy as np
import pytest
import torch

from comfyui_zimage_gguf.errors import ZImageGGUFError
from comfyui_zimage_gguf.ops import QUANT_TYPES, dequantize
from comfyui_zimage_gguf.ops.ggml import dequant, triton_kernels

from helpers.triton_interpreter import interpreted_registry

pytest.importorskip("triton", reason="triton is not installed: the Triton kernels cannot be checked")
# the large scales overflow float16 on purpose (inf, as torch gives); numpy warns in the interpreter
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# fp16 scales every test writes into some blocks: zero, the smallest subnormals, the smallest normal,
# ordinary, and large enough that float16 outputs overflow to inf.
EXTREME_SCALES = np.array([0.0, -0.0, 2.0**-24, -3 * 2.0**-20, 2.0**-14, 1 / 3, -7.5, 1000.0, -65504.0],
                          dtype=np.float16)


@pytest.fixture(scope="module")
def interpreted():
    """The registry, its kernels defined under TRITON_INTERPRET=1 (restored afterwards)."""
    with interpreted_registry() as registry:
        yield registry


def _blocks(ggml_type, n_blocks: int, seed: int) -> torch.Tensor:
    """Random valid blocks, every other block's fp16 scale fields set to one of EXTREME_SCALES."""
    rng = np.random.default_rng(seed)
    raw = QUANT_TYPES[ggml_type].random_blocks(n_blocks, rng).copy()
    for offset in triton_kernels.registry()[ggml_type].scale_fields:
        chosen = rng.choice(EXTREME_SCALES, n_blocks).astype("<f2").view(np.uint8).reshape(n_blocks, 2)
        raw[::2, offset:offset + 2] = chosen[::2]
    return torch.from_numpy(raw)


def _assert_same_bits(got: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    """Equal bit patterns (so -0 differs from +0); NaNs must sit in the same places."""
    assert got.dtype == expected.dtype and got.shape == expected.shape
    nan = torch.isnan(expected)
    assert torch.equal(torch.isnan(got), nan), f"{what}: NaNs differ"
    words = {2: torch.int16, 4: torch.int32}[got.element_size()]
    differ = (got.view(words) != expected.view(words)) & ~nan
    if differ.any():
        first = differ.nonzero()[0].tolist()
        pytest.fail(f"{what}: {int(differ.sum())} of {got.numel()} values differ, first at {first}: "
                    f"{got[tuple(first)].item()!r} vs torch {expected[tuple(first)].item()!r}")


def _torch_values(ggml_type, blocks: torch.Tensor, dtype) -> torch.Tensor:
    qt = QUANT_TYPES[ggml_type]
    out = torch.empty((blocks.shape[0], qt.block_size), dtype=dtype)
    qt.kernel(blocks, out)
    return out


def _triton_values(kernel, blocks: torch.Tensor, dtype, blocks_per_program=None) -> torch.Tensor:
    """The kernel's values, written into the front of a larger NaN-filled buffer whose tail must stay NaN."""
    qt = QUANT_TYPES[kernel.ggml_type]
    n = blocks.shape[0]
    buffer = torch.full((n + 3, qt.block_size), float("nan"), dtype=dtype)
    triton_kernels.launch(kernel, blocks, buffer[:n], blocks_per_program)
    assert torch.isnan(buffer[n:]).all(), "the kernel wrote past the last block"
    return buffer[:n]


def test_every_required_type_has_a_triton_kernel(interpreted):
    required = {"Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
                "IQ4_NL", "IQ4_XS", "BF16"}
    assert required <= {t.name for t in interpreted}
    for ggml_type, kernel in interpreted.items():
        assert kernel.ggml_type == ggml_type and ggml_type in QUANT_TYPES
        assert kernel.blocks_per_program & (kernel.blocks_per_program - 1) == 0, "BLOCKS must be a power of two"


@pytest.mark.parametrize("type_name", [t.name for t in QUANT_TYPES])
def test_kernel_equals_the_torch_kernel_in_every_dtype(interpreted, type_name):
    kernel = next((k for t, k in interpreted.items() if t.name == type_name), None)
    if kernel is None:
        pytest.skip(f"{type_name} has no Triton kernel (the torch kernel serves it on every device)")
    # a full program of the kernel's own size, then one with 5 of its blocks
    blocks = _blocks(kernel.ggml_type, kernel.blocks_per_program + 5, seed=len(type_name))
    for dtype in DTYPES:
        _assert_same_bits(_triton_values(kernel, blocks, dtype), _torch_values(kernel.ggml_type, blocks, dtype),
                          f"{type_name} -> {dtype}")


@pytest.mark.parametrize("type_name", ["Q8_0", "Q5_1", "Q3_K", "Q6_K", "IQ4_XS", "BF16"])
def test_small_programs_with_a_partly_masked_last_one(interpreted, type_name):
    kernel = next(k for t, k in interpreted.items() if t.name == type_name)
    blocks = _blocks(kernel.ggml_type, 11, seed=3)  # programs of 4: 4 + 4 + 3
    for dtype in DTYPES:
        _assert_same_bits(_triton_values(kernel, blocks, dtype, blocks_per_program=4),
                          _torch_values(kernel.ggml_type, blocks, dtype), f"{type_name} -> {dtype}")


def test_bfloat16_rounds_to_nearest_even_as_torch_does(interpreted):
    # float32 values exactly halfway between two bfloat16 values, either side of even, and just
    # above/below halfway: Triton's interpreter truncates, the kernels must not
    kernel = next(k for t, k in interpreted.items() if t.name == "F32")
    bits = np.array([0x3F808000, 0x3F818000, 0x3F808001, 0x3F817FFF, 0xBF808000, 0x7F7FFFFF, 0x00000001],
                    dtype="<u4")
    blocks = torch.from_numpy(bits.view(np.uint8).reshape(-1, 4).copy())
    _assert_same_bits(_triton_values(kernel, blocks, torch.bfloat16),
                      _torch_values(kernel.ggml_type, blocks, torch.bfloat16), "F32 -> bfloat16")


def test_dequantize_with_backend_triton_runs_the_kernel(interpreted, monkeypatch):
    data = _blocks(QUANT_TYPES_BY_NAME["Q4_K"], 6, seed=1).reshape(-1)
    launched = []
    real_launch = triton_kernels.launch
    monkeypatch.setattr(triton_kernels, "launch", lambda *a, **k: launched.append(a[0].name) or real_launch(*a, **k))
    for dtype in DTYPES:
        got = dequantize(data, QUANT_TYPES_BY_NAME["Q4_K"], (3, 512), dtype, backend="triton")
        _assert_same_bits(got, dequantize(data, QUANT_TYPES_BY_NAME["Q4_K"], (3, 512), dtype, backend="torch"),
                          f"Q4_K -> {dtype}")
    assert launched == ["Q4_K"] * 3


def test_backend_from_the_environment(interpreted, monkeypatch):
    data = _blocks(QUANT_TYPES_BY_NAME["Q8_0"], 2, seed=2).reshape(-1)
    launched = []
    monkeypatch.setattr(triton_kernels, "launch", lambda *a, **k: launched.append(a[0].name))
    monkeypatch.setenv(dequant.BACKEND_ENV, "triton")
    dequantize(data, QUANT_TYPES_BY_NAME["Q8_0"], (64,), torch.float32)
    monkeypatch.setenv(dequant.BACKEND_ENV, "torch")
    dequantize(data, QUANT_TYPES_BY_NAME["Q8_0"], (64,), torch.float32)
    monkeypatch.setenv(dequant.BACKEND_ENV, "auto")  # CPU tensors: torch
    dequantize(data, QUANT_TYPES_BY_NAME["Q8_0"], (64,), torch.float32)
    assert launched == ["Q8_0"]
    monkeypatch.setenv(dequant.BACKEND_ENV, "cuda")
    with pytest.raises(ZImageGGUFError, match=r"unknown dequantization backend \(ZIMAGE_GGUF_DEQUANT_BACKEND=cuda\); "
                                              r"expected one of auto, torch, triton"):
        dequantize(data, QUANT_TYPES_BY_NAME["Q8_0"], (64,), torch.float32)


def test_unknown_backend_argument_is_named():
    data = torch.zeros(34, dtype=torch.uint8)
    with pytest.raises(ZImageGGUFError, match=r"unknown dequantization backend \(backend='gpu'\)"):
        dequantize(data, QUANT_TYPES_BY_NAME["Q8_0"], (32,), backend="gpu")


def test_backend_triton_on_the_cpu_without_the_interpreter_is_refused(interpreted, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET")
    data = torch.zeros(34, dtype=torch.uint8)
    with pytest.raises(ZImageGGUFError, match="cannot dequantize Q8_0 with backend triton: the tensor is on the CPU; "
                                              r"Triton kernels run on CUDA/ROCm devices \(or on the CPU with "
                                              "TRITON_INTERPRET=1\\)"):
        dequantize(data, QUANT_TYPES_BY_NAME["Q8_0"], (32,), backend="triton")


def test_backend_triton_refuses_a_type_or_dtype_without_a_kernel(interpreted):
    missing = [t for t in QUANT_TYPES if t not in interpreted]
    if missing:
        qt = QUANT_TYPES[missing[0]]
        data = torch.zeros(qt.type_size, dtype=torch.uint8)
        with pytest.raises(ZImageGGUFError, match=f"cannot dequantize {qt.name} with backend triton: "
                                                  f"{qt.name} has no Triton kernel"):
            dequantize(data, qt.ggml_type, (qt.block_size,), backend="triton")
    data = torch.zeros(34, dtype=torch.uint8)
    with pytest.raises(ZImageGGUFError, match="write float16, bfloat16 or float32, not torch.float64"):
        dequantize(data, QUANT_TYPES_BY_NAME["Q8_0"], (32,), torch.float64, backend="triton")


def test_a_failing_kernel_under_auto_logs_one_line_and_falls_back_for_good(interpreted, monkeypatch, caplog):
    # "auto" picks Triton for CUDA tensors only; this machine has none, so the test makes the CPU count
    monkeypatch.setattr(dequant, "_auto_uses_triton", lambda device: True)
    monkeypatch.setattr(dequant, "_TRITON_FAILED", set())
    calls = []

    def broken_launch(kernel, blocks, out, *args):
        calls.append(kernel.name)
        raise RuntimeError("PTX assembly failed\nptxas fatal: something long")

    monkeypatch.setattr(triton_kernels, "launch", broken_launch)
    data = _blocks(QUANT_TYPES_BY_NAME["Q5_0"], 4, seed=5).reshape(-1)
    expected = dequantize(data, QUANT_TYPES_BY_NAME["Q5_0"], (128,), torch.float16, backend="torch")
    with caplog.at_level(logging.WARNING, logger=dequant.__name__):
        first = dequantize(data, QUANT_TYPES_BY_NAME["Q5_0"], (128,), torch.float16)
        second = dequantize(data, QUANT_TYPES_BY_NAME["Q5_0"], (128,), torch.float16)
    _assert_same_bits(first, expected, "fallback")
    _assert_same_bits(second, expected, "fallback")
    assert calls == ["Q5_0"]  # remembered: not tried again
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["Triton Q5_0 dequantization failed (RuntimeError: PTX assembly failed); "
                        "using the torch kernel for Q5_0 from now on"]


def test_a_failing_kernel_under_backend_triton_is_one_clear_error(interpreted, monkeypatch):
    def broken_launch(kernel, blocks, out, *args):
        raise RuntimeError("out of resources: shared memory")

    monkeypatch.setattr(triton_kernels, "launch", broken_launch)
    with pytest.raises(ZImageGGUFError, match=r"^the Triton kernel for Q8_0 failed: RuntimeError: out of resources"):
        dequantize(torch.zeros(34, dtype=torch.uint8), QUANT_TYPES_BY_NAME["Q8_0"], (32,), backend="triton")


QUANT_TYPES_BY_NAME = {t.name: t for t in QUANT_TYPES}
