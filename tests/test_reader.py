"""GGUF reader: round trips against files written by gguf-py, laziness, zero-copy mapping, and
one test per way a file can be malformed (each asserting the error names the file and the problem)."""
from __future__ import annotations

import gc
import struct
import tracemalloc
import warnings
import weakref
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as T
from gguf import GGUFValueType as V

from comfyui_zimage_gguf import load_gguf
from comfyui_zimage_gguf.errors import GGUFFormatError
from comfyui_zimage_gguf.ops.gguf_file.reader import LAZY_ARRAY_MIN_LENGTH, MAX_ARRAY_NESTING

RNG = np.random.default_rng(1234)
LONG_STRINGS = [f"tok_{i}_{'ĠÄ€中'[i % 4]}" for i in range(LAZY_ARRAY_MIN_LENGTH + 44)]
LONG_INTS = list(range(-150, LAZY_ARRAY_MIN_LENGTH + 150))

# key -> (value, GGUF type, element type for arrays); written in this order.
METADATA = {
    "test.u8": (200, V.UINT8, None),
    "test.i8": (-100, V.INT8, None),
    "test.u16": (60000, V.UINT16, None),
    "test.i16": (-30000, V.INT16, None),
    "test.u32": (4_000_000_000, V.UINT32, None),
    "test.i32": (-2_000_000_000, V.INT32, None),
    "test.f32": (1e-6, V.FLOAT32, None),
    "test.bool": (True, V.BOOL, None),
    "test.string": ("qwen2 ünïcödé 中文", V.STRING, None),
    "test.u64": (2**63 + 5, V.UINT64, None),
    "test.i64": (-(2**62), V.INT64, None),
    "test.f64": (3.141592653589793, V.FLOAT64, None),
    "test.empty_string": ("", V.STRING, None),
    "test.short_ints": ([1, -2, 3], V.ARRAY, V.INT32),
    "test.short_floats": ([0.5, -1.25], V.ARRAY, V.FLOAT32),
    "test.short_bools": ([True, False, True], V.ARRAY, V.BOOL),
    "test.short_strings": (["a", "", "ü b"], V.ARRAY, V.STRING),
    "test.short_u64": ([2**64 - 1, 0], V.ARRAY, V.UINT64),
    "test.nested": ([[1, 2], [3], [4, 5, 6]], V.ARRAY, None),
    "test.nested_strings": ([["x", "yy"], ["zzz"]], V.ARRAY, None),
    "test.long_strings": (LONG_STRINGS, V.ARRAY, V.STRING),
    "test.long_ints": (LONG_INTS, V.ARRAY, V.INT32),
}


def _quantized(ggml_type, rows, cols):
    return gguf.quants.quantize(RNG.standard_normal((rows, cols)).astype(np.float32), ggml_type)


def _random_blocks(ggml_type, rows, cols):
    block_size, type_size = gguf.GGML_QUANT_SIZES[ggml_type]
    return RNG.integers(0, 256, (rows, cols // block_size * type_size), dtype=np.uint8)


# name -> (array as handed to the writer, raw GGML type or None for plain numpy dtypes, torch-order shape)
TENSORS = {
    "blk.0.attn_norm.weight": (RNG.standard_normal(96).astype(np.float32), None, (96,)),
    "blk.0.f16.weight": (RNG.standard_normal((2, 3, 32)).astype(np.float16), None, (2, 3, 32)),
    "blk.0.i32": (np.arange(-5, 7, dtype=np.int32).reshape(3, 4), None, (3, 4)),
    "blk.0.q8_0.weight": (_quantized(T.Q8_0, 4, 64), T.Q8_0, (4, 64)),
    "blk.0.q4_0.weight": (_quantized(T.Q4_0, 3, 96), T.Q4_0, (3, 96)),
    "blk.0.q5_1.weight": (_quantized(T.Q5_1, 2, 32), T.Q5_1, (2, 32)),
    "blk.0.bf16.weight": (_quantized(T.BF16, 5, 6), T.BF16, (5, 6)),
    "blk.0.q6_k.weight": (_random_blocks(T.Q6_K, 2, 512), T.Q6_K, (2, 512)),
    "blk.0.iq2_xxs.weight": (_random_blocks(T.IQ2_XXS, 1, 256), T.IQ2_XXS, (1, 256)),
    "blk.1.q8_0.weight": (_quantized(T.Q8_0, 6, 32), T.Q8_0, (6, 32)),
}


def write_gguf(path: Path, metadata=METADATA, tensors=TENSORS, alignment: int | None = None) -> Path:
    writer = gguf.GGUFWriter(path, "testarch")
    if alignment is not None:
        writer.add_custom_alignment(alignment)
    for key, (value, value_type, element_type) in metadata.items():
        writer.add_key_value(key, value, value_type, sub_type=element_type)
    for name, (array, raw_type, _) in tensors.items():
        writer.add_tensor(name, array, raw_dtype=raw_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def expected_value(value, value_type, element_type):
    """What the reader should hand back: float32 values rounded to float32, arrays as tuples."""
    if value_type is V.FLOAT32:
        return float(np.float32(value))
    if value_type is V.ARRAY:
        if element_type is None:
            return tuple(expected_value(v, V.ARRAY, None) if isinstance(v, list) else v for v in value)
        return tuple(expected_value(v, element_type, None) for v in value)
    return value


@pytest.fixture(scope="module")
def valid_file(tmp_path_factory) -> Path:
    return write_gguf(tmp_path_factory.mktemp("gguf") / "valid.gguf")


@pytest.fixture(scope="module")
def valid_bytes(valid_file) -> bytes:
    return valid_file.read_bytes()


# ---------------------------------------------------------------- valid files


def test_round_trip_metadata_of_every_type(valid_file):
    f = load_gguf(valid_file)
    assert f.path == str(valid_file)
    assert f.version == 3
    assert f.architecture == "testarch"
    assert f.alignment == 32
    assert list(f.metadata) == ["general.architecture", *METADATA]
    for key, (value, value_type, element_type) in METADATA.items():
        assert f.metadata.value_type(key) is value_type, key
        got = f.metadata[key]
        assert got == expected_value(value, value_type, element_type), key
        assert type(got) is type(expected_value(value, value_type, element_type)), key


def test_metadata_is_read_only(valid_file):
    metadata = load_gguf(valid_file).metadata
    with pytest.raises(TypeError):
        metadata["test.u8"] = 1
    assert not hasattr(metadata, "pop")


def test_round_trip_tensors(valid_file):
    f = load_gguf(valid_file)
    assert list(f.tensors) == list(TENSORS)
    reference = {t.name: t for t in gguf.GGUFReader(valid_file).tensors}
    for name, (array, raw_type, shape) in TENSORS.items():
        info = f.tensors[name]
        assert info.name == name
        assert info.shape == shape
        assert info.ggml_type is (raw_type or reference[name].tensor_type)
        assert info.offset == reference[name].data_offset
        assert info.n_bytes == array.nbytes
        assert info.n_elements == int(np.prod(shape))
        raw = f.raw_tensor(name)
        assert raw.dtype is torch.uint8 and raw.shape == (array.nbytes,)
        assert bytes(raw.numpy()) == array.tobytes(), name


def test_state_dict_holds_info_and_raw_bytes_in_file_order(valid_file):
    f = load_gguf(valid_file)
    state = f.state_dict()
    assert list(state) == list(TENSORS)
    for name, (array, _, _) in TENSORS.items():
        assert state[name].info is f.tensors[name]
        assert bytes(state[name].data.numpy()) == array.tobytes()


def test_float_tensor_bytes_reinterpret_to_the_written_values(valid_file):
    f = load_gguf(valid_file)
    info = f.tensors["blk.0.f16.weight"]
    values = f.raw_tensor(info.name).view(torch.float16).reshape(info.shape)
    assert torch.equal(values, torch.from_numpy(TENSORS[info.name][0]))


def test_version_2_file_reads_like_version_3(valid_bytes, tmp_path):
    path = tmp_path / "v2.gguf"
    path.write_bytes(patch(valid_bytes, 4, "<I", 2))
    f = load_gguf(path)
    assert f.version == 2
    assert f.metadata["test.string"] == METADATA["test.string"][0]
    assert bytes(f.raw_tensor("blk.0.q8_0.weight").numpy()) == TENSORS["blk.0.q8_0.weight"][0].tobytes()


def test_custom_alignment(tmp_path):
    tensors = {k: TENSORS[k] for k in ("blk.0.attn_norm.weight", "blk.0.q5_1.weight", "blk.0.i32")}
    f = load_gguf(write_gguf(tmp_path / "aligned.gguf", metadata={}, tensors=tensors, alignment=256))
    assert f.alignment == 256
    assert f.data_offset % 256 == 0
    for name, (array, _, _) in tensors.items():
        assert (f.tensors[name].offset - f.data_offset) % 256 == 0
        assert bytes(f.raw_tensor(name).numpy()) == array.tobytes()


def test_file_without_tensors_or_architecture(tmp_path):
    path = tmp_path / "bare.gguf"
    path.write_bytes(struct.pack("<4sIQQ", b"GGUF", 3, 0, 1) + gguf_string("x") + struct.pack("<Ib", V.INT8, -3))
    f = load_gguf(path)
    assert f.architecture is None
    assert dict(f.metadata) == {"x": -3}
    assert f.tensors == {}


def test_empty_array_and_scalar_tensor(tmp_path):
    """Shapes the gguf-py writer refuses but the format allows: a 0-element array, a 0-dim tensor."""
    path = tmp_path / "edge.gguf"
    header = struct.pack("<4sIQQ", b"GGUF", 3, 1, 1)
    entry = gguf_string("empty") + struct.pack("<IIQ", V.ARRAY, V.STRING, 0)
    record = gguf_string("scalar") + struct.pack("<IIQ", 0, T.F32, 0)
    body = header + entry + record
    path.write_bytes(body + bytes(-len(body) % 32) + struct.pack("<f", 2.5))
    f = load_gguf(path)
    assert f.metadata["empty"] == ()
    assert f.tensors["scalar"].shape == ()
    assert f.raw_tensor("scalar").view(torch.float32).item() == 2.5


# ---------------------------------------------------------------- laziness


def test_long_arrays_are_decoded_only_when_read(valid_file):
    metadata = load_gguf(valid_file).metadata
    for key in ("test.long_strings", "test.long_ints"):
        assert not metadata.is_decoded(key)
        assert metadata.array_length(key) == len(METADATA[key][0])
        assert not metadata.is_decoded(key)
    assert metadata.is_decoded("test.short_strings")
    assert metadata["test.long_strings"] == tuple(LONG_STRINGS)
    assert metadata.is_decoded("test.long_strings")
    assert not metadata.is_decoded("test.long_ints")
    assert metadata["test.long_ints"] == tuple(LONG_INTS)
    assert metadata["test.long_strings"] is metadata["test.long_strings"]


def test_array_length_refuses_scalars(valid_file):
    metadata = load_gguf(valid_file).metadata
    assert metadata.array_length("test.short_ints") == 3
    with pytest.raises(TypeError, match="test.u8"):
        metadata.array_length("test.u8")


# ---------------------------------------------------------------- memory map


def _file_mappings(path: Path) -> list[tuple[int, int, str]]:
    """(start, end, permissions) of this process's memory mappings of `path`."""
    mappings = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5] == str(path.resolve()):
            start, end = (int(x, 16) for x in fields[0].split("-"))
            mappings.append((start, end, fields[1]))
    return mappings


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux /proc/self/maps")
def test_raw_tensors_are_views_on_a_read_only_mapping_of_the_file(valid_file):
    f = load_gguf(valid_file)
    raw = f.raw_tensor("blk.0.q4_0.weight")
    mapping = [m for m in _file_mappings(valid_file) if m[0] <= raw.data_ptr() < m[1]]
    assert len(mapping) == 1, "the tensor's memory is not a mapping of the file"
    map_start, _, permissions = mapping[0]
    assert raw.data_ptr() - map_start == f.tensors["blk.0.q4_0.weight"].offset
    assert raw.untyped_storage().nbytes() == valid_file.stat().st_size
    assert permissions.startswith("r-"), permissions


def test_every_raw_tensor_shares_one_storage(valid_file):
    f = load_gguf(valid_file)
    pointers = {f.raw_tensor(name).untyped_storage().data_ptr() for name in f.tensors}
    assert len(pointers) == 1


def test_opening_and_reading_tensors_emits_no_warning(valid_file):
    # torch reports its non-writable-buffer warning once per process unless told to warn always.
    previous = torch.is_warn_always_enabled()
    torch.set_warn_always(True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            f = load_gguf(valid_file)
            f.state_dict()
            f.raw_tensor("blk.0.q8_0.weight")
    finally:
        torch.set_warn_always(previous)


def test_tensors_outlive_close_and_release_the_map_when_gone(valid_file):
    with load_gguf(valid_file) as f:
        raw = f.raw_tensor("blk.0.q8_0.weight")
        state = f.state_dict()
        mapped = weakref.ref(f._mapped)
    assert f.closed
    with pytest.raises(ValueError, match="closed"):
        f.raw_tensor("blk.0.q8_0.weight")
    gc.collect()
    assert mapped() is not None, "the map went away while tensors still view it"
    assert bytes(raw.numpy()) == TENSORS["blk.0.q8_0.weight"][0].tobytes()
    assert bytes(state["blk.0.i32"].data.numpy()) == TENSORS["blk.0.i32"][0].tobytes()
    assert f.metadata["test.long_strings"] == tuple(LONG_STRINGS), "lazy metadata must survive close()"
    del raw, state
    gc.collect()
    assert mapped() is None, "the map outlived every view on it"


def test_unknown_tensor_name_is_a_key_error_naming_file_and_tensor(valid_file):
    with pytest.raises(KeyError, match="no tensor named 'nope'") as info:
        load_gguf(valid_file).raw_tensor("nope")
    assert str(valid_file) in str(info.value)


# ---------------------------------------------------------------- malformed files


def gguf_string(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


def patch(data: bytes, offset: int, fmt: str, *values) -> bytes:
    packed = struct.pack(fmt, *values)
    return data[:offset] + packed + data[offset + len(packed) :]


def locate(data: bytes, text: str) -> int:
    """Offset just after the unique length-prefixed string `text` (a key or a tensor name)."""
    needle = gguf_string(text)
    assert data.count(needle) == 1, text
    return data.index(needle) + len(needle)


def after_key(data: bytes, key: str) -> int:
    """Offset of the value type that follows metadata key `key`."""
    return locate(data, key)


def tensor_record(data: bytes, name: str) -> dict[str, int]:
    """Offsets of the fields of tensor `name`'s info record."""
    n_dims_at = locate(data, name)
    n_dims = struct.unpack_from("<I", data, n_dims_at)[0]
    dims_at = n_dims_at + 4
    type_at = dims_at + 8 * n_dims
    return {"name": n_dims_at - len(name), "n_dims": n_dims_at, "dims": dims_at, "type": type_at, "offset": type_at + 4}


def _end_of_tensor_table(data: bytes) -> int:
    last = tensor_record(data, list(TENSORS)[-1])
    return last["offset"] + 8


def corrupt_bad_magic(d):
    return b"GGML" + d[4:]


def corrupt_empty(d):
    return b""


def corrupt_truncated_header(d):
    return d[:20]


def corrupt_truncated_in_metadata(d):
    outer_elements = after_key(d, "test.nested_strings") + 4 + 4 + 8
    second_inner_array = outer_elements + 12 + (8 + 1) + (8 + 2)
    return d[: second_inner_array + 12 + 8 + 1]  # one byte into "zzz"


def corrupt_truncated_in_long_string_array(d):
    element_200 = after_key(d, "test.long_strings") + 4 + 4 + 8 + sum(8 + len(s.encode()) for s in LONG_STRINGS[:200])
    return d[: element_200 + 4]


def corrupt_truncated_in_tensor_table(d):
    return d[: tensor_record(d, "blk.0.q4_0.weight")["dims"] + 4]


def corrupt_truncated_tensor_data(d):
    return d[:-50]


def corrupt_version_1(d):
    return patch(d, 4, "<I", 1)


def corrupt_version_4(d):
    return patch(d, 4, "<I", 4)


def corrupt_big_endian(d):
    return patch(d, 4, ">I", 3)


def corrupt_misaligned_offset(d):
    at = tensor_record(d, "blk.0.q8_0.weight")["offset"]
    return patch(d, at, "<Q", struct.unpack_from("<Q", d, at)[0] + 4)


def corrupt_unknown_ggml_type(d):
    return patch(d, tensor_record(d, "blk.0.q8_0.weight")["type"], "<I", 99)


def corrupt_retired_ggml_type(d):
    return patch(d, tensor_record(d, "blk.0.q8_0.weight")["type"], "<I", 4)  # Q4_2, removed from GGML


def corrupt_five_dims(d):
    return patch(d, tensor_record(d, "blk.0.q8_0.weight")["n_dims"], "<I", 5)


def corrupt_zero_dim(d):
    return patch(d, tensor_record(d, "blk.0.q8_0.weight")["dims"] + 8, "<Q", 0)


def corrupt_negative_dim(d):
    return patch(d, tensor_record(d, "blk.0.q8_0.weight")["dims"] + 8, "<q", -4)


def corrupt_string_length_2_pow_60(d):
    return patch(d, after_key(d, "test.string") + 4, "<Q", 2**60)


def corrupt_key_length_2_pow_60(d):
    return patch(d, after_key(d, "test.u8") - len("test.u8") - 8, "<Q", 2**60)


def corrupt_long_string_element_length(d):
    first_element = after_key(d, "test.long_strings") + 4 + 4 + 8
    return patch(d, first_element + 8 * 3 + sum(len(s.encode()) for s in LONG_STRINGS[:3]), "<Q", 2**40)


def corrupt_array_count_2_pow_40(d):
    return patch(d, after_key(d, "test.long_ints") + 8, "<Q", 2**40)


def corrupt_n_tensors_2_pow_50(d):
    return patch(d, 8, "<Q", 2**50)


def corrupt_n_metadata_2_pow_50(d):
    return patch(d, 16, "<Q", 2**50)


def corrupt_partial_block(d):
    return patch(d, tensor_record(d, "blk.0.q8_0.weight")["dims"], "<Q", 48)


def corrupt_duplicate_tensor_name(d):
    return patch(d, tensor_record(d, "blk.1.q8_0.weight")["name"], "5s", b"blk.0")


def corrupt_duplicate_key(d):
    return patch(d, after_key(d, "test.i8") - 2, "2s", b"u8")


def corrupt_bad_utf8_key(d):
    return patch(d, after_key(d, "test.u8") - 2, "2s", b"\xff\xfe")


def corrupt_bad_utf8_string(d):
    return patch(d, after_key(d, "test.string") + 4 + 8, "2s", b"\xc3\x28")


def corrupt_bad_utf8_tensor_name(d):
    return patch(d, tensor_record(d, "blk.0.i32")["name"], "1s", b"\x80")


def corrupt_unknown_value_type(d):
    return patch(d, after_key(d, "test.u16"), "<I", 13)


def corrupt_unknown_array_element_type(d):
    return patch(d, after_key(d, "test.short_ints") + 4, "<I", 42)


def corrupt_data_past_end(d):
    return patch(d, tensor_record(d, "blk.0.q8_0.weight")["offset"], "<Q", 32 * 10**6)


def corrupt_overlapping_tensors(d):
    return patch(d, tensor_record(d, "blk.0.q8_0.weight")["offset"], "<Q", 0)


MALFORMED = {
    corrupt_bad_magic: "bad magic",
    corrupt_empty: "the file is empty",
    corrupt_truncated_header: "truncated: the file has 20 bytes",
    corrupt_truncated_in_metadata: "truncated or corrupt: metadata 'test.nested_strings'[1][0] needs 3 bytes",
    corrupt_truncated_in_long_string_array: "truncated or corrupt: length of metadata 'test.long_strings'[200] needs 8 bytes",
    corrupt_truncated_in_tensor_table: "truncated or corrupt: dimensions of tensor 'blk.0.q4_0.weight'",
    corrupt_truncated_tensor_data: "runs past the end of the file",
    corrupt_version_1: "GGUF version 1 is not supported",
    corrupt_version_4: "unsupported GGUF version 4",
    corrupt_big_endian: "big-endian",
    corrupt_misaligned_offset: "tensor 'blk.0.q8_0.weight' data offset",
    corrupt_unknown_ggml_type: "tensor 'blk.0.q8_0.weight' has unknown GGML type id 99",
    corrupt_retired_ggml_type: "tensor 'blk.0.q8_0.weight' has unknown GGML type id 4",
    corrupt_five_dims: "tensor 'blk.0.q8_0.weight' has 5 dimensions; GGUF allows at most 4",
    corrupt_zero_dim: "tensor 'blk.0.q8_0.weight' has a zero or negative dimension in [64, 0]",
    corrupt_negative_dim: "tensor 'blk.0.q8_0.weight' has a zero or negative dimension in [64, -4]",
    corrupt_string_length_2_pow_60: f"truncated or corrupt: metadata 'test.string' needs {2**60} bytes",
    corrupt_key_length_2_pow_60: f"truncated or corrupt: key of metadata entry #1 needs {2**60} bytes",
    corrupt_long_string_element_length: f"truncated or corrupt: metadata 'test.long_strings'[3] needs {2**40} bytes",
    corrupt_array_count_2_pow_40: f"metadata 'test.long_ints' claims {2**40} INT32 elements",
    corrupt_n_tensors_2_pow_50: f"the header announces {2**50} tensors",
    corrupt_n_metadata_2_pow_50: f"and {2**50} metadata entries",
    corrupt_partial_block: "tensor 'blk.0.q8_0.weight' (Q8_0) has rows of 48 elements, not a whole number of 32-element blocks",
    corrupt_duplicate_tensor_name: "duplicate tensor name 'blk.0.q8_0.weight'",
    corrupt_duplicate_key: "duplicate metadata key 'test.u8'",
    corrupt_bad_utf8_key: "key of metadata entry #1 is not valid UTF-8",
    corrupt_bad_utf8_string: "metadata 'test.string' is not valid UTF-8",
    corrupt_bad_utf8_tensor_name: "name of tensor #2 is not valid UTF-8",
    corrupt_unknown_value_type: "metadata 'test.u16' has unknown value type 13",
    corrupt_unknown_array_element_type: "array metadata 'test.short_ints' has unknown value type 42",
    corrupt_data_past_end: "tensor 'blk.0.q8_0.weight' (Q8_0, shape [4, 64], 272 bytes",
    corrupt_overlapping_tensors: "overlap",
}


@pytest.mark.parametrize("corrupt", MALFORMED, ids=lambda fn: fn.__name__.removeprefix("corrupt_"))
def test_malformed_file_raises_format_error_naming_file_and_problem(corrupt, valid_bytes, tmp_path):
    path = tmp_path / f"{corrupt.__name__}.gguf"
    path.write_bytes(corrupt(valid_bytes))
    with pytest.raises(GGUFFormatError) as info:
        load_gguf(path)
    message = str(info.value)
    first, detail = message.split("\n", 1)
    assert first == f"{path.name} is not a valid GGUF file: download it again (damaged or incomplete?)", message
    assert detail.startswith(f"{path}: not a valid GGUF file: "), message
    assert MALFORMED[corrupt] in message, message
    assert info.value.path == str(path)


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux /proc/self/maps")
@pytest.mark.parametrize("corrupt", [corrupt_data_past_end, corrupt_bad_utf8_string, corrupt_truncated_in_metadata])
def test_rejected_file_is_unmapped_at_once(corrupt, valid_bytes, tmp_path):
    path = tmp_path / "rejected.gguf"
    path.write_bytes(corrupt(valid_bytes))
    with pytest.raises(GGUFFormatError) as info:
        load_gguf(path)
    assert info.value.__traceback__ is not None  # its frames still hold the reader's locals
    assert _file_mappings(path) == []


@pytest.mark.parametrize(
    "corrupt", [corrupt_string_length_2_pow_60, corrupt_array_count_2_pow_40, corrupt_n_tensors_2_pow_50,
                corrupt_long_string_element_length, corrupt_data_past_end],
    ids=lambda fn: fn.__name__.removeprefix("corrupt_"),
)
def test_absurd_sizes_fail_without_large_allocations(corrupt, valid_bytes, tmp_path):
    path = tmp_path / "absurd.gguf"
    path.write_bytes(corrupt(valid_bytes))
    tracemalloc.start()
    try:
        with pytest.raises(GGUFFormatError):
            load_gguf(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000, f"peak allocation {peak} bytes while rejecting the file"


def test_bad_utf8_inside_a_lazy_array_is_reported_when_read(valid_bytes, tmp_path):
    first_element = after_key(valid_bytes, "test.long_strings") + 4 + 4 + 8
    path = tmp_path / "lazy_utf8.gguf"
    path.write_bytes(patch(valid_bytes, first_element + 8, "1s", b"\xff"))
    metadata = load_gguf(path).metadata
    with pytest.raises(GGUFFormatError, match=r"metadata 'test.long_strings'\[0\] is not valid UTF-8") as info:
        metadata["test.long_strings"]
    assert str(path) in str(info.value)


@pytest.mark.parametrize("alignment, problem", [(48, "positive power of two, found 48"), (0, "found 0")])
def test_bad_alignment(alignment, problem, tmp_path):
    path = write_gguf(tmp_path / "align.gguf", metadata={}, alignment=64)
    data = path.read_bytes()
    path.write_bytes(patch(data, after_key(data, "general.alignment") + 4, "<I", alignment))
    with pytest.raises(GGUFFormatError, match=problem) as info:
        load_gguf(path)
    assert str(path) in str(info.value)


def test_alignment_of_wrong_type(tmp_path):
    path = write_gguf(tmp_path / "align.gguf", metadata={"general.alignment": ("64", V.STRING, None)}, tensors={})
    with pytest.raises(GGUFFormatError, match="'general.alignment' must be an integer, found a STRING"):
        load_gguf(path)


def test_arrays_nested_too_deep(tmp_path):
    value = [1]
    for _ in range(MAX_ARRAY_NESTING):
        value = [value]
    path = write_gguf(tmp_path / "deep.gguf", metadata={"deep": (value, V.ARRAY, None)}, tensors={})
    with pytest.raises(GGUFFormatError, match=f"metadata 'deep'.*nested more than {MAX_ARRAY_NESTING} deep"):
        load_gguf(path)


def test_missing_file_is_not_a_format_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_gguf(tmp_path / "absent.gguf")
