"""Conversion sources: a ComfyUI safetensors file (BF16/F16/F32 or ComfyUI's scaled fp8), a diffusers
folder, or a GGUF to requantize, read as one list of named tensors loaded one at a time.

Safetensors sources are read through the `safetensors` library, which validates the header
(offsets, sizes, dtypes) before any tensor is touched.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from gguf import GGMLQuantizationType as T

from ..errors import ConvertError


@dataclass(frozen=True)
class SourceTensor:
    name: str          # ComfyUI name (prefix stripped)
    shape: tuple[int, ...]
    dtype: torch.dtype  # what the planning rules see (a quantized GGUF tensor counts as bfloat16)
    load: Callable[[], torch.Tensor]


class Source:
    """The tensors of a source file, ComfyUI names, loaded one at a time."""

    def __init__(self, path: Path, tensors: list[SourceTensor], metadata: dict, requantized: bool, closer=None):
        self.path, self.tensors, self.metadata, self.requantized = path, tensors, metadata, requantized
        self._closer = closer

    def close(self) -> None:
        if self._closer:
            self._closer()


def _file_kind(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError as e:
        raise ConvertError(f"cannot read {path.name}: {e.strerror}\n{path}") from None
    if head[:4] == b"GGUF":
        return "gguf"
    if len(head) == 9 and struct.unpack("<Q", head[:8])[0] < 100_000_000 and head[8:9] == b"{":
        return "safetensors"
    raise ConvertError(f"{path.name} is neither a safetensors nor a GGUF file: convert reads those two formats\n"
                       f"{path}: starts with {head[:8]!r}")


class _SafetensorsFile:
    """A safetensors file read through the `safetensors` library, which checks the whole header
    (JSON, dtypes, shapes against offsets, offsets against the file size) when the file is opened.
    Each tensor is copied out of a handle opened for it alone: the mapped pages of a multi-GB file
    would otherwise stay in the process's RSS until the one handle closed."""

    def __init__(self, path: Path):
        self.path = path
        with self._open() as handle:
            self._metadata = handle.metadata() or {}
            self._entries = {}
            for name in handle.keys():
                part = handle.get_slice(name)
                self._entries[name] = (part.get_dtype(), tuple(part.get_shape()))

    def _open(self):
        from safetensors import safe_open

        try:
            return safe_open(str(self.path), framework="pt", device="cpu")
        except Exception as e:  # the library's SafetensorError, or an OSError
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ConvertError(f"{self.path.name} is not a readable safetensors file: {reason}\n{self.path}") from None

    def keys(self) -> list[str]:
        return list(self._entries)

    def metadata(self) -> dict:
        return self._metadata

    def dtype_name(self, name: str) -> str:
        return self._entries[name][0]

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entries[name][1]

    def get_tensor(self, name: str) -> torch.Tensor:
        with self._open() as handle:
            try:
                return handle.get_tensor(name).clone()
            except Exception as e:
                raise ConvertError(f"{self.path.name}: cannot read tensor {name} ({e}); the file changed or is "
                                   f"damaged\n{self.path}") from None


def _open_safetensors(path: Path) -> Source:
    handle = _SafetensorsFile(path)
    metadata = handle.metadata() or {}
    tensors, scaled = _safetensors_tensors(path, handle, metadata)
    return Source(path, tensors, metadata, requantized=scaled)


# ComfyUI's fp8 checkpoints (comfy/utils.py convert_old_quants, comfy/ops.py MixedPrecisionOps):
# `X.weight` float8 with a float32 scale `X.scale_weight` (older "scaled_fp8" files, marked by a
# `scaled_fp8` tensor) or `X.weight_scale` (with `X.comfy_quant` = JSON {"format": ...} per layer,
# or `_quantization_metadata` in the header); the weight is `float(weight) * scale`. Input scales
# (`scale_input` / `input_scale`) only matter for fp8 matmuls and are dropped.
FP8_DTYPES = {"F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}
FP8_FORMATS = ("float8_e4m3fn", "float8_e5m2")
_WEIGHT_SCALES = (".scale_weight", ".weight_scale")
_DROPPED = (".scale_input", ".input_scale", ".comfy_quant")


def _fp8_layer_formats(path: Path, handle, names: list[str], metadata: dict) -> dict[str, str]:
    """{layer: format} from `X.comfy_quant` tensors and `_quantization_metadata`; refuses non-fp8 formats."""
    import json

    formats = {}
    if "_quantization_metadata" in metadata:
        try:
            layers = json.loads(metadata["_quantization_metadata"]).get("layers", {})
        except (ValueError, AttributeError):
            raise ConvertError(f"{path.name}: its _quantization_metadata is not valid JSON\n{path}") from None
        formats.update({layer: str((conf or {}).get("format")) for layer, conf in layers.items()})
    for name in names:
        if name.endswith(".comfy_quant"):
            try:
                conf = json.loads(handle.get_tensor(name).numpy().tobytes())
            except ValueError:
                raise ConvertError(f"{path.name}: {name} is not ComfyUI quantization JSON\n{path}") from None
            formats[name[:-len(".comfy_quant")]] = str(conf.get("format"))
    for layer, fmt in formats.items():
        if fmt not in FP8_FORMATS:
            raise ConvertError(f"{path.name}: layer {layer} is stored as {fmt}; convert reads ComfyUI's scaled "
                               f"fp8 ({', '.join(FP8_FORMATS)}), not {fmt} checkpoints\n{path}")
    return formats


def _scaled_loader(path: Path, handle, name: str, scale_name: str | None, shape: tuple[int, ...]):
    def load():
        weight = handle.get_tensor(name).to(torch.float32)
        if scale_name is None:
            return weight
        scale = handle.get_tensor(scale_name).to(torch.float32)
        if scale.numel() == 1:
            return weight * scale.reshape(())
        if len(shape) >= 1 and scale.numel() == shape[0]:  # one scale per output row
            return weight * scale.reshape(shape[0], *([1] * (len(shape) - 1)))
        raise ConvertError(f"{path.name}: scale {scale_name} has {scale.numel()} values; convert applies one "
                           f"per tensor or one per row of {name} {list(shape)}\n{path}")
    return load


def _safetensors_tensors(path: Path, handle, metadata: dict) -> tuple[list[SourceTensor], bool]:
    """The model tensors of one safetensors file (fp8 weights with their scales applied, scale and
    marker tensors left out) and whether any were fp8."""
    names = list(handle.keys())
    present = set(names)
    formats = _fp8_layer_formats(path, handle, names, metadata)
    auxiliary = {n for n in names if n == "scaled_fp8" or n.endswith(".scaled_fp8") or n.endswith(_DROPPED)}
    for name in names:
        if name.endswith(_WEIGHT_SCALES) and name.rsplit(".", 1)[0] + ".weight" in present:
            auxiliary.add(name)
    tensors, scaled = [], False
    for name in names:
        if name in auxiliary:
            continue
        shape = handle.shape(name)
        dtype_name = handle.dtype_name(name)
        if dtype_name in FP8_DTYPES:
            layer = name[:-len(".weight")] if name.endswith(".weight") else name
            scale_name = next((layer + s for s in _WEIGHT_SCALES if layer + s in present), None)
            if layer in formats and scale_name is None:
                raise ConvertError(f"{path.name}: {name} is {formats[layer]} but the file has no "
                                   f"{layer}.weight_scale or {layer}.scale_weight\n{path}")
            # planned as the BF16 weight it was made from
            tensors.append(SourceTensor(name, shape, torch.bfloat16, _scaled_loader(path, handle, name, scale_name, shape)))
            scaled = True
            continue
        dtype = _SAFETENSORS_DTYPES.get(dtype_name)
        if dtype is None:
            raise ConvertError(
                f"{path.name}: tensor {name} is {dtype_name}; convert reads BF16, F16, F32 and (scaled) fp8 "
                f"E4M3/E5M2 weights\n{path}")
        tensors.append(SourceTensor(name, shape, dtype, lambda name=name: handle.get_tensor(name)))
    return tensors, scaled


_SAFETENSORS_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}
_GGUF_FLOAT = {T.F32: torch.float32, T.F16: torch.float16, T.BF16: torch.bfloat16}


def _open_gguf(path: Path) -> Source:
    from ..ops import dequantize
    from ..ops.gguf_file.reader import load_gguf

    gguf_file = load_gguf(path)
    tensors = []
    for name, info in gguf_file.tensors.items():
        dtype = _GGUF_FLOAT.get(info.ggml_type, torch.bfloat16)

        def load(name=name, info=info):
            return dequantize(gguf_file.raw_tensor(name), info.ggml_type, info.shape, torch.float32)

        tensors.append(SourceTensor(name, tuple(info.shape), dtype, load))
    requantized = any(t.ggml_type not in _GGUF_FLOAT for t in gguf_file.tensors.values())
    return Source(path, tensors, dict(gguf_file.metadata), requantized, gguf_file.close)


def _open_diffusers_folder(path: Path) -> Source:
    """A diffusers model folder (or its `transformer/` subfolder): every safetensors shard, one Source."""
    folder = path / "transformer" if (path / "transformer").is_dir() else path
    shards = sorted(folder.glob("*.safetensors"))
    if not shards:
        raise ConvertError(f"{path.name} is a folder without safetensors files: convert reads one safetensors or "
                           f"GGUF file, or a diffusers folder (its transformer/ holds the weights)\n{folder}")
    tensors, metadata, scaled, seen = [], {}, False, {}
    for shard in shards:
        if _file_kind(shard) != "safetensors":
            raise ConvertError(f"{shard.name} in {path.name} is not a safetensors file\n{shard}")
        handle = _SafetensorsFile(shard)
        shard_metadata = handle.metadata() or {}
        shard_tensors, shard_scaled = _safetensors_tensors(shard, handle, shard_metadata)
        for tensor in shard_tensors:
            if tensor.name in seen:
                raise ConvertError(f"{path.name}: tensor {tensor.name} is in both {seen[tensor.name]} and "
                                   f"{shard.name}\n{folder}")
            seen[tensor.name] = shard.name
        tensors += shard_tensors
        metadata.update(shard_metadata)
        scaled = scaled or shard_scaled
    return Source(path, tensors, metadata, requantized=scaled)


def open_source(path) -> Source:
    path = Path(path)
    if path.is_dir():
        return _open_diffusers_folder(path)
    return _open_gguf(path) if _file_kind(path) == "gguf" else _open_safetensors(path)
