"""`python -m comfyui_zimage_gguf bench`: dequantization speed per GGML type and GGUF opening time.

Every figure is a median of repeated runs; ratios are taken against a same-size fp16 tensor copy
timed in the same run: "x copy" against an allocating clone (fresh output on both sides), "x copy_"
dequantizing into a preallocated `out` against `copy_` into a preallocated buffer (no page faults
on either side: the memory-bandwidth limit), because absolute times on shared machines swing between runs.
"x copy_" is the median over rounds of (dequantization into `out`) / (the fastest of three `copy_`s
timed right after it, same round); "best" is the lowest such round, the quietest moment of the run
(issue 16's measure is on a quiet machine). Both sides
of each ratio (the copy, gguf-py's numpy dequantization) are timed alongside each type, runs
alternating, so that load changing during the run moves both sides alike.

`bench --compile-check` (cli/bench_compile.py) compiles the Triton kernels for CUDA and ROCm targets
without a GPU and counts their bytes per program; `bench --gpu-check` (cli/bench_gpu.py) is what
only a GPU can show.
"""
from __future__ import annotations

import math
import statistics
import time

import numpy as np
import torch
from gguf import GGMLQuantizationType, quants as gguf_quants

from ..ops import QUANT_TYPES, dequantize


def _seconds(fn) -> float:
    """Seconds one call of fn takes; a fn that times itself (a _FastestOf) returns its own figure."""
    start = time.perf_counter()
    result = fn()
    elapsed = time.perf_counter() - start
    return result if isinstance(fn, _FastestOf) else elapsed


class _FastestOf:
    """Calls fn `times` times and returns the fastest call's seconds: a steadier reference for one
    round than a single copy_, which a moment's disturbance can slow by half (seen as F16, itself a
    copy, dequantizing at 0.68x a copy_ in one round)."""

    def __init__(self, fn, times: int = 3):
        self.fn, self.times = fn, times

    def __call__(self) -> float:
        return min(_seconds(self.fn) for _ in range(self.times))


def _median_seconds(fn, repeat: int) -> float:
    fn()  # warm-up: builds cached tables, faults pages in
    return statistics.median(_seconds(fn) for _ in range(repeat))


def _interleaved_samples(timed) -> list[list[float]]:
    """Seconds of each (function, runs) pair, run in rotation (each only in its first `runs` rounds)."""
    for fn, _ in timed:
        fn()
    samples = [[] for _ in timed]
    for round_index in range(max(runs for _, runs in timed)):
        for (fn, runs), times in zip(timed, samples):
            if round_index < runs:
                times.append(_seconds(fn))
    return samples


def _type_runs(name: str, rows: int, cols: int, rng: np.random.Generator, baseline_src, copy_target, out) -> list:
    """The functions timed for one type, in rotation: (function, runs as a fraction of repeat)."""
    ggml_type = GGMLQuantizationType[name]
    qt = QUANT_TYPES[ggml_type]
    # Rows of the weight, as a GGUF file stores them: gguf-py works through 16 rows at a
    # time, so handing it one row per block would time its Python loop, not its maths.
    raw = qt.random_blocks(rows * cols // qt.block_size, rng).reshape(rows, -1)
    data = torch.from_numpy(raw).reshape(-1)
    # to the same float16 output (gguf-py returns float32; for F32 a zero-copy view); gguf-py
    # 0.19 has no class for Q1_0: its numpy column stays empty
    with_numpy = ggml_type in (GGMLQuantizationType.F32, GGMLQuantizationType.F16) or ggml_type in gguf_quants._type_traits
    return [
        (lambda: dequantize(data, ggml_type, (rows, cols), torch.float16), 1),
        (baseline_src.clone, 1),
        (lambda: dequantize(data, ggml_type, (rows, cols), torch.float16, out=out), 1),
        (_FastestOf(lambda: copy_target.copy_(baseline_src)), 1),
        *([(lambda: gguf_quants.dequantize(raw, ggml_type).astype(np.float16), 1 / 3)] if with_numpy else []),
    ]


def _row(name: str, samples: list[list[float]], out_bytes: int) -> dict:
    seconds, type_copy_s, out_s, copy_into_s, *numpy_s = [statistics.median(times) for times in samples]
    numpy_s = numpy_s[0] if numpy_s else math.nan
    return {
        "type": name,
        "ms": seconds * 1e3,
        "gbps": out_bytes / seconds / 1e9,
        "x_copy": seconds / type_copy_s,
        "out_ms": out_s * 1e3,
        # per round: the dequantization into out over the copy_ run right after it (the same
        # moment's load on both sides); the median round, and the best round. (Not the fastest run
        # of each side: on the shared build machine copy_ is fastest in the slow spells that make
        # the kernels slowest, so that ratio mixes two moments.)
        "x_copy_into": statistics.median(_round_ratios(samples[2], samples[3])),
        "best_x_copy_into": min(_round_ratios(samples[2], samples[3])),
        "numpy_ms": numpy_s * 1e3,
        "vs_numpy": numpy_s / seconds,
    }


def _round_ratios(times: list[float], copy_times: list[float]) -> list[float]:
    return [t / c for t, c in zip(times, copy_times)]


def bench_dequant(type_names, rows: int, cols: int, repeat: int, passes: int = 1) -> list[dict]:
    """Time every type `repeat` rounds per pass; `passes` > 1 goes through all the types again,
    spreading each type's runs over the whole benchmark (a better chance of quiet moments)."""
    n_elements = rows * cols
    baseline_src = torch.randn(n_elements, dtype=torch.float16)
    copy_s = _median_seconds(lambda: baseline_src.clone(), repeat)
    out_bytes = n_elements * 2
    print(f"weight {rows}x{cols} -> float16 ({out_bytes / 1e6:.1f} MB out); torch threads: {torch.get_num_threads()}")
    print(f"fp16 copy of the same size: {copy_s * 1e3:.2f} ms ({out_bytes / copy_s / 1e9:.2f} GB/s)")
    copy_target = torch.empty_like(baseline_src)
    out = torch.empty((rows, cols), dtype=torch.float16)
    header = (f"{'type':8} {'ms':>9} {'GB/s':>7} {'x copy':>7} {'out ms':>9} {'x copy_':>8} {'best':>6} "
              f"{'numpy ms':>10} {'vs numpy':>9}")
    samples = {}
    for pass_index in range(passes):
        if passes > 1:
            print(f"pass {pass_index + 1} of {passes}", flush=True)
        elif pass_index == 0:
            print(f"{header}\n{'-' * len(header)}")
        for name in type_names:
            timed = _type_runs(name, rows, cols, np.random.default_rng(0), baseline_src, copy_target, out)
            new = _interleaved_samples([(fn, max(1, round(repeat * share))) for fn, share in timed])
            samples[name] = [a + b for a, b in zip(samples[name], new)] if name in samples else new
            if passes == 1:
                _print_row(_row(name, samples[name], out_bytes))
    results = [_row(name, samples[name], out_bytes) for name in type_names]
    if passes > 1:
        print(f"{header}\n{'-' * len(header)}")
        for row in results:
            _print_row(row)
    _print_summary(results)
    return results


def _print_row(row: dict) -> None:
    print(
        f"{row['type']:8} {row['ms']:9.2f} {row['gbps']:7.2f} {row['x_copy']:7.2f} {row['out_ms']:9.2f} "
        f"{row['x_copy_into']:8.2f} {row['best_x_copy_into']:6.2f} {row['numpy_ms']:10.1f} {row['vs_numpy']:8.1f}x",
        flush=True,
    )


def _print_summary(results: list[dict]) -> None:
    for key, label in (("x_copy", "x copy"), ("x_copy_into", "x copy_"), ("best_x_copy_into", "x copy_, best round")):
        ratios = [r[key] for r in results]
        if ratios:
            geo = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
            worst = max(ratios)
            print(f"geometric mean {label}: {geo:.2f}; worst: {worst:.2f} ({results[ratios.index(worst)]['type']})")


def run_bench(args) -> int:
    if getattr(args, "compile_check", False):
        from .bench_compile import run_compile_check

        return run_compile_check(args)
    if getattr(args, "gpu_check", False):
        from .bench_gpu import gpu_check_argument_error, run_gpu_check

        error = gpu_check_argument_error(args)
        if error:
            print(f"bench --gpu-check: {error}")
            return 2
        return run_gpu_check(args)
    rows, cols = (int(v) for v in args.shape.lower().split("x"))
    names = args.types or [t.name for t in QUANT_TYPES]
    bench_dequant(names, rows, cols, args.repeat, getattr(args, "passes", 1))
    if not args.skip_open:
        from .bench_open import run_open_bench

        run_open_bench(args.cache_dir)
    return 0
