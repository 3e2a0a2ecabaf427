"""Detect, plan, write: a source's tensors under the names the GGUF uses get their GGML types
(ops.ggml.quant_rules) and go to the streaming writer (ops.gguf_file.writer). `convert()` is the whole conversion
of a file for the CLI and the Python API; `write_model()` is the step the Save node shares with it."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import torch

from ..errors import ConvertError
from ..ops.gguf_file.writer import WriteProgress, write_gguf
from .renames import diffusion_tensors
from .sources import SourceTensor, open_source


def write_model(out, architecture: str, mix: str,
                tensors: list[tuple[str, tuple[int, ...], torch.dtype, Callable[[], torch.Tensor]]],
                progress: Callable[[int, int], WriteProgress] | None = None, **writer_options) -> Path:
    """Plan (name, shape, dtype, load) tensors as `mix` for `architecture` and write them;
    `progress(n_tensors, n_elements)` makes the reporter the writer updates after each tensor."""
    from ..ops.ggml.quant_rules import plan_types

    plan = plan_types({name: (shape, dtype) for name, shape, dtype, _ in tensors}, mix, architecture)
    jobs = [(name, shape, plan[name], load) for name, shape, _, load in tensors]
    reporter = progress(len(jobs), sum(math.prod(shape) for _, shape, _, _ in jobs)) if progress else None
    return write_gguf(out, architecture, mix, jobs, reporter, **writer_options)


def _load_importance(imatrix, mix: str):
    from ..ops.gguf_file.imatrix import load_imatrix
    from ..ops.ggml.quant_rules import MIXES
    from ..ops.ggml.quantize import imatrix_types

    if imatrix is None:
        return None
    if MIXES[mix].base not in imatrix_types():
        raise ConvertError(f"{mix} cannot be made with an imatrix here: this pack weights "
                           f"{', '.join(t.name for t in imatrix_types())} (mixes based on them)")
    return load_imatrix(imatrix)


def convert(src, out, mix: str = "Q4_K_M", overwrite: bool = False,
            progress: Callable[[int, int], WriteProgress] | None = None,
            warn: Callable[[str], None] | None = None, imatrix=None) -> Path:
    """Convert a Z-Image diffusion model (or a Qwen3 text encoder) to a GGUF of the given mix; returns
    the written path. `imatrix`: a llama.cpp importance-matrix file (.gguf or legacy .dat) whose
    entries, by GGUF tensor name, weight the K/IQ4 quantization as llama-quantize --imatrix does.
    `progress(n_tensors, n_elements)` makes the reporter the writer updates after each tensor."""
    from ..ops.ggml.quant_rules import MIXES
    from .encoder_names import qwen3_prefix, qwen3_tensors

    if mix not in MIXES:
        raise ConvertError(f"unknown type {mix}: choose one of {', '.join(MIXES)}")
    importance = _load_importance(imatrix, mix)
    source = open_source(src)
    try:
        encoder_prefix = qwen3_prefix(t.name for t in source.tensors)
        extra_metadata = None
        if encoder_prefix is not None:
            def refuse(message):
                raise ConvertError(f"{source.path.name}: {message}\n{source.path}")

            architecture = "qwen3"
            tensors, extra_metadata = qwen3_tensors(source, encoder_prefix, SourceTensor, refuse)
        else:
            architecture, tensors = diffusion_tensors(source)
        if source.requantized and warn:
            warn(f"{source.path.name} is already quantized: requantizing to {mix} adds the errors of both "
                 f"quantizations; convert the original BF16/F16 file if you have it")
        return write_model(out, architecture, mix, [(t.name, t.shape, t.dtype, t.load) for t in tensors],
                           progress, overwrite=overwrite, metadata=extra_metadata, imatrix=importance)
    finally:
        source.close()
