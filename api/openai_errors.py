"""OpenAI's error object, `{"error": {"message", "type", "param", "code"}}`, with its HTTP status."""
from __future__ import annotations

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
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None, code: str = "invalid_value") -> ApiError:
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
