"""`convert SRC OUT.gguf --type Q4_K_M`: a Z-Image diffusion model (ComfyUI safetensors, or a GGUF to
requantize) -> a city96-style GGUF: `general.architecture = lumina2`, ComfyUI's bare tensor names,
`general.file_type` and `general.quantization_version`, per-tensor types from ops.quant_rules.

Streaming: one tensor is read, quantized and written at a time into OUT.gguf.partial, which is
renamed to OUT.gguf only when complete and removed on any error or interruption.
"""
from __future__ import annotations

import math
import os
import shutil
import struct
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGML_QUANT_VERSION, GGMLQuantizationType as T, GGUFWriter

from ..errors import ZImageGGUFError

# Diffusion families this converter writes, and the architecture / type rules city96 uses for them.
ARCHITECTURES = {"zimage": "lumina2", "lumina2": "lumina2", "nextdit": "lumina2"}
SOURCE_DTYPES = {torch.float32, torch.float16, torch.bfloat16}


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


def _open_safetensors(path: Path) -> Source:
    from safetensors import safe_open

    handle = safe_open(str(path), framework="pt")
    names = list(handle.keys())
    tensors = []
    for name in names:
        piece = handle.get_slice(name)
        dtype = _SAFETENSORS_DTYPES.get(piece.get_dtype())
        if dtype is None:
            raise ConvertError(
                f"{path.name}: tensor {name} is {piece.get_dtype()}; convert reads BF16, F16 and F32 weights "
                f"(fp8 checkpoints are not supported yet)\n{path}")
        tensors.append(SourceTensor(name, tuple(piece.get_shape()), dtype,
                                    lambda name=name: handle.get_tensor(name)))
    return Source(path, tensors, handle.metadata() or {}, requantized=False)


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


def open_source(path) -> Source:
    path = Path(path)
    if path.is_dir():
        raise ConvertError(f"{path.name} is a folder: convert reads one safetensors or GGUF file "
                           f"(diffusers folders are not supported yet)\n{path}")
    return _open_gguf(path) if _file_kind(path) == "gguf" else _open_safetensors(path)


def _diffusion_tensors(source: Source) -> tuple[str, list[SourceTensor]]:
    """The diffusion model's tensors under ComfyUI names, and the GGUF architecture to write."""
    from ..nodes.families.diffusion import detect_diffusion_model
    from ..errors import ModelDetectionError

    shapes = {t.name: t.shape for t in source.tensors}
    try:
        info = detect_diffusion_model(source.metadata, shapes, str(source.path))
    except ModelDetectionError as e:
        raise ConvertError(f"{source.path.name}: unknown model layout, convert writes Z-Image models\n{e}") from None
    architecture = ARCHITECTURES.get(info.family)
    if architecture is None or info.key_format != "comfy":
        raise ConvertError(f"{source.path.name} holds {info.display_name}; convert writes Z-Image / Lumina 2 models "
                           f"in ComfyUI's layout\n{source.path}")
    kept = [SourceTensor(t.name[len(info.prefix):], t.shape, t.dtype, t.load)
            for t in source.tensors if t.name.startswith(info.prefix)]
    return architecture, kept


def _nbytes(ggml_type: T, shape) -> int:
    block_size, type_size = GGML_QUANT_SIZES[ggml_type]
    return math.prod(shape) // block_size * type_size


def _encode(values: torch.Tensor, ggml_type: T) -> np.ndarray:
    from ..ops import quantize

    return quantize(values.reshape(-1, values.shape[-1]) if values.dim() else values.reshape(1, 1), ggml_type).numpy()


class Progress:
    """One updating line on stderr: tensors, bytes written, ETA."""

    def __init__(self, total_tensors: int, total_bytes: int, stream=None):
        self.total_tensors, self.total_bytes = total_tensors, total_bytes
        self.stream = stream or sys.stderr
        self.start = time.monotonic()
        self.done_bytes = 0

    def update(self, index: int, name: str, nbytes: int) -> None:
        self.done_bytes += nbytes
        elapsed = time.monotonic() - self.start
        rate = self.done_bytes / elapsed if elapsed > 0 else 0.0
        eta = (self.total_bytes - self.done_bytes) / rate if rate > 0 else 0.0
        self.stream.write(f"\r[{index}/{self.total_tensors}] {self.done_bytes / 1e9:.2f}/{self.total_bytes / 1e9:.2f} GB "
                          f"ETA {int(eta) // 60}:{int(eta) % 60:02d}  {name[:60]:<60}")
        if index == self.total_tensors:
            self.stream.write(f"\ndone in {elapsed:.1f} s\n")
        self.stream.flush()


def write_gguf(out_path, architecture: str, mix: str, tensors: list[tuple[str, tuple[int, ...], T, Callable[[], torch.Tensor]]],
               progress: Progress | None = None, overwrite: bool = False) -> Path:
    """Write (name, shape, type, load) tensors streaming through OUT.partial; returns the final path."""
    from ..ops.quant_rules import MIXES

    out_path = Path(out_path)
    if out_path.exists() and not overwrite:
        raise ConvertError(f"{out_path.name} already exists: choose another name or allow overwriting\n{out_path}")
    partial = out_path.with_name(out_path.name + ".partial")
    total = sum(_nbytes(t, shape) for _, shape, t, _ in tensors)
    free = shutil.disk_usage(out_path.parent if str(out_path.parent) else ".").free
    if free < total + (1 << 20):
        raise ConvertError(f"not enough disk space for {out_path.name}: it needs {total / 1e9:.2f} GB, "
                           f"{free / 1e9:.2f} GB free\n{out_path.parent}")
    writer = GGUFWriter(str(partial), arch=architecture)
    writer.add_file_type(int(MIXES[mix].file_type))
    writer.add_quantization_version(GGML_QUANT_VERSION)
    for name, shape, ggml_type, _ in tensors:
        writer.add_tensor_info(name, shape, np.dtype(np.float32), _nbytes(ggml_type, shape), raw_dtype=ggml_type)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for index, (name, shape, ggml_type, load) in enumerate(tensors, 1):
            data = _encode(load(), ggml_type)
            writer.write_tensor_data(data)
            if progress:
                progress.update(index, name, data.nbytes)
        writer.close()
        os.replace(partial, out_path)
    except BaseException:
        writer.close()
        partial.unlink(missing_ok=True)
        raise
    return out_path


def convert(src, out, mix: str = "Q4_K_M", overwrite: bool = False, progress: bool = True,
            warn: Callable[[str], None] | None = None) -> Path:
    """Convert a Z-Image diffusion model file to a GGUF of the given mix; returns the written path."""
    from ..ops.quant_rules import MIXES, plan_types

    if mix not in MIXES:
        raise ConvertError(f"unknown type {mix}: choose one of {', '.join(MIXES)}")
    source = open_source(src)
    try:
        architecture, tensors = _diffusion_tensors(source)
        if source.requantized and warn:
            warn(f"{source.path.name} is already quantized: requantizing to {mix} adds the errors of both "
                 f"quantizations; convert the original BF16/F16 file if you have it")
        plan = plan_types({t.name: (t.shape, t.dtype) for t in tensors}, mix, architecture)
        jobs = [(t.name, t.shape, plan[t.name], t.load) for t in tensors]
        meter = Progress(len(jobs), sum(_nbytes(ty, shape) for _, shape, ty, _ in jobs)) if progress else None
        return write_gguf(out, architecture, mix, jobs, meter, overwrite)
    finally:
        source.close()


def add_convert_parser(sub) -> None:
    from ..ops.quant_rules import MIXES

    parser = sub.add_parser("convert", help="write a Z-Image model (safetensors or GGUF) as a quantized GGUF")
    parser.add_argument("src", help="ComfyUI Z-Image diffusion model: .safetensors (BF16/F16/F32) or .gguf")
    parser.add_argument("out", help="output .gguf path (written through OUT.partial)")
    parser.add_argument("--type", default="Q4_K_M", choices=list(MIXES), help="llama.cpp file type (default Q4_K_M)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    parser.add_argument("--quiet", action="store_true", help="no progress line")


def run_convert(args) -> int:
    try:
        path = convert(args.src, args.out, args.type, overwrite=args.overwrite, progress=not args.quiet,
                       warn=lambda message: print(f"warning: {message}", file=sys.stderr))
    except ZImageGGUFError as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted: no output written", file=sys.stderr)
        return 130
    print(path)
    return 0
