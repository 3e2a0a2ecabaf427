"""The API on ComfyUI's own server: routes added to `PromptServer.instance.routes` when the pack loads.

ComfyUI loads custom nodes before it adds its route table to the app, so routes added here are served
(and, like ComfyUI's own, also under /api). Jobs go straight into ComfyUI's PromptQueue, validated the
way POST /prompt validates them; images are read from its output folder.

Settings come from the environment: ZIMAGE_GGUF_API_KEY / ZIMAGE_GGUF_API_KEY_FILE,
ZIMAGE_GGUF_API_WORKFLOWS, ZIMAGE_GGUF_API_MAX_WAITING, ZIMAGE_GGUF_API_TIMEOUT,
ZIMAGE_GGUF_API_MAX_UPLOAD_MB (edit image/mask cap, default 20), and
ZIMAGE_GGUF_API_DISABLE=1 to add no /v1 routes at all.

`GET /zimage-gguf/installed-models` (added even when the API is disabled; it names files that ComfyUI's
own /object_info lists anyway) tells a bridge in front of this server which model ids its files make.
Sampler previews reach a streaming job through a tee on `PromptServer.send_sync`: ComfyUI sends each
preview to the prompt's client id, which for an API job is one no websocket uses.
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
from .backend import Backend, ImageRef, Job, Preview, finished_outputs, rejection_error
from .catalog import WorkflowCatalog, default_user_folder
from .model_catalog import comfyui_installed_models
from .openai_errors import ApiError
from .request_checks import RequestPolicy, is_loopback_name

log = logging.getLogger("comfyui_zimage_gguf.api")

DISABLE_ENV = "ZIMAGE_GGUF_API_DISABLE"
MAX_WAITING_ENV = "ZIMAGE_GGUF_API_MAX_WAITING"
TIMEOUT_ENV = "ZIMAGE_GGUF_API_TIMEOUT"
MAX_UPLOAD_ENV = "ZIMAGE_GGUF_API_MAX_UPLOAD_MB"
HISTORY_POLL_S = 0.2
INSTALLED_MODELS_PATH = "/zimage-gguf/installed-models"
PREVIEW_EVENTS = (1, 2, 3, 4)  # BinaryEventTypes PREVIEW_IMAGE, UNENCODED_PREVIEW_IMAGE, TEXT, ..._WITH_METADATA


def _preview_image(event, data):
    """The PIL image in a preview message send_sync carries, or None for other messages."""
    if event == 2 and isinstance(data, tuple) and len(data) >= 2:  # UNENCODED_PREVIEW_IMAGE: (format, image, size)
        return data[1]
    if event == 4 and isinstance(data, tuple) and data and isinstance(data[0], tuple):  # (preview, metadata)
        return data[0][1]
    return None


class InServerBackend(Backend):
    def __init__(self, prompt_server):
        self.server = prompt_server
        self._preview_jobs: dict[str, tuple[Job, asyncio.AbstractEventLoop]] = {}
        self._preview_steps: dict[str, tuple[int, int]] = {}  # client id -> the sampler's last (value, max)
        self._tee_installed = False

    def _install_preview_tee(self) -> None:
        """Wrap this server's send_sync once, so previews and progress for API jobs reach their queues."""
        if self._tee_installed:
            return
        original = self.server.send_sync
        jobs, steps = self._preview_jobs, self._preview_steps

        def send_sync(event, data, sid=None):
            target = jobs.get(sid) if sid is not None else None
            if target is not None:
                job, loop = target
                if event == "progress" and isinstance(data, dict):
                    steps[sid] = (int(data.get("value") or 0), int(data.get("max") or 0))
                image = _preview_image(event, data)
                if image is not None:
                    step, total = steps.get(sid, (0, 0))
                    loop.call_soon_threadsafe(job.previews.put_nowait, Preview(step, total, image))
            return original(event, data, sid)

        self.server.send_sync = send_sync
        self._tee_installed = True

    async def installed_models(self) -> list:
        return await asyncio.to_thread(comfyui_installed_models)

    def _store_uploads(self, uploads: dict) -> None:
        import folder_paths  # ComfyUI's

        root = Path(folder_paths.get_input_directory()).resolve()
        for name, content in uploads.items():
            path = (root / name).resolve()
            if root not in path.parents:
                raise ApiError(500, f"upload path outside {root}: {name}", type="server_error", code="bad_upload")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)

    async def release(self, job: Job) -> None:
        self._preview_jobs.pop(job.client_id, None)
        self._preview_steps.pop(job.client_id, None)
        if not job.uploads:
            return
        import folder_paths  # ComfyUI's

        root = Path(folder_paths.get_input_directory())
        for name in job.uploads:
            (root / name).unlink(missing_ok=True)

    async def submit(self, workflow: dict, *, uploads: dict | None = None, previews: bool = False) -> Job:
        import execution  # ComfyUI's

        job = Job(prompt_id=str(uuid.uuid4()), client_id=uuid.uuid4().hex, workflow=workflow,
                  uploads=dict(uploads or {}), previews=asyncio.Queue() if previews else None)
        if job.uploads:
            await asyncio.to_thread(self._store_uploads, job.uploads)
        if job.previews is not None:
            self._install_preview_tee()
            self._preview_jobs[job.client_id] = (job, asyncio.get_running_loop())
        request = self.server.trigger_on_prompt({"prompt": workflow, "client_id": job.client_id})
        workflow = request["prompt"]
        replacements = getattr(self.server, "node_replace_manager", None)
        if replacements is not None:
            replacements.apply_replacements(workflow)
        valid = await execution.validate_prompt(job.prompt_id, workflow, None)
        if not valid[0]:
            await self.release(job)
            raise rejection_error({"error": valid[1], "node_errors": valid[3]})
        number = self.server.number
        self.server.number += 1
        extra_data = {"client_id": job.client_id, "create_time": int(time.time() * 1000), **job.extra_data()}
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


def comfyui_request_policy(args=None):
    """The /v1 routes' own cross-site and rebinding checks, for when ComfyUI's are off: ComfyUI runs
    its origin_only_middleware unless `--enable-cors-header [ORIGIN]` is given. Then only ORIGIN (or,
    for `*`, any) may call cross-site, and on a loopback `--listen` the Host must be a loopback name."""
    if args is None:
        try:
            from comfy.cli_args import args  # ComfyUI's
        except ImportError:
            return None
    origin = getattr(args, "enable_cors_header", None)
    if not origin:
        return None
    listen = [address.strip() for address in str(getattr(args, "listen", "") or "").split(",")]
    return RequestPolicy(loopback_only=all(is_loopback_name(address) for address in listen), allow_origin=origin)


def settings_from_environment(environ=os.environ):
    from .service import ApiSettings

    return ApiSettings(
        request_policy=comfyui_request_policy(),
        api_key=resolve_api_key(environ=environ),
        max_waiting=_positive_number(environ, MAX_WAITING_ENV, ApiSettings.max_waiting, int),
        timeout_s=_positive_number(environ, TIMEOUT_ENV, ApiSettings.timeout_s, float),
        max_upload_bytes=int(_positive_number(environ, MAX_UPLOAD_ENV, ApiSettings.max_upload_bytes / 2**20, float)
                             * 2**20),
    )


async def _installed_models_route(request):
    from aiohttp import web

    models = await asyncio.to_thread(comfyui_installed_models)
    return web.json_response({"models": [model.as_json() for model in models]})


def register_with_comfyui() -> bool:
    """Add the routes when the pack is loaded by a running ComfyUI; a no-op anywhere else."""
    server_module = sys.modules.get("server")
    prompt_server = getattr(getattr(server_module, "PromptServer", None), "instance", None)
    if prompt_server is None or not hasattr(prompt_server, "prompt_queue") or not hasattr(prompt_server, "routes"):
        return False
    if getattr(prompt_server, "_zimage_gguf_installed_route", None) is None:
        prompt_server.routes.get(INSTALLED_MODELS_PATH)(_installed_models_route)
        prompt_server._zimage_gguf_installed_route = True
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
    log.info("image API: POST /v1/images/generations, /v1/images/edits and GET /v1/models added; %s",
             catalog.describe_folders())
    return True
