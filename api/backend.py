"""Where workflows run: the abstraction both the in-server routes and the standalone bridge use.

A backend queues an API-format workflow, waits for its outputs, removes it from the queue (or interrupts
it) when the client gives up, and hands back the images. `InServerBackend` (inserver.py) talks to
ComfyUI's PromptQueue in-process; `HttpBackend` (upstream.py) to ComfyUI servers over HTTP and websocket.

An edit's input image travels as `uploads` ({"zimage-gguf-api/<name>.png": bytes}, the LoadImage value
as key), stored in ComfyUI's input folder the way its /upload/image stores files. A job that wants
previews gets ComfyUI's sampler previews (`Preview`) on `job.previews` while it runs.
"""
from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from .comfy_messages import ImageRef, describe_missing_model_files, describe_validation_failure, history_outcome
from .openai_errors import ApiError, workflow_failed


UPLOAD_SUBFOLDER = "zimage-gguf-api"
# ComfyUI makes sampler previews only with a preview method; a job that streams asks for this one
# (cheap: a linear map of the latent, no extra model) in its extra_data.
PREVIEW_METHOD = "latent2rgb"


@dataclass(frozen=True)
class Preview:
    """One sampler preview: after `step` of `total` steps; `image` is a PIL image or encoded bytes."""

    step: int
    total: int
    image: object


@dataclass
class Job:
    """One queued workflow. The HTTP backend may move it to another server; the fields follow it."""

    prompt_id: str
    client_id: str
    workflow: dict
    upstream: object = None
    tried: list = field(default_factory=list)
    uploads: dict = field(default_factory=dict)
    previews: asyncio.Queue | None = None
    step: tuple = (0, 0)  # the sampler's last progress (value, max), for previews that come without it
    socket: object = None  # the HTTP backend's websocket, opened before queueing when previews are wanted

    def extra_data(self) -> dict:
        return {"preview_method": PREVIEW_METHOD} if self.previews is not None else {}


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
    outputs, failure = history_outcome(history_entry)
    if failure:
        raise workflow_failed(failure)
    return outputs


class Backend(ABC):
    @abstractmethod
    async def submit(self, workflow: dict, *, uploads: dict | None = None, previews: bool = False) -> Job:
        """Store the uploads, queue the workflow; raise ApiError (422 with ComfyUI's reasons, 503 when no
        server answers). With `previews`, the job's `previews` queue receives the sampler's previews."""

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

    async def installed_models(self) -> list:
        """The model_catalog.InstalledModel pairs of the files the server has (none by default)."""
        return []

    async def release(self, job: Job) -> None:
        """Forget what the job stored (its uploads), once its answer is out."""
        return None

    async def close(self) -> None:
        return None
