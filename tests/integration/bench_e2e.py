"""End-to-end benchmark in a real ComfyUI (in-process, CPU): sampling steps and text encoding from
GGUF files against the same models loaded natively from safetensors, measured in the same run.

Diffusion: Z-Image one transformer layer deep at full width (3840; the issue's anchor figures
used this shape), 128x128 image, 2 euler steps at cfg 1 (one model call per step); native bf16
safetensors vs Q8_0 and Q4_0 GGUFs. Text encoder: Qwen3-4B three layers deep at full width;
native bf16 safetensors vs Q8_0 and Q4_0 GGUFs. Each variant runs in its own subprocess so its
peak RSS is its own: VmHWM of the worker's address space, not ru_maxrss, which Linux carries over
exec from the (v)forking parent and so reports the driver's own peak. Wall times on a shared
machine swing with other load, so CPU time (all threads of the worker) is reported beside them.
Model files come from the test factories (a source checkout is needed), generated once into
their cache.

Targets (issue): a GGUF sampling step <= 1.3x the native bf16 step; GGUF encode <= 1.3x native.
Run: COMFYUI_PATH=/tmp/ComfyUI /tmp/comfy-venv/bin/python -m comfyui_zimage_gguf.bench_e2e [--e2e-threads 1]
With MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=68719476736 in the environment, glibc
reuses freed weight buffers instead of returning them to the OS (see the table's malloc line).
"""
from __future__ import annotations

import argparse
import cProfile
import importlib.util
import json
import os
import pstats
import statistics
import subprocess
import sys
import time
from pathlib import Path

TARGET_RATIO = 1.3
HELPER = Path(__file__).resolve().parent / "tests" / "integration" / "comfy_inprocess.py"
RESULT_MARK = "E2E_RESULT "
CAPTION_TOKENS = 32
PROMPT = ("a photograph of a red fox sitting in fresh snow at dawn, soft golden light, shallow depth of field, "
          "pine trees in the background, highly detailed fur, 85mm lens")
MALLOC_TUNING = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "LD_PRELOAD")
DIFFUSION_VARIANTS = (("native bf16", "native", None), ("GGUF Q8_0", "gguf", "Q8_0"), ("GGUF Q4_0", "gguf", "Q4_0"))
ENCODER_VARIANTS = (("native bf16", "native", None), ("GGUF Q8_0", "gguf", "Q8_0"), ("GGUF Q4_0", "gguf", "Q4_0"))


def _helper():
    if not HELPER.exists():
        raise SystemExit(f"the end-to-end benchmark needs a source checkout: {HELPER} (the model factories) is missing")
    spec = importlib.util.spec_from_file_location("_zimage_bench_comfy_inprocess", HELPER)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def add_e2e_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of the end-to-end benchmark (the caller adds its own switch to run it)."""
    parser.add_argument("--comfyui-path", default=None, help="ComfyUI checkout (default: $COMFYUI_PATH)")
    parser.add_argument("--e2e-steps", type=int, default=2, help="sampling steps per timed run (default 2)")
    parser.add_argument("--e2e-size", type=int, default=128, help="image side in pixels (default 128)")
    parser.add_argument("--e2e-repeat", type=int, default=2, help="timed sampling runs / encodes per variant")
    parser.add_argument("--e2e-no-profile", action="store_true", help="skip the profiled step (dequant share)")
    parser.add_argument("--e2e-threads", type=int, default=None,
                        help="torch threads per worker (default: torch's choice); "
                             "1 gives steadier CPU times on a busy machine")


# --- worker side (one variant per process) ---------------------------------------------------------


def _profile_shares(run) -> dict:
    """Share of one run's time spent dequantizing, in matrix products, and elsewhere."""
    profiler = cProfile.Profile()
    profiler.enable()
    run()
    profiler.disable()
    stats = pstats.Stats(profiler).stats
    total = dequant = linear = 0.0
    for (filename, _, function), (_, _, tottime, cumtime, _) in stats.items():
        total += tottime
        if function == "dequantize" and filename.endswith(os.path.join("ops", "dequant.py")):
            dequant += cumtime
        elif function in ("<built-in method torch._C._nn.linear>", "<built-in method torch.matmul>",
                          "<built-in method torch.bmm>"):
            linear += tottime
    return {"dequant_share": dequant / total, "matmul_share": linear / total, "profiled_s": total}


def _diffusion_worker(spec: dict, inprocess) -> dict:
    import torch

    comfy = inprocess.import_comfy()
    start = time.perf_counter()
    if spec["source"] == "native":
        patcher = comfy.sd.load_diffusion_model(spec["path"])
    else:
        from comfyui_zimage_gguf.nodes.loaders import load_diffusion_gguf

        patcher = load_diffusion_gguf(spec["path"], None, False, torch.device("cpu"))
    load_s = time.perf_counter() - start

    step_times: list[float] = []
    step_cpu_times: list[float] = []

    def timed_model_call(apply_model, call):
        begin, begin_cpu = time.perf_counter(), time.process_time()
        out = apply_model(call["input"], call["timestep"], **call["c"])
        step_times.append(time.perf_counter() - begin)
        step_cpu_times.append(time.process_time() - begin_cpu)
        return out

    patcher = patcher.clone()
    patcher.set_model_unet_function_wrapper(timed_model_call)
    generator = torch.Generator().manual_seed(0)
    side = spec["size"] // 8
    noise = torch.randn((1, 16, side, side), generator=generator)
    positive = torch.randn((1, CAPTION_TOKENS, 2560), generator=generator) * 0.5

    def sample(steps):
        return inprocess.sample_steps(comfy, patcher, noise, positive, steps=steps)

    sample(1)  # warm-up: loads the model, faults the file in, builds cached tables
    step_times.clear()
    step_cpu_times.clear()
    for _ in range(spec["repeat"]):
        out = sample(spec["steps"])
    result = {"load_s": load_s, "step_s": statistics.median(step_times),
              "step_cpu_s": statistics.median(step_cpu_times), "steps_timed": len(step_times),
              "finite": bool(torch.isfinite(out).all()), "threads": torch.get_num_threads(),
              "dtype": str(patcher.model.get_dtype()).replace("torch.", "")}
    if spec["profile"]:
        result.update(_profile_shares(lambda: sample(1)))
    return result


def _encoder_worker(spec: dict, inprocess) -> dict:
    import torch

    comfy = inprocess.import_comfy()
    start = time.perf_counter()
    if spec["source"] == "native":
        clip = comfy.sd.load_clip([spec["path"]], clip_type=comfy.sd.CLIPType.LUMINA2,
                                  model_options={"qwen3_4b_model_config": {"num_hidden_layers": spec["n_layers"]}})
    else:
        from comfyui_zimage_gguf.nodes.loaders import load_text_encoder

        clip = load_text_encoder(spec["path"], "lumina2", {}, torch.device("cpu"))
    load_s = time.perf_counter() - start
    tokens = clip.tokenize(PROMPT)

    def encode():
        return clip.encode_from_tokens_scheduled(tokens)[0][0]

    features = encode()  # warm-up
    times, cpu_times = [], []
    for _ in range(spec["repeat"]):
        begin, begin_cpu = time.perf_counter(), time.process_time()
        features = encode()
        times.append(time.perf_counter() - begin)
        cpu_times.append(time.process_time() - begin_cpu)
    result = {"load_s": load_s, "encode_s": statistics.median(times), "encode_cpu_s": statistics.median(cpu_times),
              "tokens": features.shape[1],
              "finite": bool(torch.isfinite(features).all()), "threads": torch.get_num_threads(),
              "dtype": str(clip.cond_stage_model.dtypes).replace("torch.", "")}
    if spec["profile"]:
        result.update(_profile_shares(encode))
    return result


def _peak_rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _worker(spec: dict) -> None:
    if spec.get("threads"):
        import torch

        torch.set_num_threads(spec["threads"])
    inprocess = _helper()
    run = _diffusion_worker if spec["kind"] == "diffusion" else _encoder_worker
    result = run(spec, inprocess)
    result["peak_rss_bytes"] = _peak_rss_bytes()
    print(RESULT_MARK + json.dumps(result), flush=True)


# --- driver ----------------------------------------------------------------------------------------


def _model_files(inprocess) -> dict:
    """Generate (once) and return the files of every variant."""
    import torch

    factory = inprocess.tests_module("zimage_factory")
    files = {}
    for name, source, qtype in DIFFUSION_VARIANTS:
        if source == "native":
            files[("diffusion", name)] = factory.cached_model("zimage_safetensors", n_layers=1, seed=0,
                                                              dtype=torch.bfloat16)
        else:
            files[("diffusion", name)] = factory.cached_model("zimage_gguf", n_layers=1, style="city96",
                                                              type_rule={"matrix": qtype}, seed=0)
    for name, source, qtype in ENCODER_VARIANTS:
        if source == "native":
            # the Q8_0 file's weights, as a bf16 checkpoint like the released qwen_3_4b.safetensors
            _, path = inprocess.qwen3_encoder_files("qwen3_4b", 3, "Q8_0", safetensors_dtype=torch.bfloat16)
        else:
            path, _ = inprocess.qwen3_encoder_files("qwen3_4b", 3, qtype, with_safetensors=False)
        files[("encoder", name)] = path
    return files


def _run_variant(spec: dict, env: dict) -> dict:
    process = subprocess.run([sys.executable, "-m", "comfyui_zimage_gguf.bench_e2e", "--worker", json.dumps(spec)],
                             env=env, capture_output=True, text=True)
    for line in process.stdout.splitlines():
        if line.startswith(RESULT_MARK):
            return json.loads(line[len(RESULT_MARK):])
    tail = "\n".join((process.stdout + process.stderr).splitlines()[-30:])
    raise RuntimeError(
        f"benchmark worker for {spec['kind']} '{spec['name']}' failed (exit {process.returncode}):\n{tail}")


def _table(title: str, rows: list[tuple[str, dict]], time_key: str) -> list[dict]:
    native_wall, native_cpu = rows[0][1][time_key], rows[0][1][time_key.replace("_s", "_cpu_s")]
    print(f"\n{title}")
    header = (f"{'variant':12} {'load s':>7} {'wall s':>8} {'x native':>9} {'cpu s':>8} {'x native':>9} "
              f"{'target wall/cpu':>15} {'peak RSS GiB':>13} {'dequant %':>10} {'matmul %':>9}")
    print(header)
    print("-" * len(header))
    summary = []
    for name, result in rows:
        wall, cpu = result[time_key], result[time_key.replace("_s", "_cpu_s")]
        ratio, cpu_ratio = wall / native_wall, cpu / native_cpu
        verdict = "-" if name.startswith("native") else "/".join(
            "met" if r <= TARGET_RATIO else "MISSED" for r in (ratio, cpu_ratio))
        dequant = f"{100 * result['dequant_share']:.0f}" if "dequant_share" in result else "-"
        matmul = f"{100 * result['matmul_share']:.0f}" if "matmul_share" in result else "-"
        print(f"{name:12} {result['load_s']:7.2f} {wall:8.3f} {ratio:9.2f} {cpu:8.3f} {cpu_ratio:9.2f} {verdict:>15} "
              f"{result['peak_rss_bytes'] / 2**30:13.2f} {dequant:>10} {matmul:>9}"
              + ("" if result["finite"] else "  NON-FINITE OUTPUT"), flush=True)
        summary.append({"variant": name, "ratio": ratio, "cpu_ratio": cpu_ratio, **result})
    return summary


def run_e2e_bench(args) -> int:
    """Run the end-to-end benchmark; `args` may carry the options of `add_e2e_arguments`."""
    comfyui_path = getattr(args, "comfyui_path", None) or os.environ.get("COMFYUI_PATH")
    if not comfyui_path:
        print("end-to-end benchmark: set COMFYUI_PATH (or --comfyui-path) to a ComfyUI checkout", file=sys.stderr)
        return 2
    env = dict(os.environ, COMFYUI_PATH=comfyui_path)
    os.environ["COMFYUI_PATH"] = comfyui_path
    steps = getattr(args, "e2e_steps", 2)
    size = getattr(args, "e2e_size", 128)
    repeat = getattr(args, "e2e_repeat", 2)
    profile = not getattr(args, "e2e_no_profile", False)
    threads = getattr(args, "e2e_threads", None)
    print("end-to-end benchmark: generating/reusing model files ...", flush=True)
    files = _model_files(_helper())

    diffusion = []
    for name, source, _ in DIFFUSION_VARIANTS:
        spec = {"kind": "diffusion", "name": name, "source": source, "path": str(files[("diffusion", name)]),
                "steps": steps, "size": size, "repeat": repeat, "profile": profile, "threads": threads}
        diffusion.append((name, _run_variant(spec, env)))
    encoders = []
    for name, source, _ in ENCODER_VARIANTS:
        spec = {"kind": "encoder", "name": name, "source": source, "path": str(files[("encoder", name)]),
                "n_layers": 3, "repeat": max(3, repeat), "profile": profile, "threads": threads}
        encoders.append((name, _run_variant(spec, env)))

    first = diffusion[0][1]
    # glibc hands large freed blocks back to the OS, so every per-layer float weight is page-faulted
    # in anew unless these are set; it changes the GGUF/native ratio a lot on the CPU
    malloc = ", ".join(f"{k}={os.environ[k]}" for k in MALLOC_TUNING if k in os.environ) or "glibc defaults"
    print(f"\nCPU, {first['threads']} torch threads, malloc: {malloc}; ComfyUI computes in {first['dtype']} here; "
          f"target: GGUF <= {TARGET_RATIO}x native, ratios taken in this run")
    _table(f"Z-Image sampling step (1 layer, width 3840, {size}x{size}, {steps} steps x {repeat} runs, "
           f"{CAPTION_TOKENS} caption tokens): median per step", diffusion, "step_s")
    _table(f"Qwen3-4B encode (3 layers, width 2560, {encoders[0][1]['tokens']} tokens): median per encode",
           encoders, "encode_s")
    print("target: wall and CPU-time ratio; dequant %/matmul %: share of one profiled step/encode (cProfile)")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m comfyui_zimage_gguf.bench_e2e",
                                     description=__doc__.split("\n\n")[0].replace("\n", " "))
    add_e2e_arguments(parser)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker(json.loads(args.worker))
        return 0
    return run_e2e_bench(args)


if __name__ == "__main__":
    sys.exit(main())
