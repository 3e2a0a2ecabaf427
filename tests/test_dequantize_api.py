"""The public `comfyui_zimage_gguf.ops.dequantize`: shape, dtype and device of the result, and its errors."""
import threading

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T, quants

from comfyui_zimage_gguf.errors import UnsupportedQuantTypeError, ZImageGGUFError
from comfyui_zimage_gguf.ops import QUANT_TYPES, dequantize
from comfyui_zimage_gguf.ops.ggml.kernels import blocks as kernel_blocks
from comfyui_zimage_gguf.ops.ggml.kernels import fp4_ternary, kquants, legacy

NON_IQUANT_TYPES = [*legacy.TYPES, *kquants.TYPES, *fp4_ternary.TYPES]


def raw_weight(ggml_type: T, rows: int, blocks_per_row: int, seed: int = 0) -> torch.Tensor:
    """(rows, row_bytes) uint8 tensor of valid blocks, as a GGUF reader hands it over."""
    raw = QUANT_TYPES[ggml_type].random_blocks(rows * blocks_per_row, np.random.default_rng(seed))
    return torch.from_numpy(raw).reshape(rows, -1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("ggml_type", list(QUANT_TYPES), ids=lambda t: t.name)
def test_result_has_requested_shape_and_dtype_and_matches_gguf(ggml_type, dtype):
    block_size = GGML_QUANT_SIZES[ggml_type][0]
    data = raw_weight(ggml_type, rows=3, blocks_per_row=2)
    result = dequantize(data, ggml_type, (3, 2 * block_size), dtype)
    assert result.shape == (3, 2 * block_size) and result.dtype == dtype and result.device == data.device
    expected = torch.from_numpy(np.array(quants.dequantize(data.numpy(), ggml_type), dtype=np.float32))
    assert torch.equal(result, expected.to(dtype))


def test_data_is_read_as_a_flat_byte_run_whatever_its_shape():
    data = raw_weight(T.Q8_0, rows=4, blocks_per_row=3)
    as_rows = dequantize(data, T.Q8_0, (4, 96), torch.float32)
    as_flat = dequantize(data.reshape(-1), T.Q8_0, (2, 2, 96), torch.float32)
    assert torch.equal(as_rows.reshape(2, 2, 96), as_flat)


@pytest.mark.parametrize("ggml_type", list(QUANT_TYPES), ids=lambda t: t.name)
def test_empty_tensor(ggml_type):
    block_size = GGML_QUANT_SIZES[ggml_type][0]
    result = dequantize(torch.empty(0, dtype=torch.uint8), ggml_type, (0, block_size), torch.bfloat16)
    assert result.shape == (0, block_size) and result.dtype == torch.bfloat16


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_works_under_inference_mode_and_keeps_the_thread_setting(monkeypatch, dtype):
    # ComfyUI dequantizes under torch.inference_mode(); small chunks make the driver run
    # several chunks on torch's intra-op threads.
    monkeypatch.setattr(kernel_blocks, "CPU_CHUNK_ELEMENTS", 4 * 2 * 144)
    data = raw_weight(T.Q4_K, rows=8, blocks_per_row=4)
    expected = torch.from_numpy(np.array(quants.dequantize(data.numpy(), T.Q4_K), dtype=np.float32))
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch.inference_mode():
            result = dequantize(data, T.Q4_K, (8, 1024), dtype)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)
    assert torch.equal(result, expected.to(dtype))


@pytest.mark.parametrize("ggml_type", list(QUANT_TYPES), ids=lambda t: t.name)
def test_every_type_works_under_inference_mode(ggml_type):
    # ComfyUI dequantizes under torch.inference_mode(); a million weights is enough for every
    # kernel to split its work, so writes from worker threads are exercised too.
    block_size = GGML_QUANT_SIZES[ggml_type][0]
    n_blocks = (1 << 20) // block_size
    data = raw_weight(ggml_type, rows=1, blocks_per_row=n_blocks)
    with torch.inference_mode():
        result = dequantize(data, ggml_type, (n_blocks * block_size,), torch.float16)
    assert result.shape == (n_blocks * block_size,) and torch.isfinite(result).all()


def test_default_dtype_is_float16():
    assert dequantize(raw_weight(T.Q4_0, 1, 1), T.Q4_0, (32,)).dtype == torch.float16


def test_accepts_the_type_as_its_integer_id():
    data = raw_weight(T.Q4_K, 2, 1)
    assert torch.equal(dequantize(data, int(T.Q4_K), (2, 256)), dequantize(data, T.Q4_K, (2, 256)))


@pytest.mark.parametrize("ggml_type", NON_IQUANT_TYPES, ids=lambda t: t.name)
def test_result_stays_on_the_data_device(ggml_type):
    # The meta device runs no arithmetic but checks that nothing is built on another device.
    block_size, type_size = GGML_QUANT_SIZES[ggml_type]
    data = torch.empty(2 * type_size, dtype=torch.uint8, device="meta")
    result = dequantize(data, ggml_type, (2 * block_size,), torch.float16)
    assert result.device.type == "meta" and result.shape == (2 * block_size,) and result.dtype == torch.float16


def test_one_byte_short_raises_the_pack_error_naming_type_and_sizes():
    data = raw_weight(T.Q6_K, rows=2, blocks_per_row=1).reshape(-1)[:-1]
    with pytest.raises(ZImageGGUFError) as caught:
        dequantize(data, T.Q6_K, (2, 256))
    message = str(caught.value)
    assert "Q6_K" in message and str(data.numel()) in message and "[2, 256]" in message


def test_shape_not_a_whole_number_of_blocks_raises_the_pack_error():
    data = raw_weight(T.Q4_0, rows=1, blocks_per_row=2).reshape(-1)
    with pytest.raises(ZImageGGUFError, match="Q4_0"):
        dequantize(data, T.Q4_0, (48,))


@pytest.mark.parametrize("ggml_type", [T.Q8_1, 12345], ids=str)
def test_unsupported_type_raises_naming_it(ggml_type):
    with pytest.raises(UnsupportedQuantTypeError, match=str(getattr(ggml_type, "name", ggml_type))):
        dequantize(torch.zeros(34, dtype=torch.uint8), ggml_type, (32,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("ggml_type", list(QUANT_TYPES), ids=lambda t: t.name)
def test_out_receives_the_values_and_is_returned(ggml_type, dtype):
    block_size = GGML_QUANT_SIZES[ggml_type][0]
    data = raw_weight(ggml_type, rows=3, blocks_per_row=2, seed=4)
    out = torch.full((3, 2 * block_size), 7.0, dtype=dtype)
    result = dequantize(data, ggml_type, (3, 2 * block_size), dtype, out=out)
    assert result is out
    assert torch.equal(out, dequantize(data, ggml_type, (3, 2 * block_size), dtype))


def test_out_may_be_a_view_into_a_larger_buffer():
    data = raw_weight(T.Q4_K, rows=2, blocks_per_row=1)
    buffer = torch.full((3 * 256,), 5.0, dtype=torch.float16)
    out = dequantize(data, T.Q4_K, (2, 256), torch.float16, out=buffer[:512].view(2, 256))
    assert out.data_ptr() == buffer.data_ptr()
    assert torch.equal(out, dequantize(data, T.Q4_K, (2, 256), torch.float16))
    assert torch.equal(buffer[512:], torch.full((256,), 5.0, dtype=torch.float16))  # untouched


@pytest.mark.parametrize(
    ("out", "problem"),
    [
        (torch.empty(4, 32, dtype=torch.float16), r"shape \[4, 32\]"),
        (torch.empty(2, 64, dtype=torch.float32), r"torch\.float32 tensor"),
        (torch.empty(64, 2, dtype=torch.float16).t(), r"a non-contiguous torch\.float16"),
        (torch.empty(2, 64, dtype=torch.float16, device="meta"), r"on meta"),
    ],
    ids=["shape", "dtype", "non-contiguous", "device"],
)
def test_an_unfit_out_raises_saying_what_it_must_be(out, problem):
    data = raw_weight(T.Q8_0, rows=2, blocks_per_row=2)
    with pytest.raises(ZImageGGUFError, match=r"out must be a contiguous torch\.float16 tensor of shape \[2, 64\] on cpu; got .*" + problem):
        dequantize(data, T.Q8_0, (2, 64), torch.float16, out=out)


def _threads_of_a_new_thread() -> int:
    seen = []
    thread = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    return seen[0]


def test_leaves_the_callers_and_new_threads_intra_op_settings_alone(monkeypatch):
    # torch.set_num_threads anywhere changes what threads started later get; dequantization must
    # change neither that nor the caller's own setting.
    monkeypatch.setattr(kernel_blocks, "CPU_CHUNK_ELEMENTS", 4 * 2 * 144)
    data = raw_weight(T.Q4_K, rows=8, blocks_per_row=4)
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        before = _threads_of_a_new_thread()
        dequantize(data, T.Q4_K, (8, 1024), torch.float16)
        assert torch.get_num_threads() == 2
        assert _threads_of_a_new_thread() == before == 2
    finally:
        torch.set_num_threads(previous)


