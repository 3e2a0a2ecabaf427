"""`convert SRC OUT.gguf --type Q4_K_M`: the command over conversion/ (sources, renames, plan) and
ops/gguf_file/writer.py. A Z-Image diffusion model (ComfyUI safetensors in BF16/F16/F32 or ComfyUI's scaled
fp8, a diffusers transformer folder, or a GGUF to requantize) or a Qwen3 text encoder -> a
city96-style GGUF (`general.architecture = lumina2`, ComfyUI's bare tensor names, per-tensor types
from ops.ggml.quant_rules). This module adds what a terminal needs: the progress printer, the
arguments, one-line errors.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Callable

from ..errors import ConvertError, ZImageGGUFError

__all__ = ["ConvertError", "Progress", "convert", "add_convert_parser", "run_convert"]


class Progress:
    """Progress on stderr counted in work: the weights' elements quantized so far (a tensor's cost
    grows with its elements, not with its output bytes, which a Q8_0 embedder and a Q4_K block
    matrix make very different). A terminal gets one line updated in place; a pipe or log file gets
    a plain line every `log_every_s` seconds and at the end."""

    def __init__(self, total_tensors: int, total_elements: int, stream=None, log_every_s: float = 10.0):
        self.total_tensors, self.total_elements = total_tensors, max(total_elements, 1)
        self.stream = stream or sys.stderr
        self.in_place = bool(getattr(self.stream, "isatty", lambda: False)())
        self.log_every_s = log_every_s
        self.start = self.last_line = time.monotonic()
        self.done_elements = 0

    def update(self, index: int, name: str, n_elements: int) -> None:
        self.done_elements += n_elements
        now = time.monotonic()
        elapsed = now - self.start
        share = self.done_elements / self.total_elements
        eta = elapsed * (1 - share) / share if share > 0 else 0.0
        line = (f"[{index}/{self.total_tensors}] {100 * share:5.1f}% of the weights, "
                f"ETA {int(eta) // 60}:{int(eta) % 60:02d}  {name[:60]}")
        finished = index == self.total_tensors
        if self.in_place:
            self.stream.write(f"\r{line:<100}" + ("\n" if finished else ""))
        elif finished or now - self.last_line >= self.log_every_s:
            self.stream.write(line + "\n")
            self.last_line = now
        if finished:
            self.stream.write(f"done in {elapsed:.1f} s\n")
        self.stream.flush()


def convert(src, out, mix: str = "Q4_K_M", overwrite: bool = False, progress: bool = True,
            warn: Callable[[str], None] | None = None, imatrix=None) -> Path:
    """conversion.plan.convert with this command's progress printer on stderr (`progress=True`)."""
    from ..conversion.plan import convert as convert_model

    return convert_model(src, out, mix, overwrite, Progress if progress else None, warn, imatrix)


def add_convert_parser(sub) -> None:
    from ..ops.ggml.quant_rules import MIXES

    parser = sub.add_parser("convert", help="write a Z-Image model (safetensors, diffusers folder or GGUF) or a "
                                            "Qwen3 text encoder (HF/ComfyUI safetensors) as a quantized GGUF")
    parser.add_argument("src", help="Z-Image diffusion model: ComfyUI .safetensors (BF16/F16/F32, scaled fp8), "
                                        "a diffusers folder (or its transformer/), or a .gguf; or a Qwen3 text "
                                        "encoder in HF/ComfyUI names (.safetensors or an HF folder)")
    parser.add_argument("out", help="output .gguf path (written through a temporary file beside it)")
    parser.add_argument("--type", default="Q4_K_M", choices=list(MIXES), help="llama.cpp file type (default Q4_K_M)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    parser.add_argument("--imatrix", metavar="FILE", help="llama.cpp importance matrix (.gguf or legacy .dat) "
                                                          "for K/IQ4 mixes, by GGUF tensor name")


def run_convert(args) -> int:
    try:
        path = convert(args.src, args.out, args.type, overwrite=args.overwrite, progress=not args.quiet,
                       warn=lambda message: print(f"warning: {message}", file=sys.stderr),
                       imatrix=getattr(args, "imatrix", None))
    except ZImageGGUFError as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted: no output written", file=sys.stderr)
        return 130
    print(path)
    return 0
