"""Command line: `python -m comfyui_zimage_gguf {bench,convert,inspect,queue,serve} ...` (no ComfyUI needed)."""
from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m comfyui_zimage_gguf")
    sub = parser.add_subparsers(dest="command", required=True)

    bench = sub.add_parser("bench", help="time dequantization per GGML type and GGUF opening")
    bench.add_argument("--types", nargs="*", help="GGML type names (default: all)")
    bench.add_argument("--shape", default="10240x3840", help="weight shape ROWSxCOLS (default 10240x3840)")
    bench.add_argument("--repeat", type=int, default=7)
    bench.add_argument("--skip-open", action="store_true", help="skip the Qwen3-4B-shaped open benchmark")
    bench.add_argument("--cache-dir", default=None, help="where to keep the generated benchmark GGUF")
    from .bench_gpu import add_gpu_check_arguments

    add_gpu_check_arguments(bench)
    from .convert import add_convert_parser
    from .inspect import add_inspect_parser
    from .queue import add_queue_parser
    from .serve import add_serve_parser

    add_convert_parser(sub)
    add_inspect_parser(sub)
    add_queue_parser(sub)
    add_serve_parser(sub)

    args = parser.parse_args(argv)
    if args.command == "bench":
        from .bench import run_bench

        return run_bench(args)
    if args.command == "convert":
        from .convert import run_convert

        return run_convert(args)
    if args.command == "inspect":
        from .inspect import run_inspect

        return run_inspect(args)
    if args.command == "queue":
        from .queue import run_queue

        return run_queue(args)
    if args.command == "serve":
        from .serve import run_serve

        return run_serve(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
