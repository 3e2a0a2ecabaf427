"""`python -m comfyui_zimage_gguf bench --gpu-check`: what only an NVIDIA GPU can show, as one table.

1. Dequantization on CUDA, every GGML type of the kernel table: random blocks (the table's own
   `random_blocks`) dequantized on the GPU and on the CPU, compared bit for bit (float16, bfloat16,
   float32 outputs; two NaNs count as equal whatever their payload), once with the torch kernels
   on the GPU and once with the pack's default backend (Triton where the type has a kernel).
   Then its speed: a 3840x10240 weight into a preallocated bfloat16 `out`, torch and Triton
   backends, beside a `copy_` of the same output size; GB/s counts bytes read plus written.
2. A real ComfyUI on CUDA (`main.py` without `--cpu`), the Z-Image Turbo graph of the end-to-end
   benchmark (benchmarks/bench_e2e.py: the shallow full-width test models, generated once
   into the test cache) with native bf16 (ComfyUI's loaders, bf16 encoder) and this pack's GGUF
   loaders (the DiT in each `--models` type, the Qwen3-4B encoder in Q8_0 for all), in four
   servers: DynamicVRAM on (ComfyUI's default on NVIDIA) and off (`--disable-dynamic-vram`), each
   without and with a VRAM cap (`--reserve-vram`, computed so that only `--vram-left` GiB of the
   card stay for ComfyUI, which makes it offload weights it cannot fit), plus LoRA runs
   (LoraLoaderModelOnly, a rank-8 LoRA on five modules) in the first server. The first mode runs
   twice: with the default dequantization backend (auto: Triton) and with the torch kernels
   (ZIMAGE_GGUF_DEQUANT_BACKEND=torch), each with its own native bf16 run for "x native".

Figures: s/it is the median of the server's step-to-step `progress` times (the first step, which
loads the model, left out); VRAM is the peak, polled every 0.2 s with `nvidia-smi
--query-compute-apps`, of the memory the driver charges to the server process (CUDA context,
PyTorch's caching allocator and whatever comfy-aimdo maps: what the card loses to it); where
nvidia-smi cannot see the server's pid (a container's own pid namespace) the device-wide
`memory.used` above its level just before the prompt was queued, marked `*`. "load" is what ComfyUI's log
said while the prompt ran: `dynamic` (prepared for dynamic VRAM loading), `full` (loaded
completely) or `partial N MB off` (loaded partially, the most offloaded in one load).

The ComfyUI part needs a source checkout of this pack (its benchmarks/ harness is imported
by path) and COMFYUI_PATH; run it with ComfyUI's Python.
"""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from ..ops import QUANT_TYPES, dequantize
from ..ops.ggml.dequant import BACKEND_ENV, triton_refusal

REPO_ROOT = Path(__file__).resolve().parents[1]
PACK_FOLDER = "comfyui_zimage_gguf"
DEQUANT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
DTYPE_NAMES = {torch.float16: "f16", torch.bfloat16: "bf16", torch.float32: "f32"}
DEQUANT_SHAPE = (64, 4096)  # 4096 is a multiple of every block size in the table (32 and 256)
SPEED_SHAPE = (3840, 10240)  # a Z-Image feed-forward weight
VRAM_POLL_S = 0.2
LORA_TARGETS = {  # module -> (out, in) of its weight, Z-Image at full width (3840)
    "layers.0.attention.qkv": (3 * 3840, 3840),
    "layers.0.feed_forward.w2": (3840, 10240),
    "noise_refiner.1.feed_forward.w1": (10240, 3840),
    "context_refiner.0.attention.out": (3840, 3840),
    "final_layer.linear": (64, 3840),
}
TABLE_HEADERS = ("check", "setting", "result", "s/it", "x native", "VRAM MiB", "load")


def add_gpu_check_arguments(bench) -> None:
    group = bench.add_argument_group("GPU check (--gpu-check)")
    group.add_argument("--gpu-check", action="store_true",
                       help="CUDA dequantization vs CPU, and a real ComfyUI on CUDA: s/it and peak VRAM (one table)")
    group.add_argument("--comfyui-path", default=None, help="ComfyUI checkout (default: $COMFYUI_PATH)")
    group.add_argument("--models", nargs="+", default=["Q8_0", "Q4_K"],
                       help="GGML types of the Z-Image DiT compared with native bf16 (default Q8_0 Q4_K)")
    group.add_argument("--size", type=int, default=512, help="image side in pixels (default 512)")
    group.add_argument("--steps", type=int, default=6, help="sampler steps per run (default 6)")
    group.add_argument("--vram-left", type=float, default=2.0,
                       help="GiB of the card left to ComfyUI in the capped servers (default 2.0)")
    group.add_argument("--dequant-only", action="store_true", help="skip the ComfyUI part")
    group.add_argument("--time-limit", type=float, default=450,
                       help="seconds after which the remaining ComfyUI runs are skipped (default 450)")


def gpu_check_argument_error(args) -> str | None:
    """What is wrong with the --gpu-check arguments, or None."""
    bad = [name for name in [*(args.types or []), *args.models] if name not in {t.name for t in QUANT_TYPES}]
    if bad:
        return f"unknown GGML type(s) {', '.join(bad)}; known: {' '.join(t.name for t in QUANT_TYPES)}"
    if args.size < 64 or args.size % 16:
        return f"--size {args.size}: expected a multiple of 16, at least 64"
    if args.steps < 3:
        return f"--steps {args.steps}: at least 3 (s/it needs two step-to-step times)"
    if args.vram_left <= 0:
        return f"--vram-left {args.vram_left:g}: expected a positive number of GiB"
    if args.time_limit <= 0:
        return f"--time-limit {args.time_limit:g}: expected a positive number of seconds"
    return None


def cuda_refusal() -> str | None:
    """The one line printed instead of running when CUDA is not usable, or None."""
    if torch.cuda.is_available():
        return None
    build = torch.version.cuda or "none (a CPU-only build)"
    return (f"bench --gpu-check needs an NVIDIA GPU: torch {torch.__version__} (CUDA build: {build}) "
            "sees no CUDA device; nothing was run")


def source_checkout_refusal(repo_root: Path = REPO_ROOT) -> str | None:
    helpers = repo_root / "benchmarks"
    missing = [name for name in ("comfy_server.py", "bench_e2e.py", "comfy_inprocess.py")
               if not (helpers / name).is_file()]
    if missing:
        return (f"the ComfyUI part of --gpu-check needs a source checkout of the pack: {helpers} lacks "
                f"{', '.join(missing)} (use a git clone, or --dequant-only)")
    return None


# --- dequantization --------------------------------------------------------------------------

def compare_bits(expected: torch.Tensor, actual: torch.Tensor) -> dict:
    """Element-wise bit comparison of two float tensors of one dtype (any devices); two NaNs are
    equal whatever their payload. {"mismatches", "elements", "max_abs_diff"}."""
    if expected.dtype != actual.dtype or expected.shape != actual.shape:
        raise ValueError(f"cannot compare {expected.dtype}{tuple(expected.shape)} with "
                         f"{actual.dtype}{tuple(actual.shape)}")
    expected, actual = expected.detach().cpu().reshape(-1), actual.detach().cpu().reshape(-1)
    int_type = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[expected.element_size()]
    differ = expected.view(int_type) != actual.view(int_type)
    differ &= ~(torch.isnan(expected) & torch.isnan(actual))
    mismatches = int(differ.sum())
    max_abs = 0.0
    if mismatches:
        diff = (expected[differ].double() - actual[differ].double()).abs()
        max_abs = float(diff.nan_to_num(nan=float("inf")).max())
    return {"mismatches": mismatches, "elements": expected.numel(), "max_abs_diff": max_abs}


def dequant_check(type_name: str, device: str, seed: int = 0, shape=DEQUANT_SHAPE,
                  dtypes=DEQUANT_DTYPES, backend: str | None = None) -> dict:
    """Dequantize the same random blocks of one type on the CPU (torch kernels) and on `device` (with
    `backend`: None is the pack's default choice); per-dtype comparisons."""
    qt = next(t for t in QUANT_TYPES.values() if t.ggml_type.name == type_name)
    n_blocks = shape[0] * shape[1] // qt.block_size
    raw = torch.from_numpy(np.ascontiguousarray(qt.random_blocks(n_blocks, np.random.default_rng(seed))))
    raw = raw.reshape(-1)
    moved = raw.to(device)
    results = {}
    for dtype in dtypes:
        cpu = dequantize(raw, qt.ggml_type, shape, dtype, backend="torch")
        other = dequantize(moved, qt.ggml_type, shape, dtype, backend=backend)
        if other.device.type != torch.device(device).type:
            raise RuntimeError(f"{type_name}: dequantize returned a tensor on {other.device}, not {device}")
        results[DTYPE_NAMES[dtype]] = compare_bits(cpu, other)
    return {"type": type_name, "results": results, "backend": backend or "auto"}


def dequant_row(check: dict) -> tuple:
    bad = {name: r for name, r in check["results"].items() if r["mismatches"]}
    if not bad:
        result = f"bit-exact ({', '.join(check['results'])})"
    else:
        result = "MISMATCH " + "; ".join(f"{name} {r['mismatches']}/{r['elements']} max|d| {r['max_abs_diff']:.3g}"
                                         for name, r in bad.items())
    return (f"dequant cuda ({check.get('backend', 'auto')}) vs cpu", check["type"], result, "-", "-", "-", "-")


def _median_seconds(fn, synchronize, repeat: int) -> float:
    fn()
    synchronize()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def dequant_speed(type_name: str, device: str, shape=SPEED_SHAPE, dtype=torch.bfloat16, repeat: int = 20) -> dict:
    """Dequantization speed of one type into a preallocated `out` with each backend, and a copy_ of
    the same output size: {"type", "bytes": (raw, out), "seconds": {backend or "copy": s or the
    reason it cannot run}}. GB/s counts the bytes read plus written (a copy reads and writes out)."""
    qt = next(t for t in QUANT_TYPES.values() if t.ggml_type.name == type_name)
    n_blocks = shape[0] * shape[1] // qt.block_size
    raw = torch.from_numpy(np.ascontiguousarray(qt.random_blocks(n_blocks, np.random.default_rng(0))))
    raw = raw.reshape(-1).to(device)
    out = torch.empty(shape, dtype=dtype, device=device)
    source = torch.empty(shape, dtype=dtype, device=device).normal_()
    target = torch.empty_like(source)
    synchronize = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    seconds = {}
    for backend in ("torch", "triton"):
        refusal = triton_refusal(qt, raw.device, dtype) if backend == "triton" else None
        if refusal:
            seconds[backend] = refusal
            continue
        try:
            seconds[backend] = _median_seconds(
                lambda: dequantize(raw, qt.ggml_type, shape, dtype, out=out, backend=backend), synchronize, repeat)
        except Exception as error:  # noqa: BLE001 - a failing backend is a result of the check
            seconds[backend] = f"FAILED: {str(error).strip().splitlines()[0] if str(error).strip() else error!r}"[:120]
    seconds["copy"] = _median_seconds(lambda: target.copy_(source), synchronize, repeat)
    return {"type": type_name, "bytes": (raw.numel(), out.numel() * out.element_size()), "seconds": seconds}


def speed_row(speed: dict) -> tuple:
    raw_bytes, out_bytes = speed["bytes"]
    moved = {"torch": raw_bytes + out_bytes, "triton": raw_bytes + out_bytes, "copy": 2 * out_bytes}
    cells, failed = [], False
    for name, value in speed["seconds"].items():
        if isinstance(value, str):
            cells.append(f"{name} {value}")
            failed |= value.startswith("FAILED")
        else:
            cells.append(f"{name} {moved[name] / value / 1e9:.1f} GB/s ({value * 1e3:.2f} ms)")
    copy_s, triton_s = speed["seconds"]["copy"], speed["seconds"].get("triton")
    if isinstance(triton_s, float):
        cells.append(f"triton {triton_s / copy_s:.2f}x copy time")
    result = ("FAILED " if failed else "") + "; ".join(cells)
    return ("dequant GB/s", speed["type"], result, "-", "-", "-", "-")


# --- the table -------------------------------------------------------------------------------

def format_table(headers, rows) -> str:
    """Left-aligned text columns, a rule under the header; every row has len(headers) cells."""
    rows = [tuple(str(cell) for cell in row) for row in rows]
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"row {row} has {len(row)} cells, the table {len(headers)} columns")
    widths = [max(len(str(h)), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    header = line([str(h) for h in headers])
    return "\n".join([header, "-" * len(header), *(line(r) for r in rows)])


def load_summary(log_text: str) -> str:
    """How ComfyUI loaded models, from the log lines a prompt produced."""
    offloaded = [float(mb) for mb in re.findall(r"loaded partially;.*? ([\d.]+) MB offloaded", log_text)]
    kinds = []
    if "prepared for dynamic VRAM loading" in log_text:
        kinds.append("dynamic")
    if offloaded:
        kinds.append(f"partial {max(offloaded):.0f} MB off")
    if "loaded completely" in log_text:
        kinds.append("full")
    return ", ".join(kinds) or "(no load line)"


# --- peak VRAM from outside the server -------------------------------------------------------

def _nvidia_smi(*query: str) -> list[list[str]]:
    out = subprocess.run(["nvidia-smi", *query, "--format=csv,noheader,nounits"], capture_output=True,
                         text=True, timeout=10, check=True).stdout
    return [[cell.strip() for cell in line.split(",")] for line in out.splitlines() if line.strip()]


def device_used_mib(index: int = 0) -> int | None:
    """The device's memory.used in MiB, or None where nvidia-smi cannot say."""
    try:
        return int(_nvidia_smi("--query-gpu=memory.used", f"--id={index}")[0][0])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


class VramSampler:
    """Peak GPU memory of one process (nvidia-smi's per-process figure), or, when nvidia-smi does not
    list that pid, of the device above `baseline_mib`, polled on a thread."""

    def __init__(self, pid: int, baseline_mib: int, index: int = 0):
        self.pid, self.baseline_mib, self.index = pid, baseline_mib, index
        self.process_peak = self.device_peak = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                for pid, used in _nvidia_smi("--query-compute-apps=pid,used_memory", f"--id={self.index}"):
                    if pid == str(self.pid) and used.isdigit():
                        self.process_peak = max(self.process_peak or 0, int(used))
                used = device_used_mib(self.index)
                if used is not None and self.baseline_mib is not None:
                    self.device_peak = max(self.device_peak or 0, used - self.baseline_mib)
            except (OSError, subprocess.SubprocessError, ValueError, IndexError):
                return
            self._stop.wait(VRAM_POLL_S)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def peak(self) -> str:
        if self.process_peak is not None:
            return str(self.process_peak)
        return "n/a" if self.device_peak is None else f"{self.device_peak}*"


# --- ComfyUI on CUDA -------------------------------------------------------------------------

def _integration_modules(repo_root: Path = REPO_ROOT):
    """benchmarks/bench_e2e.py imported by path (it puts its folder on sys.path and imports
    comfy_server and comfy_inprocess, which this returns too)."""
    path = repo_root / "benchmarks" / "bench_e2e.py"
    spec = importlib.util.spec_from_file_location("_zimage_gpu_check_bench_e2e", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, module.comfy_server, module.comfy_inprocess


def server_modes(vram_left: float, free_gib: float) -> list[tuple[str, list[str]]]:
    """(label, extra ComfyUI arguments) of the four servers; the cap reserves all but `vram_left`
    GiB of what is free now."""
    reserve = max(0.0, free_gib - vram_left)
    cap = ["--reserve-vram", f"{reserve:.2f}"]
    return [
        ("dynamic on", []),
        ("dynamic off", ["--disable-dynamic-vram"]),
        (f"dynamic on, cap {vram_left:g} GiB", cap),
        (f"dynamic off, cap {vram_left:g} GiB", ["--disable-dynamic-vram", *cap]),
    ]


def server_runs(modes) -> list[tuple]:
    """(mode, extra args, dequantization backend, LoRA runs?) per ComfyUI server: the first mode
    twice, with the pack's default backend (auto: Triton on CUDA where it compiles) and with the
    torch kernels, each beside native bf16 in the same server; the other modes with auto only."""
    (first_mode, first_extra), *others = modes
    return ([(first_mode, first_extra, "auto", True), (first_mode, first_extra, "torch", False)]
            + [(mode, extra, "auto", False) for mode, extra in others])


def with_lora(comfy_server, workflow: dict, lora_name: str) -> dict:
    workflow = dict(workflow)
    workflow["lora"] = {"class_type": "LoraLoaderModelOnly", "inputs": {
        "model": [comfy_server.UNET_NODE, 0], "lora_name": lora_name, "strength_model": 1.0}}
    workflow["shift"] = {**workflow["shift"], "inputs": {**workflow["shift"]["inputs"], "model": ["lora", 0]}}
    return workflow


def _output_image(server, trace) -> np.ndarray | None:
    from PIL import Image

    for output in (trace.history or {}).get("outputs", {}).values():
        for image in output.get("images", []):
            path = server.base_dir / "output" / image.get("subfolder", "") / image["filename"]
            if path.is_file():
                return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)
    return None


def _timed_run(comfy_server, server, workflow: dict, timeout_s: float):
    """(trace, s/it, peak VRAM cell, load summary) of one prompt."""
    log_start = server.log_path.stat().st_size
    baseline = device_used_mib()
    with VramSampler(server.pid, baseline) as vram:
        trace = server.run_traced(workflow, timeout_s=timeout_s)
    with open(server.log_path, "rb") as log:
        log.seek(log_start)
        load = load_summary(log.read().decode(errors="replace"))
    if trace.status != "success":
        message = str((trace.error or {}).get("exception_message", trace.error)).strip().splitlines()
        raise RuntimeError(message[0] if message else "the prompt failed")
    steps = trace.step_times(comfy_server.SAMPLER_NODE)
    return trace, statistics.median(steps), vram.peak(), load


def _server_rows(comfy_server, server, plan, setting: str, names: dict, lora_name: str, args,
                 deadline: float) -> list[tuple]:
    """One table row per planned run on one started server: s/it, beside native bf16, VRAM, load."""
    rows = []
    native_s, plain_images = {}, {}
    for label, loaders, variant, lora in plan:
        if time.monotonic() > deadline:
            rows.append((f"comfy {label}", setting, "skipped (--time-limit)", "-", "-", "-", "-"))
            continue
        print(f"  {label} ...", flush=True)
        workflow = comfy_server.zimage_workflow(loaders, names[("unet", variant)], names[("clip", variant)],
                                                names[("vae", "all")], size=args.size, steps=args.steps)
        if lora:
            workflow = with_lora(comfy_server, workflow, lora_name)
        try:
            trace, s_it, vram, load = _timed_run(comfy_server, server, workflow,
                                                 timeout_s=max(30.0, deadline - time.monotonic() + 60))
        except Exception as error:  # noqa: BLE001
            rows.append((f"comfy {label}", setting, f"FAILED: {error}"[:160], "-", "-", "-", "-"))
            continue
        finally:
            server.free_models()
            time.sleep(1.5)  # the prompt worker acts on /free between prompts
        result = "ok"
        image = _output_image(server, trace)
        if lora and image is not None and variant in plain_images:
            changed = float(np.abs(image - plain_images[variant]).mean())
            result = f"ok, LoRA moved pixels by {changed:.2f}/255 on average"
        elif not lora and image is not None:
            plain_images[variant] = image
        key = (lora,)
        if loaders == "native":
            native_s[key] = s_it
        ratio = f"{s_it / native_s[key]:.2f}" if key in native_s else "-"
        rows.append((f"comfy {label}", setting, result, f"{s_it:.4f}", ratio, vram, load))
    return rows


def comfy_rows(args, deadline: float) -> list[tuple]:
    bench_e2e, comfy_server, comfy_inprocess = _integration_modules()
    started = time.monotonic()
    print("generating/reusing the test models ...", flush=True)
    files = bench_e2e.model_files(list(args.models), encoder_type="Q8_0")
    model_root = Path(tempfile.mkdtemp(prefix="gpu-check-models-"))
    names = bench_e2e.link_models(model_root, files)
    (model_root / "loras").mkdir()
    lora_name = "gpu-check-lora.safetensors"
    comfy_inprocess.write_lora(model_root / "loras" / lora_name, LORA_TARGETS, rank=8, seed=1)
    print(f"models ready in {time.monotonic() - started:.0f} s", flush=True)

    variants = [("native bf16", "native", "native")] + [(f"pack {t}", "pack", t) for t in args.models]
    free_gib = torch.cuda.mem_get_info()[0] / 2**30
    rows = []
    for mode, extra, backend, lora_runs in server_runs(server_modes(args.vram_left, free_gib)):
        mode = f"{mode}, dequant {backend}"
        plan = [(label, loaders, variant, False) for label, loaders, variant in variants]
        if lora_runs:
            plan += [(label + " +LoRA", loaders, variant, True) for label, loaders, variant in variants]
        if time.monotonic() > deadline:
            rows += [(f"comfy {label}", mode, "skipped (--time-limit)", "-", "-", "-", "-") for label, *_ in plan]
            continue
        print(f"starting ComfyUI on CUDA: {mode} {' '.join(extra)}", flush=True)
        base_dir = Path(tempfile.mkdtemp(prefix="gpu-check-server-"))
        try:
            server = comfy_server.start_server(args.comfyui_path, sys.executable, base_dir, model_root,
                                               {PACK_FOLDER: REPO_ROOT}, env={"ZIMAGE_GGUF_STRICT": "1", BACKEND_ENV: backend},
                                               extra_args=tuple(extra), cpu=False)
        except Exception as error:  # noqa: BLE001 - one failed server must not lose the other rows
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            rows += [(f"comfy {label}", mode, f"FAILED to start: {reason}", "-", "-", "-", "-")
                     for label, *_ in plan]
            continue
        try:
            dynamic = "DynamicVRAM support detected and enabled" in server.log_path.read_text(errors="replace")
            setting = f"{mode} (log: DynamicVRAM {'enabled' if dynamic else 'not enabled'})"
            rows += _server_rows(comfy_server, server, plan, setting, names, lora_name, args, deadline)
        finally:
            comfy_server.stop_server(server.process)
            shutil.rmtree(base_dir, ignore_errors=True)
    return rows


def run_gpu_check(args) -> int:
    refusal = cuda_refusal()
    if refusal:
        print(refusal)
        return 2
    started = time.monotonic()
    deadline = started + args.time_limit
    if not args.dequant_only:
        args.comfyui_path = args.comfyui_path or os.environ.get("COMFYUI_PATH")
        refusal = source_checkout_refusal() or (
            None if args.comfyui_path else "the ComfyUI part of --gpu-check needs COMFYUI_PATH or --comfyui-path "
                                           "(or run with --dequant-only)")
        if refusal:
            print(refusal)
            return 2
    device_name = torch.cuda.get_device_name(0)
    print(f"GPU check on {device_name}, torch {torch.__version__} (CUDA {torch.version.cuda})", flush=True)
    type_names = args.types or [t.name for t in QUANT_TYPES]
    rows = [dequant_row(dequant_check(name, "cuda", backend=backend)) for backend in ("torch", None)
            for name in type_names]
    rows += [speed_row(dequant_speed(name, "cuda")) for name in type_names]
    if not args.dequant_only:
        rows += comfy_rows(args, deadline)
    print()
    print(f"{device_name}; Z-Image 1 layer x 3840 wide, Qwen3-4B 3 layers, {args.size}x{args.size}, "
          f"{args.steps} steps; total {time.monotonic() - started:.0f} s")
    print(format_table(TABLE_HEADERS, rows))
    print("s/it: median server step-to-step time (first step left out); VRAM MiB: peak nvidia-smi used_memory of "
          "the server process (* = device-wide, above the level before the prompt); load: from ComfyUI's log")
    failed = any(row[2].startswith(("MISMATCH", "FAILED")) for row in rows)
    return 1 if failed else 0
