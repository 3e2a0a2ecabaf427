"""`python -m comfyui_zimage_gguf serve`: the OpenAI-compatible image API in front of ComfyUI servers.

For a ComfyUI the pack's own routes can't sit on (the desktop app's server on port 8000, a remote
machine) or several of them. Needs aiohttp (a dependency of the pack; ComfyUI has it anyway).
"""
from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
import sys
from pathlib import Path


def add_serve_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve the OpenAI-compatible image API in front of one or more ComfyUI servers",
        description="Serve POST /v1/images/generations and GET /v1/models, running the served workflows on "
        "the given ComfyUI servers (the one with the shortest queue; servers that stop answering are skipped).",
    )
    parser.add_argument(
        "--comfyui", action="append", required=True, metavar="URL",
        help="a ComfyUI server, e.g. http://127.0.0.1:8000 (repeat for several)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s)")
    parser.add_argument("--port", type=int, default=8001, help="port to listen on (default %(default)s)")
    parser.add_argument("--api-key", help="require Authorization: Bearer KEY (default: $ZIMAGE_GGUF_API_KEY)")
    parser.add_argument("--api-key-file", help="read the key from this file (default: $ZIMAGE_GGUF_API_KEY_FILE)")
    parser.add_argument(
        "--workflows", metavar="DIR",
        help="folder of API-format workflows to serve besides the pack's (default: $ZIMAGE_GGUF_API_WORKFLOWS)",
    )
    parser.add_argument(
        "--max-waiting", type=int, default=8,
        help="requests queued or running at once; more get 429 with Retry-After (default %(default)s)",
    )
    parser.add_argument(
        "--allow-origin", metavar="ORIGIN",
        help="let web pages from this origin (e.g. http://localhost:3000, or *) call the API from a browser "
        "(CORS); default: cross-site browser requests are refused",
    )
    parser.add_argument(
        "--url-ttl", type=float, default=3600.0,
        help="seconds an image link (response_format=url) stays valid (default %(default)s)",
    )
    parser.add_argument(
        "--timeout", type=float, default=600.0,
        help="seconds one request may wait for its images; then 504 and the run is removed (default %(default)s)",
    )


def run_serve(args) -> int:
    from ..api.auth import ApiConfigError, resolve_api_key
    from ..api.bridge import build_bridge_app, is_loopback_host
    from ..api.catalog import WorkflowCatalog, default_user_folder
    from ..api.request_checks import RequestPolicy
    from ..api.service import ApiSettings
    from ..api.upstream import HttpBackend

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        api_key = resolve_api_key(args.api_key, args.api_key_file)
    except ApiConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if api_key is None and not is_loopback_host(args.host):
        print(
            f"error: refusing to listen on {args.host} without an API key; set --api-key, --api-key-file or "
            "ZIMAGE_GGUF_API_KEY, or listen on 127.0.0.1",
            file=sys.stderr,
        )
        return 1
    if args.max_waiting < 1 or args.timeout <= 0 or args.url_ttl <= 0:
        print("error: --max-waiting must be at least 1, --timeout and --url-ttl above 0", file=sys.stderr)
        return 1
    user_folder = Path(args.workflows).expanduser() if args.workflows else default_user_folder(environ=os.environ)
    if user_folder is not None and not user_folder.is_dir():
        print(f"error: {user_folder}: the workflows folder does not exist", file=sys.stderr)
        return 1
    settings = ApiSettings(api_key=api_key, max_waiting=args.max_waiting, timeout_s=args.timeout)
    policy = RequestPolicy(loopback_only=is_loopback_host(args.host), allow_origin=args.allow_origin)
    backend = HttpBackend(args.comfyui, url_ttl_s=args.url_ttl)
    app = build_bridge_app(backend, WorkflowCatalog(user_folder), settings, policy)
    try:
        asyncio.run(_serve(app, args.host, args.port))
    except PortInUse:
        print(f"error: port {args.port} is in use; pick another with --port", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


class PortInUse(Exception):
    pass


async def _serve(app, host: str, port: int) -> None:
    from aiohttp import web

    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise PortInUse() from None
            raise
        logging.getLogger("comfyui_zimage_gguf.api").info(
            "image API: listening on http://%s:%d/v1", host if ":" not in host else f"[{host}]", port
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(signum, stop.set)
            except (NotImplementedError, RuntimeError):
                pass
        await stop.wait()
    finally:
        await runner.cleanup()
