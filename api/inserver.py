"""The API on ComfyUI's own server: routes added to `PromptServer.instance.routes` when the pack loads.

ComfyUI loads custom nodes before it adds its route table to the app, so routes added here are served
(and, like ComfyUI's own, also under /api). Jobs go straight into ComfyUI's PromptQueue, validated the
way POST /prompt validates them; images are read from its output folder.

Settings come from the environment: ZIMAGE_GGUF_API_KEY / ZIMAGE_GGUF_API_KEY_FILE,
ZIMAGE_GGUF_API_WORKFLOWS, ZIMAGE_GGUF_API_MAX_WAITING, ZIMAGE_GGUF_API_TIMEOUT, and
ZIMAGE_GGUF_API_DISABLE=1 to add no routes at all.
"""
from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
import urllib.parse
import uuid
from pathlib import Path

from .auth import OPEN_ENDPOINT_WARNING, ApiConfigError, resolve_api_key
from .backend import Backend, ImageRef, Job, finished_outputs, rejection_error
from .catalog import WorkflowCatalog, default_user_folder
from .openai_errors import ApiError

log = logging.getLogger("comfyui_zimage_gguf.api")

DISABLE_ENV = "ZIMAGE_GGUF_API_DISABLE"
MAX_WAITING_ENV = "ZIMAGE_GGUF_API_MAX_WAITING"
TIMEOUT_ENV = "ZIMAGE_GGUF_API_TIMEOUT"
HISTORY_POLL_S = 0.2


class InServerBackend(Backend):
    def __init__(self, prompt_server):
        self.server = prompt_server

    async def submit(self, workflow: dict) -> Job:
        import execution  # ComfyUI's

        job = Job(prompt_id=str(uuid.uuid4()), client_id=uuid.uuid4().hex, workflow=workflow)
        request = self.server.trigger_on_prompt({"prompt": workflow, "client_id": job.client_id})
        workflow = request["prompt"]
        replacements = getattr(self.server, "node_replace_manager", None)
        if replacements is not None:
            replacements.apply_replacements(workflow)
        valid = await execution.validate_prompt(job.prompt_id, workflow, None)
        if not valid[0]:
            raise rejection_error({"error": valid[1], "node_errors": valid[3]})
        number = self.server.number
        self.server.number += 1
        extra_data = {"client_id": job.client_id, "create_time": int(time.time() * 1000)}
        self.server.prompt_queue.put((number, job.prompt_id, workflow, extra_data, valid[2], {}))
        return job

    async def wait(self, job: Job) -> dict:
        queue = self.server.prompt_queue
        while True:
            outputs = finished_outputs(queue.get_history(prompt_id=job.prompt_id).get(job.prompt_id))
            if outputs is not None:
                return outputs
            await asyncio.sleep(HISTORY_POLL_S)

    async def cancel(self, job: Job) -> None:
        queue = self.server.prompt_queue
        if queue.delete_queue_item(lambda item: item[1] == job.prompt_id):
            return
        running, _ = queue.get_current_queue_volatile()
        if any(item[1] == job.prompt_id for item in running):
            import comfy.model_management  # ComfyUI's

            log.info("image API: interrupting prompt %s", job.prompt_id)
            comfy.model_management.interrupt_current_processing()

    async def image_bytes(self, job: Job, image: ImageRef) -> bytes:
        import folder_paths  # ComfyUI's

        root = folder_paths.get_directory_by_type(image.type)
        if root is None:
            raise ApiError(500, f"unknown image type {image.type!r}", type="server_error", code="bad_output")
        root = Path(root).resolve()
        path = (root / image.subfolder / image.filename).resolve()
        if root not in path.parents:
            raise ApiError(500, f"image path outside {root}: {path}", type="server_error", code="bad_output")
        return await asyncio.to_thread(path.read_bytes)

    def image_url(self, base_url: str, job: Job, image: ImageRef) -> str:
        query = urllib.parse.urlencode({"filename": image.filename, "subfolder": image.subfolder, "type": image.type})
        return f"{base_url}/view?{query}"


def _positive_number(environ, name: str, default, kind):
    raw = environ.get(name)
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        value = None
    if value is None or value <= 0:
        raise ApiConfigError(f"{name}={raw!r}: expected a positive {kind.__name__}")
    return value


def settings_from_environment(environ=os.environ):
    from .service import ApiSettings

    return ApiSettings(
        api_key=resolve_api_key(environ=environ),
        max_waiting=_positive_number(environ, MAX_WAITING_ENV, ApiSettings.max_waiting, int),
        timeout_s=_positive_number(environ, TIMEOUT_ENV, ApiSettings.timeout_s, float),
    )


def register_with_comfyui() -> bool:
    """Add the routes when the pack is loaded by a running ComfyUI; a no-op anywhere else."""
    server_module = sys.modules.get("server")
    prompt_server = getattr(getattr(server_module, "PromptServer", None), "instance", None)
    if prompt_server is None or not hasattr(prompt_server, "prompt_queue") or not hasattr(prompt_server, "routes"):
        return False
    if os.environ.get(DISABLE_ENV, "") not in ("", "0"):
        log.info("image API: %s is set; no /v1 routes added", DISABLE_ENV)
        return False
    if getattr(prompt_server, "_zimage_gguf_image_api", None) is not None:
        return True
    try:
        import folder_paths  # ComfyUI's

        from .service import ImageApi

        settings = settings_from_environment()
        catalog = WorkflowCatalog(default_user_folder(folder_paths.get_user_directory()))
    except ApiConfigError as error:
        log.error("image API not started: %s", error)
        return False
    api = ImageApi(InServerBackend(prompt_server), catalog, settings)
    for method, path, handler in api.routes():
        prompt_server.routes.route(method, path)(handler)
    prompt_server._zimage_gguf_image_api = api
    if settings.api_key is None:
        log.warning(OPEN_ENDPOINT_WARNING.format(where="the image API (/v1/images/generations, /v1/models)"))
    log.info("image API: POST /v1/images/generations and GET /v1/models added; %s", catalog.describe_folders())
    return True
