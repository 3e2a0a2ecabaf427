"""llama.cpp importance-matrix files -> {tensor name: per-column float32 weights}.

Two formats, both read as llama-quantize reads them:
  - GGUF (llama-imatrix's current output): for each tensor `<name>.in_sum2` (sums of squared
    activations, ne0 columns x n_mat matrices) and `<name>.counts` (one count per matrix); the
    weights are in_sum2 / count, or 1 where a matrix never saw input (count 0).
  - legacy .dat: int32 entry count, then per entry int32 name length, the name, int32 ncall,
    int32 value count and that many float32 values, divided by ncall when it is positive;
    optionally followed by the last call and the dataset name, which are not needed here.
The names are the GGUF tensor names of the model the imatrix was computed on.
"""
from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import torch

from ...errors import ZImageGGUFError


class ImatrixError(ZImageGGUFError, ValueError):
    """An importance-matrix file that cannot be read."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        super().__init__(f"{os.path.basename(self.path)} is not a readable llama.cpp imatrix file: {problem}\n{self.path}")


def load_imatrix(path) -> dict[str, torch.Tensor]:
    """Read a `.gguf` or legacy `.dat` imatrix; returns name -> float32 (columns * n_mat,) weights."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            magic = handle.read(4)
    except OSError as e:
        raise ImatrixError(path, e.strerror or str(e)) from None
    entries = _read_gguf(path) if magic == b"GGUF" else _read_legacy(path)
    if not entries:
        raise ImatrixError(path, "it holds no entries")
    for name, values in entries.items():
        if not torch.isfinite(values).all():
            raise ImatrixError(path, f"entry {name} has non-finite values")
    return entries


def _read_gguf(path: Path) -> dict[str, torch.Tensor]:
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
    except Exception as e:  # gguf-py raises ValueError, struct.error, IndexError... on damaged files
        raise ImatrixError(path, f"a damaged GGUF ({type(e).__name__}: {e})") from None
    sums, counts = {}, {}
    for tensor in reader.tensors:
        if tensor.name.endswith(".in_sum2"):
            sums[tensor.name[:-len(".in_sum2")]] = tensor
        elif tensor.name.endswith(".counts"):
            counts[tensor.name[:-len(".counts")]] = tensor
    if not sums and not counts:
        raise ImatrixError(path, "a GGUF without <name>.in_sum2 / <name>.counts tensors (a model, not an imatrix?)")
    entries = {}
    for name in sorted(set(sums) | set(counts)):
        if name not in sums or name not in counts:
            raise ImatrixError(path, f"{name} has in_sum2 or counts but not both")
        columns = int(sums[name].shape[0])
        values = np.asarray(sums[name].data, dtype=np.float32).reshape(-1, columns)
        count = np.asarray(counts[name].data, dtype=np.float32).reshape(-1)
        if count.size != values.shape[0]:
            raise ImatrixError(path, f"{name} has {values.shape[0]} matrices but {count.size} counts")
        seen = count > 0
        with np.errstate(divide="ignore", invalid="ignore"):
            weights = np.where(seen[:, None], values / np.where(seen, count, 1)[:, None], np.float32(1))
        entries[name] = torch.from_numpy(weights.astype(np.float32).reshape(-1))
    return entries


def _read_legacy(path: Path) -> dict[str, torch.Tensor]:
    data = path.read_bytes()
    offset = 0

    def take(size: int, what: str) -> bytes:
        nonlocal offset
        if offset + size > len(data):
            raise ImatrixError(path, f"the file ends inside {what} (truncated, or not an imatrix)")
        chunk = data[offset:offset + size]
        offset += size
        return chunk

    (n_entries,) = struct.unpack("<i", take(4, "the entry count"))
    if n_entries < 1:
        raise ImatrixError(path, f"it declares {n_entries} entries")
    entries = {}
    for index in range(n_entries):
        (length,) = struct.unpack("<i", take(4, f"entry {index + 1}'s name length"))
        if not 0 < length <= 4096:
            raise ImatrixError(path, f"entry {index + 1} has a name length of {length}")
        try:
            name = take(length, f"entry {index + 1}'s name").decode("utf-8")
        except UnicodeDecodeError:
            raise ImatrixError(path, f"entry {index + 1}'s name is not text") from None
        ncall, count = struct.unpack("<ii", take(8, f"entry {name}'s header"))
        if count < 1:
            raise ImatrixError(path, f"entry {name} has {count} values")
        values = np.frombuffer(take(4 * count, f"entry {name}'s values"), dtype="<f4").astype(np.float32)
        if ncall > 0:
            values = values / np.float32(ncall)
        entries[name] = torch.from_numpy(values.copy())
    return entries
