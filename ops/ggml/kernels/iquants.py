"""Torch kernels for the I-quants: IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ4_NL, IQ4_XS.

Every I-quant stores, per group of 4 or 8 weights, an index into a fixed codebook ("grid") plus
sign bits and small integer sub-block scales, all multiplied by an fp16 block scale `d`. A
decoder turns each group's bits into one row index of a precomputed value table whose rows
already hold grid value x sign (and the sub-block scale where that keeps the table small); the
rows are gathered with `index_select` straight into the output, then multiplied in place by the
remaining scales. Bit fields are spread into per-row index parts with small lookup tables too
(byte -> several int16), because torch's CPU loops handle a broadcast over a short last
dimension (`word >> (0, 3, 6, 9)`) element by element, ten times slower than a gather.

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
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf import quants as gguf_quants

from . import blocks as shared
from .blocks import ChunkFormat, device_table, fp16_field, random_bytes, reinterpret, scale_into, words

_Q = GGMLQuantizationType

# --- value tables, built once from gguf-py's codebooks --------------------------------------------


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


def _iq2_xxs_values() -> np.ndarray:
    # row (sign index << 8 | grid index); the 1/8 of d*(0.5+s)/4 = d*(2s+1)/8 lives here because
    # every grid value / 8 is exact in fp16 while d / 8 may not be (subnormal d).
    grid = _codebook(gguf_quants.IQ2_XXS) / 8
    signs = _sign_patterns(_ksigns(), 8)
    return (signs[:, None, :] * grid[None, :, :]).reshape(-1, 8)


def _scaled_grid_values(quant_class) -> np.ndarray:
    # row (4-bit sub-block scale s << grid index bits | grid index): (2s+1) * grid / 8, at most
    # 5 + 6 significant bits, exact in fp16; the signs come from a second gather
    grid = _codebook(quant_class) / 8
    factor = np.arange(1, 32, 2, dtype=np.float32)
    return (factor[:, None, None] * grid[None, :, :]).reshape(-1, 8)


def _half_signed_grid_values(grid: np.ndarray) -> np.ndarray:
    # rows of 4: (4 sign bits << grid index bits | grid index)
    signs = _sign_patterns(np.arange(16), 4)
    return (signs[:, None, :] * grid[None, :, :]).reshape(-1, 4)


def _signed_grid_values(quant_class, signs: np.ndarray) -> np.ndarray:
    # row (sign pattern << grid index bits | grid index): sign x grid / 8, exact in fp16 (the
    # accelerator path of IQ2_XS and IQ2_S: one gather, the sub-block scale in the factor)
    grid = _codebook(quant_class) / 8
    return (signs[:, None, :] * grid[None, :, :]).reshape(-1, 8)


def _iq1_values() -> np.ndarray:
    # row (3-bit scale s << 12 | delta-negative bit << 11 | 11-bit grid index), value
    # (2s+1) * (grid + delta): at most 8 significant bits, exact in fp16 and bf16
    grid = _codebook(gguf_quants.IQ1_S)
    delta = np.float32(gguf_quants.IQ1_S.delta)
    factor = np.arange(1, 16, 2, dtype=np.float32)
    shift = np.array([delta, -delta], dtype=np.float32)
    values = factor[:, None, None, None] * (grid[None, None, :, :] + shift[None, :, None, None])
    return values.reshape(-1, 8)


def _iq4_pairs() -> np.ndarray:
    # row = a code byte -> the codebook values of its low and high nibble
    kvalues = np.array(gguf_quants.IQ4_NL.kvalues, dtype=np.float32)
    return np.stack((kvalues[_BYTES & 15], kvalues[_BYTES >> 4]), axis=-1)


def _iq4_values() -> np.ndarray:
    # row = four 4-bit codes packed little-endian into 16 bits -> their four codebook values
    kvalues = np.array(gguf_quants.IQ4_NL.kvalues, dtype=np.float32)
    packed = np.arange(1 << 16)
    return kvalues[(packed[:, None] >> (4 * np.arange(4))) & 15]


# --- index lookup tables: packed bit fields -> per-row parts of a value-table index -----------------
# Parts are OR-ed together, so a field split across two bytes is two tables (low and high byte).
# "doubled" parts fill both int16 halves of an int32: one scale shared by two adjacent rows.

_BYTES = np.arange(256)


def _doubled(part: np.ndarray) -> np.ndarray:
    return part * 0x10001


def _iq1_s_qh_parts(byte_shift: int) -> np.ndarray:
    # the uint16 per 32 weights: 4 x 3 high grid bits, 3-bit scale, delta sign -> iq1 rows
    qh = _BYTES << byte_shift
    rows = [((qh >> 12) & 7) << 12 | (qh >> 15) << 11 | ((qh >> 3 * r) & 7) << 8 for r in range(4)]
    return np.stack(rows, axis=-1)


def _iq1_m_scale_parts() -> np.ndarray:
    # low 12 bits of a scale word: four 3-bit scales, each shared by two rows
    word = np.arange(1 << 12)
    return np.stack([_doubled(((word >> 3 * k) & 7) << 12) for k in range(4)], axis=-1)


def _scale_pair_parts(shift: int) -> np.ndarray:
    # a byte of two 4-bit scales, each shared by two rows
    return np.stack([_doubled((_BYTES & 15) << shift), _doubled((_BYTES >> 4) << shift)], axis=-1)


def _bit_field_parts(bits: int, shift: int) -> np.ndarray:
    # a byte of 8 // bits fields, one per row, each moved to `shift`
    mask = (1 << bits) - 1
    return np.stack([((_BYTES >> k) & mask) << shift for k in range(0, 8, bits)], axis=-1)


def _ksign_nibble_pairs() -> np.ndarray:
    # 14 bits -> two 7-bit sign indices -> the low and high 4 of each one's 8 signs, at bit 8
    # (IQ3_XXS rows)
    index = np.arange(1 << 14)
    first, second = _ksigns()[index & 127], _ksigns()[index >> 7]
    return np.stack([first & 15, first >> 4, second & 15, second >> 4], axis=-1) << 8


_TABLES = {
    # value tables, in the output dtype
    "iq2_xxs": _iq2_xxs_values,
    "iq2_xs": lambda: _scaled_grid_values(gguf_quants.IQ2_XS),
    "iq2_s": lambda: _scaled_grid_values(gguf_quants.IQ2_S),
    "ksigns": lambda: _sign_patterns(_ksigns(), 8),
    "signs": lambda: _sign_patterns(_BYTES, 8),
    # the 1/4 of d*(0.5+s)/2 = d*(2s+1)/4 as for IQ2_XXS: grid / 4 is exact
    "iq3_xxs": lambda: _half_signed_grid_values(_codebook(gguf_quants.IQ3_XXS) / 4),
    "iq3_s": lambda: _half_signed_grid_values(_codebook(gguf_quants.IQ3_S)),
    "iq1": _iq1_values,
    "iq4": _iq4_values,
    "iq2_xs_signed": lambda: _signed_grid_values(gguf_quants.IQ2_XS, _sign_patterns(_ksigns(), 8)),
    "iq2_s_signed": lambda: _signed_grid_values(gguf_quants.IQ2_S, _sign_patterns(_BYTES, 8)),
    "iq4_pairs": _iq4_pairs,
    # index lookup tables, int16 or int32
    "iq1_s_qh_low": lambda: _iq1_s_qh_parts(0),
    "iq1_s_qh_high": lambda: _iq1_s_qh_parts(8),
    "iq1_m_qh": lambda: _bit_field_parts(4, 8),
    "iq1_m_scales": _iq1_m_scale_parts,
    "iq2_xs_scales": lambda: _scale_pair_parts(9),
    "iq2_s_scales": lambda: _scale_pair_parts(10),
    "iq2_s_qh": lambda: _bit_field_parts(2, 8),
    "iq3_s_qh": lambda: _bit_field_parts(1, 8),
    "nibbles_at_9": lambda: _bit_field_parts(4, 9),
    "nibbles": lambda: _bit_field_parts(4, 0),
    "iq4_xs_high_scales": lambda: _bit_field_parts(2, 4),
    "ksign_nibble_pairs": _ksign_nibble_pairs,
}


_DEVICE_TABLES = {name: device_table(build) for name, build in _TABLES.items()}


def _table(name: str, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return _DEVICE_TABLES[name](device, dtype)


# --- gathers -----------------------------------------------------------------------------------

# torch's CPU index_select copies each row of a 2-D table through a TensorIterator; viewing a row
# as one 4-, 8- or 16-byte element takes its plain 1-D loop instead, two to ten times faster.
# (Wider rows, 8 float32, amortise the per-row cost and are faster as they are.)
_ROW_WORDS = {4: torch.int32, 8: torch.int64, 16: torch.complex128}


def _cpu_word_views(device: torch.device) -> bool:
    """Whether to move data as single 4/8/16-byte words (int64, complex128...): a CPU speed-up;
    MPS has no complex128."""
    return device.type == "cpu"


def _gather(table: torch.Tensor, index: torch.Tensor, out: torch.Tensor) -> None:
    """Write rows `index` (any integer tensor, flattened) of a 2-D `table` into contiguous `out`."""
    index = index.to(torch.int32).reshape(-1)
    word = _ROW_WORDS.get(table.shape[1] * table.element_size())
    if word is not None and _cpu_word_views(out.device):
        torch.index_select(table.view(word).view(-1), 0, index, out=out.view(word).view(-1))
    else:
        torch.index_select(table, 0, index, out=out.view(-1, table.shape[1]))


def _parts(table_name: str, fields: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Look up index parts for integer `fields` (..., k): (..., k * table width) of `dtype`."""
    table = _table(table_name, fields.device, dtype)
    shape = (*fields.shape[:-1], fields.shape[-1] * table.shape[1])
    out = torch.empty(shape, dtype=dtype, device=fields.device)
    _gather(table, fields, out)
    return out


# --- field helpers -----------------------------------------------------------------------------


def _odd(field: torch.Tensor) -> torch.Tensor:
    """2 * field + 1, the sub-block multiplier of the IQ2/IQ3 scales, as int32."""
    return field.to(torch.int32) * 2 + 1


def _fourteen_bit_halves(aux: torch.Tensor) -> torch.Tensor:
    """(n, 8) int32 words -> (n, 8, 2) of their bits 0-13 and 14-27 (two 7-bit sign indices each)."""
    halves = torch.stack((aux, aux >> 14), dim=-1)
    halves &= 0x3FFF
    return halves


# --- decoders: a chunk of blocks -> (gathers, scale factors) -------------------------------------
# Each gather is (value table, row index per group of weights); the weights are the product of
# the gathered rows (a grid, then signs where they have their own table) and the factors,
# (n, groups) tensors applied in order to equal runs of weights. Each factor and every partial
# product is exact in float16 (see the value tables), so float16 results are rounded once.
# Indices are assembled in int16 where they fit in 15 bits, halving the memory traffic.

Decoded = tuple[list[tuple[str, torch.Tensor]], list[torch.Tensor]]


def _iq2_xxs(blocks: torch.Tensor) -> Decoded:
    n = blocks.shape[0]
    grid_aux = words(blocks, 2, 66, torch.int32).view(n, 8, 2)  # per 32 weights: 4 grid bytes, uint32
    aux = grid_aux[:, :, 1]  # 4 x 7-bit sign index, 4-bit scale
    index = grid_aux[:, :, 0].contiguous().view(torch.uint8).to(torch.int16)
    # each half of aux holds the sign indices of two rows: move them to bits 8-14 of int16 lanes
    halves = torch.stack((aux, aux >> 14), dim=-1)
    signs = halves & 127
    signs <<= 8
    halves &= 0x3F80  # masked before the shift, so that nothing reaches the int32 sign bit
    halves <<= 17
    signs |= halves
    index |= signs.view(torch.int16).view(n, 32)
    return [("iq2_xxs", index)], [_odd((aux >> 28) & 15), fp16_field(blocks, 0)]


def _iq2_xs(blocks: torch.Tensor) -> Decoded:
    n = blocks.shape[0]
    fields = words(blocks, 2, 66, torch.int16)  # per 8 weights: 9-bit grid index | 7-bit sign index
    grid = fields & 511
    pairs = grid.view(torch.int32)
    pairs |= _parts("iq2_xs_scales", blocks[:, 66:74], torch.int32)
    return [("iq2_xs", grid), ("ksigns", (fields >> 9) & 127)], [fp16_field(blocks, 0)]


def _iq2_s(blocks: torch.Tensor) -> Decoded:
    grid = _parts("iq2_s_qh", blocks[:, 66:74], torch.int16)  # two high grid bits per 8 weights
    grid |= blocks[:, 2:34]
    pairs = grid.view(torch.int32)
    pairs |= _parts("iq2_s_scales", blocks[:, 74:82], torch.int32)
    return [("iq2_s", grid), ("signs", blocks[:, 34:66])], [fp16_field(blocks, 0)]


def _iq3_xxs(blocks: torch.Tensor) -> Decoded:
    n = blocks.shape[0]
    aux = words(blocks, 66, 98, torch.int32)  # per 32 weights: 4 x 7-bit sign index, 4-bit scale
    signs = _parts("ksign_nibble_pairs", _fourteen_bit_halves(aux), torch.int16).view(n, 64)
    index = torch.bitwise_or(signs, blocks[:, 2:66], out=torch.empty((n, 64), dtype=torch.int32, device=blocks.device))
    return [("iq3_xxs", index)], [_odd((aux >> 28) & 15), fp16_field(blocks, 0)]


def _iq3_s_gathers(blocks: torch.Tensor) -> list:
    grid = _parts("iq3_s_qh", blocks[:, 66:74], torch.int16)  # the 9th grid bit of each row
    grid |= blocks[:, 2:66]
    signs = _parts("nibbles_at_9", blocks[:, 74:106], torch.int16)  # 4 signs per row
    index = torch.bitwise_or(grid, signs, out=torch.empty(grid.shape, dtype=torch.int32, device=grid.device))
    return [("iq3_s", index)]


def _iq3_s_factors(blocks: torch.Tensor) -> list:
    return [_odd(_parts("nibbles", blocks[:, 106:110], torch.int16)), fp16_field(blocks, 0)]


def _iq3_s(blocks: torch.Tensor) -> Decoded:
    return _iq3_s_gathers(blocks), _iq3_s_factors(blocks)


def _iq1_s(blocks: torch.Tensor) -> Decoded:
    n = blocks.shape[0]
    qh = blocks[:, 34:50].reshape(n, 8, 2)  # the uint16 per 32 weights, as low and high byte
    index = _parts("iq1_s_qh_low", qh[:, :, :1], torch.int16)
    index |= _parts("iq1_s_qh_high", qh[:, :, 1:], torch.int16)
    index = index.view(n, 32)
    index |= blocks[:, 2:34]
    return [("iq1", index)], [fp16_field(blocks, 0)]


def _iq1_m(blocks: torch.Tensor) -> Decoded:
    n = blocks.shape[0]
    index = _parts("iq1_m_qh", blocks[:, 32:48], torch.int16)  # 3 grid bits + delta sign per row
    scales = words(blocks, 48, 56, torch.int16) & 0x0FFF  # four 3-bit scales per word
    pairs = index.view(torch.int32)
    pairs |= _parts("iq1_m_scales", scales, torch.int32)
    index |= blocks[:, :32]
    # the fp16 block scale is spread over the top nibbles of the four scale words
    top = blocks[:, 48:56].reshape(n, 2, 4)[:, :, 1::2]  # high bytes of words 0,1 | 2,3
    d_bytes = (top[:, :, 0] >> 4) | (top[:, :, 1] & 0xF0)
    return [("iq1", index)], [reinterpret(d_bytes, torch.float16)]


def _iq4_codes(data: torch.Tensor) -> torch.Tensor:
    """(m, 16) code bytes -> (m, 2, 4) int32 "iq4" rows: row [h, m] packs the low (h=0) or high
    (h=1) nibbles of bytes 4m..4m+3, which are weights 16h + 4m .. 16h + 4m + 3."""
    words = reinterpret(data, torch.int32)
    low = words & 0x0F0F0F0F
    high = words >> 4
    high &= 0x0F0F0F0F
    if _cpu_word_views(words.device):
        # one 16-byte element per half: torch's CPU stack copies 4-word pieces 6x slower
        halves = (low.view(torch.complex128), high.view(torch.complex128))
        codes = torch.stack(halves, dim=1).view(torch.int32)
    else:
        codes = torch.stack((low, high), dim=1)
    codes |= codes >> 4  # bytes 0 and 2 now hold two codes each
    packed = codes >> 8
    packed &= 0xFF00
    codes &= 0xFF
    codes |= packed
    return codes.view(-1, 2, 4)


def _iq4_nl(blocks: torch.Tensor) -> Decoded:
    return [("iq4", _iq4_codes(blocks[:, 2:18]))], [fp16_field(blocks, 0)]


def _iq4_xs_scales(blocks: torch.Tensor) -> torch.Tensor:
    scale = _parts("iq4_xs_high_scales", blocks[:, 2:4], torch.int16)  # 6-bit scales, high bits
    scale |= _parts("nibbles", blocks[:, 4:8], torch.int16)
    scale -= 32
    return scale


def _iq4_xs_gathers(blocks: torch.Tensor) -> list:
    return [("iq4", _iq4_codes(blocks[:, 8:136].reshape(blocks.shape[0] * 8, 16)))]


def _iq4_xs_factors(blocks: torch.Tensor) -> list:
    return [_iq4_xs_scales(blocks), fp16_field(blocks, 0)]


def _iq4_xs(blocks: torch.Tensor) -> Decoded:
    return _iq4_xs_gathers(blocks), _iq4_xs_factors(blocks)


# --- decoders of the accelerator path: one gather, a reordering view, one multiply -------------
# On accelerators every op is a pass through device memory: a second (sign) gather costs two
# passes and the I4 code packing above a dozen. These decoders fold the signs into the row index
# and gather the IQ4 codes a byte at a time; the rows land in table order and `arrange` views
# them in output order for the one multiply that writes the output.

FusedDecoded = tuple[str, torch.Tensor, list[torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]


def _in_order(rows: torch.Tensor) -> torch.Tensor:
    return rows


def _scale_nibbles(raw: torch.Tensor) -> torch.Tensor:
    """(n, k) bytes of two 4-bit sub-block scales each (low nibble first) -> (n, 2k) odd multipliers."""
    return _odd(torch.stack((raw & 15, raw >> 4), dim=-1).view(raw.shape[0], -1))


def _iq2_xs_fused(blocks: torch.Tensor) -> FusedDecoded:
    index = words(blocks, 2, 66, torch.int16).to(torch.int32)  # 7-bit sign index << 9 | grid index
    index &= 0xFFFF
    return "iq2_xs_signed", index, [_scale_nibbles(blocks[:, 66:74]), fp16_field(blocks, 0)], _in_order


def _iq2_s_fused(blocks: torch.Tensor) -> FusedDecoded:
    grid = _parts("iq2_s_qh", blocks[:, 66:74], torch.int16)  # two high grid bits per 8 weights
    grid |= blocks[:, 2:34]
    index = blocks[:, 34:66].to(torch.int32)  # the sign byte of each row
    index <<= 10
    index |= grid
    return "iq2_s_signed", index, [_scale_nibbles(blocks[:, 74:82]), fp16_field(blocks, 0)], _in_order


def _iq4_nl_fused(blocks: torch.Tensor) -> FusedDecoded:
    n = blocks.shape[0]
    # byte l holds weights l (low nibble) and 16 + l (high)
    return "iq4_pairs", blocks[:, 2:18], [fp16_field(blocks, 0)], lambda rows: rows.view(n, 16, 2).transpose(1, 2)


def _iq4_xs_fused(blocks: torch.Tensor) -> FusedDecoded:
    n = blocks.shape[0]
    scale = _parts("iq4_xs_high_scales", blocks[:, 2:4], torch.int16)  # 6-bit scales, high bits
    scale |= _parts("nibbles", blocks[:, 4:8], torch.int16)
    scale -= 32
    arrange = lambda rows: rows.view(n, 8, 16, 2).transpose(2, 3)  # noqa: E731 (as IQ4_NL, per 32 weights)
    return "iq4_pairs", blocks[:, 8:136], [scale, fp16_field(blocks, 0)], arrange


def _single_gather(decode) -> Callable[[torch.Tensor], FusedDecoded]:
    """The accelerator decoder of a type whose decoder already makes one gather."""

    def fused(blocks: torch.Tensor) -> FusedDecoded:
        gathers, factors = decode(blocks)
        (table_name, index), = gathers
        return table_name, index, factors, _in_order

    return fused


def _decode_fused(decode, blocks: torch.Tensor, values: torch.Tensor) -> None:
    """Gather the rows in float16 (every value table is exact there), then write values =
    rows x (product of the factors), computed in float32 and rounded once: every factor is a small
    integer or an fp16 value, their product is exact in float32, and so is its product with a
    table value (at most 24 significant bits, e.g. IQ4_XS: 7-bit codebook, 6-bit scale, fp16 d)."""
    table_name, index, factors, arrange = decode(blocks)
    rows = torch.empty(values.shape, dtype=torch.float16, device=values.device)
    _gather(_table(table_name, values.device, torch.float16), index, rows)
    factor = functools.reduce(torch.mul, [factor.float() for factor in factors])
    ordered = arrange(rows)
    scale_into(values.view(ordered.shape), ordered, factor)


# --- the format the shared driver runs --------------------------------------------------------


# rows of a float32 piece in _scale_float16_in_pieces: 2048 x 256 weights, 2 MB (in cache)
_FLOAT32_PIECE_ROWS = 2048


def _scale_float16_in_pieces(gathers, factors, values: torch.Tensor) -> None:
    """float16 `values` = gathered rows x the product of the factors, computed in float32 and
    rounded once: the rows (exact in float16) are gathered into `values` itself, then each piece
    goes through a small float32 scratch that stays in cache, instead of a whole float32 chunk."""
    (table_name, index), = gathers
    _gather(_table(table_name, values.device, torch.float16), index, values)
    factor = functools.reduce(torch.mul, [f.float() for f in factors])
    n, groups = values.shape[0], factor.shape[1]
    scratch = torch.empty((min(n, _FLOAT32_PIECE_ROWS), values.shape[1]), dtype=torch.float32, device=values.device)
    for start in range(0, n, _FLOAT32_PIECE_ROWS):
        piece = values[start : start + _FLOAT32_PIECE_ROWS]
        work = scratch[: piece.shape[0]]
        work.copy_(piece)
        work.view(work.shape[0], groups, -1).mul_(factor[start : start + piece.shape[0]].unsqueeze(-1))
        piece.copy_(work)


_SIGN_BITS = {torch.float16: torch.int16, torch.bfloat16: torch.int16, torch.float32: torch.int32}


@functools.lru_cache(maxsize=None)
def _sign_masks(table_name: str, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A table of +-1 values (of `dtype`) as integer masks of their sign bits."""
    bits = _SIGN_BITS[dtype]
    sign_bit = torch.iinfo(bits).min
    return _table(table_name, device, dtype).view(bits) & sign_bit


def _decode_into(decode, blocks: torch.Tensor, values: torch.Tensor, spare: torch.Tensor | None) -> None:
    """Dequantize `blocks` into `values`; `spare` (like values) receives extra gathers."""
    gathers, factors = decode(blocks)
    (table_name, index), *more = gathers
    if table_name == "iq4" and values.dtype == torch.float32 and _cpu_word_views(values.device):
        # CPUs: the 64K-row table of four codebook values gathers faster in float16 (8-byte rows,
        # half the table and the writes; exact there), then one conversion to float32
        rows = torch.empty(values.shape, dtype=torch.float16, device=values.device)
        _gather(_table(table_name, values.device, torch.float16), index, rows)
        values.copy_(rows)
    else:
        _gather(_table(table_name, values.device, values.dtype), index, values)
    for table_name, index in more:
        if _cpu_word_views(values.device) and values.dtype in _SIGN_BITS:
            # CPUs: a sign table's +-1 applied as an xor of the sign bit (exact: multiplying by
            # -1 flips exactly that bit), about 2.5x faster than a float16 multiply here
            bits = _SIGN_BITS[values.dtype]
            _gather(_sign_masks(table_name, values.device, values.dtype), index, spare.view(bits))
            values.view(bits).bitwise_xor_(spare.view(bits))
        else:
            _gather(_table(table_name, values.device, values.dtype), index, spare)
            values.mul_(spare)
    if values.dtype == torch.float32 and len(factors) > 1:
        # float32 holds every product of the factors exactly: one multiply instead of several
        factors = [functools.reduce(torch.mul, [factor.float() for factor in factors])]
    n = values.shape[0]
    for factor in factors:
        # contiguous: a broadcast multiply by a strided factor (an fp16 field of the blocks) took
        # about twice as long on CPUs
        values.view(n, factor.shape[1], -1).mul_(factor.to(values.dtype).contiguous().unsqueeze(-1))


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
    def generate(n_blocks: int, rng: np.random.Generator) -> np.ndarray:
        blocks = random_bytes(rng, n_blocks, ggml_type)
        scale_bytes = _random_scales(ggml_type, n_blocks, rng).view(np.uint8).reshape(n_blocks, 2)
        if ggml_type == _Q.IQ1_M:
            # the fp16 scale lives in the top nibbles of bytes 49, 51, 53, 55
            nibbles = np.stack((scale_bytes & 15, scale_bytes >> 4), axis=-1).reshape(n_blocks, 4)
            blocks[:, 49:56:2] = (blocks[:, 49:56:2] & 0x0F) | (nibbles << 4)
        else:
            blocks[:, :2] = scale_bytes
        return blocks

    return generate


# Chunks of this many weights on CPUs, instead of the driver's default (2M measured fastest for
# the I-quants on 2 cores with the output in a reused buffer: 4M took up to 1.2x, 8M up to 1.6x
# the time, from temporaries page-faulted again on every call).
CPU_CHUNK_WEIGHTS = 1 << 21


@dataclass(frozen=True, kw_only=True)
class IQuantFormat(ChunkFormat):
    """An I-quant on the shared driver: a decoder (blocks -> gathers and factors, above)."""

    decoder: Callable[[torch.Tensor], Decoded]
    # the accelerator path's decoder (see _decode_fused)
    fused_decoder: Callable[[torch.Tensor], FusedDecoded]
    # CPUs: the decoder split in two, (blocks -> its gathers, blocks -> its factors), where the
    # factors cost a dozen small ops per chunk: block_state computes them for many chunks at once
    # (IQ4_XS: 10-13% faster whole-weight, in-process A/B)
    split_decoder: tuple[Callable[[torch.Tensor], list], Callable[[torch.Tensor], list]] | None = None

    def block_state(self, blocks: torch.Tensor) -> tuple | None:
        if self.split_decoder is None:
            return None
        return tuple(factor.contiguous() for factor in self.split_decoder[1](blocks))

    # CPUs, a type computed in float32 (IQ4_XS): float16 output gathered straight into the output,
    # then scaled through a float32 scratch piece by piece (see _scale_float16_in_pieces)
    float16_in_pieces: bool = False

    def writes_exactly(self, dtype: torch.dtype, device: torch.device) -> bool:
        return (shared.fused_arithmetic(device) or super().writes_exactly(dtype, device)
                or (self.float16_in_pieces and dtype == torch.float16))

    def decode(self, blocks: torch.Tensor, values: torch.Tensor, spare: torch.Tensor | None,
               state: tuple | None = None) -> None:
        if shared.fused_arithmetic(values.device):
            _decode_fused(self.fused_decoder, blocks, values)
        elif self.float16_in_pieces and values.dtype == torch.float16:
            gathers, factors = self.decoder(blocks) if state is None else (self.split_decoder[0](blocks), list(state))
            _scale_float16_in_pieces(gathers, factors, values)
        elif state is not None:
            gathers = self.split_decoder[0](blocks)
            _decode_into(lambda _: (gathers, list(state)), blocks, values, spare)
        else:
            _decode_into(self.decoder, blocks, values, spare)


def _format(ggml_type, decoder, float16_direct: bool, sign_gather: bool = False, fused_decoder=None,
            split_decoder=None, float16_in_pieces: bool = False):
    """(kernel, random blocks) of an I-quant. `float16_direct`: float16 is computed in float16
    (exact for that decoder); otherwise, and for bfloat16, the driver computes in float32 and
    casts once. `sign_gather`: the decoder's signs are a second gather, which needs the driver's
    spare chunk."""
    kernel = IQuantFormat(
        GGML_QUANT_SIZES[ggml_type][0], decoder=decoder, fused_decoder=fused_decoder or _single_gather(decoder),
        uses_spare=sign_gather,
        exact_dtypes=frozenset({torch.float16}) if float16_direct else frozenset(),
        cpu_chunk_elements=CPU_CHUNK_WEIGHTS, split_decoder=split_decoder, float16_in_pieces=float16_in_pieces,
    )
    return kernel, _random_blocks(ggml_type)


TYPES = {
    _Q.IQ1_S: _format(_Q.IQ1_S, _iq1_s, float16_direct=True),
    _Q.IQ1_M: _format(_Q.IQ1_M, _iq1_m, float16_direct=True),
    _Q.IQ2_XXS: _format(_Q.IQ2_XXS, _iq2_xxs, float16_direct=True),
    _Q.IQ2_XS: _format(_Q.IQ2_XS, _iq2_xs, float16_direct=True, sign_gather=True, fused_decoder=_iq2_xs_fused),
    _Q.IQ2_S: _format(_Q.IQ2_S, _iq2_s, float16_direct=True, sign_gather=True, fused_decoder=_iq2_s_fused),
    _Q.IQ3_XXS: _format(_Q.IQ3_XXS, _iq3_xxs, float16_direct=True),
    _Q.IQ3_S: _format(_Q.IQ3_S, _iq3_s, float16_direct=True, split_decoder=(_iq3_s_gathers, _iq3_s_factors)),
    _Q.IQ4_NL: _format(_Q.IQ4_NL, _iq4_nl, float16_direct=True, fused_decoder=_iq4_nl_fused),
    # (s - 32) x codebook value can need 12 significant bits: float16 cannot hold the factor
    _Q.IQ4_XS: _format(_Q.IQ4_XS, _iq4_xs, float16_direct=False, fused_decoder=_iq4_xs_fused,
                       split_decoder=(_iq4_xs_gathers, _iq4_xs_factors), float16_in_pieces=True),
}
