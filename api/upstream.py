"""The bridge's backend: one or more ComfyUI servers over their HTTP and websocket API (needs aiohttp).

Each job goes to the answering server with the shortest queue. A server that stops answering is marked
down, skipped, and probed in the background until it answers again; a job whose server died before
finishing is queued again on another one.
"""
from __future__ import annotations

import asyncio
import json
import logging
import secrets
import struct
import urllib.parse
import uuid
from collections import OrderedDict

import aiohttp

from .backend import UPLOAD_SUBFOLDER, Backend, ImageRef, Job, Preview, finished_outputs, rejection_error
from .model_catalog import InstalledModel
from .openai_errors import ApiError, busy, redact_url

log = logging.getLogger("comfyui_zimage_gguf.api")

CONNECTION_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, OSError)
IMAGE_ROUTE = "/images/{token}/{name}"
MAX_IMAGE_TOKENS = 10000
PROGRESS_EVENTS = ("executing", "executed", "execution_success", "execution_error", "execution_interrupted")
PREVIEW_IMAGE, PREVIEW_IMAGE_WITH_METADATA = 1, 4  # ComfyUI's BinaryEventTypes on the websocket
INSTALLED_MODELS_PATH = "/zimage-gguf/installed-models"  # added by the pack inside ComfyUI (inserver.py)
INSTALLED_MODELS_TTL_S = 5.0


class UpstreamLost(Exception):
    pass


class Upstream:
    def __init__(self, url: str):
        if "://" not in url:
            url = f"http://{url}"
        self.base_url = url.rstrip("/")
        self.alive = True
        self.in_flight = 0

    @property
    def ws_url(self) -> str:
        scheme, rest = self.base_url.split("://", 1)
        return f"{'wss' if scheme == 'https' else 'ws'}://{rest}/ws"

    def __repr__(self) -> str:
        return redact_url(self.base_url)


class HttpBackend(Backend):
    def __init__(
        self,
        urls: list[str],
        *,
        probe_interval_s: float = 5.0,
        request_timeout_s: float = 30.0,
        probe_timeout_s: float = 3.0,
        poll_interval_s: float = 2.0,
        lost_after_failures: int = 3,
        retry_after_s: int = 10,
        url_ttl_s: float = 3600.0,
    ):
        if not urls:
            raise ValueError("at least one ComfyUI server URL is needed")
        self.upstreams = [Upstream(url) for url in urls]
        self.probe_interval_s = probe_interval_s
        self.request_timeout_s = request_timeout_s
        self.probe_timeout_s = probe_timeout_s
        self.poll_interval_s = poll_interval_s
        self.lost_after_failures = lost_after_failures
        self.retry_after_s = retry_after_s
        self.url_ttl_s = url_ttl_s  # how long an image link (response_format=url) serves its image
        self._session: aiohttp.ClientSession | None = None
        self._prober: asyncio.Task | None = None
        self._images: OrderedDict[str, tuple[Upstream, ImageRef, float]] = OrderedDict()  # token -> ..., expiry
        self._installed: tuple[float, list] = (float("-inf"), [])

    # --- lifecycle and health -------------------------------------------------------------------------

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.request_timeout_s))
        await asyncio.gather(*(self._queue_length(upstream) for upstream in self.upstreams))
        for upstream in self.upstreams:
            if upstream.alive:
                log.info("image API: ComfyUI at %s answers", upstream.base_url)
        self._prober = asyncio.ensure_future(self._probe_down_servers())

    async def close(self) -> None:
        if self._prober is not None:
            self._prober.cancel()
            await asyncio.gather(self._prober, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    def _mark_down(self, upstream: Upstream, reason) -> None:
        if upstream.alive:
            log.warning(
                "image API: ComfyUI at %s does not answer (%s); skipping it until it answers again",
                upstream.base_url,
                reason or type(reason).__name__,
            )
        upstream.alive = False

    def _mark_up(self, upstream: Upstream) -> None:
        if not upstream.alive:
            log.info("image API: ComfyUI at %s answers again", upstream.base_url)
        upstream.alive = True

    async def _queue_length(self, upstream: Upstream) -> int | None:
        """Prompts queued or running on the server (GET /prompt), or None when it does not answer."""
        try:
            async with self._session.get(
                upstream.base_url + "/prompt", timeout=aiohttp.ClientTimeout(total=self.probe_timeout_s)
            ) as response:
                info = await response.json(content_type=None)
            length = int(info["exec_info"]["queue_remaining"])
        except CONNECTION_ERRORS + (ValueError, KeyError, TypeError) as error:
            self._mark_down(upstream, error)
            return None
        self._mark_up(upstream)
        return length

    async def _probe_down_servers(self) -> None:
        while True:
            await asyncio.sleep(self.probe_interval_s)
            down = [upstream for upstream in self.upstreams if not upstream.alive]
            await asyncio.gather(*(self._queue_length(upstream) for upstream in down))

    async def _pick(self, exclude: list) -> Upstream:
        candidates = [upstream for upstream in self.upstreams if upstream not in exclude]
        # Servers marked down are asked too when nothing else is left: they may be back.
        asked = [upstream for upstream in candidates if upstream.alive] or candidates
        lengths = await asyncio.gather(*(self._queue_length(upstream) for upstream in asked))
        answering = [(length, upstream) for length, upstream in zip(lengths, asked) if length is not None]
        if not answering:
            raise busy(
                f"no ComfyUI server answers ({', '.join(map(repr, candidates or self.upstreams))}); retry later",
                self.retry_after_s,
                status=503,
                code="no_server",
            )
        # Requests picked at the same moment see the same queues; count this bridge's own jobs too,
        # reserved here, before any await, so the next pick already sees this one.
        _, upstream = min(
            answering,
            key=lambda pair: (max(pair[0], pair[1].in_flight), pair[1].in_flight, self.upstreams.index(pair[1])),
        )
        upstream.in_flight += 1
        return upstream

    # --- jobs -----------------------------------------------------------------------------------------

    async def submit(self, workflow: dict, *, uploads: dict | None = None, previews: bool = False) -> Job:
        job = Job(prompt_id="", client_id=uuid.uuid4().hex, workflow=workflow, uploads=dict(uploads or {}),
                  previews=asyncio.Queue() if previews else None)
        await self._submit_somewhere(job)
        return job

    async def _upload(self, upstream: Upstream, job: Job) -> None:
        """Store the job's input images on the server with its POST /upload/image (input folder)."""
        for stored_name, content in job.uploads.items():
            subfolder, _, name = stored_name.rpartition("/")
            form = aiohttp.FormData()
            form.add_field("image", content, filename=name, content_type="image/png")
            form.add_field("subfolder", subfolder or UPLOAD_SUBFOLDER)
            form.add_field("type", "input")
            form.add_field("overwrite", "true")
            async with self._session.post(upstream.base_url + "/upload/image", data=form) as response:
                if response.status != 200:
                    raise ApiError(502, f"ComfyUI at {upstream.base_url} refused the uploaded image "
                                        f"(HTTP {response.status})", type="server_error", code="upstream_error")
                answer = await response.json(content_type=None)
            stored = "/".join(part for part in (answer.get("subfolder"), answer.get("name")) if part)
            if stored != stored_name:  # ComfyUI renamed it: point the workflow's loaders at the new name
                for node in job.workflow.values():
                    if node.get("class_type") == "LoadImage" and node["inputs"].get("image") == stored_name:
                        node["inputs"]["image"] = stored

    async def installed_models(self) -> list:
        """The model ids the files on the first answering server make (its pack's installed-models route),
        cached a few seconds; none when no server has the route."""
        loop = asyncio.get_running_loop()
        fetched_at, models = self._installed
        if loop.time() - fetched_at < INSTALLED_MODELS_TTL_S:
            return models
        models = []
        for upstream in [u for u in self.upstreams if u.alive] or self.upstreams:
            try:
                async with self._session.get(upstream.base_url + INSTALLED_MODELS_PATH) as response:
                    if response.status != 200:
                        continue
                    body = await response.json(content_type=None)
                models = [InstalledModel(**{key: entry[key] for key in ("id", "unet", "clip", "vae", "created")})
                          for entry in body.get("models", [])]
                break
            except CONNECTION_ERRORS + (ValueError, KeyError, TypeError, AttributeError):
                continue
        self._installed = (loop.time(), models)
        return models

    async def _submit_somewhere(self, job: Job) -> None:
        while True:
            upstream = await self._pick(exclude=job.tried)
            job.tried.append(upstream)
            prompt_id = str(uuid.uuid4())
            payload = {"prompt": job.workflow, "client_id": job.client_id, "prompt_id": prompt_id,
                       "extra_data": job.extra_data()}
            try:
                if job.uploads:
                    await self._upload(upstream, job)
                if job.previews is not None:  # listen before queueing, or the first previews are missed
                    await self._close_socket(job)
                    job.socket = await self._connect_socket(upstream, job)
                async with self._session.post(upstream.base_url + "/prompt", json=payload) as response:
                    status = response.status
                    body = await response.json(content_type=None)
            except CONNECTION_ERRORS as error:
                upstream.in_flight -= 1
                self._mark_down(upstream, error)
                continue
            except ApiError:
                upstream.in_flight -= 1
                raise
            except ValueError:
                upstream.in_flight -= 1
                raise rejection_error(f"{upstream.base_url}/prompt answered HTTP {status} with non-JSON") from None
            if status != 200 or not isinstance(body, dict) or "prompt_id" not in body:
                upstream.in_flight -= 1
                raise rejection_error(body)
            if job.upstream is not None:
                job.upstream.in_flight -= 1
            job.upstream, job.prompt_id = upstream, str(body["prompt_id"])
            return

    async def wait(self, job: Job) -> dict:
        try:
            while True:
                try:
                    return await self._wait_on_upstream(job)
                except UpstreamLost as lost:
                    self._mark_down(job.upstream, lost)
                    log.warning(
                        "image API: lost ComfyUI at %s while prompt %s ran; cancelling it there and queueing it "
                        "on another server",
                        job.upstream.base_url,
                        job.prompt_id,
                    )
                    # A server judged lost may only be slow: without this the job could run on both.
                    await self._cancel_left_behind(job)
                    await self._submit_somewhere(job)
        finally:
            job.upstream.in_flight -= 1

    async def _history_entry(self, upstream: Upstream, prompt_id: str):
        path = f"/history/{urllib.parse.quote(prompt_id, safe='')}"
        async with self._session.get(upstream.base_url + path) as response:
            history = await response.json(content_type=None)
        return history.get(prompt_id) if isinstance(history, dict) else None

    async def _connect_socket(self, upstream: Upstream, job: Job):
        try:
            return await self._session.ws_connect(f"{upstream.ws_url}?clientId={job.client_id}", heartbeat=30)
        except CONNECTION_ERRORS:
            return None  # history polling alone still finds the result

    @staticmethod
    async def _close_socket(job: Job) -> None:
        if job.socket is not None:
            await job.socket.close()
            job.socket = None

    async def _wait_on_upstream(self, job: Job) -> dict:
        upstream, prompt_id = job.upstream, job.prompt_id
        socket, job.socket = job.socket, None
        if socket is None:
            socket = await self._connect_socket(upstream, job)
        failures = 0
        try:
            while True:
                try:
                    entry = await self._history_entry(upstream, prompt_id)
                except CONNECTION_ERRORS + (ValueError,) as error:
                    failures += 1
                    if failures >= self.lost_after_failures:
                        raise UpstreamLost(str(error) or type(error).__name__) from None
                else:
                    failures = 0
                    outputs = finished_outputs(entry)
                    if outputs is not None:
                        if job.previews is not None:  # previews still buffered on the socket
                            await self._next_event(socket, job, drain=True)
                        return outputs
                await self._next_event(socket, job)
        finally:
            if socket is not None:
                await socket.close()

    @staticmethod
    def _queue_preview(job: Job, data: bytes, step: tuple[int, int]) -> None:
        """A binary websocket frame: queue it on the job when it is a preview image."""
        if job.previews is None or len(data) < 8:
            return
        (event,) = struct.unpack(">I", data[:4])
        if event == PREVIEW_IMAGE:
            image = data[8:]  # after the event type and the image type (1 JPEG, 2 PNG)
        elif event == PREVIEW_IMAGE_WITH_METADATA:
            (length,) = struct.unpack(">I", data[4:8])
            image = data[8 + length:]
        else:
            return
        job.previews.put_nowait(Preview(step[0], step[1], image))

    async def _next_event(self, socket, job: Job, drain: bool = False) -> None:
        """Return on a websocket event about the prompt, or after the poll interval; queue previews.
        With `drain`, read only what has already arrived."""
        prompt_id = job.prompt_id
        if socket is None or socket.closed:
            await asyncio.sleep(self.poll_interval_s / 4)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (0.05 if drain else self.poll_interval_s)
        while (remaining := deadline - loop.time()) > 0:
            try:
                message = await socket.receive(timeout=remaining)
            except asyncio.TimeoutError:
                return
            if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                return
            if message.type == aiohttp.WSMsgType.BINARY:
                self._queue_preview(job, message.data, job.step)
                continue
            if message.type != aiohttp.WSMsgType.TEXT:
                continue
            try:
                event = json.loads(message.data)
            except ValueError:
                continue
            data = event.get("data") if isinstance(event, dict) else None
            if event.get("type") == "progress" and isinstance(data, dict) and data.get("prompt_id") == prompt_id:
                job.step = (int(data.get("value") or 0), int(data.get("max") or 0))
                continue
            if (event.get("type") in PROGRESS_EVENTS and isinstance(data, dict) and data.get("prompt_id") == prompt_id
                    and not drain):
                return

    async def cancel(self, job: Job) -> None:
        if job.upstream is None:
            return
        await self._cancel_on(job.upstream, job.prompt_id)

    async def _cancel_on(self, upstream: Upstream, prompt_id: str, timeout_s: float | None = None) -> None:
        timeout = aiohttp.ClientTimeout(total=timeout_s) if timeout_s is not None else None
        async with self._session.post(upstream.base_url + "/queue", json={"delete": [prompt_id]},
                                      timeout=timeout) as response:
            response.raise_for_status()
        # Interrupts only when this prompt is the one running (ComfyUI checks the id).
        async with self._session.post(upstream.base_url + "/interrupt", json={"prompt_id": prompt_id},
                                      timeout=timeout) as response:
            response.raise_for_status()

    async def _cancel_left_behind(self, job: Job) -> None:
        """Remove (or interrupt) the job on the server it is leaving, as far as that server answers."""
        try:
            await self._cancel_on(job.upstream, job.prompt_id, self.probe_timeout_s)
        except CONNECTION_ERRORS as error:
            log.warning("image API: could not cancel prompt %s on ComfyUI at %s (%s); it may still run there",
                        job.prompt_id, job.upstream.base_url, error or type(error).__name__)

    # --- images ---------------------------------------------------------------------------------------

    async def _fetch_image(self, upstream: Upstream, image: ImageRef) -> tuple[bytes, str]:
        query = urllib.parse.urlencode({"filename": image.filename, "subfolder": image.subfolder, "type": image.type})
        try:
            async with self._session.get(f"{upstream.base_url}/view?{query}") as response:
                if response.status != 200:
                    raise ApiError(
                        502,
                        f"ComfyUI at {upstream.base_url} answered HTTP {response.status} for image {image.filename}",
                        type="server_error",
                        code="upstream_error",
                    )
                return await response.read(), response.content_type
        except CONNECTION_ERRORS as error:
            self._mark_down(upstream, error)
            raise ApiError(
                502,
                f"ComfyUI at {upstream.base_url} went away before image {image.filename} was fetched",
                type="server_error",
                code="upstream_error",
            ) from None

    async def image_bytes(self, job: Job, image: ImageRef) -> bytes:
        return (await self._fetch_image(job.upstream, image))[0]

    def image_url(self, base_url: str, job: Job, image: ImageRef) -> str:
        """A link that serves the image for url_ttl_s seconds (an unguessable token; the newest
        MAX_IMAGE_TOKENS links are kept)."""
        now = asyncio.get_running_loop().time()
        while self._images and (len(self._images) >= MAX_IMAGE_TOKENS or next(iter(self._images.values()))[2] <= now):
            self._images.popitem(last=False)  # oldest first: they expire in the order they were made
        token = secrets.token_urlsafe(24)
        self._images[token] = (job.upstream, image, now + self.url_ttl_s)
        return f"{base_url}/images/{token}/{urllib.parse.quote(image.filename)}"

    async def serve_image(self, request) -> "aiohttp.web.StreamResponse":
        """GET /images/{token}/{name}: the image behind a URL this bridge handed out (unguessable token)."""
        from aiohttp import web

        found = self._images.get(request.match_info["token"])
        if found is not None and found[2] <= asyncio.get_running_loop().time():
            del self._images[request.match_info["token"]]
            found = None
        if found is None:
            raise web.HTTPNotFound(text="no such image (unknown or expired link)")
        try:
            content, content_type = await self._fetch_image(found[0], found[1])
        except ApiError as error:
            return web.json_response(error.body(), status=error.status)
        return web.Response(body=content, content_type=content_type)
