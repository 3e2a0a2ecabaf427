"""Start the image API (bridge app) against fake ComfyUI servers, and talk to it with urllib."""
from __future__ import annotations

import json
import urllib.error
import urllib.request

from comfyui_zimage_gguf.api.bridge import build_bridge_app
from comfyui_zimage_gguf.api.catalog import WorkflowCatalog
from comfyui_zimage_gguf.api.service import ApiSettings
from comfyui_zimage_gguf.api.upstream import HttpBackend

from .aiohttp_thread import ServerThread
from .fake_comfyui import FakeComfyUI

MODEL = "z_image_turbo_gguf_api"


def start_fake(run_seconds: float = 0.0, name: str = "fake", port: int = 0) -> FakeComfyUI:
    fake = FakeComfyUI(run_seconds=run_seconds, name=name)
    fake.thread = ServerThread(fake.app, port=port).start()
    fake.url = fake.thread.url
    return fake


def start_api(upstream_urls, *, workflows=None, **settings) -> ServerThread:
    backend = HttpBackend(list(upstream_urls), probe_interval_s=0.2, poll_interval_s=0.5, probe_timeout_s=1.0)
    app = build_bridge_app(backend, WorkflowCatalog(workflows), ApiSettings(**settings))
    server = ServerThread(app).start()
    server.backend = backend
    return server


def call(url: str, body=None, *, key=None, method=None, raw: bytes | None = None, timeout: float = 60.0):
    """(status, headers, decoded JSON or bytes) for one request; error statuses are answers, not exceptions."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    headers = {"Content-Type": "application/json"} if data is not None else {}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, response_headers, content = response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        status, response_headers, content = error.code, error.headers, error.read()
    if response_headers.get_content_type() == "application/json":
        return status, response_headers, json.loads(content)
    return status, response_headers, content


def generate(api_url: str, *, key=None, timeout: float = 60.0, **body):
    body.setdefault("model", MODEL)
    return call(f"{api_url}/v1/images/generations", body, key=key, timeout=timeout)
