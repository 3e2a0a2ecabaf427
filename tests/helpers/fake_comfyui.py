"""A fake ComfyUI server for the image API tests: the HTTP and websocket protocol, not the models.

It speaks POST/GET /prompt, /history/{id}, /view, GET/POST /queue, /interrupt and /ws like ComfyUI
0.18.1: validation failures as node_errors (a model file that is not in the loader's list), one run at
a time, history entries with status messages, websocket events to the submitting client. A run takes
`run_seconds`; its images are solid PNGs whose colour is a hash of (prompt text, seed, batch index), so
a test can tell whose image it got. A prompt text starting with "FAIL:" makes the run fail with the
rest of the text as the exception message.

Edits: POST /upload/image stores files (kept in `uploads`); a LoadImage naming a file not uploaded fails
validation, and an edit's output has the uploaded image's size. A prompt whose extra_data asks for a
preview_method gets, per sampler step, a "progress" event and a binary PREVIEW_IMAGE frame (a PNG of the
step's grey level) on its client's websocket. GET /zimage-gguf/installed-models answers `installed`.
"""
from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import struct

from aiohttp import WSMsgType, web

from .png import png_size, solid_png

MODEL_FILES = {
    "unet_name": {"z_image_turbo-Q8_0.gguf"},
    "clip_name": {"Qwen3-4B-Instruct-2507-Q8_0.gguf"},
    "vae_name": {"ae.safetensors"},
}
NODE_TYPES = {
    "ZImageGGUFDiffusionModelLoader", "ZImageGGUFTextEncoderLoader", "VAELoader", "EmptySD3LatentImage",
    "EmptyLatentImage", "CLIPTextEncode", "ConditioningZeroOut", "ModelSamplingAuraFlow", "KSampler",
    "KSamplerAdvanced", "VAEDecode", "SaveImage", "LoadImage", "VAEEncode", "SetLatentNoiseMask",
    "RepeatLatentBatch",
}
PREVIEW_STEPS = 8  # steps a fake run reports when previews are asked for
FAILED_EXCEPTION_TYPE = "custom_nodes.comfyui_zimage_gguf.errors.IncompatibleModelError"


def expected_colour(text: str, seed: int, index: int) -> tuple[int, int, int]:
    return tuple(hashlib.sha256(f"{text}|{seed}|{index}".encode()).digest()[:3])


class FakeComfyUI:
    def __init__(self, run_seconds: float = 0.0, name: str = "fake"):
        self.run_seconds = run_seconds
        self.name = name
        self.received: list[dict] = []  # every workflow POSTed to /prompt, in order
        self.pending: list[tuple] = []
        self.running: tuple | None = None
        self.history: dict[str, dict] = {}
        self.files: dict[tuple[str, str, str], bytes] = {}
        self.deleted: list[str] = []
        self.interrupted: list[str] = []
        self.sockets: dict[str, list[web.WebSocketResponse]] = {}
        self.uploads: dict[str, bytes] = {}  # "subfolder/name" -> bytes, as POST /upload/image stored them
        self.extra_data: list[dict] = []  # every POST /prompt's extra_data, in order
        self.installed: list[dict] | None = None  # GET /zimage-gguf/installed-models; None: 404 (no pack)
        self._numbers = itertools.count()
        self._files = itertools.count(1)
        self._wake = asyncio.Event()
        self._interrupt = False
        self._worker: asyncio.Task | None = None
        self.app = web.Application()
        self.app.router.add_post("/prompt", self.post_prompt)
        self.app.router.add_get("/prompt", self.get_prompt)
        self.app.router.add_get("/history/{prompt_id}", self.get_history)
        self.app.router.add_get("/view", self.view)
        self.app.router.add_get("/queue", self.get_queue)
        self.app.router.add_post("/queue", self.post_queue)
        self.app.router.add_post("/interrupt", self.interrupt)
        self.app.router.add_get("/ws", self.websocket)
        self.app.router.add_post("/upload/image", self.upload_image)
        self.app.router.add_get("/zimage-gguf/installed-models", self.installed_models)
        self.app.on_startup.append(self._start_worker)
        self.app.on_shutdown.append(self._stop)

    # --- protocol -------------------------------------------------------------------------------------

    async def post_prompt(self, request):
        body = await request.json()
        workflow = body["prompt"]
        self.received.append(workflow)
        self.extra_data.append(body.get("extra_data") or {})
        node_errors = {}
        for node_id, node in workflow.items():
            errors = []
            if node["class_type"] not in NODE_TYPES:
                return web.json_response(
                    {"error": {"type": "invalid_prompt", "message": f"Cannot execute because node "
                               f"{node['class_type']} does not exist.", "details": f"Node ID '#{node_id}'",
                               "extra_info": {}}, "node_errors": {}},
                    status=400,
                )
            if node["class_type"] == "LoadImage" and node["inputs"].get("image") not in self.uploads:
                errors.append({"type": "custom_validation_failed", "message": "Custom validation failed for node",
                               "details": f"image - Invalid image file: {node['inputs'].get('image')}",
                               "extra_info": {"input_name": "image"}})
            for name, value in node["inputs"].items():
                if name in MODEL_FILES and value not in MODEL_FILES[name]:
                    errors.append({
                        "type": "value_not_in_list", "message": "Value not in list",
                        "details": f"{name}: '{value}' not in {sorted(MODEL_FILES[name])}",
                        "extra_info": {"input_name": name, "received_value": value},
                    })
            if errors:
                node_errors[node_id] = {"errors": errors, "dependent_outputs": [], "class_type": node["class_type"]}
        if node_errors:
            error = {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation",
                     "details": "", "extra_info": {}}
            return web.json_response({"error": error, "node_errors": node_errors}, status=400)
        prompt_id = str(body.get("prompt_id") or f"{self.name}-{len(self.received)}")
        number = next(self._numbers)
        extra = {"client_id": body.get("client_id"), **(body.get("extra_data") or {})}
        self.pending.append((number, prompt_id, workflow, extra, []))
        self._wake.set()
        return web.json_response({"prompt_id": prompt_id, "number": number, "node_errors": {}})

    async def upload_image(self, request):
        form = await request.post()
        image = form["image"]
        subfolder = form.get("subfolder", "")
        name = "/".join(part for part in (subfolder, image.filename) if part)
        self.uploads[name] = image.file.read()
        return web.json_response({"name": image.filename, "subfolder": subfolder, "type": form.get("type", "input")})

    async def installed_models(self, request):
        if self.installed is None:
            return web.Response(status=404)
        return web.json_response({"models": self.installed})

    async def get_prompt(self, request):
        return web.json_response({"exec_info": {"queue_remaining": len(self.pending) + (self.running is not None)}})

    async def get_history(self, request):
        prompt_id = request.match_info["prompt_id"]
        entry = self.history.get(prompt_id)
        return web.json_response({prompt_id: entry} if entry else {})

    async def view(self, request):
        key = (request.query.get("filename", ""), request.query.get("subfolder", ""), request.query.get("type", ""))
        if key not in self.files:
            return web.Response(status=404)
        return web.Response(body=self.files[key], content_type="image/png")

    async def get_queue(self, request):
        return web.json_response({
            "queue_running": [list(self.running)] if self.running else [],
            "queue_pending": [list(item) for item in self.pending],
        })

    async def post_queue(self, request):
        body = await request.json()
        for prompt_id in body.get("delete", []):
            before = len(self.pending)
            self.pending = [item for item in self.pending if item[1] != prompt_id]
            if len(self.pending) < before:
                self.deleted.append(prompt_id)
        return web.Response()

    async def interrupt(self, request):
        body = await request.json()
        if self.running is not None and body.get("prompt_id") in (None, self.running[1]):
            self.interrupted.append(self.running[1])
            self._interrupt = True
        return web.Response()

    async def websocket(self, request):
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        client_id = request.query.get("clientId", "")
        self.sockets.setdefault(client_id, []).append(socket)
        await socket.send_json({"type": "status", "data": {"sid": client_id}})
        try:
            async for message in socket:
                if message.type == WSMsgType.ERROR:
                    break
        finally:
            self.sockets[client_id].remove(socket)
        return socket

    def occupy(self, run_seconds: float) -> str:
        """Queue a run from another client (not through the API) that keeps the server busy."""
        prompt_id = f"{self.name}-foreign-{next(self._numbers)}"
        self.pending.append((next(self._numbers), prompt_id, {}, {"client_id": None, "run_seconds": run_seconds}, []))
        self._wake.set()
        return prompt_id

    # --- the one-at-a-time worker ---------------------------------------------------------------------

    async def _send(self, client_id, event: str, data: dict) -> None:
        for socket in list(self.sockets.get(client_id, [])):
            try:
                await socket.send_str(json.dumps({"type": event, "data": data}))
            except ConnectionError:
                pass

    async def _start_worker(self, _app):
        self._worker = asyncio.ensure_future(self._work())

    async def _stop(self, _app):
        self._worker.cancel()
        for sockets in self.sockets.values():
            for socket in list(sockets):
                await socket.close()

    async def _work(self):
        while True:
            if not self.pending:
                self._wake.clear()
                await self._wake.wait()
                continue
            self.running = item = self.pending.pop(0)
            _, prompt_id, workflow, extra, _ = item
            client_id = extra.get("client_id")
            await self._send(client_id, "execution_start", {"prompt_id": prompt_id})
            self._interrupt = False
            waited = 0.0
            run_seconds = extra.get("run_seconds", self.run_seconds)
            if extra.get("preview_method") not in (None, "none", "default"):
                await self._send_previews(client_id, prompt_id)
            while waited < run_seconds and not self._interrupt:
                await asyncio.sleep(0.02)
                waited += 0.02
            self.history[prompt_id] = self._finish(prompt_id, workflow)
            self.running = None
            await self._send(client_id, "executing", {"node": None, "prompt_id": prompt_id})

    async def _send_previews(self, client_id, prompt_id: str) -> None:
        for step in range(1, PREVIEW_STEPS + 1):
            await self._send(client_id, "progress", {"value": step, "max": PREVIEW_STEPS, "prompt_id": prompt_id,
                                                     "node": "8"})
            grey = 255 * step // PREVIEW_STEPS
            frame = struct.pack(">II", 1, 2) + solid_png(16, 16, (grey, grey, grey))  # PREVIEW_IMAGE, PNG
            for socket in list(self.sockets.get(client_id, [])):
                try:
                    await socket.send_bytes(frame)
                except ConnectionError:
                    pass

    def _finish(self, prompt_id: str, workflow: dict) -> dict:
        nodes = workflow.values()
        text = next((n["inputs"]["text"] for n in nodes if n["class_type"] == "CLIPTextEncode"), "")
        sampler = next((n["inputs"] for n in nodes if n["class_type"] in ("KSampler", "KSamplerAdvanced")), {})
        seed = sampler.get("seed", sampler.get("noise_seed", 0))
        latent = next((n["inputs"] for n in nodes if n["class_type"].startswith("Empty")), {})
        loaded = next((n["inputs"]["image"] for n in nodes if n["class_type"] == "LoadImage"), None)
        if loaded is not None:  # an edit: the uploaded image's size, n from RepeatLatentBatch
            width, height = png_size(self.uploads[loaded])
            repeat = next((n["inputs"]["amount"] for n in nodes if n["class_type"] == "RepeatLatentBatch"), 1)
            latent = {"width": width, "height": height, "batch_size": repeat}
        if self._interrupt:
            message = ("execution_interrupted", {"prompt_id": prompt_id, "node_id": "8", "node_type": "KSampler"})
            return {"outputs": {}, "status": {"status_str": "error", "completed": False, "messages": [message]}}
        if text.startswith("FAIL:"):
            message = ("execution_error", {
                "prompt_id": prompt_id, "node_id": "2", "node_type": "ZImageGGUFTextEncoderLoader",
                "exception_type": FAILED_EXCEPTION_TYPE, "exception_message": text[len("FAIL:"):].strip() + "\n",
            })
            return {"outputs": {}, "status": {"status_str": "error", "completed": False, "messages": [message]}}
        images = []
        for index in range(latent.get("batch_size", 1)):
            filename = f"z-image-turbo-gguf_{next(self._files):05}_.png"
            self.files[(filename, "", "output")] = solid_png(
                latent.get("width", 64), latent.get("height", 64), expected_colour(text, seed, index)
            )
            images.append({"filename": filename, "subfolder": "", "type": "output"})
        preview = {"filename": "preview.png", "subfolder": "", "type": "temp"}
        return {
            "outputs": {"10": {"images": images}, "11": {"images": [preview]}},
            "status": {"status_str": "success", "completed": True,
                       "messages": [("execution_success", {"prompt_id": prompt_id})]},
        }
