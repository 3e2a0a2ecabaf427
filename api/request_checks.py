"""Checks on a request before the API does anything with it, and the strict JSON body decoder.

A browser lets any web page POST to 127.0.0.1 (a "simple" request: text/plain, no preflight), and a
DNS-rebinding page can even read the answers, because to the browser the bridge is then the page's
own origin. ComfyUI's server refuses both (origin_only_middleware in its server.py); the bridge
applies the same rules here, and the in-server /v1 routes apply them when ComfyUI's own are off
(`--enable-cors-header`):

- `Sec-Fetch-Site: cross-site`, or an `Origin` whose host:port differs from `Host`: 403;
- on a loopback address, a `Host` that is no loopback name (DNS rebinding): 403;
- a POST body that is not `application/json` (or, for edits, `multipart/form-data`): 415;
- CORS headers only for the one origin the operator allowed (`--allow-origin`).
"""
from __future__ import annotations

import ipaddress
import json
import urllib.parse
from dataclasses import dataclass

from .openai_errors import ApiError, bad_request

JSON_TYPES = ("application/json",)
MULTIPART_TYPE = "multipart/form-data"
MAX_JSON_DEPTH = 32  # a generation request nests 2 levels; deeper bodies are refused, not recursed into
CORS_ALLOWED_HEADERS = "Authorization, Content-Type"
CORS_ALLOWED_METHODS = "GET, POST, OPTIONS"


@dataclass(frozen=True)
class RequestPolicy:
    """`loopback_only`: the server listens on a loopback address, so only loopback Host names are
    real; `allow_origin`: the one browser origin allowed cross-site ("*": any), else None."""

    loopback_only: bool = True
    allow_origin: str | None = None


def forbidden(message: str, code: str) -> ApiError:
    return ApiError(403, message, type="invalid_request_error", code=code)


def is_loopback_name(hostname: str | None) -> bool:
    """A Host name that can only mean this machine: `localhost` (and `*.localhost`, RFC 6761) or a
    loopback address. Names are not resolved: under DNS rebinding an attacker's name resolves to 127.0.0.1."""
    if not hostname:
        return False
    hostname = hostname.strip("[]").lower().rstrip(".")
    if hostname == "localhost" or hostname.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(hostname.split("%")[0]).is_loopback
    except ValueError:
        return False


def _host_and_port(netloc: str, default_port: int | None) -> tuple[str, int | None] | None:
    try:
        parts = urllib.parse.urlsplit("//" + netloc)
        return (parts.hostname or "").lower(), parts.port or default_port
    except ValueError:
        return None


def origin_allowed(origin: str | None, policy: RequestPolicy) -> bool:
    return origin is not None and policy.allow_origin is not None and policy.allow_origin in ("*", origin)


def check_request(method: str, headers, policy: RequestPolicy) -> ApiError | None:
    """The refusal for a cross-site or rebinding request, or None when it may go on."""
    origin = headers.get("Origin")
    host = headers.get("Host")
    if policy.loopback_only:
        parsed_host = _host_and_port(host or "", None)
        if parsed_host is None or not is_loopback_name(parsed_host[0]):
            return forbidden(
                "this server listens on a loopback address and only answers requests for localhost "
                "(the Host header names another server: DNS rebinding?)",
                "host_not_allowed",
            )
    if origin_allowed(origin, policy):
        return None
    if headers.get("Sec-Fetch-Site", "").lower() == "cross-site":
        return forbidden("cross-site browser requests are refused (start the server with an allowed origin)",
                         "cross_site_request")
    if origin is not None and host is not None:
        try:
            parsed = urllib.parse.urlsplit(origin)
            default_port = {"http": 80, "https": 443}.get(parsed.scheme)
            origin_pair = ((parsed.hostname or "").lower(), parsed.port or default_port)
        except ValueError:
            origin_pair = None
        host_pair = _host_and_port(host, default_port if origin_pair else None)
        if origin_pair is None or origin_pair != host_pair:
            return forbidden("cross-site browser requests are refused: Origin does not match Host",
                             "cross_site_request")
    return None


def cors_headers(origin: str | None, policy: RequestPolicy) -> dict[str, str]:
    """CORS headers for an allowed origin; none for any other (the browser then keeps the answer from the page)."""
    if not origin_allowed(origin, policy):
        return {}
    return {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Headers": CORS_ALLOWED_HEADERS,
        "Access-Control-Allow-Methods": CORS_ALLOWED_METHODS,
        "Vary": "Origin",
    }


# --- the JSON body ------------------------------------------------------------------------------------

def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"{text[:20]} is too large for a number")
    return value


def _too_deep(value) -> bool:
    """Whether the decoded value nests deeper than MAX_JSON_DEPTH (checked without recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > MAX_JSON_DEPTH:
                return True
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return False


def decode_json(raw: bytes):
    """Strict JSON: UTF-8, no NaN/Infinity, no number that overflows or exceeds Python's 4300-digit
    integer limit, at most MAX_JSON_DEPTH levels. Anything else is a 400 naming what is wrong."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise bad_request("the request body is not UTF-8 text", code="invalid_json") from None
    try:
        value = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        raise bad_request(f"the request body nests deeper than {MAX_JSON_DEPTH} levels", code="invalid_json") from None
    except ValueError as error:  # JSONDecodeError, NaN/Infinity, an integer of more than 4300 digits
        reason = str(error).splitlines()[0][:200]
        raise bad_request(f"the request body is not valid JSON: {reason}", code="invalid_json") from None
    if _too_deep(value):
        raise bad_request(f"the request body nests deeper than {MAX_JSON_DEPTH} levels", code="invalid_json")
    return value


def require_content_type(content_type: str, accepted: tuple[str, ...]) -> None:
    """415 unless the media type is one of `accepted` (a text/plain body is how a web page posts cross-site)."""
    if content_type.lower() not in accepted:
        raise ApiError(
            415,
            f"Content-Type must be {' or '.join(accepted)}, got {content_type or 'none'!r}",
            code="unsupported_media_type",
        )


async def read_json_body(request):
    """The decoded JSON body of an aiohttp request with a JSON Content-Type."""
    require_content_type(request.content_type, JSON_TYPES)
    return decode_json(await request.read())
