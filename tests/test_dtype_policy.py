import pytest
import torch

from comfyui_zimage_gguf.ops.runtime.dtype_policy import DeviceCaps, choose_dtypes, device_caps

MPS_OLD = DeviceCaps("mps", bf16=False)
MPS_NEW = DeviceCaps("mps", bf16=True)
CUDA_ADA = DeviceCaps("cuda", bf16=True, fp8=True)
CUDA_TURING = DeviceCaps("cuda", bf16=False, fp8=False)
CPU = DeviceCaps("cpu", bf16=True)


@pytest.mark.parametrize(
    "caps, expected",
    [(MPS_OLD, torch.float16), (MPS_NEW, torch.bfloat16), (CUDA_ADA, torch.bfloat16),
     (CUDA_TURING, torch.float16), (CPU, torch.bfloat16)],
)
def test_automatic_choice_prefers_bf16_only_where_supported(caps, expected):
    choice = choose_dtypes(caps)
    assert choice.compute == expected and choice.dequant == expected


def test_bf16_request_falls_back_to_fp16_on_old_macos():
    assert choose_dtypes(MPS_OLD, torch.bfloat16).compute == torch.float16


def test_fp8_is_never_used_on_mps():
    for caps in (MPS_OLD, MPS_NEW):
        choice = choose_dtypes(caps, torch.float8_e4m3fn)
        assert choice.compute not in (torch.float8_e4m3fn, torch.float8_e5m2)
        assert choice.dequant.is_floating_point and choice.dequant.itemsize >= 2


def test_fp32_is_honoured_everywhere():
    for caps in (MPS_OLD, MPS_NEW, CUDA_ADA, CPU):
        assert choose_dtypes(caps, torch.float32).compute == torch.float32


def test_integer_dtypes_are_refused():
    with pytest.raises(ValueError, match="never see integer"):
        choose_dtypes(CPU, torch.uint8)


def test_probing_the_cpu():
    caps = device_caps("cpu")
    assert caps.type == "cpu" and caps.bf16 and not caps.fp8
