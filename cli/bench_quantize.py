"""Quantizer benchmark: one 3840x10240 weight (N(0, 0.02)) per type, our torch quantizer against ggml's
(ggml_quantize_chunk, no importance matrix, single-threaded) on the same tensor in the same run,
plus the share of blocks whose bytes are identical.

    python -m comfyui_zimage_gguf.cli.bench_quantize [--tools-python /tmp/tools-venv/bin/python] [--types Q4_K ...]

ggml is the libggml-base that llama-cpp-python bundles, found through the tools Python and loaded
here with ctypes (without it only our times are printed).
"""
from __future__ import annotations

import argparse
import ctypes
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T

from ..ops.ggml.quant_types import tensor_bytes

TYPES = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS"]


def load_ggml(tools_python: str) -> ctypes.CDLL:
    find = "import importlib.util, pathlib; print(pathlib.Path(importlib.util.find_spec('llama_cpp').origin).parent)"
    package = Path(subprocess.run([tools_python, "-c", find], check=True, capture_output=True, text=True).stdout.strip())
    ggml = ctypes.CDLL(str(min((package / "lib").glob("*ggml-base.*"))))
    ggml.ggml_quantize_chunk.restype = ctypes.c_size_t
    ggml.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                         ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    return ggml


def ggml_quantize(ggml, ggml_type: T, weights: np.ndarray) -> np.ndarray:
    rows, columns = weights.shape
    out = np.empty((rows, tensor_bytes(ggml_type, (columns,))), dtype=np.uint8)
    ggml.ggml_quantize_chunk(int(ggml_type), weights.ctypes.data, out.ctypes.data, 0, rows, columns, None)
    return out


def run(args) -> int:
    from ..ops import quantize

    rows, columns = (int(v) for v in args.shape.split("x"))
    weights = torch.randn(rows, columns, generator=torch.Generator().manual_seed(0)).mul_(0.02)
    ggml = load_ggml(args.tools_python) if args.tools_python else None
    print(f"one {rows}x{columns} weight, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"ggml single-threaded" if ggml else "")
    print(f"{'type':8} {'torch s':>8} {'ggml s':>8} {'ratio':>6} {'identical blocks':>18}")
    for name in args.types or TYPES:
        ggml_type = T[name]
        start = time.perf_counter()
        ours = quantize(weights, ggml_type).numpy()
        ours_s = time.perf_counter() - start
        line = f"{name:8} {ours_s:8.2f}"
        if ggml is not None:
            start = time.perf_counter()
            theirs = ggml_quantize(ggml, ggml_type, weights.numpy())
            ggml_s = time.perf_counter() - start
            type_size = GGML_QUANT_SIZES[ggml_type][1]
            same = (ours.reshape(-1, type_size) == theirs.reshape(-1, type_size)).all(axis=1)
            line += f" {ggml_s:8.2f} {ours_s / ggml_s:6.1f} {int(same.sum()):>9}/{same.size} ({same.mean():.4%})"
        print(line, flush=True)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m comfyui_zimage_gguf.cli.bench_quantize", description=__doc__.split("\n")[0])
    parser.add_argument("--tools-python", help="a Python with llama-cpp-python (its libggml is timed and compared)")
    parser.add_argument("--types", nargs="*", choices=TYPES)
    parser.add_argument("--shape", default="3840x10240")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
