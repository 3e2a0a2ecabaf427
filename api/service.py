"""The OpenAI-shaped HTTP face, shared by the in-server routes and the bridge (needs aiohttp).

`GET /v1/models` lists the served workflows; `POST /v1/images/generations` runs one and answers
`{"created", "data": [{"b64_json"} | {"url"}]}` or OpenAI's error object.
"""
from __future__ import annotations

import asyncio
import base64
import json
import logging
import random
import time
from dataclasses import dataclass

from aiohttp import web

from .auth import is_authorized
from .backend import Backend, Job, output_images
from .catalog import WorkflowCatalog
from .generation_request import MAX_SEED, GenerationRequest, parse_generation_request
from .openai_errors import ApiError, bad_request, busy, timed_out, workflow_failed
from .workflow_params import LATENT_TYPES, MissingNodeError, apply_overrides

log = logging.getLogger("comfyui_zimage_gguf.api")

MODELS_PATH = "/v1/models"
GENERATIONS_PATH = "/v1/images/generations"
DISCONNECT_CHECK_S = 0.25


@dataclass(frozen=True)
class ApiSettings:
    api_key: str | None = None
    max_waiting: int = 8  # requests queued or running at once; more get 429 with Retry-After
    timeout_s: float = 600.0
    retry_after_s: int = 10


def error_response(error: ApiError) -> web.Response:
    return web.json_response(error.body(), status=error.status, headers=error.headers)


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


def _has_latent(workflow: dict) -> bool:
    return any(node["class_type"] in LATENT_TYPES for node in workflow.values())


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
        ]

    def _guarded(self, handler):
        async def guarded(request: web.Request) -> web.StreamResponse:
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

        guarded.__name__ = handler.__name__
        return guarded

    # --- models ---------------------------------------------------------------------------------------

    @staticmethod
    def _model_object(served) -> dict:
        return {"id": served.id, "object": "model", "created": served.created, "owned_by": "comfyui"}

    async def list_models(self, request: web.Request) -> web.Response:
        served = self.catalog.workflows()
        return web.json_response({"object": "list", "data": [self._model_object(s) for s in served.values()]})

    async def get_model(self, request: web.Request) -> web.Response:
        return web.json_response(self._model_object(self._served(request.match_info["model"])))

    def _served(self, model: str | None):
        served = self.catalog.workflows()
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
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise bad_request("the request body is not valid JSON", code="invalid_json") from None
        params = parse_generation_request(body)
        served = self._served(params.model)
        applied = self._apply(served.workflow, params)
        for note in applied.notes:
            log.info("image API: %s (model %s)", note, served.id)
        if self.waiting >= self.settings.max_waiting:
            raise busy(
                f"{self.waiting} image requests are already waiting (the limit is {self.settings.max_waiting}); "
                "retry later",
                self.settings.retry_after_s,
            )
        self.waiting += 1
        try:
            job = await self.backend.submit(applied.workflow)
            try:
                outputs = await self._wait(request, job)
            except ClientDisconnected:
                log.info("image API: client went away; removed prompt %s from the queue", job.prompt_id)
                return web.Response(status=499)
            images = output_images(outputs)
            if not images:
                raise workflow_failed(
                    "the workflow finished but returned no image (does it end in Save Image?)", "no_image"
                )
            data = await self._image_data(request, job, images, params.response_format)
        finally:
            self.waiting -= 1
        answer = {"created": int(time.time()), "data": data}
        if applied.notes:
            answer["notes"] = applied.notes
        return web.json_response(answer)

    @staticmethod
    def _apply(workflow: dict, params: GenerationRequest):
        seed = params.seed if params.seed is not None else random.randint(0, MAX_SEED)
        try:
            return apply_overrides(
                workflow,
                prompt=params.prompt,
                seed=seed,
                width=params.width,
                height=params.height,
                steps=params.steps,
                # n images are one batch; a workflow without an empty latent can still make one image.
                batch_size=params.n if params.n > 1 or _has_latent(workflow) else None,
                negative_prompt=params.negative_prompt,
            )
        except MissingNodeError as error:
            raise bad_request(f"this model cannot take {error.parameter}: {error}", error.parameter) from None

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

    async def _image_data(self, request: web.Request, job: Job, images, response_format: str) -> list[dict]:
        if response_format == "url":
            base_url = f"{request.scheme}://{request.host}"
            return [{"url": self.backend.image_url(base_url, job, image)} for image in images]
        contents = await asyncio.gather(*(self.backend.image_bytes(job, image) for image in images))
        return [{"b64_json": base64.b64encode(content).decode("ascii")} for content in contents]
