"""Open GGUF files: validate the whole layout up front, map tensor data without copying it.

`load_gguf(path)` checks the header, every metadata entry and every tensor-info record against
the file size before it allocates anything sized by the file, so a corrupt or hostile file fails
fast with a `GGUFFormatError` that names the file and the problem. Tensor data is never read at
open time: `GGUFFile.raw_tensor(name)` is a uint8 view on a read-only memory map of the file.
Long metadata arrays (a tokenizer's 150k tokens and merges) are located and validated while
scanning but decoded into Python values only when first read.

Layout (all little-endian): magic "GGUF", u32 version, u64 tensor count, u64 metadata count;
metadata entries (string key, u32 value type, value); tensor-info records (string name,
u32 n_dims, u64 dims[n_dims] innermost first, u32 GGML type, u64 offset into the data section);
padding to the alignment; the data section. A string is a u64 byte length then UTF-8 bytes; an
array is a u32 element type, a u64 count, then the elements.
"""
from __future__ import annotations

import contextlib
import math
import mmap
import os
import struct
import types
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

from ...errors import GGUFFormatError, NotGGUFError
from ..ggml.quant_types import rows_are_whole_blocks, tensor_bytes

GGUF_MAGIC = b"GGUF"
SAFETENSORS_ADVICE = ("whatever its name, load it with ComfyUI's own loaders, or make a GGUF of it with "
                      "python -m comfyui_zimage_gguf convert (inspect says what it holds)")
# What a file that is no GGUF usually is, by its first bytes (lower-cased), and what to do instead.
OTHER_FORMATS = (
    (b"version https://git-lfs", "a Git LFS pointer",
     "download the file itself (the download button of the model page), not the repository's pointer"),
    (b"<!doctype html", "a web page", "the download saved a page instead of the model: download it again "
                                      "from the file's own link (.../resolve/main/...)"),
    (b"<html", "a web page", "the download saved a page instead of the model: download it again "
                             "from the file's own link (.../resolve/main/...)"),
    (b"pk\x03\x04", "a zip archive (a PyTorch .ckpt/.pt?)", "load it with ComfyUI's own loaders"),
    (b"\x80", "a Python pickle (a PyTorch .pt/.bin?)", "load it with ComfyUI's own loaders"),
)


def identify_other_format(head: bytes) -> tuple[str, str] | None:
    """(what the file is, what to do) for a file whose first bytes are no GGUF's, where they tell."""
    header_length = int.from_bytes(head[:8], "little") if len(head) >= 9 else 0
    if head[8:9] == b"{" and 2 <= header_length < 100_000_000:
        return "a safetensors file", SAFETENSORS_ADVICE
    start = head.lstrip().lower()
    for opening, kind, advice in OTHER_FORMATS:
        if start.startswith(opening):
            return kind, advice
    return None
SUPPORTED_VERSIONS = (2, 3)
MAX_DIMS = 4
DEFAULT_ALIGNMENT = 32
ALIGNMENT_KEY = "general.alignment"
ARCHITECTURE_KEY = "general.architecture"
# Arrays with at least this many elements are decoded on first access instead of at open time.
LAZY_ARRAY_MIN_LENGTH = 256
# Real files never nest arrays; the limit keeps a hostile file from exhausting the stack.
MAX_ARRAY_NESTING = 8

_HEADER = struct.Struct("<4sIQQ")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_MIN_METADATA_ENTRY_BYTES = 8 + 4 + 1  # empty key, value type, one-byte value
_MIN_TENSOR_INFO_BYTES = 8 + 4 + 4 + 8  # empty name, n_dims = 0, GGML type, offset
_INT64_LIMIT = 1 << 63


@dataclass(frozen=True)
class _FixedSizeType:
    struct_format: str
    numpy_dtype: str

    @property
    def size(self) -> int:
        return struct.calcsize(self.struct_format)


_FIXED_SIZE_TYPES: dict[GGUFValueType, _FixedSizeType] = {
    GGUFValueType.UINT8: _FixedSizeType("<B", "<u1"),
    GGUFValueType.INT8: _FixedSizeType("<b", "<i1"),
    GGUFValueType.UINT16: _FixedSizeType("<H", "<u2"),
    GGUFValueType.INT16: _FixedSizeType("<h", "<i2"),
    GGUFValueType.UINT32: _FixedSizeType("<I", "<u4"),
    GGUFValueType.INT32: _FixedSizeType("<i", "<i4"),
    GGUFValueType.UINT64: _FixedSizeType("<Q", "<u8"),
    GGUFValueType.INT64: _FixedSizeType("<q", "<i8"),
    GGUFValueType.FLOAT32: _FixedSizeType("<f", "<f4"),
    GGUFValueType.FLOAT64: _FixedSizeType("<d", "<f8"),
    GGUFValueType.BOOL: _FixedSizeType("<?", "?"),
}
_SCALAR_UNPACKERS = {t: struct.Struct(f.struct_format).unpack_from for t, f in _FIXED_SIZE_TYPES.items()}
_INTEGER_TYPES = frozenset(t for t, f in _FIXED_SIZE_TYPES.items() if f.struct_format[1] in "bBhHiIqQ")

# Fewest bytes one value of each type can occupy: bounds every count before anything is allocated.
_MIN_VALUE_BYTES: dict[GGUFValueType, int] = {
    **{t: f.size for t, f in _FIXED_SIZE_TYPES.items()},
    GGUFValueType.STRING: 8,
    GGUFValueType.ARRAY: 4 + 8,
}


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives in the file and how to interpret its bytes.

    `shape` is in torch order (outermost first), i.e. the file's dims reversed; `offset` is the
    absolute byte offset of the data in the file and `n_bytes` its length.
    """

    name: str
    ggml_type: GGMLQuantizationType
    shape: tuple[int, ...]
    offset: int
    n_bytes: int

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)


class RawTensor(NamedTuple):
    """A tensor's description and its undecoded bytes (a uint8 view on the file's memory map)."""

    info: TensorInfo
    data: torch.Tensor


@dataclass
class _LazyArray:
    """A validated array not yet decoded: where its elements lie in `source`."""

    element_type: GGUFValueType
    count: int
    start: int
    end: int
    source: Any  # the file's memory map, or a private copy of [start, end) once the file is closed


class GGUFMetadata(Mapping):
    """Read-only mapping from metadata key to Python value, in file order.

    Scalars are int, float, bool or str; arrays are tuples (nested arrays: tuples of tuples).
    Arrays of `LAZY_ARRAY_MIN_LENGTH` or more elements are decoded on first access and cached.
    """

    def __init__(self, path: str, values: dict[str, Any], value_types: dict[str, GGUFValueType]):
        self._path = path
        self._values = values
        self._value_types = value_types

    def __getitem__(self, key: str) -> Any:
        value = self._values[key]
        if isinstance(value, _LazyArray):
            value = _decode_array(
                self._path, value.source, value.element_type, value.count, value.start, f"metadata '{key}'"
            )
            self._values[key] = value
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __contains__(self, key: object) -> bool:
        return key in self._values

    def value_type(self, key: str) -> GGUFValueType:
        """The GGUF type of the value stored under `key` (ARRAY for arrays)."""
        return self._value_types[key]

    def array_length(self, key: str) -> int:
        """Number of elements of the array under `key`, without decoding it."""
        value = self._values[key]
        if isinstance(value, _LazyArray):
            return value.count
        if self._value_types[key] is not GGUFValueType.ARRAY:
            raise TypeError(f"{self._path}: metadata '{key}' is a {self._value_types[key].name}, not an array")
        return len(value)

    def is_decoded(self, key: str) -> bool:
        """False while the array under `key` is still waiting to be decoded on first access."""
        return not isinstance(self._values[key], _LazyArray)

    def _detach(self, mapped: Any) -> None:
        """Copy the bytes of still-undecoded arrays out of the memory map so the map can go."""
        for value in self._values.values():
            if isinstance(value, _LazyArray) and value.source is mapped:
                value.source = bytes(mapped[value.start : value.end])
                value.end -= value.start
                value.start = 0

    def __repr__(self) -> str:
        return f"<GGUFMetadata of {self._path}: {len(self)} entries>"


class GGUFFile:
    """An opened GGUF file: version, metadata, tensor table and zero-copy access to tensor bytes.

    The raw tensors are views on one read-only memory map, which stays mapped for as long as any
    of them is alive: `close()` (or leaving a `with` block) only drops this object's hold on it.
    Never modify a raw tensor in place: its memory is the file's read-only mapping.
    """

    def __init__(
        self,
        path: str,
        version: int,
        metadata: GGUFMetadata,
        tensors: dict[str, TensorInfo],
        alignment: int,
        data_offset: int,
        mapped: mmap.mmap,
    ):
        self.path = path
        self.version = version
        self.metadata = metadata
        self.tensors: Mapping[str, TensorInfo] = types.MappingProxyType(tensors)
        self.alignment = alignment
        self.data_offset = data_offset
        self._mapped: mmap.mmap | None = mapped
        with warnings.catch_warnings():
            # The map is read-only on purpose; torch can only say it cannot mark tensors read-only.
            warnings.filterwarnings("ignore", message="The given buffer is not writable", category=UserWarning)
            self._file_bytes: torch.Tensor | None = torch.frombuffer(mapped, dtype=torch.uint8)

    @property
    def architecture(self) -> str | None:
        value = self.metadata.get(ARCHITECTURE_KEY)
        return value if isinstance(value, str) else None

    @property
    def closed(self) -> bool:
        return self._file_bytes is None

    def raw_tensor(self, name: str) -> torch.Tensor:
        """The tensor's bytes as a 1-D uint8 tensor sharing memory with the file's memory map."""
        if self._file_bytes is None:
            raise ValueError(f"{self.path}: GGUF file is closed")
        try:
            info = self.tensors[name]
        except KeyError:
            raise KeyError(f"{self.path}: no tensor named '{name}'") from None
        return self._file_bytes[info.offset : info.offset + info.n_bytes]

    def state_dict(self) -> dict[str, RawTensor]:
        """Every tensor, in file order, as its `TensorInfo` plus its zero-copy raw bytes."""
        return {name: RawTensor(info, self.raw_tensor(name)) for name, info in self.tensors.items()}

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Tensor name -> shape (torch order), in file order: what model detection works from."""
        return {name: info.shape for name, info in self.tensors.items()}

    def close(self) -> None:
        if self._mapped is None:
            return
        self.metadata._detach(self._mapped)
        self._file_bytes = None
        self._mapped = None

    def __enter__(self) -> GGUFFile:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<GGUFFile {self.path}: v{self.version}, arch={self.architecture}, "
            f"{len(self.metadata)} metadata entries, {len(self.tensors)} tensors>"
        )


def load_gguf(path: str | os.PathLike) -> GGUFFile:
    """Open and validate a GGUF v2/v3 file; raises `GGUFFormatError` for any malformed content."""
    path = os.fspath(path)
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size == 0:
            raise GGUFFormatError(path, "the file is empty")
        if size < _HEADER.size:
            head = handle.read()
            if head[:4] != GGUF_MAGIC[: len(head)]:
                raise _bad_magic(path, head)
            _Scanner(path, head, size).check_version()
            raise GGUFFormatError(path, f"truncated: the file has {size} bytes, a GGUF header needs {_HEADER.size}")
        mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        return _Scanner(path, mapped, size).scan()
    except BaseException:
        # Unmap now rather than when the traceback is collected (Windows keeps mapped files locked).
        # A buffer export still alive in the traceback's frames makes close() refuse; GC unmaps then.
        with contextlib.suppress(BufferError):
            mapped.close()
        raise


def _bad_magic(path, head: bytes) -> GGUFFormatError:
    other = identify_other_format(head)
    if other is not None:
        return NotGGUFError(path, *other)
    return GGUFFormatError(path, f"bad magic {head[:4]!r}: expected {GGUF_MAGIC!r}; this is not a GGUF file")


class _Scanner:
    """One pass over header, metadata and tensor table; every read is bounds-checked first."""

    def __init__(self, path: str, buffer: Any, size: int):
        self.path = path
        self.buffer = buffer
        self.size = size

    def fail(self, problem: str) -> GGUFFormatError:
        return GGUFFormatError(self.path, problem)

    def need(self, pos: int, n_bytes: int, what: str) -> None:
        if n_bytes > self.size - pos:
            remaining = max(self.size - pos, 0)
            raise self.fail(
                f"truncated or corrupt: {what} needs {n_bytes} bytes at offset {pos}, but only {remaining} "
                f"of the file's {self.size} bytes are left (an incomplete download, or a corrupt length)"
            )

    def u32(self, pos: int, what: str) -> int:
        self.need(pos, 4, what)
        return _U32.unpack_from(self.buffer, pos)[0]

    def u64(self, pos: int, what: str) -> int:
        self.need(pos, 8, what)
        return _U64.unpack_from(self.buffer, pos)[0]

    def string(self, pos: int, what: str) -> tuple[str, int]:
        length = self.u64(pos, f"length of {what}")
        pos += 8
        self.need(pos, length, what)
        return _decode_utf8(self.path, self.buffer[pos : pos + length], what), pos + length

    def check_version(self) -> None:
        if self.size < 8:
            return
        version = _U32.unpack_from(self.buffer, 4)[0]
        if version in SUPPORTED_VERSIONS:
            return
        if version == 1:
            raise self.fail(
                "GGUF version 1 is not supported (only versions 2 and 3 are); "
                "convert the model again with a current llama.cpp"
            )
        if version & 0xFFFF == 0 and int.from_bytes(_U32.pack(version), "big") in SUPPORTED_VERSIONS:
            raise self.fail("big-endian GGUF files are not supported; use a little-endian (standard) file")
        raise self.fail(f"unsupported GGUF version {version}: only versions 2 and 3 are supported")

    def scan(self) -> GGUFFile:
        if self.buffer[:4] != GGUF_MAGIC:
            raise _bad_magic(self.path, bytes(self.buffer[:64]))
        self.check_version()
        _, version, n_tensors, n_metadata = _HEADER.unpack_from(self.buffer, 0)
        pos = _HEADER.size
        least_needed = n_metadata * _MIN_METADATA_ENTRY_BYTES + n_tensors * _MIN_TENSOR_INFO_BYTES
        if least_needed > self.size - pos:
            raise self.fail(
                f"the header announces {n_tensors} tensors and {n_metadata} metadata entries, which need "
                f"at least {least_needed} bytes, but only {self.size - pos} bytes follow the header"
            )
        metadata, pos = self.metadata(n_metadata, pos)
        alignment = self.alignment(metadata)
        tensors, pos = self.tensor_table(n_tensors, pos)
        data_offset = -(-pos // alignment) * alignment
        self.place_tensors(tensors, data_offset, alignment)
        return GGUFFile(self.path, version, metadata, tensors, alignment, data_offset, self.buffer)

    def metadata(self, count: int, pos: int) -> tuple[GGUFMetadata, int]:
        values: dict[str, Any] = {}
        value_types: dict[str, GGUFValueType] = {}
        for index in range(count):
            key, pos = self.string(pos, f"key of metadata entry #{index}")
            if key in values:
                raise self.fail(f"duplicate metadata key '{key}' (entry #{index})")
            value_type = self.value_type(self.u32(pos, f"value type of metadata '{key}'"), f"metadata '{key}'")
            values[key], pos = self.value(value_type, pos + 4, f"metadata '{key}'", depth=0)
            value_types[key] = value_type
        return GGUFMetadata(self.path, values, value_types), pos

    def value_type(self, type_id: int, what: str) -> GGUFValueType:
        try:
            return GGUFValueType(type_id)
        except ValueError:
            raise self.fail(f"{what} has unknown value type {type_id}") from None

    def value(self, value_type: GGUFValueType, pos: int, what: str, depth: int) -> tuple[Any, int]:
        fixed = _FIXED_SIZE_TYPES.get(value_type)
        if fixed is not None:
            self.need(pos, fixed.size, f"{what} ({value_type.name})")
            return _SCALAR_UNPACKERS[value_type](self.buffer, pos)[0], pos + fixed.size
        if value_type is GGUFValueType.STRING:
            return self.string(pos, what)
        element_type, count, start = self.array_header(pos, what, depth)
        end = self.skip_elements(element_type, count, start, what, depth)
        if count >= LAZY_ARRAY_MIN_LENGTH:
            return _LazyArray(element_type, count, start, end, self.buffer), end
        return _decode_array(self.path, self.buffer, element_type, count, start, what), end

    def array_header(self, pos: int, what: str, depth: int) -> tuple[GGUFValueType, int, int]:
        if depth >= MAX_ARRAY_NESTING:
            raise self.fail(f"{what}: arrays nested more than {MAX_ARRAY_NESTING} deep")
        element_type = self.value_type(self.u32(pos, f"element type of {what}"), f"array {what}")
        count = self.u64(pos + 4, f"length of {what}")
        start = pos + 12
        least_needed = count * _MIN_VALUE_BYTES[element_type]
        if least_needed > self.size - start:
            raise self.fail(
                f"{what} claims {count} {element_type.name} elements, which need at least {least_needed} "
                f"bytes, but only {max(self.size - start, 0)} bytes are left in the file"
            )
        return element_type, count, start

    def skip_elements(self, element_type: GGUFValueType, count: int, pos: int, what: str, depth: int) -> int:
        """Validate the elements of an array without decoding them; returns the offset after them."""
        fixed = _FIXED_SIZE_TYPES.get(element_type)
        if fixed is not None:
            return pos + count * fixed.size  # already bounded by array_header
        if element_type is GGUFValueType.STRING:
            return self.skip_strings(count, pos, what)
        for index in range(count):
            inner_type, inner_count, inner_start = self.array_header(pos, f"{what}[{index}]", depth + 1)
            pos = self.skip_elements(inner_type, inner_count, inner_start, f"{what}[{index}]", depth + 1)
        return pos

    def skip_strings(self, count: int, pos: int, what: str) -> int:
        # Hot path (150k-token vocabularies): no per-element checks; an out-of-range read or an
        # end past the file sends us to the checked walk below, which names the bad element.
        start = pos
        unpack_length = _U64.unpack_from
        buffer = self.buffer
        try:
            for _ in range(count):
                pos += 8 + unpack_length(buffer, pos)[0]
        except (struct.error, OverflowError):
            pos = self.size + 1
        if pos <= self.size:
            return pos
        pos = start
        for index in range(count):
            length = self.u64(pos, f"length of {what}[{index}]")
            self.need(pos + 8, length, f"{what}[{index}]")
            pos += 8 + length
        return pos

    def alignment(self, metadata: GGUFMetadata) -> int:
        if ALIGNMENT_KEY not in metadata:
            return DEFAULT_ALIGNMENT
        value_type = metadata.value_type(ALIGNMENT_KEY)
        if value_type not in _INTEGER_TYPES:
            raise self.fail(f"'{ALIGNMENT_KEY}' must be an integer, found a {value_type.name}")
        value = metadata[ALIGNMENT_KEY]
        if value <= 0 or value & (value - 1):
            raise self.fail(f"'{ALIGNMENT_KEY}' must be a positive power of two, found {value}")
        return value

    def tensor_table(self, count: int, pos: int) -> tuple[dict[str, TensorInfo], int]:
        """Read the tensor-info records; offsets are still relative to the data section."""
        tensors: dict[str, TensorInfo] = {}
        for index in range(count):
            name, pos = self.string(pos, f"name of tensor #{index}")
            if name in tensors:
                raise self.fail(f"duplicate tensor name '{name}' (tensor #{index})")
            what = f"tensor '{name}'"
            n_dims = self.u32(pos, f"dimension count of {what}")
            pos += 4
            if n_dims > MAX_DIMS:
                raise self.fail(f"{what} has {n_dims} dimensions; GGUF allows at most {MAX_DIMS}")
            self.need(pos, 8 * n_dims, f"dimensions of {what}")
            dims = struct.unpack_from(f"<{n_dims}Q", self.buffer, pos)
            pos += 8 * n_dims
            if any(d == 0 or d >= _INT64_LIMIT for d in dims):
                signed = [d - (1 << 64) if d >= _INT64_LIMIT else d for d in dims]
                raise self.fail(f"{what} has a zero or negative dimension in {signed}")
            type_id = self.u32(pos, f"GGML type of {what}")
            ggml_type = self.ggml_type(type_id, what)
            relative_offset = self.u64(pos + 4, f"data offset of {what}")
            pos += 12
            shape = tuple(reversed(dims))
            if not rows_are_whole_blocks(ggml_type, shape):
                raise self.fail(
                    f"{what} ({ggml_type.name}) has rows of {dims[0] if dims else 1} elements, not a whole number of "
                    f"{GGML_QUANT_SIZES[ggml_type][0]}-element blocks"
                )
            tensors[name] = TensorInfo(name, ggml_type, shape, relative_offset, tensor_bytes(ggml_type, shape))
        return tensors, pos

    def ggml_type(self, type_id: int, what: str) -> GGMLQuantizationType:
        try:
            ggml_type = GGMLQuantizationType(type_id)
        except ValueError:
            ggml_type = None
        if ggml_type not in GGML_QUANT_SIZES:
            raise self.fail(f"{what} has unknown GGML type id {type_id}")
        return ggml_type

    def place_tensors(self, tensors: dict[str, TensorInfo], data_offset: int, alignment: int) -> None:
        """Turn relative offsets into absolute ones; check alignment, bounds and overlaps."""
        for name, info in tensors.items():
            if info.offset % alignment:
                raise self.fail(
                    f"tensor '{name}' data offset {info.offset} is not a multiple of the alignment {alignment}"
                )
            start = data_offset + info.offset
            if info.n_bytes > self.size - start:
                raise self.fail(
                    f"tensor '{name}' ({info.ggml_type.name}, shape {list(info.shape)}, {info.n_bytes} bytes "
                    f"at offset {start}) runs past the end of the file ({self.size} bytes): "
                    "the file is truncated (an incomplete download?) or its tensor table is corrupt"
                )
            tensors[name] = TensorInfo(name, info.ggml_type, info.shape, start, info.n_bytes)
        by_offset = sorted(tensors.values(), key=lambda info: info.offset)
        for before, after in zip(by_offset, by_offset[1:]):
            if after.offset < before.offset + before.n_bytes:
                raise self.fail(f"the data of tensors '{before.name}' and '{after.name}' overlap")


def _decode_utf8(path: str, raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise GGUFFormatError(path, f"{what} is not valid UTF-8 ({exc.reason} at byte {exc.start})") from None


def _decode_array(path: str, buffer: Any, element_type: GGUFValueType, count: int, pos: int, what: str) -> tuple:
    """Decode elements already validated by `_Scanner.skip_elements` (only UTF-8 can still fail)."""
    fixed = _FIXED_SIZE_TYPES.get(element_type)
    if fixed is not None:
        return tuple(np.frombuffer(buffer, dtype=fixed.numpy_dtype, count=count, offset=pos).tolist())
    if element_type is GGUFValueType.STRING:
        return _decode_strings(path, buffer, count, pos, what)
    items = []
    for index in range(count):
        inner_type = GGUFValueType(_U32.unpack_from(buffer, pos)[0])
        inner_count = _U64.unpack_from(buffer, pos + 4)[0]
        inner_what = f"{what}[{index}]"
        items.append(_decode_array(path, buffer, inner_type, inner_count, pos + 12, inner_what))
        pos = _end_of_elements(buffer, inner_type, inner_count, pos + 12)
    return tuple(items)


def _decode_strings(path: str, buffer: Any, count: int, pos: int, what: str) -> tuple[str, ...]:
    unpack_length = _U64.unpack_from
    strings = []
    append = strings.append
    index = 0
    try:
        for index in range(count):
            length = unpack_length(buffer, pos)[0]
            pos += 8
            append(buffer[pos : pos + length].decode("utf-8"))
            pos += length
    except UnicodeDecodeError as exc:
        raise GGUFFormatError(path, f"{what}[{index}] is not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    return tuple(strings)


def _end_of_elements(buffer: Any, element_type: GGUFValueType, count: int, pos: int) -> int:
    """Offset after `count` already-validated elements starting at `pos`."""
    fixed = _FIXED_SIZE_TYPES.get(element_type)
    if fixed is not None:
        return pos + count * fixed.size
    for _ in range(count):
        if element_type is GGUFValueType.STRING:
            pos += 8 + _U64.unpack_from(buffer, pos)[0]
        else:
            inner_type = GGUFValueType(_U32.unpack_from(buffer, pos)[0])
            inner_count = _U64.unpack_from(buffer, pos + 4)[0]
            pos = _end_of_elements(buffer, inner_type, inner_count, pos + 12)
    return pos
