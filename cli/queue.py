"""`python -m comfyui_zimage_gguf queue`: run an API-format workflow on a ComfyUI server and save its image.

Standard library only, so it works from any Python that can reach the server. Inputs to override are
found by node type (the sampler, the text encoder feeding its positive input, the empty latent),
never by node id, so it works on any export of the workflow.
"""
from __future__ import annotations

import base64
import json
import os
import socket
import struct
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

from ..api.comfy_messages import describe_validation_failure, history_outcome, output_images
from ..api.workflow_params import SAMPLER_SEED_INPUT, WorkflowError, apply_overrides, load_api_workflow
from ..errors import ZImageGGUFError
from ..fileio import FileWriteError, write_bytes

REQUEST_TIMEOUT_S = 30.0


class QueueCommandError(ZImageGGUFError):
    """The queue command cannot go on; the message is the one line shown to the user."""


def add_queue_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "queue",
        help="queue an API-format workflow on a running ComfyUI server and save the image",
        description="Queue an API-format workflow (e.g. workflows/api/z_image_turbo_gguf_api.json) on a "
        "ComfyUI server, follow it to the end and save the image it returns.",
    )
    parser.add_argument("workflow", help="API-format workflow JSON (in the editor: File → Export (API))")
    parser.add_argument("--server", default="http://127.0.0.1:8188", help="ComfyUI address (default %(default)s)")
    parser.add_argument("--prompt", help="text for the CLIPTextEncode feeding the sampler's positive input")
    parser.add_argument("--seed", type=int, help="sampler seed (default: the workflow's)")
    parser.add_argument("--width", type=int, help="latent image width in pixels")
    parser.add_argument("--height", type=int, help="latent image height in pixels")
    parser.add_argument("--steps", type=int, help="sampler steps")
    parser.add_argument("--unet", help="diffusion model file for the diffusion-model loader (name as the loader lists it)")
    parser.add_argument("--clip", help="text encoder file for the text-encoder loader (name as the loader lists it)")
    parser.add_argument("--vae", help="VAE file for the VAE loader (name as the loader lists it)")
    parser.add_argument("--out", help="where to save the image (default: the base name of the server's file name, "
                                      "in the current folder)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing file (default: keep it and number the new one, name_00001.png)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait for the result (default %(default)s)")
    parser.add_argument("--poll-interval", type=float, default=1.0, help="seconds between progress checks (default %(default)s)")


def run_queue(args) -> int:
    try:
        workflow = load_api_workflow(args.workflow)
        workflow = apply_overrides(
            workflow,
            prompt=args.prompt,
            seed=args.seed,
            width=args.width,
            height=args.height,
            steps=args.steps,
            unet=args.unet,
            clip=args.clip,
            vae=args.vae,
            label="--{}",
        ).workflow
        client = ComfyClient(args.server)
        check_node_types(client, workflow)
        client_id = uuid.uuid4().hex
        events = open_events(client, client_id)
        start = time.monotonic()
        prompt_id = submit(client, workflow, client_id)
        print(f"queued prompt {prompt_id} on {client.base_url}", flush=True)
        if events is not None:
            follow_progress(events, workflow, prompt_id, start, args.timeout)
        outputs = wait_for_outputs(
            client, prompt_id, timeout_s=args.timeout, poll_interval_s=args.poll_interval, start=start
        )
        for path in save_images(client, outputs, args.out, getattr(args, "overwrite", False)):
            print(f"saved {path}", flush=True)
    except (QueueCommandError, WorkflowError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


class ComfyClient:
    """JSON over HTTP to one ComfyUI server; every failure becomes a one-line QueueCommandError."""

    def __init__(self, server: str, timeout_s: float = REQUEST_TIMEOUT_S):
        if "://" not in server:
            server = f"http://{server}"
        self.base_url = server.rstrip("/")
        self.timeout_s = timeout_s

    def _open(self, path: str, body: dict | None = None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.base_url + path, data=data, headers={"Content-Type": "application/json"} if data else {}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise QueueCommandError(f"cannot reach ComfyUI at {self.base_url}: {reason}") from None

    def request_json(self, path: str, body: dict | None = None) -> tuple[int, object]:
        status, raw = self._open(path, body)
        try:
            return status, json.loads(raw)
        except json.JSONDecodeError:
            snippet = raw[:200].decode("utf-8", "replace").strip()
            raise QueueCommandError(
                f"{self.base_url}{path} answered HTTP {status} with non-JSON: {snippet!r}"
            ) from None

    def get_json(self, path: str) -> object:
        status, data = self.request_json(path)
        if status != 200:
            raise QueueCommandError(f"{self.base_url}{path} answered HTTP {status}: {data}")
        return data

    def get_bytes(self, path: str) -> bytes:
        status, raw = self._open(path)
        if status != 200:
            raise QueueCommandError(f"{self.base_url}{path} answered HTTP {status}")
        return raw


def check_node_types(client: ComfyClient, workflow: dict) -> None:
    missing = []
    for class_type in sorted({node["class_type"] for node in workflow.values()}):
        if class_type not in client.get_json(f"/object_info/{urllib.parse.quote(class_type, safe='')}"):
            missing.append(class_type)
    if missing:
        raise QueueCommandError(
            f"the server at {client.base_url} has no node type {', '.join(missing)}; "
            "install the custom nodes that provide it (and restart ComfyUI)"
        )


def submit(client: ComfyClient, workflow: dict, client_id: str | None = None) -> str:
    status, body = client.request_json("/prompt", {"prompt": workflow, "client_id": client_id or uuid.uuid4().hex})
    if status != 200 or not isinstance(body, dict) or "prompt_id" not in body:
        detail = describe_validation_failure(body) if isinstance(body, dict) else body
        raise QueueCommandError(f"ComfyUI rejected the workflow: {detail}")
    return body["prompt_id"]


class EventStream:
    """ComfyUI's websocket (`/ws?clientId=...`), read with the standard library: text messages as dicts."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buffer = b""

    def _read(self, n: int) -> bytes:
        while len(self.buffer) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the server closed the progress connection")
            self.buffer += chunk
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def _send(self, opcode: int, payload: bytes = b"") -> None:
        mask = os.urandom(4)  # client frames are masked (RFC 6455)
        header = bytes([0x80 | opcode, 0x80 | len(payload)])  # control frames only: payload < 126
        self.sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def next_message(self, timeout_s: float) -> dict | None:
        """The next JSON text message, or None when none came within timeout_s."""
        self.sock.settimeout(timeout_s)
        message, opcode = b"", None
        try:
            while True:
                first, second = self._read(2)
                length = second & 0x7F
                if length == 126:
                    length = struct.unpack(">H", self._read(2))[0]
                elif length == 127:
                    length = struct.unpack(">Q", self._read(8))[0]
                payload = self._read(length)
                frame_opcode = first & 0x0F
                if frame_opcode == 0x9:  # ping
                    self._send(0xA, payload)
                    continue
                if frame_opcode == 0x8:
                    raise ConnectionError("the server closed the progress connection")
                if frame_opcode in (0x1, 0x2):
                    opcode, message = frame_opcode, payload
                elif frame_opcode == 0x0:
                    message += payload
                if first & 0x80:  # final fragment
                    if opcode == 0x1:
                        return json.loads(message.decode("utf-8"))
                    message, opcode = b"", None  # binary: preview images
        except socket.timeout:
            return None

    def close(self) -> None:
        try:
            self._send(0x8)
        except OSError:
            pass
        self.sock.close()


def open_events(client: ComfyClient, client_id: str) -> EventStream | None:
    """Connect to the server's websocket for live progress; None (progress by polling) when that fails."""
    url = urllib.parse.urlsplit(client.base_url)
    if url.scheme != "http":
        return None
    path = (url.path.rstrip("/") or "") + f"/ws?clientId={client_id}"
    key = base64.b64encode(os.urandom(16)).decode()
    try:
        sock = socket.create_connection((url.hostname, url.port or 80), timeout=client.timeout_s)
        sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {url.netloc}\r\nUpgrade: websocket\r\n"
                      f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        response = b""
        while b"\r\n\r\n" not in response:
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionError("closed during the handshake")
            response += chunk
    except OSError:
        return None
    head, _, rest = response.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101"):
        sock.close()
        return None
    stream = EventStream(sock)
    stream.buffer = rest
    return stream


def _node_name(workflow: dict, node_id) -> str:
    node = workflow.get(str(node_id)) or {}
    title = (node.get("_meta") or {}).get("title") or node.get("class_type") or "node"
    return f"{title} (#{node_id})"


def follow_progress(events: EventStream, workflow: dict, prompt_id: str, start: float, timeout_s: float) -> None:
    """Print what the server reports while it runs the prompt: each node as it starts, sampler steps
    n/N, other progress at most every 2 s, each line with the elapsed time. Returns when the prompt
    ends (the outcome is then read from /history); a dropped connection ends it quietly."""
    samplers = {node_id for node_id, node in workflow.items() if node.get("class_type") in SAMPLER_SEED_INPUT}
    last_shown: dict[str, float] = {}

    def show(text: str) -> None:
        print(f"[{time.monotonic() - start:6.1f}s] {text}", flush=True)

    try:
        while time.monotonic() - start < timeout_s:
            message = events.next_message(timeout_s=5.0)
            if message is None:
                continue
            kind, data = message.get("type"), message.get("data") or {}
            if data.get("prompt_id") not in (None, prompt_id):
                continue
            if kind == "status":
                remaining = ((data.get("status") or {}).get("exec_info") or {}).get("queue_remaining")
                if remaining and remaining > 1:
                    show(f"waiting in queue ({remaining - 1} ahead)")
            elif kind == "execution_cached" and data.get("nodes"):
                show(f"reused from the last run: {', '.join(_node_name(workflow, n) for n in data['nodes'])}")
            elif kind == "executing":
                if data.get("node") is None:
                    return
                show(_node_name(workflow, data["node"]))
            elif kind == "progress":
                node, value, total = str(data.get("node")), data.get("value"), data.get("max")
                now = time.monotonic()
                if node in samplers:
                    show(f"{_node_name(workflow, node)}: step {value}/{total}")
                elif value == total or now - last_shown.get(node, 0.0) >= 2.0:
                    show(f"{_node_name(workflow, node)}: {100 * value // max(total, 1)}%")
                    last_shown[node] = now
            elif kind in ("execution_success", "execution_error", "execution_interrupted"):
                return
    except (ConnectionError, OSError, ValueError):
        return
    finally:
        events.close()


def _queue_state(client: ComfyClient, prompt_id: str) -> str:
    queue = client.get_json("/queue")
    if any(item[1] == prompt_id for item in queue.get("queue_running", [])):
        return "running"
    pending = [item[1] for item in sorted(queue.get("queue_pending", []), key=lambda item: item[0])]
    if prompt_id in pending:
        return f"waiting in queue ({pending.index(prompt_id)} ahead)"
    return "finishing"


def wait_for_outputs(
    client: ComfyClient, prompt_id: str, *, timeout_s: float, poll_interval_s: float, start: float | None = None
) -> dict:
    """Poll the history until the prompt is done; return its outputs or raise with the server's error.

    `start` is when the prompt was queued (time.monotonic()), so "done in" is the whole run and the
    timeout counts from the queueing, not from the end of the websocket progress."""
    if start is None:
        start = time.monotonic()
    last_state = None
    while True:
        history = client.get_json(f"/history/{urllib.parse.quote(prompt_id, safe='')}")
        entry = history.get(prompt_id) if isinstance(history, dict) else None
        elapsed = time.monotonic() - start
        outputs, failure = history_outcome(entry)
        if failure:
            raise QueueCommandError(failure)
        if outputs is not None:
            print(f"done in {elapsed:.1f}s", flush=True)
            return outputs
        if elapsed > timeout_s:
            raise QueueCommandError(
                f"gave up after {timeout_s:g}s waiting for prompt {prompt_id}; it may still be running on the server"
            )
        state = _queue_state(client, prompt_id)
        if state != last_state:
            print(f"[{elapsed:6.1f}s] {state}", flush=True)
            last_state = state
        time.sleep(poll_interval_s)


# What the server's file name may end with: the command writes images, never e.g. `.bashrc`.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".avif")


def safe_image_name(server_name: str) -> str:
    """The base name of a file name the server reported, refused unless it is a plain image name:
    the server is not trusted to choose where the image goes (`../../.bashrc` must not become `.bashrc`)."""
    base = str(server_name).replace("\\", "/").rsplit("/", 1)[-1]
    if not base or base.startswith(".") or "\0" in base or not base.lower().endswith(IMAGE_EXTENSIONS):
        raise QueueCommandError(f"the server named its image {str(server_name)[:80]!r}, which is no plain image file "
                                f"name ({', '.join(IMAGE_EXTENSIONS)}): not saved; use --out")
    return base


def save_images(client: ComfyClient, outputs: dict, out, overwrite: bool = False) -> list[Path]:
    """Download every image of the outputs. Each is written atomically (fileio.AtomicWrite); an
    existing file is kept and the new one numbered (`name_00001.png`) unless `overwrite`."""
    images = output_images(outputs)
    if not images:
        raise QueueCommandError("the workflow finished but returned no image (does it end in SaveImage?)")
    saved = []
    for index, image in enumerate(images):
        query = urllib.parse.urlencode({"filename": image.filename, "subfolder": image.subfolder, "type": image.type})
        if out is None:
            target = Path(safe_image_name(image.filename))
        elif index == 0:
            target = Path(out)
        else:
            first = Path(out)
            target = first.with_name(f"{first.stem}_{index}{first.suffix}")
        content = client.get_bytes(f"/view?{query}")
        try:
            saved.append(write_bytes(target, content, overwrite=overwrite, add_counter=not overwrite))
        except FileWriteError as error:
            raise QueueCommandError(str(error).splitlines()[0]) from None
    return saved
