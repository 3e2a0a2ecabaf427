"""Before/after CPU dequantization in one process: the pack at a base git revision against the working tree.

    python benchmarks/dequant_ab.py BASE_REV [--rounds 9] [--slab float32] [TYPE ...]

`git archive BASE_REV` is unpacked into a temporary folder and imported as a second package beside
the installed one (the working tree), so both run on the same bytes, in the same process, in
alternating rounds: load from other tenants of the machine moves both alike. Each round times a
`copy_` of the output's size, the base and the working tree.

- default: a 10240x3840 weight to float16 into a preallocated `out` (issue 16's measure); prints
  per type the fastest run of each side and the median over rounds of its ratio to that round's
  `copy_`, then the geometric mean and the worst ratio of each side. Outputs are checked
  bit-identical first.
- `--slab DTYPE`: the CPU slab Linear instead (ops/runtime/linear.py: one Z-Image block's five
  Linears on 96 input rows), median and fastest of each side, results checked bit-identical.

Run it on an otherwise idle machine (nothing else heavy at the same time).
"""
from __future__ import annotations

import argparse
import importlib
import io
import math
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import torch
from gguf import GGMLQuantizationType as T

import comfyui_zimage_gguf as new_pack
from comfyui_zimage_gguf.cli.bench import _interleaved_samples

ROWS, COLS = 10240, 3840
SLAB_SHAPES = [(11520, 3840), (3840, 3840), (10240, 3840), (3840, 10240), (10240, 3840)]


def import_base(revision: str, folder: Path):
    """The pack at `revision` (git archive of the working tree's repository), as package `zbase`."""
    repo = Path(new_pack.__file__).resolve().parent
    archive = subprocess.run(["git", "-C", str(repo), "archive", revision], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder / "zbase", filter="data")
    sys.path.insert(0, str(folder))
    return importlib.import_module("zbase")


def _rounds(fns, rounds: int) -> list[list[float]]:
    """Seconds of each function per round, in rotation after one warm-up call each (bench's own loop)."""
    return _interleaved_samples([(fn, rounds) for fn in fns])


def dequant_ab(base, names, rounds: int) -> None:
    from comfyui_zimage_gguf.ops import QUANT_TYPES, dequantize

    n = ROWS * COLS
    src, dst = torch.randn(n, dtype=torch.float16), torch.empty(n, dtype=torch.float16)
    out = torch.empty((ROWS, COLS), dtype=torch.float16)
    ratios = {"base": [], "new": []}
    for name in names:
        ggml_type = T[name]
        data = torch.from_numpy(QUANT_TYPES[ggml_type].random_blocks(n // QUANT_TYPES[ggml_type].block_size,
                                                                     np.random.default_rng(0))).reshape(-1)
        run_base = lambda: base.ops.dequantize(data, ggml_type, (ROWS, COLS), torch.float16, out=out)  # noqa: E731
        run_new = lambda: dequantize(data, ggml_type, (ROWS, COLS), torch.float16, out=out)  # noqa: E731
        run_base()
        expected = out.clone()
        run_new()
        if not torch.equal(expected.view(torch.int16), out.view(torch.int16)):
            raise SystemExit(f"{name}: the working tree's output differs from the base's")
        copies, base_t, new_t = _rounds([lambda: dst.copy_(src), run_base, run_new], rounds)
        # per round, each side over the copy_ of the same round (the same moment's load)
        base_r = statistics.median(b / c for b, c in zip(base_t, copies))
        new_r = statistics.median(n / c for n, c in zip(new_t, copies))
        ratios["base"].append(base_r)
        ratios["new"].append(new_r)
        print(f"{name:8} fastest: base {min(base_t) * 1e3:7.2f} ms  new {min(new_t) * 1e3:7.2f} ms  "
              f"copy_ {min(copies) * 1e3:5.2f} ms;  x copy_ (median round) {base_r:5.2f} -> {new_r:5.2f}", flush=True)
    for side, values in ratios.items():
        geo = math.exp(sum(map(math.log, values)) / len(values))
        worst = max(values)
        print(f"{side}: geometric mean x copy_ {geo:.2f}; worst {worst:.2f} ({names[values.index(worst)]})")


def slab_ab(base, names, rounds: int, dtype: torch.dtype) -> None:
    from comfyui_zimage_gguf.ops import QUANT_TYPES
    from comfyui_zimage_gguf.ops.runtime import linear as new_linear, tensor as new_tensor

    inputs = {k: torch.randn(96, k, dtype=dtype) for _, k in SLAB_SHAPES}
    for name in names:
        ggml_type = T[name]
        qt = QUANT_TYPES[ggml_type]
        sides = []
        for linear, tensor in ((base.ops.runtime.linear, base.ops.runtime.tensor), (new_linear, new_tensor)):
            weights = []
            for seed, (o, k) in enumerate(SLAB_SHAPES):
                raw = torch.from_numpy(qt.random_blocks(o * k // qt.block_size, np.random.default_rng(seed))).reshape(-1)
                weights.append((tensor.QuantizedTensor(raw, ggml_type, (o, k)), k))
            sides.append(lambda linear=linear, weights=weights: [
                linear.quantized_linear(inputs[k], w, None, dtype) for w, k in weights])
        with torch.inference_mode():
            if not all(torch.equal(a, b) for a, b in zip(sides[0](), sides[1]())):
                raise SystemExit(f"{name}: the working tree's slab Linear differs from the base's")
            base_t, new_t = _rounds(sides, rounds)
        print(f"{name:8} slab Linear {dtype}: base median {statistics.median(base_t) * 1e3:6.1f} ms "
              f"(fastest {min(base_t) * 1e3:6.1f})  new median {statistics.median(new_t) * 1e3:6.1f} ms "
              f"(fastest {min(new_t) * 1e3:6.1f})", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", help="git revision to compare the working tree with")
    parser.add_argument("types", nargs="*", help="GGML type names (default: all)")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--slab", metavar="DTYPE", help="time the CPU slab Linear with this input dtype instead")
    args = parser.parse_args(argv)
    from comfyui_zimage_gguf.ops import QUANT_TYPES

    names = args.types or [t.name for t in QUANT_TYPES]
    with tempfile.TemporaryDirectory() as folder:
        base = import_base(args.base, Path(folder))
        if args.slab:
            slab_ab(base, names, args.rounds, getattr(torch, args.slab))
        else:
            dequant_ab(base, names, args.rounds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
