"""The API key: from an option, `ZIMAGE_GGUF_API_KEY` or the file named by `ZIMAGE_GGUF_API_KEY_FILE`.

Keys are compared in constant time and never logged.
"""
from __future__ import annotations

import hmac
import os
from pathlib import Path

from ..errors import ZImageGGUFError

KEY_ENV = "ZIMAGE_GGUF_API_KEY"
KEY_FILE_ENV = "ZIMAGE_GGUF_API_KEY_FILE"
OPEN_ENDPOINT_WARNING = (
    "no API key is set: {where} is open to whoever can reach this server; "
    f"set {KEY_ENV} (or {KEY_FILE_ENV}) to require Authorization: Bearer <key>"
)


class ApiConfigError(ZImageGGUFError, ValueError):
    """The API's configuration (environment or options) cannot be used; the message says which value."""


def read_key_file(path) -> str:
    path = Path(path)
    try:
        key = path.read_text(encoding="utf-8").strip()
    except OSError as error:
        raise ApiConfigError(f"{path}: cannot read the API key file: {error.strerror}") from None
    except UnicodeDecodeError:
        raise ApiConfigError(f"{path}: the API key file is not UTF-8 text") from None
    if not key:
        raise ApiConfigError(f"{path}: the API key file is empty")
    return key


def resolve_api_key(key: str | None = None, key_file=None, environ=os.environ) -> str | None:
    """The first of: the key given, the key file given, $ZIMAGE_GGUF_API_KEY, $ZIMAGE_GGUF_API_KEY_FILE.

    A key that is given but empty (`--api-key ""`, `ZIMAGE_GGUF_API_KEY=`, an empty file) is an
    error, never "no key": whoever set it meant to close the API, and an empty key would leave it open."""
    if key is not None:
        if not key.strip():
            raise ApiConfigError("the API key given is empty: give a non-empty key, or none to leave the API open")
        return key
    if key_file is not None:
        return read_key_file(key_file)
    if KEY_ENV in environ:
        if not environ[KEY_ENV].strip():
            raise ApiConfigError(f"{KEY_ENV} is set but empty: set a non-empty key, or unset it to leave the API open")
        return environ[KEY_ENV]
    if KEY_FILE_ENV in environ:
        if not environ[KEY_FILE_ENV].strip():
            raise ApiConfigError(f"{KEY_FILE_ENV} is set but empty: name the key file, or unset it")
        return read_key_file(environ[KEY_FILE_ENV])
    return None


def is_authorized(authorization_header: str | None, api_key: str | None) -> bool:
    """True when no key is required, or the header is `Bearer <key>` (compared in constant time)."""
    if api_key is None:
        return True
    scheme, _, token = (authorization_header or "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(token.strip().encode(), api_key.encode())
