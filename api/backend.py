"""Where workflows run: the abstraction both the in-server routes and the standalone bridge use.

A backend queues an API-format workflow, waits for its outputs, removes it from the queue (or interrupts
it) when the client gives up, and hands back the images. `InServerBackend` (inserver.py) talks to
ComfyUI's PromptQueue in-process; `HttpBackend` (upstream.py) to ComfyUI servers over HTTP and websocket.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from .comfy_messages import describe_execution_failure, describe_missing_model_files, describe_validation_failure
from .openai_errors import ApiError, workflow_failed


@dataclass(frozen=True)
class ImageRef:
    filename: str
    subfolder: str
    type: str


@dataclass
class Job:
    """One queued workflow. The HTTP backend may move it to another server; the fields follow it."""

    prompt_id: str
    client_id: str
    workflow: dict
    upstream: object = None
    tried: list = field(default_factory=list)


def rejection_error(body) -> ApiError:
    """ComfyUI refused the workflow (POST /prompt's 400): name missing model files and their folders."""
    if not isinstance(body, dict):
        return workflow_failed(f"ComfyUI rejected the workflow: {body}", "workflow_invalid")
    missing = describe_missing_model_files(body)
    if missing:
        return workflow_failed("; ".join(missing), "model_file_missing")
    return workflow_failed(f"ComfyUI rejected the workflow: {describe_validation_failure(body)}", "workflow_invalid")


def finished_outputs(history_entry: dict | None) -> dict | None:
    """The outputs of a finished history entry, None while it runs; raise the run's failure as an ApiError."""
    if history_entry is None:
        return None
    status = history_entry.get("status") or {}
    if status.get("status_str") == "error":
        raise workflow_failed(f"ComfyUI failed to run the workflow: {describe_execution_failure(history_entry)}")
    if status and not status.get("completed", True):
        return None
    return history_entry.get("outputs") or {}


def output_images(outputs: dict) -> list[ImageRef]:
    """The saved images of a run (SaveImage's type "output"); previews only when nothing was saved."""
    images = [
        ImageRef(str(image["filename"]), str(image.get("subfolder", "")), str(image.get("type", "output")))
        for node_output in outputs.values()
        for image in (node_output or {}).get("images", [])
        if isinstance(image, dict) and "filename" in image
    ]
    saved = [image for image in images if image.type == "output"]
    return saved or images


class Backend(ABC):
    @abstractmethod
    async def submit(self, workflow: dict) -> Job:
        """Queue the workflow; raise ApiError (422 with ComfyUI's reasons, 503 when no server answers)."""

    @abstractmethod
    async def wait(self, job: Job) -> dict:
        """Return the run's outputs; raise ApiError when it fails."""

    @abstractmethod
    async def cancel(self, job: Job) -> None:
        """Remove the job from the queue, or interrupt it if it is running."""

    @abstractmethod
    async def image_bytes(self, job: Job, image: ImageRef) -> bytes: ...

    @abstractmethod
    def image_url(self, base_url: str, job: Job, image: ImageRef) -> str:
        """An absolute URL, on the server the client talks to, that serves the image."""

    async def close(self) -> None:
        return None
