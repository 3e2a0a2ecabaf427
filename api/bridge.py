"""The standalone bridge: the same API in its own aiohttp server, in front of one or more ComfyUI servers.

Every request passes request_checks first (cross-site and DNS-rebinding refusals, CORS only for an
allowed origin): the bridge's own requests to ComfyUI carry no Origin, so ComfyUI's checks cannot
see a browser behind it.
"""
from __future__ import annotations

import ipaddress
import logging
import socket

from aiohttp import web

from .auth import OPEN_ENDPOINT_WARNING
from .catalog import WorkflowCatalog
from .request_checks import RequestPolicy, check_request, cors_headers
from .service import ApiSettings, ImageApi, error_response
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


def request_checks_middleware(policy: RequestPolicy):
    @web.middleware
    async def request_checks(request: web.Request, handler):
        origin = request.headers.get("Origin")
        refusal = check_request(request.method, request.headers, policy)
        if refusal is not None:
            log.warning("image API: refused %s %s from Origin %s, Host %s: %s", request.method, request.path,
                        origin, request.headers.get("Host"), refusal.code)
            return error_response(refusal)
        extra = cors_headers(origin, policy)
        if request.method == "OPTIONS":
            return web.Response(status=204, headers=extra)
        try:
            response = await handler(request)
        except web.HTTPException as exception:
            exception.headers.update(extra)
            raise
        response.headers.update(extra)
        return response

    return request_checks


def build_bridge_app(backend: HttpBackend, catalog: WorkflowCatalog, settings: ApiSettings,
                     policy: RequestPolicy = RequestPolicy()) -> web.Application:
    """`policy`: loopback_only when listening on a loopback address; allow_origin for CORS."""
    api = ImageApi(backend, catalog, settings)
    app = web.Application(middlewares=[request_checks_middleware(policy)])
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
