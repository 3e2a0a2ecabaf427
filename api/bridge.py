"""The standalone bridge: the same API in its own aiohttp server, in front of one or more ComfyUI servers."""
from __future__ import annotations

import ipaddress
import logging
import socket

from aiohttp import web

from .auth import OPEN_ENDPOINT_WARNING
from .catalog import WorkflowCatalog
from .service import ApiSettings, ImageApi
from .upstream import IMAGE_ROUTE, HttpBackend

log = logging.getLogger("comfyui_zimage_gguf.api")


def is_loopback_host(host: str) -> bool:
    """True when every address the host name resolves to is a loopback address."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)}
    except socket.gaierror:
        return False
    return bool(addresses) and all(ipaddress.ip_address(address.split("%")[0]).is_loopback for address in addresses)


def build_bridge_app(backend: HttpBackend, catalog: WorkflowCatalog, settings: ApiSettings) -> web.Application:
    api = ImageApi(backend, catalog, settings)
    app = web.Application()
    for method, path, handler in api.routes():
        app.router.add_route(method, path, handler)
    app.router.add_get(IMAGE_ROUTE, backend.serve_image)

    async def start_backend(_app):
        if settings.api_key is None:
            log.warning(OPEN_ENDPOINT_WARNING.format(where="the image API (/v1/*)"))
        log.info("image API: %s", catalog.describe_folders())
        await backend.start()

    async def close_backend(_app):
        await backend.close()

    app.on_startup.append(start_backend)
    app.on_cleanup.append(close_backend)
    return app
