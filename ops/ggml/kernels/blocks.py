"""What every kernel module here shares: the one chunk driver, byte helpers (reinterpreting bytes
as words, fp16 fields, bit planes), per-(device, dtype) table caching and random valid blocks for
tests and benchmarks.

A quantized type is a `ChunkFormat`: its `decode` writes the values of a chunk of blocks, and
`dequantize_blocks` (the driver) cuts the blocks into chunks and stages dtypes that `decode` cannot
write exactly through a float32 scratch chunk, rounded once.

`BlockFormat`, the format of most types, dequantizes as w = scale * q [+ or - min], with one
scale (and min) per block or sub-block and q a small integer. Such a type is described by:
  - `scales`: blocks -> the per-(sub-)block scale and min, float32, as gguf-py computes them;
  - `unpack`: blocks -> the integers q (an int8/uint8 tensor, often a permuted view) whose
    row-major order is the output order;
and the float arithmetic happens in float32, in gguf-py's order (scale, then times q, then plus or
minus min), so its float32 result is gguf-py's bit for bit. The I-quants (iquants.py) have their
own ChunkFormat: codebook gathers, some of them exact in float16 too.

Two ways to run the arithmetic, one per kind of device (`fused_arithmetic`):
  - CPUs: q is copied into a float32 scratch chunk that stays in cache, multiplied (and the min
    added) in place, then cast once into the output; float32 work is faster there than integer
    to float16 conversion, and mixed-dtype ops would allocate temporaries per chunk.
  - Accelerators (CUDA, ROCm, MPS): every op is a pass through device memory, so the arithmetic is
    one op that reads q and writes the output in its own dtype: `mul(q, scale, out=)` or
    `addcmul(+-min, q, scale, out=)`. Torch computes these in float32 (the scale is float32) and
    rounds once into the output, and scale * q is exact in float32 for every type with a min, so
    no fused multiply-add can change a bit: the output is the float32 result rounded once.
    (Reasoned and tested on CPUs with the path forced; not verified on MPS, where no Mac was at hand.)

Why chunks: a full-size intermediate costs a trip to main memory (and page faults when freshly
allocated); chunks keep every intermediate in cache, so the raw bytes are read once and the
output written once. Integers are unpacked with uint8/int8 ops (one byte per element, cheapest).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T

# (m, type_size) uint8 blocks -> float32 scale and min (or None), (m, n_sub) each: one value
# per equal run of block_size / n_sub elements.
Scales = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]
# (m, type_size) uint8 blocks -> the integers q, an int8/uint8 tensor of shape (m, ...) whose
# row-major order is the output order (a permuted view is fine); or, for types with one scale
# per block, a tuple of such tensors for consecutive runs of the block.
Unpack = Callable[[torch.Tensor], torch.Tensor | tuple[torch.Tensor, ...]]


QK_K = 256  # elements per block of the K-quants and the other 256-element types

# Elements of the widest intermediate of a chunk. CPU: measured best on 2 cores (smaller
# chunks pay per-op overhead: every op of a chunk starts an OpenMP region; 2M against 1M: 5-30%
# faster for the legacy, K- and ternary types, in-process A/B, benchmarks/dequant_ab.py);
# accelerators: fewer, larger launches.
CPU_CHUNK_ELEMENTS = 1 << 21
ACCELERATOR_CHUNK_ELEMENTS = 1 << 24
# CPUs: elements whose per-block state (ChunkFormat.block_state: the scales) is computed in one go.
# The scale decoding is a dozen ops on a few values per block: per chunk their overhead cost the
# K-quants 15-30% of a whole-weight dequantization; at most 16M elements' worth (Q2_K, the
# largest: 2 x 16 float32 per 256 elements, 8 MB) lives at once.
CPU_STATE_ELEMENTS = 1 << 24


def fused_arithmetic(device: torch.device) -> bool:
    """Whether a chunk's arithmetic runs as single ops writing the output (accelerators), rather
    than as in-place passes over a float32 scratch chunk held in cache (CPUs). Tests force either."""
    return device.type != "cpu"


@dataclass(frozen=True)
class ChunkFormat:
    """A GGML type as the driver sees it; calling it dequantizes (n, type_size) blocks into `out`."""

    block_size: int
    # Elements per block of decode's largest intermediate, where that exceeds block_size
    # (e.g. 4 * type_size for the bit pairs of a whole block); sizes the chunks.
    widest: int = 0
    # Output dtypes besides float32 that decode writes exactly; others go through float32 scratch.
    exact_dtypes: frozenset = frozenset()
    # Whether decode needs a second values-sized tensor (`spare`) for intermediate results.
    uses_spare: bool = False
    # The chunk budget on CPUs where a type's best differs from CPU_CHUNK_ELEMENTS (measured).
    cpu_chunk_elements: int | None = None

    def writes_exactly(self, dtype: torch.dtype, device: torch.device) -> bool:
        """Whether decode writes `dtype` values exactly (float32 always) on `device`."""
        return dtype == torch.float32 or dtype in self.exact_dtypes

    def block_state(self, blocks: torch.Tensor) -> tuple | None:
        """Per-block values decode needs (tensors of m rows, or None entries), computed for many
        chunks at once on CPUs, where a chunk's small per-block ops cost more in overhead than
        in work; None: decode computes everything itself."""
        return None

    def decode(self, blocks: torch.Tensor, values: torch.Tensor, spare: torch.Tensor | None,
               state: tuple | None = None) -> None:
        """Write the values of (m, type_size) uint8 blocks into (m, block_size) `values` (float32 or
        an exact dtype); `spare`, if uses_spare, is a tensor like `values`; `state`, the rows of
        block_state for these blocks, or None."""
        raise NotImplementedError

    def __call__(self, blocks: torch.Tensor, out: torch.Tensor) -> None:
        dequantize_blocks(blocks, out, self)


def _per_element(factor: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """A (m, n_sub) per-sub-block factor as a view that broadcasts over q's `shape` (m, ...)."""
    m, n_sub = factor.shape
    run = math.prod(shape[1:]) // n_sub  # elements per sub-block
    trailing = 1
    for dim in range(len(shape) - 1, 0, -1):
        trailing *= shape[dim]
        if trailing == run:
            return factor.view(m, *shape[1:dim], *([1] * (len(shape) - dim)))
    raise ValueError(f"sub-blocks of {run} elements do not fit q's shape {tuple(shape)}")


@dataclass(frozen=True, kw_only=True)
class BlockFormat(ChunkFormat):
    """A GGML type as w = scale * q [+ or - min] (see the module docstring)."""

    scales: Scales
    unpack: Unpack
    # gguf-py subtracts the K-quants' mins and adds the legacy _1 types' mins.
    subtract_min: bool = False
    # Set where the CPU unpack returns q times 1 / this, as float16 (exactly; FP4): decode
    # multiplies it back first, adding +0, which also turns a -0 from a bare sign bit into +0.
    cpu_q_factor: float | None = None
    # Whether that factor may go into the scale instead (one pass less): exact where scale * factor
    # stays a normal float32 for every block (NVFP4; not MXFP4, whose scales reach 2^127).
    cpu_q_factor_in_scale: bool = False

    def writes_exactly(self, dtype: torch.dtype, device: torch.device) -> bool:
        return fused_arithmetic(device) or super().writes_exactly(dtype, device)

    def block_state(self, blocks: torch.Tensor) -> tuple | None:
        # contiguous: a broadcast multiply by a strided (m, n_sub, 1) view took twice as long
        return tuple(None if s is None else s.contiguous() for s in self.scales(blocks))

    def decode(self, blocks: torch.Tensor, values: torch.Tensor, spare: torch.Tensor | None,
               state: tuple | None = None) -> None:
        scale, minimum = state if state is not None else self.scales(blocks)
        subtract = self.subtract_min
        q = self.unpack(blocks)
        if isinstance(q, tuple):  # consecutive runs of the block, one scale per block
            start = 0
            for piece in q:
                size = math.prod(piece.shape[1:])
                target = values[:, start : start + size].view(piece.shape)
                if fused_arithmetic(values.device):
                    scale_into(target, piece, scale, minimum, subtract)
                else:
                    target.copy_(gather_runs(piece))
                start += size
            if not fused_arithmetic(values.device):  # CPUs: one flat pass over the float32 values
                scale_into(values, values, scale, minimum, subtract)
            return
        if self.cpu_q_factor is not None and not fused_arithmetic(values.device):
            values.view(q.shape).copy_(gather_runs(q))
            if self.cpu_q_factor_in_scale:
                scale = scale * self.cpu_q_factor
            else:
                torch.add(torch.zeros((), device=values.device), values, alpha=self.cpu_q_factor, out=values)
            q = values
        scale_into(values.view(q.shape) if q is not values else values, q, scale, minimum, subtract)


def scale_into(target: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, minimum: torch.Tensor | None = None,
               subtract: bool = False) -> None:
    """target = scale * q [+ or - minimum], in float32 arithmetic, rounded once into target's dtype.

    q and target have the same shape (m, ...), row-major in output order (on CPUs target is
    contiguous and q may be target itself); scale and minimum are float32 (m, n_sub), one value
    per equal run of each row.
    """
    if not fused_arithmetic(target.device):
        # CPUs: in place on the contiguous float32 values, as few views as possible (each chunk's
        # Python overhead counts at these sizes)
        if q is not target:
            target.copy_(gather_runs(q))
        sub_blocks = target.view(target.shape[0], scale.shape[1], -1)
        sub_blocks.mul_(scale.unsqueeze(-1))
        if minimum is not None and subtract:
            sub_blocks.sub_(minimum.unsqueeze(-1))
        elif minimum is not None:
            sub_blocks.add_(minimum.unsqueeze(-1))
        return
    run = math.prod(q.shape[1:]) // scale.shape[1]
    if q.shape[-1] > run:
        q, target = q.unflatten(-1, (-1, run)), target.unflatten(-1, (-1, run))
    scale = _per_element(scale, q.shape)
    if minimum is None:
        torch.mul(q, scale, out=target)
    else:
        # scale * q - min is scale * q + (-min), bit for bit
        torch.addcmul(_per_element(minimum.neg() if subtract else minimum, q.shape), q, scale, out=target)


def gather_runs(q: torch.Tensor) -> torch.Tensor:
    """A permuted view of contiguous integer planes (CPU), made contiguous in its own order.

    Unpackers return q as a permutation of planes whose last dimension is a run of 8 to 64
    bytes; copying such a view converts run by run, several times slower than a flat copy
    (measured 100-200 us vs 25 us for a chunk of 762K elements into float32). Runs that are whole
    int64 words are gathered instead with one index_select of rows (about 30 us), and the
    conversion that follows is flat. Anything else is returned as is.
    """
    if q.is_contiguous() or q.dim() < 2 or q.stride(-1) != 1:
        return q
    run_bytes = q.shape[-1] * q.element_size()
    lead = q.dim() - 1
    order = tuple(sorted(range(lead), key=lambda dim: -q.stride(dim)))
    base = q.permute(*order, lead)
    if run_bytes % 8 or not base.is_contiguous() or base.data_ptr() % 8:
        return q
    index = _run_index(tuple(base.shape[:-1]), order, q.device)
    rows = base.reshape(-1, q.shape[-1]).view(torch.int64)
    return rows.index_select(0, index).view(q.dtype).view(q.shape)


@functools.lru_cache(maxsize=16)  # one index per chunk shape: a few hundred KB each
def _run_index(base_shape: tuple, order: tuple, device: torch.device) -> torch.Tensor:
    """Row numbers of contiguous planes of `base_shape` rows, listed in the order of the view that
    permuted dimension order[k] of it to position k (see gather_runs)."""
    inverse = tuple(sorted(range(len(order)), key=lambda dim: order[dim]))
    return torch.arange(math.prod(base_shape), device=device).view(base_shape).permute(inverse).reshape(-1)


def dequantize_blocks(blocks: torch.Tensor, out: torch.Tensor, fmt: ChunkFormat) -> None:
    """(n, type_size) uint8 blocks -> their values in `out` ((n, block_size), contiguous), chunk by chunk.

    Threading is torch's own: each op of a chunk runs on the caller's intra-op threads. An earlier
    version shared the chunks out between single-threaded helper threads (no intra-op barrier per
    op); measured on the project's 2-core CPU, ABAB-interleaved over 75-180 s, inside the CPU slab
    Linear that ComfyUI runs (ops/runtime/linear.py, 96 input rows, one Z-Image block of weights), the helper
    threads were slower for every type tried, on torch 2.13 and on ComfyUI's 2.14 alike (Q8_0 267 vs
    294 ms, Q4_0 318 vs 366, Q4_K 360 vs 450, median of the quiet periods): after each slab the
    caller's OpenMP team is still spinning when the helpers start. They won only for whole-weight
    dequantization of the K- and I-quants, which ComfyUI's path does not take on the CPU.
    """
    n_blocks = blocks.shape[0]
    block_size = fmt.block_size
    device = blocks.device
    if n_blocks == 0:
        return
    on_cpu = device.type == "cpu"
    budget = (fmt.cpu_chunk_elements or CPU_CHUNK_ELEMENTS) if on_cpu else ACCELERATOR_CHUNK_ELEMENTS
    rows = max(1, budget // max(block_size, fmt.widest))
    staged = not fmt.writes_exactly(out.dtype, device)
    values_dtype = torch.float32 if staged else out.dtype
    chunk_shape = (min(rows, n_blocks), block_size)
    scratch = torch.empty(chunk_shape, dtype=torch.float32, device=device) if staged else None
    spare = torch.empty(chunk_shape, dtype=values_dtype, device=device) if fmt.uses_spare else None
    # CPUs: per-block state (scales) for spans of many chunks at once; accelerators: per chunk
    span = max(rows, CPU_STATE_ELEMENTS // block_size // rows * rows) if on_cpu else rows
    for span_start in range(0, n_blocks, span):
        span_blocks = blocks[span_start : span_start + span]
        state = fmt.block_state(span_blocks) if on_cpu else None
        for start in range(0, span_blocks.shape[0], rows):
            block_chunk = span_blocks[start : start + rows]
            target = out[span_start + start : span_start + start + rows]
            m = target.shape[0]
            values = target if scratch is None else scratch[:m]
            rows_state = None if state is None else tuple(s if s is None else s[start : start + m] for s in state)
            fmt.decode(block_chunk, values, None if spare is None else spare[:m], rows_state)
            if staged:
                target.copy_(values)


def reinterpret(data: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Bytes (..., k) as little-endian `dtype` words (..., k / itemsize): a view where layout and
    alignment allow, else a view of a compact copy (a slice of a single block may start at an odd
    byte, a column slice of blocks has the blocks' stride)."""
    size = dtype.itemsize
    if (
        data.stride(-1) != 1
        or data.shape[-1] % size
        or data.storage_offset() % size
        or any(stride % size for stride in data.stride()[:-1])
    ):
        data = data.clone(memory_format=torch.contiguous_format)
    return data.view(dtype)


def words(blocks: torch.Tensor, start: int, stop: int, dtype: torch.dtype = torch.int32) -> torch.Tensor:
    """Bytes [start, stop) of every block as little-endian int16/int32 words, (n, (stop - start) / itemsize)."""
    return reinterpret(blocks[:, start:stop], dtype)


def fp16_field(blocks: torch.Tensor, offset: int, count: int = 1) -> torch.Tensor:
    """`count` consecutive little-endian fp16 values from byte `offset` of every block, float16 (n, count)."""
    return reinterpret(blocks[:, offset : offset + 2 * count], torch.float16)


def device_table(build: Callable[[], np.ndarray]):
    """Decorator: a constant table built once (numpy, on the host) and cached per (device, dtype)."""

    @functools.lru_cache(maxsize=None)
    def on_device(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        return torch.from_numpy(build()).to(device=device, dtype=dtype)

    return on_device


def byte_index(raw: torch.Tensor) -> torch.Tensor:
    """Flatten uint8 bytes into int32 indices for index_select (int32: no int64 intermediate)."""
    return raw.to(torch.int32).reshape(-1)


@device_table
def _nibble_shifts() -> np.ndarray:
    return np.array([0, 4], dtype=np.uint8).reshape(2, 1)


@device_table
def _crumb_shifts() -> np.ndarray:
    return np.array([0, 2, 4, 6], dtype=np.uint8).reshape(4, 1)


@device_table
def _bit_shifts() -> np.ndarray:
    return np.arange(8, dtype=np.uint8).reshape(8, 1)


# The plane helpers split bytes into planes of bit fields, the plane as the OUTER dimension
# (k, *raw shape), and take the field as `raw` plus an optional byte range [start, stop) of its
# last dimension. Callers then pick their fields out of the planes with views, and the one op
# that writes the values reads them in order.
# - CPUs: uint8 ops on short rows (16 or 32 bytes) fall back to scalar loops, flat ones
#   vectorise: the planes of a contiguous `raw` are made as one flat run. A byte range of whole
#   32-byte rows is copied out first (one short copy per block), so that its planes are
#   contiguous and gather_runs can reorder them; other ranges are views of the whole planes
#   (copying 16-byte rows out cost more than it saved). A `raw` that is not contiguous (a
#   permuted view) is copied first.
# - Accelerators: only the byte range is read, in whatever layout `raw` has, and each plane is
#   written once: the lowest field by a mask, the highest by a shift, the others by both.

def _planes(raw: torch.Tensor, shifts, bits: int, start: int, stop: int | None) -> torch.Tensor:
    mask = (1 << bits) - 1
    if not fused_arithmetic(raw.device):
        if (raw[..., start:stop].shape[-1]) % 32 == 0:  # rows gather_runs can reorder
            raw, start, stop = raw[..., start:stop], 0, None
        plane_shifts = shifts(raw.device, torch.uint8)
        planes = raw.reshape(1, -1) >> plane_shifts
        planes &= mask
        planes = planes.view(plane_shifts.shape[0], *raw.shape)
        return planes if start == 0 and stop is None else planes[..., start:stop]
    raw = raw[..., start:stop]
    count = 8 // bits
    planes = torch.empty((count, *raw.shape), dtype=torch.uint8, device=raw.device)
    torch.bitwise_and(raw, mask, out=planes[0])
    if count > 2:
        middle = shifts(raw.device, torch.uint8)[1:-1].view(count - 2, *[1] * raw.dim())
        torch.bitwise_right_shift(raw, middle, out=planes[1:-1])
        planes[1:-1].bitwise_and_(mask)
    torch.bitwise_right_shift(raw, 8 - bits, out=planes[-1])
    return planes


def nibble_planes(raw: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
    """bytes [start, stop) of the last dimension of `raw` (shape S) -> (2, *S) uint8: [0] the
    low nibbles, [1] the high nibbles."""
    return _planes(raw, _nibble_shifts, 4, start, stop)


def crumb_planes(raw: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
    """bytes [start, stop) of `raw` (shape S) -> (4, *S) uint8: [k] bits 2k..2k+1 of each byte."""
    return _planes(raw, _crumb_shifts, 2, start, stop)


def bit_planes(raw: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
    """bytes [start, stop) of `raw` (shape S) -> (8, *S) uint8 of 0/1: [j] bit j of each byte."""
    return _planes(raw, _bit_shifts, 1, start, stop)


def planes_to_blocks(planes: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """(k, m, ...) planes -> tensor with the plane axis moved to `dim`.

    A view: on accelerators the one op that writes the output reads it in place; on CPUs the
    copy into the float32 values gathers its runs first (gather_runs), where rows of 8 or 16 bytes
    would make a converting copy pay per row. Planes of shorter rows than 32 bytes are stacked into a
    contiguous tensor instead (measured cheaper than gathering 16-byte rows).
    """
    moved = planes.movedim(0, dim)
    if fused_arithmetic(planes.device) or (planes.shape[-1] * planes.element_size()) % 32 == 0:
        return moved
    return torch.stack(planes.unbind(0), dim=dim)


def random_fp16(rng: np.random.Generator, n_blocks: int, magnitude: float, signed: bool = True) -> np.ndarray:
    """(n_blocks, 2) bytes of little-endian fp16 values drawn uniformly from [0, magnitude], random sign if `signed`."""
    values = rng.uniform(0.0, magnitude, n_blocks)
    if signed:
        values *= rng.choice(np.array([-1.0, 1.0]), n_blocks)
    return values.astype("<f2").view(np.uint8).reshape(n_blocks, 2)


def random_bytes(rng: np.random.Generator, n_blocks: int, ggml_type: T) -> np.ndarray:
    return rng.integers(0, 256, (n_blocks, GGML_QUANT_SIZES[ggml_type][1]), dtype=np.uint8)


def random_with_fp16_fields(ggml_type: T, fields: dict[int, tuple[float, bool]]):
    """Random blocks whose fp16 fields at the given byte offsets hold (magnitude, signed) values."""

    def generate(n_blocks: int, rng: np.random.Generator) -> np.ndarray:
        blocks = random_bytes(rng, n_blocks, ggml_type)
        for offset, (magnitude, signed) in fields.items():
            blocks[:, offset : offset + 2] = random_fp16(rng, n_blocks, magnitude, signed)
        return blocks

    return generate
