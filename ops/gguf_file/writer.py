"""The GGUF writer shared by `convert` and the Save Model as GGUF node: (name, shape, type, load)
tensors streamed one at a time (read, quantized, written) into a temporary file beside OUT
(fileio.AtomicWrite), renamed to OUT only when complete and removed on any error or interruption.
Every file it writes says which pack made it (`general.quantized_by`)."""
from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch
from gguf import GGML_QUANT_VERSION, GGMLQuantizationType as T, GGUFWriter

from ...errors import ConvertError
from ..ggml.quant_types import tensor_bytes

# Every GGUF this pack writes (convert, Save Model as GGUF) says so, for `inspect` and for people.
MADE_BY_KEY, MADE_BY = "general.quantized_by", "comfyui-zimage-gguf"


class WriteProgress(Protocol):
    """What the writer reports to after each tensor (the CLI's terminal printer, the node's progress bar)."""

    def update(self, index: int, name: str, n_elements: int) -> None: ...


def _encode(values: torch.Tensor, ggml_type: T, imatrix: torch.Tensor | None = None) -> np.ndarray:
    from ..ggml.quantize import quantize

    rows = values.reshape(-1, values.shape[-1]) if values.dim() else values.reshape(1, 1)
    if imatrix is None:
        return quantize(rows, ggml_type).numpy()
    return quantize(rows, ggml_type, imatrix=imatrix).numpy()


# Types ggml quantizes without looking at an importance matrix (llama-quantize passes it and it is unused).
_IMATRIX_UNUSED = (T.F32, T.F16, T.BF16, T.Q8_0)


def _tensor_imatrix(imatrix: dict | None, name: str, shape, ggml_type: T) -> torch.Tensor | None:
    """The importance weights for one tensor (looked up by its GGUF name), or None where there are
    none or the type does not use them; refuses a type this pack cannot weight, or a width mismatch."""
    from ..ggml.quantize import imatrix_types

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

def _write_into(writer: GGUFWriter, file) -> None:
    """Point a GGUFWriter built without a path at an open file (the atomic writer's temporary
    file), so that it never opens a path itself."""
    from gguf.gguf_writer import WriterState

    writer.fout = [file]
    writer.state = WriterState.EMPTY


def write_gguf(out_path, architecture: str, mix: str, tensors: list[tuple[str, tuple[int, ...], T, Callable[[], torch.Tensor]]],
               progress: WriteProgress | None = None, overwrite: bool = False,
               metadata: Callable[[GGUFWriter], None] | None = None, imatrix: dict | None = None,
               add_counter: bool = False) -> Path:
    """Write (name, shape, type, load) tensors streaming into a temporary file beside OUT, renamed to
    OUT when complete (fileio.AtomicWrite: never through a link, fsynced, removed on any failure);
    returns the final path (numbered `name_00001.gguf` with `add_counter` when OUT exists).
    `metadata(writer)` adds keys of the architecture (a text encoder's hyperparameters); `imatrix`
    (ops.gguf_file.imatrix.load_imatrix) weights the tensors it names, by their GGUF names."""
    from ...fileio import AtomicWrite, check_target
    from ..ggml.quant_rules import MIXES

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

