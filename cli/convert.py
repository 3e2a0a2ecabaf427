"""`convert SRC OUT.gguf --type Q4_K_M`: a Z-Image diffusion model (ComfyUI safetensors in BF16/F16/F32
or ComfyUI's scaled fp8, a diffusers transformer folder, or a GGUF to requantize) -> a city96-style
GGUF: `general.architecture = lumina2`, ComfyUI's bare tensor names, `general.file_type` and
`general.quantization_version`, per-tensor types from ops.quant_rules.

Streaming: one tensor is read, quantized and written at a time into a temporary file beside
OUT.gguf (fileio.AtomicWrite), renamed to OUT.gguf only when complete and removed on any error or
interruption. Safetensors sources are read through the `safetensors` library, which validates the
header (offsets, sizes, dtypes) before any tensor is touched.
"""
from __future__ import annotations

import math
import shutil
import struct
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from gguf import GGML_QUANT_VERSION, GGMLQuantizationType as T, GGUFWriter

from ..errors import ZImageGGUFError
from ..ops.quant_types import tensor_bytes

# Every GGUF this pack writes (convert, Save Model as GGUF) says so, for `inspect` and for people.
MADE_BY_KEY, MADE_BY = "general.quantized_by", "comfyui-zimage-gguf"

# Diffusion families this converter writes, and the architecture / type rules city96 uses for them.
ARCHITECTURES = {"zimage": "lumina2", "lumina2": "lumina2", "nextdit": "lumina2"}


class ConvertError(ZImageGGUFError):
    """The source cannot be converted (layout, format, dtype) or the output cannot be written."""


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

    DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64,
              "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "U8": torch.uint8, "I8": torch.int8,
              "I16": torch.int16, "I32": torch.int32, "I64": torch.int64, "BOOL": torch.bool}

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
    from ..ops.reader import load_gguf

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


# diffusers' ZImageTransformer2DModel names -> ComfyUI's (the names of comfy/utils.py z_image_to_diffusers).
# Inside a block (layers.N, noise_refiner.N, context_refiner.N): renamed parts; to_q/to_k/to_v are
# stacked (rows q, k, v) into attention.qkv. Top level: the "2-1" (patch 2, frame 1) embedder and
# final layer lose their prefix. Every other name is the same in both.
DIFFUSERS_BLOCK_RENAMES = {
    "attention.norm_q.weight": "attention.q_norm.weight",
    "attention.norm_k.weight": "attention.k_norm.weight",
    "attention.to_out.0.weight": "attention.out.weight",
    "attention.to_out.0.bias": "attention.out.bias",
}
DIFFUSERS_QKV = ("attention.to_q.", "attention.to_k.", "attention.to_v.")
DIFFUSERS_TOP_RENAMES = {"all_final_layer.2-1.": "final_layer.", "all_x_embedder.2-1.": "x_embedder."}
DIFFUSERS_ZIMAGE_MARKER = "noise_refiner.0.attention.norm_k.weight"
_BLOCK = __import__("re").compile(r"^((?:layers|noise_refiner|context_refiner)\.\d+)\.(.+)$")


def _stacked(parts: list[SourceTensor]) -> Callable[[], torch.Tensor]:
    return lambda: torch.cat([p.load() for p in parts], dim=0)


def zimage_from_diffusers(source: Source, tensors: list[SourceTensor]) -> list[SourceTensor]:
    """Z-Image tensors under diffusers names -> ComfyUI names (q, k, v stacked into qkv)."""
    out, qkv = [], {}
    for tensor in tensors:
        block = _BLOCK.match(tensor.name)
        if block:
            prefix, rest = block.groups()
            if rest.startswith(DIFFUSERS_QKV):
                part = DIFFUSERS_QKV.index(rest[:len(DIFFUSERS_QKV[0])])
                key = f"{prefix}.attention.qkv.{rest[len(DIFFUSERS_QKV[0]):]}"
                if key not in qkv:
                    qkv[key] = [None, None, None]
                    out.append(key)  # placeholder, keeps the source order
                qkv[key][part] = tensor
                continue
            rest = DIFFUSERS_BLOCK_RENAMES.get(rest, rest)
            out.append(SourceTensor(f"{prefix}.{rest}", tensor.shape, tensor.dtype, tensor.load))
            continue
        name = tensor.name
        for old, new in DIFFUSERS_TOP_RENAMES.items():
            if name.startswith(old):
                name = new + name[len(old):]
        out.append(SourceTensor(name, tensor.shape, tensor.dtype, tensor.load))
    for index, item in enumerate(out):
        if isinstance(item, str):
            parts = qkv[item]
            missing = [f"to_{'qkv'[i]}" for i, p in enumerate(parts) if p is None]
            if missing:
                raise ConvertError(f"{source.path.name}: {item} needs to_q, to_k and to_v; {', '.join(missing)} "
                                   f"missing\n{source.path}")
            if len({p.shape[1:] for p in parts}) != 1:
                raise ConvertError(f"{source.path.name}: to_q/to_k/to_v of {item} have different widths "
                                   f"{[list(p.shape) for p in parts]}\n{source.path}")
            shape = (sum(p.shape[0] for p in parts),) + parts[0].shape[1:]
            out[index] = SourceTensor(item, shape, parts[0].dtype, _stacked(parts))
    return out


def _diffusion_tensors(source: Source) -> tuple[str, list[SourceTensor]]:
    """The diffusion model's tensors under ComfyUI names, and the GGUF architecture to write."""
    from ..nodes.families.diffusion import detect_diffusion_model
    from ..errors import ModelDetectionError

    tensors = source.tensors
    marker = next((t.name for t in tensors if t.name.endswith(DIFFUSERS_ZIMAGE_MARKER)), None)
    if marker is not None:
        prefix = marker[:-len(DIFFUSERS_ZIMAGE_MARKER)]
        tensors = zimage_from_diffusers(source, [SourceTensor(t.name[len(prefix):], t.shape, t.dtype, t.load)
                                                 for t in tensors if t.name.startswith(prefix)])
    shapes = {t.name: t.shape for t in tensors}
    try:
        info = detect_diffusion_model(source.metadata, shapes, str(source.path))
    except ModelDetectionError as e:
        raise ConvertError(f"{source.path.name}: unknown model layout, convert writes Z-Image models\n{e}") from None
    architecture = ARCHITECTURES.get(info.family)
    if architecture is None or info.key_format != "comfy":
        raise ConvertError(f"{source.path.name} holds {info.display_name}; convert writes Z-Image / Lumina 2 models "
                           f"in ComfyUI's layout\n{source.path}")
    kept = [SourceTensor(t.name[len(info.prefix):], t.shape, t.dtype, t.load)
            for t in tensors if t.name.startswith(info.prefix)]
    return architecture, kept



def _encode(values: torch.Tensor, ggml_type: T, imatrix: torch.Tensor | None = None) -> np.ndarray:
    from ..ops import quantize

    rows = values.reshape(-1, values.shape[-1]) if values.dim() else values.reshape(1, 1)
    if imatrix is None:
        return quantize(rows, ggml_type).numpy()
    return quantize(rows, ggml_type, imatrix=imatrix).numpy()


# Types ggml quantizes without looking at an importance matrix (llama-quantize passes it and it is unused).
_IMATRIX_UNUSED = (T.F32, T.F16, T.BF16, T.Q8_0)


def _tensor_imatrix(imatrix: dict | None, name: str, shape, ggml_type: T) -> torch.Tensor | None:
    """The importance weights for one tensor (looked up by its GGUF name), or None where there are
    none or the type does not use them; refuses a type this pack cannot weight, or a width mismatch."""
    from ..ops.quantize import imatrix_types

    if imatrix is None or name not in imatrix or ggml_type in _IMATRIX_UNUSED:
        return None
    if ggml_type not in imatrix_types():
        raise ConvertError(f"{name} is planned as {ggml_type.name}, which this pack cannot quantize with an "
                           f"imatrix; it can: {', '.join(t.name for t in imatrix_types())}")
    weights = imatrix[name]
    if weights.numel() != shape[-1]:
        raise ConvertError(f"the imatrix entry for {name} has {weights.numel()} weights but the tensor has "
                           f"{shape[-1]} columns: was it computed on another model?")
    return weights


class Progress:
    """Progress on stderr counted in work: the weights' elements quantized so far (a tensor's cost
    grows with its elements, not with its output bytes, which a Q8_0 embedder and a Q4_K block
    matrix make very different). A terminal gets one line updated in place; a pipe or log file gets
    a plain line every `log_every_s` seconds and at the end."""

    def __init__(self, total_tensors: int, total_elements: int, stream=None, log_every_s: float = 10.0):
        self.total_tensors, self.total_elements = total_tensors, max(total_elements, 1)
        self.stream = stream or sys.stderr
        self.in_place = bool(getattr(self.stream, "isatty", lambda: False)())
        self.log_every_s = log_every_s
        self.start = self.last_line = time.monotonic()
        self.done_elements = 0

    def update(self, index: int, name: str, n_elements: int) -> None:
        self.done_elements += n_elements
        now = time.monotonic()
        elapsed = now - self.start
        share = self.done_elements / self.total_elements
        eta = elapsed * (1 - share) / share if share > 0 else 0.0
        line = (f"[{index}/{self.total_tensors}] {100 * share:5.1f}% of the weights, "
                f"ETA {int(eta) // 60}:{int(eta) % 60:02d}  {name[:60]}")
        finished = index == self.total_tensors
        if self.in_place:
            self.stream.write(f"\r{line:<100}" + ("\n" if finished else ""))
        elif finished or now - self.last_line >= self.log_every_s:
            self.stream.write(line + "\n")
            self.last_line = now
        if finished:
            self.stream.write(f"done in {elapsed:.1f} s\n")
        self.stream.flush()


def _write_into(writer: GGUFWriter, file) -> None:
    """Point a GGUFWriter built without a path at an open file (the atomic writer's temporary
    file), so that it never opens a path itself."""
    from gguf.gguf_writer import WriterState

    writer.fout = [file]
    writer.state = WriterState.EMPTY


def write_gguf(out_path, architecture: str, mix: str, tensors: list[tuple[str, tuple[int, ...], T, Callable[[], torch.Tensor]]],
               progress: Progress | None = None, overwrite: bool = False,
               metadata: Callable[[GGUFWriter], None] | None = None, imatrix: dict | None = None,
               add_counter: bool = False) -> Path:
    """Write (name, shape, type, load) tensors streaming into a temporary file beside OUT, renamed to
    OUT when complete (fileio.AtomicWrite: never through a link, fsynced, removed on any failure);
    returns the final path (numbered `name_00001.gguf` with `add_counter` when OUT exists).
    `metadata(writer)` adds keys of the architecture (a text encoder's hyperparameters); `imatrix`
    (ops.imatrix.load_imatrix) weights the tensors it names, by their GGUF names."""
    from ..fileio import AtomicWrite, check_target
    from ..ops.quant_rules import MIXES

    out_path = check_target(out_path, overwrite or add_counter)
    total = sum(tensor_bytes(t, shape) for _, shape, t, _ in tensors)
    free = shutil.disk_usage(out_path.parent).free
    if free < total + (1 << 20):
        raise ConvertError(f"not enough disk space for {out_path.name}: it needs {total / 1e9:.2f} GB, "
                           f"{free / 1e9:.2f} GB free\n{out_path.parent}")
    weights = {name: _tensor_imatrix(imatrix, name, shape, ggml_type) for name, shape, ggml_type, _ in tensors}
    target = AtomicWrite(out_path, overwrite, add_counter)
    writer = GGUFWriter(None, arch=architecture)
    writer.add_file_type(int(MIXES[mix].file_type))
    writer.add_quantization_version(GGML_QUANT_VERSION)
    writer.add_string(MADE_BY_KEY, MADE_BY)
    if metadata:
        metadata(writer)
    for name, shape, ggml_type, _ in tensors:
        writer.add_tensor_info(name, shape, np.dtype(np.float32), tensor_bytes(ggml_type, shape), raw_dtype=ggml_type)
    with target as file:
        _write_into(writer, file)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for index, (name, shape, ggml_type, load) in enumerate(tensors, 1):
            data = (_encode(load(), ggml_type) if weights[name] is None
                    else _encode(load(), ggml_type, weights[name]))
            writer.write_tensor_data(data)
            if progress:
                progress.update(index, name, math.prod(shape))
    return target.path


def convert(src, out, mix: str = "Q4_K_M", overwrite: bool = False, progress: bool = True,
            warn: Callable[[str], None] | None = None, imatrix=None) -> Path:
    """Convert a Z-Image diffusion model (or a Qwen3 text encoder) to a GGUF of the given mix; returns
    the written path. `imatrix`: a llama.cpp importance-matrix file (.gguf or legacy .dat) whose
    entries, by GGUF tensor name, weight the K/IQ4 quantization as llama-quantize --imatrix does."""
    from ..ops.quant_rules import MIXES, plan_types
    from .convert_encoder import qwen3_prefix, qwen3_tensors

    if mix not in MIXES:
        raise ConvertError(f"unknown type {mix}: choose one of {', '.join(MIXES)}")
    importance = None
    if imatrix is not None:
        from ..ops.imatrix import load_imatrix
        from ..ops.quantize import imatrix_types

        base = MIXES[mix].base
        if base not in imatrix_types():
            raise ConvertError(f"{mix} cannot be made with an imatrix here: this pack weights "
                               f"{', '.join(t.name for t in imatrix_types())} (mixes based on them)")
        importance = load_imatrix(imatrix)
    source = open_source(src)
    try:
        encoder_prefix = qwen3_prefix(t.name for t in source.tensors)
        extra_metadata = None
        if encoder_prefix is not None:
            def refuse(message):
                raise ConvertError(f"{source.path.name}: {message}\n{source.path}")

            architecture = "qwen3"
            tensors, extra_metadata = qwen3_tensors(source, encoder_prefix, SourceTensor, refuse)
        else:
            architecture, tensors = _diffusion_tensors(source)
        if source.requantized and warn:
            warn(f"{source.path.name} is already quantized: requantizing to {mix} adds the errors of both "
                 f"quantizations; convert the original BF16/F16 file if you have it")
        plan = plan_types({t.name: (t.shape, t.dtype) for t in tensors}, mix, architecture)
        jobs = [(t.name, t.shape, plan[t.name], t.load) for t in tensors]
        meter = Progress(len(jobs), sum(math.prod(shape) for _, shape, _, _ in jobs)) if progress else None
        return write_gguf(out, architecture, mix, jobs, meter, overwrite, extra_metadata, importance)
    finally:
        source.close()


def add_convert_parser(sub) -> None:
    from ..ops.quant_rules import MIXES

    parser = sub.add_parser("convert", help="write a Z-Image model (safetensors, diffusers folder or GGUF) or a "
                                            "Qwen3 text encoder (HF/ComfyUI safetensors) as a quantized GGUF")
    parser.add_argument("src", help="Z-Image diffusion model: ComfyUI .safetensors (BF16/F16/F32, scaled fp8), "
                                        "a diffusers folder (or its transformer/), or a .gguf; or a Qwen3 text "
                                        "encoder in HF/ComfyUI names (.safetensors or an HF folder)")
    parser.add_argument("out", help="output .gguf path (written through a temporary file beside it)")
    parser.add_argument("--type", default="Q4_K_M", choices=list(MIXES), help="llama.cpp file type (default Q4_K_M)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    parser.add_argument("--imatrix", metavar="FILE", help="llama.cpp importance matrix (.gguf or legacy .dat) "
                                                          "for K/IQ4 mixes, by GGUF tensor name")


def run_convert(args) -> int:
    try:
        path = convert(args.src, args.out, args.type, overwrite=args.overwrite, progress=not args.quiet,
                       warn=lambda message: print(f"warning: {message}", file=sys.stderr),
                       imatrix=getattr(args, "imatrix", None))
    except ZImageGGUFError as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted: no output written", file=sys.stderr)
        return 130
    print(path)
    return 0
