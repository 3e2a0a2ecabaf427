"""Triton helpers every family shares: which blocks a program owns, loading a field of every block,
fp16 fields from two bytes, nibble/bit unpacking in registers, and the one store.

Shapes: a program owns BLOCKS blocks; per-block fields are [BLOCKS, WIDTH] tiles, values
[BLOCKS, ...] tiles whose trailing dimensions, read row-major, are the block's element order.
"""
import triton
import triton.language as tl


@triton.jit
def program_blocks(n_blocks, BLOCKS: tl.constexpr):
    """The block indices of this program (int64: no overflow on large weights) and which exist."""
    b = tl.program_id(0).to(tl.int64) * BLOCKS + tl.arange(0, BLOCKS)
    return b, b < n_blocks


@triton.jit
def load_bytes(src, b, exists, TYPE_SIZE: tl.constexpr, OFFSET: tl.constexpr, WIDTH: tl.constexpr):
    """[BLOCKS, WIDTH] uint8: bytes OFFSET .. OFFSET + WIDTH - 1 of each block (WIDTH a power of two)."""
    j = tl.arange(0, WIDTH)
    return tl.load(src + (b[:, None] * TYPE_SIZE + OFFSET + j[None, :]), mask=exists[:, None], other=0)


@triton.jit
def le16(pair):
    """[BLOCKS, 2] uint8 -> [BLOCKS] uint16, the little-endian word of each pair."""
    low, high = tl.split(pair.to(tl.uint16))
    return low | (high << 8)


@triton.jit
def fp16_at(src, b, exists, TYPE_SIZE: tl.constexpr, OFFSET: tl.constexpr):
    """[BLOCKS] float32: the fp16 field at byte OFFSET of each block (exact widening)."""
    return le16(load_bytes(src, b, exists, TYPE_SIZE, OFFSET, 2)).to(tl.float16, bitcast=True).to(tl.float32)


@triton.jit
def nibbles(packed):
    """[R, N] uint8 -> [R, 2N] uint8: per row, the low nibbles in byte order, then the high nibbles
    (ggml's order for a run of N bytes holding 2N 4-bit values). Reshape first for other groupings."""
    both = tl.join(packed & 15, packed >> 4)  # [R, N, 2]
    return tl.reshape(tl.permute(both, (0, 2, 1)), (packed.shape[0], 2 * packed.shape[1]))


@triton.jit
def round_to_bfloat16(values):
    """float32 -> bfloat16, round to nearest even, NaN -> 0x7FC0: torch's CPU conversion bit for
    bit, in integer ops (Triton's interpreter truncates instead; a GPU's cvt.rn agrees but for NaN
    payloads), so that the interpreter tests check the very code a GPU runs."""
    bits = values.to(tl.uint32, bitcast=True)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    rounded = tl.where(values != values, 0x7FC0, rounded)
    return rounded.to(tl.uint16).to(tl.bfloat16, bitcast=True)


@triton.jit
def store_values(dst, b, exists, values, BLOCK_SIZE: tl.constexpr):
    """Write [BLOCKS, ...] float32 values (trailing dimensions flattening to BLOCK_SIZE, in element
    order) into each block's run of dst, rounded once to dst's type (round to nearest even)."""
    e = tl.arange(0, BLOCK_SIZE)
    flat = tl.reshape(values, (values.shape[0], BLOCK_SIZE))
    if dst.dtype.element_ty == tl.bfloat16:
        rounded = round_to_bfloat16(flat)
    else:
        rounded = flat.to(dst.dtype.element_ty)
    tl.store(dst + (b[:, None] * BLOCK_SIZE + e[None, :]), rounded, mask=exists[:, None])
