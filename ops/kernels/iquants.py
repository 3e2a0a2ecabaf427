"""Torch kernels for the I-quants: IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ4_NL, IQ4_XS.

Every I-quant stores, per group of 4 or 8 weights, an index into a fixed codebook ("grid") plus
sign bits and small integer sub-block scales, all multiplied by an fp16 block scale `d`. The
kernels turn each group's bits into one row index of a precomputed table whose rows already hold
grid value x sign (and, where it keeps the table small, the sub-block scale), gather whole rows
with `index_select` straight into the output, then multiply by the remaining scales in place.

Exactness: gguf-py computes in float32 and every intermediate product there is exact (a few
small integers times an fp16 value), so float32 results equal it bit for bit in any order. For
float16 a result is the exact product rounded once, as long as each in-place multiply has
operands that float16 holds exactly; the tables and scale factors are split so that this holds.
Where no such split exists (IQ4_XS in float16, every type in bfloat16, whose 8-bit mantissa
cannot hold the fp16 block scale) the kernel computes in float32 and casts once.

All bit work happens on uint8/int16/int32 tensors and fp16 fields are read through
`.view(torch.float16)` of contiguous byte pairs, so the kernels also run on Apple's MPS backend.
"""
from __future__ import annotations

import functools

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf import quants as gguf_quants

# --- tables, built once from gguf-py's codebooks and cached per (device, dtype) ---------------


def _codebook(quant_class) -> np.ndarray:
    """gguf-py's decoded grid for an I-quant class, as a (rows, values) float32 array."""
    quant_class.init_grid()
    return quant_class.grid.reshape(quant_class.grid_shape).astype(np.float32)


def _sign_patterns(bits: np.ndarray, width: int) -> np.ndarray:
    """+1/-1 per bit of each integer in `bits` (bit j set -> value j negative), shape (len, width)."""
    set_bits = (bits.reshape(-1, 1) >> np.arange(width)) & 1
    return np.where(set_bits == 1, -1.0, 1.0).astype(np.float32)


def _ksigns() -> np.ndarray:
    """The 128 eight-bit sign patterns that 7-bit sign indices select (8th bit = parity)."""
    return np.frombuffer(gguf_quants.IQ2_XXS.ksigns, dtype=np.uint8).astype(np.int64)


def _iq2_xxs_table() -> np.ndarray:
    # row (grid index << 7 | sign index); the 1/8 of d*(0.5+s)/4 = d*(2s+1)/8 lives here because
    # every grid value / 8 is exact in fp16 while d / 8 may not be (subnormal d).
    grid = _codebook(gguf_quants.IQ2_XXS) / 8
    signs = _sign_patterns(_ksigns(), 8)
    return (grid[:, None, :] * signs[None, :, :]).reshape(-1, 8)


def _iq2_xs_table() -> np.ndarray:
    # row = the 16-bit field itself: 9-bit grid index | 7-bit sign index << 9
    field = np.arange(1 << 16)
    grid = _codebook(gguf_quants.IQ2_XS) / 8
    return grid[field & 511] * _sign_patterns(_ksigns()[field >> 9], 8)


def _iq2_s_table() -> np.ndarray:
    # row (10-bit grid index << 8 | sign byte)
    grid = _codebook(gguf_quants.IQ2_S) / 8
    signs = _sign_patterns(np.arange(256), 8)
    return (grid[:, None, :] * signs[None, :, :]).reshape(-1, 8)


def _iq3_xxs_table() -> np.ndarray:
    # half-group rows of 4: (grid index << 8 | 7-bit sign index << 1 | which half of the 8 signs)
    grid = _codebook(gguf_quants.IQ3_XXS) / 4
    signs = _sign_patterns(_ksigns(), 8).reshape(128, 2, 4)
    return (grid[:, None, None, :] * signs[None, :, :, :]).reshape(-1, 4)


def _iq3_s_table() -> np.ndarray:
    # rows of 4: (9-bit grid index << 4 | 4 sign bits)
    grid = _codebook(gguf_quants.IQ3_S)
    signs = _sign_patterns(np.arange(16), 4)
    return (grid[:, None, :] * signs[None, :, :]).reshape(-1, 4)


def _iq1_table() -> np.ndarray:
    # row (3-bit scale s | delta-negative bit << 3) << 11 | 11-bit grid index, value
    # (2s+1) * (grid + delta): at most 8 significant bits, exact in fp16 and bf16.
    grid = _codebook(gguf_quants.IQ1_S)
    delta = np.float32(gguf_quants.IQ1_S.delta)
    key = np.arange(16)
    factor = (2 * (key & 7) + 1).astype(np.float32)
    shift = np.where(key >> 3 == 1, -delta, delta).astype(np.float32)
    return (factor[:, None, None] * (grid[None, :, :] + shift[:, None, None])).reshape(-1, 8)


def _iq4_table() -> np.ndarray:
    # row = four 4-bit codes packed little-endian into 16 bits -> their four codebook values
    kvalues = np.array(gguf_quants.IQ4_NL.kvalues, dtype=np.float32)
    packed = np.arange(1 << 16)
    return kvalues[(packed[:, None] >> (4 * np.arange(4))) & 15]


_TABLES = {
    "iq2_xxs": _iq2_xxs_table,
    "iq2_xs": _iq2_xs_table,
    "iq2_s": _iq2_s_table,
    "iq3_xxs": _iq3_xxs_table,
    "iq3_s": _iq3_s_table,
    "iq1": _iq1_table,
    "iq4": _iq4_table,
}


@functools.lru_cache(maxsize=None)
def _table(name: str, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return torch.from_numpy(_TABLES[name]()).to(device=device, dtype=dtype)


@functools.lru_cache(maxsize=None)
def _constant(values: tuple, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A small constant tensor (shift amounts), made once per device instead of per call."""
    return torch.tensor(values, dtype=dtype, device=device)


# --- field helpers -----------------------------------------------------------------------------


def _reinterpret(data: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Bytes (..., k) as little-endian `dtype` words, copied first when layout or alignment forbids
    a view (a slice of a single block counts as contiguous yet may start at an odd byte)."""
    size = dtype.itemsize
    if (
        not data.is_contiguous()
        or data.storage_offset() % size
        or any(stride % size for stride in data.stride()[:-1])
    ):
        data = data.clone(memory_format=torch.contiguous_format)
    return data.view(dtype)


def _fp16_field(blocks: torch.Tensor, start: int) -> torch.Tensor:
    """The fp16 stored at byte `start` of each block, shape (n_blocks, 1)."""
    return _reinterpret(blocks[:, start:start + 2], torch.float16)


def _words(blocks: torch.Tensor, start: int, stop: int, dtype: torch.dtype) -> torch.Tensor:
    """Bytes [start, stop) of each block reinterpreted as little-endian int16/int32 words."""
    return _reinterpret(blocks[:, start:stop], dtype)


def _nibbles(data: torch.Tensor) -> torch.Tensor:
    """Low then high nibble of each byte: (..., k) uint8 -> (..., 2k) uint8."""
    return torch.stack((data & 15, data >> 4), dim=-1).flatten(-2)


def _odd(field: torch.Tensor) -> torch.Tensor:
    """2 * field + 1, the sub-block multiplier of the IQ1/IQ2/IQ3 scales, as int32."""
    return field.to(torch.int32) * 2 + 1


# --- decoders: a chunk of blocks -> (table, row index per group of weights, scale factors) ------
# Factors are (n, groups) tensors applied in order to equal runs of weights; each is exact in
# float16 and so is every partial product (see the table comments), so float16 stays exact.

Decoded = tuple[str, torch.Tensor, list[torch.Tensor]]


def _iq2_xxs(blocks: torch.Tensor) -> Decoded:
    n = blocks.shape[0]
    groups = blocks[:, 2:].reshape(n, 8, 8)  # per 32 weights: 4 grid bytes, 1 uint32 of signs+scale
    aux = _reinterpret(groups[:, :, 4:], torch.int32)  # (n, 8, 1)
    index = groups[:, :, :4].to(torch.int32)
    index <<= 7
    index |= (aux >> _constant((0, 7, 14, 21), blocks.device, torch.int32)) & 127
    return "iq2_xxs", index, [_odd((aux.view(n, 8) >> 28) & 15), _fp16_field(blocks, 0)]


def _iq2_xs(blocks: torch.Tensor) -> Decoded:
    index = _words(blocks, 2, 66, torch.int16).to(torch.int32)
    index &= 0xFFFF
    return "iq2_xs", index, [_odd(_nibbles(blocks[:, 66:74])), _fp16_field(blocks, 0)]


def _iq2_s(blocks: torch.Tensor) -> Decoded:
    n = blocks.shape[0]
    high = (blocks[:, 66:74].unsqueeze(-1) >> _constant((0, 2, 4, 6), blocks.device, torch.uint8)) & 3
    index = high.view(n, 32).to(torch.int32)
    index <<= 8
    index |= blocks[:, 2:34]
    index <<= 8
    index |= blocks[:, 34:66]
    return "iq2_s", index, [_odd(_nibbles(blocks[:, 74:82])), _fp16_field(blocks, 0)]


def _iq3_xxs(blocks: torch.Tensor) -> Decoded:
    n = blocks.shape[0]
    aux = _words(blocks, 66, 98, torch.int32).view(n, 8, 1)
    # 7-bit sign index of each 8 weights at bit 1; bit 0 picks which half of them a row holds
    signs = (aux >> _constant((0, 7, 14, 21), blocks.device, torch.int32)) & 127
    signs <<= 1
    index = blocks[:, 2:66].reshape(n, 8, 4, 2).to(torch.int32)
    index <<= 8
    index |= signs.unsqueeze(-1) | _constant((0, 1), blocks.device, torch.int32)
    return "iq3_xxs", index, [_odd((aux.view(n, 8) >> 28) & 15), _fp16_field(blocks, 0)]


def _iq3_s(blocks: torch.Tensor) -> Decoded:
    n = blocks.shape[0]
    high = (blocks[:, 66:74].unsqueeze(-1) >> _constant(tuple(range(8)), blocks.device, torch.uint8)) & 1
    index = high.view(n, 64).to(torch.int32)
    index <<= 8
    index |= blocks[:, 2:66]
    index <<= 4
    index |= _nibbles(blocks[:, 74:106])
    return "iq3_s", index, [_odd(_nibbles(blocks[:, 106:110])), _fp16_field(blocks, 0)]


def _iq1_s(blocks: torch.Tensor) -> Decoded:
    n = blocks.shape[0]
    qh = _words(blocks, 34, 50, torch.int16).view(n, 8, 1)
    high = (qh >> _constant((0, 3, 6, 9), blocks.device, torch.int16)) & 7
    high <<= 8
    high |= ((qh >> 12) & 15) << 11  # 3-bit scale and delta sign: the table's top 4 index bits
    index = blocks[:, 2:34].view(n, 8, 4).to(torch.int32)
    index |= high
    return "iq1", index, [_fp16_field(blocks, 0)]


def _iq1_m(blocks: torch.Tensor) -> Decoded:
    n = blocks.shape[0]
    packed_scales = _words(blocks, 48, 56, torch.int16).view(n, 4, 1)
    # 3-bit scale per 16 weights, i.e. per two 8-weight groups
    scale = (packed_scales >> _constant((0, 3, 6, 9), blocks.device, torch.int16)) & 7
    qh = _nibbles(blocks[:, 32:48]).view(n, 16, 2)  # per 8 weights: 3 grid bits, delta sign
    key = (qh & 8).to(torch.int16)
    key |= scale.view(n, 16, 1)
    key <<= 3
    key |= qh & 7
    index = key.view(n, 32).to(torch.int32)
    index <<= 8
    index |= blocks[:, :32]
    # the fp16 block scale is spread over the top nibbles of the four scale words
    top = blocks[:, 48:56].reshape(n, 2, 4)[:, :, 1::2]  # high bytes of words 0,1 | 2,3
    d_bytes = (top[:, :, 0] >> 4) | (top[:, :, 1] & 0xF0)
    return "iq1", index, [_reinterpret(d_bytes, torch.float16)]


def _iq4_codes(data: torch.Tensor) -> torch.Tensor:
    """(n, 4k) code bytes -> (n, 2, k) int32 table rows: row [h, m] packs the low (h=0) or high
    (h=1) nibbles of bytes 4m..4m+3, which are weights h*2k + 4m .. h*2k + 4m + 3."""
    words = _reinterpret(data, torch.int32)
    codes = torch.stack((words, words >> 4), dim=-2)
    codes &= 0x0F0F0F0F
    codes |= codes >> 4  # bytes 0 and 2 now hold two codes each
    return (codes & 0xFF) | ((codes >> 8) & 0xFF00)


def _iq4_nl(blocks: torch.Tensor) -> Decoded:
    return "iq4", _iq4_codes(blocks[:, 2:18]), [_fp16_field(blocks, 0)]


def _iq4_xs(blocks: torch.Tensor) -> Decoded:
    n = blocks.shape[0]
    high = _words(blocks, 2, 4, torch.int16).view(n, 1)
    high = (high >> _constant(tuple(range(0, 16, 2)), blocks.device, torch.int16)) & 3
    high <<= 4
    scale = (high | _nibbles(blocks[:, 4:8])) - 32
    return "iq4", _iq4_codes(blocks[:, 8:136].reshape(n * 8, 16)), [scale, _fp16_field(blocks, 0)]


# --- driver ------------------------------------------------------------------------------------


def _gather(table_name: str, index: torch.Tensor, out: torch.Tensor) -> None:
    """Write table rows `index` (flattened) into `out`, viewed as rows of the table's width."""
    table = _table(table_name, out.device, out.dtype)
    index = index.reshape(-1)
    row_bytes = table.shape[1] * table.element_size()
    if out.device.type == "cpu" and row_bytes in _ROW_WORDS:
        # torch's CPU index_select copies each row of a 2-D table through a TensorIterator; one
        # 8- or 16-byte element per row takes its plain 1-D loop instead, about twice as fast.
        word = _ROW_WORDS[row_bytes]
        torch.index_select(table.view(word).view(-1), 0, index, out=out.view(word).view(-1))
    else:
        torch.index_select(table, 0, index, out=out.view(-1, table.shape[1]))


_ROW_WORDS = {8: torch.int64, 16: torch.complex128}


def _decode_into(decode, blocks: torch.Tensor, values: torch.Tensor) -> None:
    table_name, index, factors = decode(blocks)
    _gather(table_name, index, values)
    if values.dtype == torch.float32 and len(factors) > 1:
        # float32 holds every product of the factors exactly: one multiply instead of several
        factors = [functools.reduce(torch.mul, [factor.float() for factor in factors])]
    n = values.shape[0]
    for factor in factors:
        values.view(n, factor.shape[1], -1).mul_(factor.to(values.dtype).unsqueeze(-1))


# On CPU every temporary above glibc's mmap threshold is fresh memory on every call, and page
# faults cost as much as the arithmetic; the gathered values also fall out of cache before the
# multiplies reach them. Slices of this many weights keep temporaries small, reused and cached.
CPU_CHUNK_WEIGHTS = 1 << 20
ACCELERATOR_CHUNK_WEIGHTS = 1 << 24


def _kernel(ggml_type, decode, float16_direct: bool):
    """The dequantize function for one type. `float16_direct`: float16 is computed in float16
    (exact for that decoder); otherwise, and for bfloat16, in float32 scratch cast once."""
    block_size = GGML_QUANT_SIZES[ggml_type][0]

    def dequantize(blocks: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        n = blocks.shape[0]
        device = blocks.device
        out = torch.empty((n, block_size), dtype=dtype, device=device)
        direct = dtype == torch.float32 or (dtype == torch.float16 and float16_direct)
        chunk = CPU_CHUNK_WEIGHTS if device.type == "cpu" else ACCELERATOR_CHUNK_WEIGHTS
        rows = max(1, chunk // block_size)
        scratch = None if direct else torch.empty((min(rows, n), block_size), dtype=torch.float32, device=device)
        for start in range(0, n, rows):
            target = out[start:start + rows]
            values = target if scratch is None else scratch[: target.shape[0]]
            _decode_into(decode, blocks[start:start + rows], values)
            if scratch is not None:
                target.copy_(values)
        return out

    dequantize.__name__ = dequantize.__qualname__ = f"dequantize_{ggml_type.name.lower()}"
    return dequantize


_Q = GGMLQuantizationType

KERNELS = {
    _Q.IQ1_S: _kernel(_Q.IQ1_S, _iq1_s, float16_direct=True),
    _Q.IQ1_M: _kernel(_Q.IQ1_M, _iq1_m, float16_direct=True),
    _Q.IQ2_XXS: _kernel(_Q.IQ2_XXS, _iq2_xxs, float16_direct=True),
    _Q.IQ2_XS: _kernel(_Q.IQ2_XS, _iq2_xs, float16_direct=True),
    _Q.IQ2_S: _kernel(_Q.IQ2_S, _iq2_s, float16_direct=True),
    _Q.IQ3_XXS: _kernel(_Q.IQ3_XXS, _iq3_xxs, float16_direct=True),
    _Q.IQ3_S: _kernel(_Q.IQ3_S, _iq3_s, float16_direct=True),
    _Q.IQ4_NL: _kernel(_Q.IQ4_NL, _iq4_nl, float16_direct=True),
    # (s - 32) x codebook value can need 12 significant bits: float16 cannot hold the factor
    _Q.IQ4_XS: _kernel(_Q.IQ4_XS, _iq4_xs, float16_direct=False),
}


# --- random valid blocks for tests and the benchmark -------------------------------------------

# largest |table value x sub-block factor| per type: a block scale below 1/this keeps |w| < 1
_LARGEST_FACTOR = {
    _Q.IQ1_S: 15 * 1.125,
    _Q.IQ1_M: 15 * 1.125,
    _Q.IQ2_XXS: 31 * 43 / 8,
    _Q.IQ2_XS: 31 * 43 / 8,
    _Q.IQ2_S: 31 * 43 / 8,
    _Q.IQ3_XXS: 31 * 62 / 4,
    _Q.IQ3_S: 31 * 15,
    _Q.IQ4_NL: 127,
    _Q.IQ4_XS: 32 * 127,
}


def _random_scales(ggml_type, n_blocks: int, rng: np.random.Generator) -> np.ndarray:
    magnitude = rng.uniform(0.05, 1.0, n_blocks) / _LARGEST_FACTOR[ggml_type]
    sign = rng.choice(np.array([-1.0, 1.0]), n_blocks)
    return (magnitude * sign).astype(np.float16)


def _random_blocks(ggml_type):
    type_size = GGML_QUANT_SIZES[ggml_type][1]

    def generate(n_blocks: int, rng: np.random.Generator) -> np.ndarray:
        blocks = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
        scale_bytes = _random_scales(ggml_type, n_blocks, rng).view(np.uint8).reshape(n_blocks, 2)
        if ggml_type == _Q.IQ1_M:
            # the fp16 scale lives in the top nibbles of bytes 49, 51, 53, 55
            nibbles = np.stack((scale_bytes & 15, scale_bytes >> 4), axis=-1).reshape(n_blocks, 4)
            blocks[:, 49:56:2] = (blocks[:, 49:56:2] & 0x0F) | (nibbles << 4)
        else:
            blocks[:, :2] = scale_bytes
        return blocks

    return generate


RANDOM_BLOCKS = {ggml_type: _random_blocks(ggml_type) for ggml_type in KERNELS}
