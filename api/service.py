"""The OpenAI-shaped HTTP face, shared by the in-server routes and the bridge (needs aiohttp).

`GET /v1/models` lists the served workflows and the installed-file models; `POST /v1/images/generations`
and `POST /v1/images/edits` run one and answer `{"created", "data": [{"b64_json"} | {"url"}],
"output_format", "quality", "size", "background", "usage"}` as OpenAI does, or with `stream: true`
server-sent events (`image_generation.partial_image` / `image_edit.partial_image` from ComfyUI's sampler
previews, then one `*.completed` per image). Every other /v1 path answers OpenAI's error object (404,
or 405 for a known path with the wrong method).
"""
from __future__ import annotations

import asyncio
import base64
import json
import logging
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

import math
import uuid

from .auth import is_authorized
from .backend import UPLOAD_SUBFOLDER, Backend, Job
from .catalog import WorkflowCatalog
from .comfy_messages import output_images
from .edit_request import DEFAULT_MAX_UPLOAD_BYTES, read_edit_request
from .generation_request import MAX_SEED, GenerationRequest, parse_generation_request
from .image_encoding import encode, prepare_edit_image
from .openai_errors import ApiError, bad_request, busy, timed_out, workflow_failed
from .request_checks import RequestPolicy, check_request, decode_json, read_json_body as checked_json_body
from .workflow_params import (
    LATENT_TYPES, MissingNodeError, apply_overrides, is_edit_workflow, quality_steps, resolve_quality,
)

log = logging.getLogger("comfyui_zimage_gguf.api")

MODELS_PATH = "/v1/models"
GENERATIONS_PATH = "/v1/images/generations"
EDITS_PATH = "/v1/images/edits"
OPENAPI_PATH = "/v1/openapi.json"
OPENAPI_FILE = Path(__file__).with_name("openapi.json")  # the OpenAPI 3.1 description, kept in the repository
ANY_V1_PATH = "/v1/{tail:.*}"
KNOWN_PATHS = {MODELS_PATH: "GET", GENERATIONS_PATH: "POST", EDITS_PATH: "POST", OPENAPI_PATH: "GET"}
DISCONNECT_CHECK_S = 0.25
# OpenAI's answers carry token usage; ComfyUI counts no tokens, so these are zeros (README says so).
USAGE = {"input_tokens": 0, "input_tokens_details": {"image_tokens": 0, "text_tokens": 0}, "output_tokens": 0,
         "total_tokens": 0}


@dataclass(frozen=True)
class ApiSettings:
    api_key: str | None = None
    max_waiting: int = 8  # requests queued or running at once; more get 429 with Retry-After
    timeout_s: float = 600.0
    retry_after_s: int = 10
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES  # per edit image or mask; larger gets 413
    # Cross-site / rebinding checks in the handlers: for the in-server routes when ComfyUI's own
    # middleware is off (--enable-cors-header); the bridge checks in its middleware instead.
    request_policy: RequestPolicy | None = None


def error_response(error: ApiError) -> web.Response:
    return web.json_response(error.body(), status=error.status, headers=error.headers)


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


def _has_latent(workflow: dict) -> bool:
    return any(node["class_type"] in LATENT_TYPES for node in workflow.values())


async def read_json_body(request: web.Request):
    """The decoded JSON body of a generation request: 415 without a JSON Content-Type, 400 when it is
    not strict JSON (request_checks.decode_json)."""
    return await checked_json_body(request)


def _workflow_size(workflow: dict) -> str:
    """"WIDTHxHEIGHT" of the workflow's empty latent, or "auto" when it has none."""
    for node in workflow.values():
        if node["class_type"] in LATENT_TYPES:
            width, height = node["inputs"].get("width"), node["inputs"].get("height")
            if isinstance(width, int) and isinstance(height, int):
                return f"{width}x{height}"
    return "auto"


def _sse(event: str, data: dict) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


def _partial_due(index: int, wanted: int, step: int, total: int) -> bool:
    """Partial `index` of `wanted` is sent from the step that splits the run into wanted + 1 equal parts
    (2 partials of 8 steps: after steps 3 and 6); previews without a step count are sent as they come."""
    return total <= 0 or step >= math.ceil((index + 1) * total / (wanted + 1))


class ClientDisconnected(Exception):
    pass


class ImageApi:
    def __init__(self, backend: Backend, catalog: WorkflowCatalog, settings: ApiSettings):
        self.backend = backend
        self.catalog = catalog
        self.settings = settings
        self.waiting = 0

    def routes(self) -> list[tuple[str, str, object]]:
        return [
            ("GET", MODELS_PATH, self._guarded(self.list_models)),
            ("GET", MODELS_PATH + "/{model}", self._guarded(self.get_model)),
            ("POST", GENERATIONS_PATH, self._guarded(self.generate)),
            ("POST", EDITS_PATH, self._guarded(self.edit)),
            ("GET", OPENAPI_PATH, self.openapi),  # the API's description, readable without a key
            # last: every other /v1 path and method gets OpenAI's error object, not plain text
            ("*", ANY_V1_PATH, self._guarded(self.unknown_route)),
        ]

    def _guarded(self, handler):
        async def guarded(request: web.Request) -> web.StreamResponse:
            policy = self.settings.request_policy
            refusal = check_request(request.method, request.headers, policy) if policy is not None else None
            if refusal is not None:
                return error_response(refusal)
            if not is_authorized(request.headers.get("Authorization"), self.settings.api_key):
                return error_response(
                    ApiError(
                        401,
                        "missing or wrong API key: send Authorization: Bearer <key>",
                        param=None,
                        code="invalid_api_key",
                        headers={"WWW-Authenticate": "Bearer"},
                    )
                )
            try:
                return await handler(request)
            except ApiError as error:
                return error_response(error)
            except web.HTTPException as error:  # aiohttp's own refusals (e.g. 413) as OpenAI error objects
                if error.status < 400:
                    raise
                return error_response(ApiError(error.status, error.reason or error.text or "request refused",
                                               code=error.reason.lower().replace(" ", "_") if error.reason else None))
            except Exception:  # a bug: logged in full, answered as an OpenAI error object without details
                log.exception("image API: %s %s failed", request.method, request.path)
                return error_response(ApiError(500, "internal error in the image API (see the server log)",
                                               type="server_error", code="internal_error"))

        guarded.__name__ = handler.__name__
        return guarded

    # --- models ---------------------------------------------------------------------------------------

    @staticmethod
    def _model_object(served) -> dict:
        return {"id": served.id, "object": "model", "created": served.created, "owned_by": "comfyui"}

    async def openapi(self, request: web.Request) -> web.Response:
        return web.Response(body=OPENAPI_FILE.read_bytes(), content_type="application/json")

    async def unknown_route(self, request: web.Request) -> web.Response:
        path = request.path.removeprefix("/api")  # ComfyUI serves its routes under /api too
        method = KNOWN_PATHS.get(path) or ("GET" if path.startswith(MODELS_PATH + "/") else None)
        if method is not None:
            raise ApiError(405, f"{request.method} is not allowed on {path}; use {method}",
                           code="method_not_allowed", headers={"Allow": method})
        raise ApiError(404, f"no route {request.method} {path}; the image API serves GET {MODELS_PATH}, "
                            f"POST {GENERATIONS_PATH} and POST {EDITS_PATH}", code="unknown_url")

    async def _served_models(self) -> dict:
        """The exported workflows, then one model per installed Z-Image GGUF (an exported id wins a clash)."""
        served = self.catalog.workflows()
        for model in await self.backend.installed_models():
            if model.id not in served and (built := self.catalog.installed_workflow(model)) is not None:
                served[model.id] = built
        return served

    async def list_models(self, request: web.Request) -> web.Response:
        served = await self._served_models()
        return web.json_response({"object": "list", "data": [self._model_object(s) for s in served.values()]})

    async def get_model(self, request: web.Request) -> web.Response:
        return web.json_response(self._model_object(await self._served(request.match_info["model"])))

    async def _served(self, model: str | None):
        served = await self._served_models()
        if model is None:
            if len(served) == 1:
                return next(iter(served.values()))
            raise bad_request(f"model is required; served models: {', '.join(served) or 'none'}", "model")
        if model not in served:
            raise ApiError(
                404,
                f"the model {model!r} does not exist; served models: {', '.join(served) or 'none'}",
                param="model",
                code="model_not_found",
            )
        return served[model]

    # --- generations ----------------------------------------------------------------------------------

    async def generate(self, request: web.Request) -> web.StreamResponse:
        params = parse_generation_request(await read_json_body(request))
        served = await self._served(params.model)
        if is_edit_workflow(served.workflow):
            raise bad_request(f"the model {served.id!r} edits images: send it to {EDITS_PATH}", "model")
        applied = self._apply(served.workflow, params)
        size = f"{params.width}x{params.height}" if params.width else _workflow_size(served.workflow)
        return await self._run(request, params, served.id, applied, {}, "image_generation", size)

    async def edit(self, request: web.Request) -> web.StreamResponse:
        edit = await read_edit_request(request, self.settings.max_upload_bytes, loads=decode_json)
        params = edit.params
        served = await self._served(params.model)
        workflow = self.catalog.edit_workflow(served)
        image = await asyncio.to_thread(prepare_edit_image, edit.image, edit.mask, (params.width, params.height))
        name = f"{UPLOAD_SUBFOLDER}/{uuid.uuid4().hex}.png"
        applied = self._apply(workflow, params, image=name, masked=image.masked, denoise=edit.denoise)
        return await self._run(request, params, served.id, applied, {name: image.png}, "image_edit",
                               f"{image.width}x{image.height}")

    async def _run(self, request, params: GenerationRequest, model_id: str, applied, uploads: dict, kind: str,
                   size: str) -> web.StreamResponse:
        if params.response_format == "url" and params.output_format != "png":
            raise bad_request(
                f'output_format "{params.output_format}" needs response_format "b64_json" (a url serves '
                "ComfyUI's saved PNG)", "output_format",
            )
        for note in applied.notes:
            log.info("image API: %s (model %s)", note, model_id)
        if self.waiting >= self.settings.max_waiting:
            raise busy(
                f"{self.waiting} image requests are already waiting (the limit is {self.settings.max_waiting}); "
                "retry later",
                self.settings.retry_after_s,
            )
        self.waiting += 1
        try:
            job = await self.backend.submit(applied.workflow, uploads=uploads,
                                            previews=params.stream and params.partial_images > 0)
            try:
                if params.stream:
                    return await self._stream(request, job, params, kind, size)
                try:
                    outputs = await self._wait(request, job)
                except ClientDisconnected:
                    log.info("image API: client went away; removed prompt %s from the queue", job.prompt_id)
                    return web.Response(status=499)
                data = await self._image_data(request, job, self._images(outputs), params)
            finally:
                await self.backend.release(job)
        finally:
            self.waiting -= 1
        answer = {"created": int(time.time()), "data": data, **self._answer_fields(params, size)}
        if applied.notes:
            answer["notes"] = applied.notes
        return web.json_response(answer)

    @staticmethod
    def _answer_fields(params: GenerationRequest, size: str) -> dict:
        return {"background": "opaque", "output_format": params.output_format,
                "quality": resolve_quality(params.quality), "size": size, "usage": USAGE}

    @staticmethod
    def _images(outputs: dict) -> list:
        images = output_images(outputs)
        if not images:
            raise workflow_failed("the workflow finished but returned no image (does it end in Save Image?)", "no_image")
        return images

    # --- streaming ------------------------------------------------------------------------------------

    async def _stream(self, request, job: Job, params: GenerationRequest, kind: str, size: str):
        """Server-sent events: the partial images as previews arrive, then one completed event per image."""
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        fields = self._answer_fields(params, size)
        event_fields = {key: value for key, value in fields.items() if key != "usage"}
        deadline = time.monotonic() + self.settings.timeout_s
        task = asyncio.ensure_future(self.backend.wait(job))
        sent = 0
        try:
            while not task.done():
                getter = asyncio.ensure_future(job.previews.get()) if job.previews is not None else None
                waiting = {task} | ({getter} if getter else set())
                done, _ = await asyncio.wait(waiting, timeout=DISCONNECT_CHECK_S, return_when=asyncio.FIRST_COMPLETED)
                if getter is not None and not getter.done():
                    getter.cancel()
                if getter is not None and getter in done:
                    sent += await self._send_partial(response, getter.result(), sent, params, kind, event_fields)
                if _client_gone(request):
                    raise ClientDisconnected()
                if time.monotonic() > deadline:
                    raise timed_out(f"the image was not ready after {self.settings.timeout_s:g}s; the run was "
                                    "removed from ComfyUI's queue")
            images = self._images(task.result())
            while job.previews is not None and not job.previews.empty():  # previews that came with the end
                sent += await self._send_partial(response, job.previews.get_nowait(), sent, params, kind, event_fields)
            for image in images:
                content = await self._encoded(job, image, params)
                await response.write(_sse(f"{kind}.completed", {
                    "type": f"{kind}.completed", "b64_json": base64.b64encode(content).decode("ascii"),
                    "created_at": int(time.time()), **fields}))
        except ApiError as error:
            if not task.done():
                task.cancel()
                await asyncio.shield(self._cancel_quietly(job))
            await response.write(_sse("error", error.body()))
        except (ClientDisconnected, ConnectionError, asyncio.CancelledError):
            task.cancel()
            await asyncio.shield(self._cancel_quietly(job))
            log.info("image API: streaming client went away; removed prompt %s from the queue", job.prompt_id)
            if isinstance(sys.exc_info()[1], asyncio.CancelledError):
                raise
            return response
        await response.write_eof()
        return response

    @staticmethod
    def _apply(workflow: dict, params: GenerationRequest, **edit):
        seed = params.seed if params.seed is not None else random.randint(0, MAX_SEED)
        steps = params.steps or quality_steps(workflow).get(resolve_quality(params.quality))
        edit_latent = "image" in edit  # an edit's size is the uploaded image's, made before upload
        try:
            return apply_overrides(
                workflow,
                prompt=params.prompt,
                seed=seed,
                width=None if edit_latent else params.width,
                height=None if edit_latent else params.height,
                steps=steps,
                # n images are one batch; a workflow without an empty latent can still make one image.
                batch_size=params.n if params.n > 1 or _has_latent(workflow) else None,
                negative_prompt=params.negative_prompt,
                **edit,
            )
        except MissingNodeError as error:
            raise bad_request(f"this model cannot take {error.parameter}: {error}", error.parameter) from None

    @staticmethod
    async def _send_partial(response, preview, sent: int, params: GenerationRequest, kind: str, fields: dict) -> int:
        """Send the preview as partial image number `sent` when it is due; 1 when sent, else 0."""
        if sent >= params.partial_images or not _partial_due(sent, params.partial_images, preview.step, preview.total):
            return 0
        # ComfyUI's previews are latent-sized (in-server) or fitted to its --preview-size (websocket):
        # partials come at the answer's size, as OpenAI's do
        width, _, height = fields["size"].partition("x")
        size = (int(width), int(height)) if width.isdigit() and height.isdigit() else None
        content = await asyncio.to_thread(encode, preview.image, params.output_format, params.output_compression, size)
        await response.write(_sse(f"{kind}.partial_image", {
            "type": f"{kind}.partial_image", "b64_json": base64.b64encode(content).decode("ascii"),
            "partial_image_index": sent, "created_at": int(time.time()), **fields}))
        return 1

    async def _wait(self, request: web.Request, job: Job) -> dict:
        deadline = time.monotonic() + self.settings.timeout_s
        task = asyncio.ensure_future(self.backend.wait(job))
        try:
            while not task.done():
                await asyncio.wait({task}, timeout=DISCONNECT_CHECK_S)
                if task.done():
                    break
                if _client_gone(request):
                    raise ClientDisconnected()
                if time.monotonic() > deadline:
                    raise timed_out(
                        f"the image was not ready after {self.settings.timeout_s:g}s; the run was removed "
                        "from ComfyUI's queue"
                    )
        except BaseException:
            # Timeout, a client that went away, or the handler being cancelled: free the queue slot.
            task.cancel()
            await asyncio.shield(self._cancel_quietly(job))
            raise
        return task.result()

    async def _cancel_quietly(self, job: Job) -> None:
        try:
            await self.backend.cancel(job)
        except Exception as error:  # the answer to the client matters more than the clean-up
            log.warning("image API: could not remove prompt %s from the queue: %s", job.prompt_id, error)

    async def _encoded(self, job: Job, image, params: GenerationRequest) -> bytes:
        content = await self.backend.image_bytes(job, image)
        return await asyncio.to_thread(encode, content, params.output_format, params.output_compression)

    async def _image_data(self, request: web.Request, job: Job, images, params: GenerationRequest) -> list[dict]:
        if params.response_format == "url":
            base_url = f"{request.scheme}://{request.host}"
            return [{"url": self.backend.image_url(base_url, job, image)} for image in images]
        contents = await asyncio.gather(*(self._encoded(job, image, params) for image in images))
        return [{"b64_json": base64.b64encode(content).decode("ascii")} for content in contents]
