"""Command line: `python -m comfyui_zimage_gguf {bench,convert,inspect,queue,serve} ...` (no ComfyUI needed).

`queue` (standard library) and `serve` (aiohttp) run from the light install; the other commands need
torch, gguf, numpy and safetensors. Without them such a command is still listed, and running it
prints one line saying which install to run.
"""
from __future__ import annotations

import argparse
import importlib
import sys

FULL_INSTALL_MODULES = {"torch", "numpy", "gguf", "safetensors"}
FULL_INSTALL_HINT = (
    "needs torch, gguf, numpy and safetensors: install the full pack with "
    "pip install \"comfyui-zimage-gguf[full]\" (from the pack folder: pip install -e \".[full]\"), "
    "or run it with ComfyUI's Python"
)

# command -> the cli module that defines add_<command>_parser and run_<command>
COMMANDS = ("bench", "convert", "inspect", "queue", "serve")


def add_bench_parser(subparsers) -> None:
    from .bench_compile import add_compile_check_arguments
    from .bench_gpu import add_gpu_check_arguments

    bench = subparsers.add_parser("bench", help="time dequantization per GGML type and GGUF opening")
    bench.add_argument("--types", nargs="*", help="GGML type names (default: all)")
    bench.add_argument("--shape", default="10240x3840", help="weight shape ROWSxCOLS (default 10240x3840)")
    bench.add_argument("--repeat", type=int, default=7)
    bench.add_argument("--passes", type=int, default=1,
                       help="go through all the types this many times (each type's runs spread over the whole run)")
    bench.add_argument("--skip-open", action="store_true", help="skip the Qwen3-4B-shaped open benchmark")
    bench.add_argument("--cache-dir", default=None, help="where to keep the generated benchmark GGUF")
    add_gpu_check_arguments(bench)
    add_compile_check_arguments(bench)


def _add_command(subparsers, command: str):
    """Add `command`'s parser; return its run function, or None when the light install lacks what it needs."""
    try:
        if command == "bench":
            add_bench_parser(subparsers)
            from .bench import run_bench as run
        else:
            module = importlib.import_module(f"{__package__}.{command}")
            getattr(module, f"add_{command}_parser")(subparsers)
            run = getattr(module, f"run_{command}")
    except ModuleNotFoundError as error:
        if (error.name or "").split(".")[0] not in FULL_INSTALL_MODULES:
            raise
        unavailable = subparsers.add_parser(command, help=f"(not installed: {command} {FULL_INSTALL_HINT.split(':')[0]})")
        unavailable.add_argument("ignored", nargs=argparse.REMAINDER)
        return None
    return run


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m comfyui_zimage_gguf")
    sub = parser.add_subparsers(dest="command", required=True)
    runners = {command: _add_command(sub, command) for command in COMMANDS}
    args = parser.parse_args(argv)
    run = runners[args.command]
    if run is None:
        print(f"error: {args.command} {FULL_INSTALL_HINT}", file=sys.stderr)
        return 1
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
