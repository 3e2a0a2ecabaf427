"""Which float dtypes to dequantize to and compute in, per device.

BF16 where the device handles it; FP16 on Apple MPS where BF16 is unsupported (macOS < 14);
never FP8 on MPS; FP32 where asked. One pure function (`choose_dtypes`) over a `DeviceCaps`
description, so every branch is testable with simulated devices; `device_caps` probes a real one.
"""
from __future__ import annotations

import logging
import platform
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)

FP8_DTYPES = tuple(getattr(torch, n) for n in ("float8_e4m3fn", "float8_e5m2") if hasattr(torch, n))


@dataclass(frozen=True)
class DeviceCaps:
    type: str  # "cpu", "cuda", "mps", "xpu", ...
    bf16: bool
    fp8: bool = False


@dataclass(frozen=True)
class DtypeChoice:
    compute: torch.dtype
    dequant: torch.dtype


def _macos_major() -> int:
    release = platform.mac_ver()[0]
    try:
        return int(release.split(".")[0])
    except ValueError:
        return 0


def device_caps(device) -> DeviceCaps:
    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        major, _ = torch.cuda.get_device_capability(index)
        return DeviceCaps("cuda", bf16=torch.cuda.is_bf16_supported(), fp8=major >= 9 or (major, _) >= (8, 9))
    if device.type == "mps":
        return DeviceCaps("mps", bf16=_macos_major() >= 14, fp8=False)
    if device.type == "xpu":
        return DeviceCaps("xpu", bf16=True, fp8=False)
    return DeviceCaps(device.type, bf16=True, fp8=False)


def choose_dtypes(caps: DeviceCaps, requested: torch.dtype | None = None) -> DtypeChoice:
    """Compute and dequant dtype for a device; `requested` (None: automatic) is honoured where safe."""
    auto = torch.bfloat16 if caps.bf16 else torch.float16
    if requested is None:
        return DtypeChoice(auto, auto)
    if requested in FP8_DTYPES and (caps.type == "mps" or not caps.fp8):
        log.warning("%s is not supported on this %s device; using %s instead", requested, caps.type, auto)
        return DtypeChoice(auto, auto)
    if requested in FP8_DTYPES:
        # fp8 is a storage format: dequantize and compute in a real float type
        return DtypeChoice(auto, auto)
    if requested == torch.bfloat16 and not caps.bf16:
        log.warning("bfloat16 is not supported on this %s device; using float16 instead", caps.type)
        return DtypeChoice(torch.float16, torch.float16)
    if not requested.is_floating_point:
        raise ValueError(f"{requested} is not a float dtype; model code must never see integer weight dtypes")
    return DtypeChoice(requested, requested)


def dtype_for(device, requested: torch.dtype | None = None) -> DtypeChoice:
    return choose_dtypes(device_caps(device), requested)
