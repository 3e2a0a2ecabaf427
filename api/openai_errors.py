"""OpenAI's error object, `{"error": {"message", "type", "param", "code"}}`, with its HTTP status."""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field


@dataclass
class ApiError(Exception):
    """An answer the API gives instead of images; `headers` carries e.g. Retry-After."""

    status: int
    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    code: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.message

    def body(self) -> dict:
        """The error object a client sees: no credentials and no server paths in the message (the
        full message goes to the server log when anything was taken out)."""
        message = public_text(self.message)
        if message != self.message:
            logging.getLogger(API_LOGGER).info("image API: answered %d: %s", self.status, self.message)
        return {"error": {"message": message, "type": self.type, "param": self.param, "code": self.code}}


MAX_MESSAGE_CHARS = 2000  # a message quoting a client's value stays short, whatever the value


def bad_request(message: str, param: str | None = None, code: str = "invalid_value") -> ApiError:
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[:MAX_MESSAGE_CHARS - 3] + "..."
    return ApiError(400, message, param=param, code=code)


def workflow_failed(message: str, code: str = "workflow_failed") -> ApiError:
    # 422, not 500: the request reached ComfyUI and the workflow itself failed, so retrying cannot help
    # (OpenAI's clients retry every 5xx).
    return ApiError(422, message, type="workflow_error", code=code)


def busy(message: str, retry_after_s: int, status: int = 429, code: str = "queue_full") -> ApiError:
    return ApiError(
        status,
        message,
        type="rate_limit_error" if status == 429 else "server_error",
        code=code,
        headers={"Retry-After": str(retry_after_s)},
    )


def timed_out(message: str) -> ApiError:
    # The run was already removed from the queue; a client retry would start it again from scratch.
    return ApiError(504, message, type="server_error", code="timeout", headers={"x-should-retry": "false"})


# --- what may leave the server ------------------------------------------------------------------------
# An answer carries no credentials and no server paths: `user:password@` goes from every URL, and an
# absolute file path keeps only its file name (the full text goes to the server log).

_URL_CREDENTIALS = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@'\"]*@")
_POSIX_PATH = re.compile(r"(?<![\w:/.~-])(?:~)?/(?!v1/|images/)(?:[^\s/'\"<>|]+/)+([^\s/'\"<>|,;:)]+)")
_WINDOWS_PATH = re.compile(r"(?i)(?<![\w])[a-z]:[\\/](?:[^\s\\/'\"<>|]+[\\/])+([^\s\\/'\"<>|,;:)]+)")


def redact_url(text: str) -> str:
    """`http://admin:s3cret@host:8188` -> `http://host:8188`, in a URL or any text holding URLs."""
    return _URL_CREDENTIALS.sub(r"\1", text)


def redact_paths(text: str) -> str:
    """Absolute file paths (POSIX or Windows) -> their file names."""
    return _WINDOWS_PATH.sub(r"\1", _POSIX_PATH.sub(r"\1", text))


def public_text(text: str) -> str:
    return redact_paths(redact_url(text))


class RedactingFilter(logging.Filter):
    """Strips `user:password@` from the URLs in every record of the API's logger (the bridge logs
    its ComfyUI servers by URL, and an operator may have put credentials in one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact_url(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


API_LOGGER = "comfyui_zimage_gguf.api"
logging.getLogger(API_LOGGER).addFilter(RedactingFilter())
