"""What every kernel module here shares: the block-format driver, fp16 field reading, bit-plane
extraction, per-(device, dtype) table caching and random valid blocks for tests and benchmarks.

Every type driven by BlockFormat dequantizes as w = scale * q [+ or - min], with one scale (and
min) per block or sub-block and q a small integer. A type is therefore described by:
  - `scales`: blocks -> the per-(sub-)block scale and min, float32, as gguf-py computes them;
  - `unpack`: blocks -> the integers q, in output order, written into float32 values;
and the driver does the float arithmetic in float32, in gguf-py's order (scale, then times q,
then plus or minus min), so its float32 result is gguf-py's bit for bit; other dtypes get that
float32 result rounded once.

Why chunks: a full-size intermediate costs a trip to main memory (and page faults when freshly
allocated); chunks keep every intermediate in cache, so the raw bytes are read once and the
output written once. Integers are unpacked with uint8/int8 ops (one byte per element, cheapest);
float work happens in a float32 scratch chunk, which is also faster on CPUs than integer to
float16 conversion.
"""
from __future__ import annotations

import functools
from concurrent import futures
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T

# (m, type_size) uint8 blocks -> float32 scale and min (or None), (m, n_sub) each: one value
# per equal run of block_size / n_sub elements.
Scales = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]
# Writes the integers q of (m, type_size) uint8 blocks, in output order, into a float32
# (m, block_size) tensor.
Unpack = Callable[[torch.Tensor, torch.Tensor], None]


@dataclass(frozen=True)
class BlockFormat:
    """A GGML type as w = scale * q [+ or - min]; calling it dequantizes (n, type_size) blocks."""

    block_size: int
    scales: Scales
    unpack: Unpack
    # gguf-py subtracts the K-quants' mins and adds the legacy _1 types' mins.
    subtract_min: bool = False
    # Elements per block of unpack's largest intermediate, where that exceeds block_size
    # (e.g. 4 * type_size for the bit pairs of a whole block); sizes the chunks.
    widest: int = 0

    def __call__(self, blocks: torch.Tensor, out: torch.Tensor) -> None:
        dequantize_blocks(blocks, out, self)


# Elements of the widest intermediate of a chunk. CPU: measured best on 2 cores (smaller
# chunks pay per-op overhead, which dominates for the per-block scale decoding of the 256-element
# types); accelerators: fewer, larger launches.
CPU_CHUNK_ELEMENTS = 1 << 20
ACCELERATOR_CHUNK_ELEMENTS = 1 << 24


@functools.lru_cache(maxsize=None)
def _helper_pool(n_helpers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=n_helpers, thread_name_prefix="zimage-dequant")


def _single_threaded(work: Callable[[], None], inference: bool, grad: bool) -> None:
    # Helper-pool threads only ever run dequantization work, so the setting can stay.
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)
    # Inference and grad modes are per thread: take the caller's, or in-place writes into
    # tensors it made under torch.inference_mode() (as ComfyUI runs) would be refused.
    with torch.inference_mode(inference), torch.set_grad_enabled(grad):
        work()


def dequantize_blocks(blocks: torch.Tensor, out: torch.Tensor, fmt: BlockFormat) -> None:
    """(n, type_size) uint8 blocks -> their values in `out` ((n, block_size), contiguous), chunk by chunk.

    CPU threading: chunks are shared out between the calling thread and helper threads (as
    many threads as torch.get_num_threads()), each running its ops single-threaded and taking
    the next chunk when done; torch ops release the GIL. torch's own intra-op threading would
    put a barrier after each of the many small ops, and on a busy machine every barrier waits
    for a descheduled thread (measured: seconds instead of tens of milliseconds). The calling
    thread's intra-op setting (torch.set_num_threads, which also sets the default that threads
    starting meanwhile pick up) is restored before returning, once the helpers are done.
    """
    n_blocks = blocks.shape[0]
    block_size = fmt.block_size
    device = blocks.device
    dtype = out.dtype
    if n_blocks == 0:
        return
    on_cpu = device.type == "cpu"
    budget = CPU_CHUNK_ELEMENTS if on_cpu else ACCELERATOR_CHUNK_ELEMENTS
    rows = max(1, budget // max(block_size, fmt.widest))
    block_chunks = blocks.split(rows)
    out_chunks = out.split(rows)
    staged = dtype != torch.float32
    next_chunk = iter(range(len(block_chunks)))  # shared by all threads; next() is atomic under the GIL

    def work() -> None:
        scratch = torch.empty((rows, block_size), dtype=torch.float32, device=device) if staged else None
        for i in next_chunk:
            chunk = block_chunks[i]
            m = chunk.shape[0]
            values = out_chunks[i] if scratch is None else scratch[:m]
            scale, minimum = fmt.scales(chunk)
            fmt.unpack(chunk, values)
            sub_blocks = values.view(m, scale.shape[1], -1)
            sub_blocks.mul_(scale.unsqueeze(-1))
            if minimum is not None and fmt.subtract_min:
                sub_blocks.sub_(minimum.unsqueeze(-1))
            elif minimum is not None:
                sub_blocks.add_(minimum.unsqueeze(-1))
            if staged:
                out_chunks[i].copy_(values)

    caller_threads = torch.get_num_threads()
    threads = min(caller_threads, len(block_chunks)) if on_cpu else 1
    if not on_cpu or caller_threads == 1:
        work()
        return
    # Even a single chunk runs single-threaded: intra-op barriers cost more than they save here.
    torch.set_num_threads(1)
    try:
        modes = (torch.is_inference_mode_enabled(), torch.is_grad_enabled())
        helpers = [_helper_pool(threads - 1).submit(_single_threaded, work, *modes) for _ in range(threads - 1)]
        try:
            work()
        finally:
            futures.wait(helpers)
        for helper in helpers:
            helper.result()
    finally:
        torch.set_num_threads(caller_threads)


def fp16_field(blocks: torch.Tensor, offset: int, count: int = 1) -> torch.Tensor:
    """`count` consecutive little-endian fp16 values from byte `offset` of every block, float32 (n, count).

    Read through a 16-bit view of the blocks where the alignment allows, else from a compact
    copy of the bytes.
    """
    aligned = blocks.stride(1) == 1 and all(v % 2 == 0 for v in (offset, blocks.stride(0), blocks.storage_offset()))
    if aligned and blocks.shape[1] % 2 == 0:
        field = blocks.view(torch.float16)[:, offset // 2 : offset // 2 + count]
    else:
        field = blocks[:, offset : offset + 2 * count].clone(memory_format=torch.contiguous_format).view(torch.float16)
    return field.float()


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


# The plane helpers work on the bytes as one flat run with the plane as the OUTER dimension:
# uint8 ops on short rows (16 or 32 bytes) fall back to scalar loops, flat ones vectorise.
# Callers then pick their fields out of the planes with views, and the copy into the float32
# values does the reordering. Passing a whole chunk avoids copying; passing a column slice
# copies it first, which pays off when the field is a small part of the block.

def _planes(raw: torch.Tensor, shifts, mask: int) -> torch.Tensor:
    plane_shifts = shifts(raw.device, torch.uint8)
    planes = raw.reshape(1, -1) >> plane_shifts
    planes &= mask
    return planes.view(plane_shifts.shape[0], *raw.shape)


def nibble_planes(raw: torch.Tensor) -> torch.Tensor:
    """bytes of shape S -> (2, *S) uint8: [0] the low nibbles, [1] the high nibbles."""
    return _planes(raw, _nibble_shifts, 0x0F)


def crumb_planes(raw: torch.Tensor) -> torch.Tensor:
    """bytes of shape S -> (4, *S) uint8: [k] bits 2k..2k+1 of each byte."""
    return _planes(raw, _crumb_shifts, 0x03)


def bit_planes(raw: torch.Tensor) -> torch.Tensor:
    """bytes of shape S -> (8, *S) uint8 of 0/1: [j] bit j of each byte."""
    return _planes(raw, _bit_shifts, 0x01)


def planes_to_blocks(planes: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """(k, m, ...) planes -> contiguous tensor with the plane axis moved to `dim`.

    For rows of 8 or 16 bytes, stacking the planes is cheaper than letting the float32
    conversion copy gather them (that copy pays per row, and more so with a dtype change).
    """
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
