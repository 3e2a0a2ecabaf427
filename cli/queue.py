"""`python -m comfyui_zimage_gguf queue`: run an API-format workflow on a ComfyUI server and save its image.

Standard library only, so it works from any Python that can reach the server. Inputs to override are
found by node type (the sampler, the text encoder feeding its positive input, the empty latent),
never by node id, so it works on any export of the workflow.
"""
from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

from ..api.comfy_messages import describe_execution_failure, describe_validation_failure
from ..api.workflow_params import WorkflowError, apply_overrides, load_api_workflow
from ..errors import ZImageGGUFError

REQUEST_TIMEOUT_S = 30.0


class QueueCommandError(ZImageGGUFError):
    """The queue command cannot go on; the message is the one line shown to the user."""


def add_queue_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "queue",
        help="queue an API-format workflow on a running ComfyUI server and save the image",
        description="Queue an API-format workflow (e.g. workflows/z_image_turbo_gguf_api.json) on a "
        "ComfyUI server, follow it to the end and save the image it returns.",
    )
    parser.add_argument("workflow", help="API-format workflow JSON (ComfyUI: Save (API))")
    parser.add_argument("--server", default="http://127.0.0.1:8188", help="ComfyUI address (default %(default)s)")
    parser.add_argument("--prompt", help="text for the CLIPTextEncode feeding the sampler's positive input")
    parser.add_argument("--seed", type=int, help="sampler seed (default: the workflow's)")
    parser.add_argument("--width", type=int, help="latent image width in pixels")
    parser.add_argument("--height", type=int, help="latent image height in pixels")
    parser.add_argument("--steps", type=int, help="sampler steps")
    parser.add_argument("--out", help="where to save the image (default: the server's file name, in the current folder)")
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
            label="--{}",
        ).workflow
        client = ComfyClient(args.server)
        check_node_types(client, workflow)
        prompt_id = submit(client, workflow)
        print(f"queued prompt {prompt_id} on {client.base_url}", flush=True)
        outputs = wait_for_outputs(client, prompt_id, timeout_s=args.timeout, poll_interval_s=args.poll_interval)
        for path in save_images(client, outputs, args.out):
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


def submit(client: ComfyClient, workflow: dict) -> str:
    status, body = client.request_json("/prompt", {"prompt": workflow, "client_id": uuid.uuid4().hex})
    if status != 200 or not isinstance(body, dict) or "prompt_id" not in body:
        detail = describe_validation_failure(body) if isinstance(body, dict) else body
        raise QueueCommandError(f"ComfyUI rejected the workflow: {detail}")
    return body["prompt_id"]


def _queue_state(client: ComfyClient, prompt_id: str) -> str:
    queue = client.get_json("/queue")
    if any(item[1] == prompt_id for item in queue.get("queue_running", [])):
        return "running"
    pending = [item[1] for item in sorted(queue.get("queue_pending", []), key=lambda item: item[0])]
    if prompt_id in pending:
        return f"waiting in queue ({pending.index(prompt_id)} ahead)"
    return "finishing"


def wait_for_outputs(client: ComfyClient, prompt_id: str, *, timeout_s: float, poll_interval_s: float) -> dict:
    """Poll the history until the prompt is done; return its outputs or raise with the server's error."""
    start = time.monotonic()
    last_state = None
    while True:
        history = client.get_json(f"/history/{urllib.parse.quote(prompt_id, safe='')}")
        entry = history.get(prompt_id) if isinstance(history, dict) else None
        elapsed = time.monotonic() - start
        if entry is not None:
            if (entry.get("status") or {}).get("status_str") == "error":
                raise QueueCommandError(f"ComfyUI failed to run the workflow: {describe_execution_failure(entry)}")
            print(f"done in {elapsed:.1f}s", flush=True)
            return entry.get("outputs") or {}
        if elapsed > timeout_s:
            raise QueueCommandError(
                f"gave up after {timeout_s:g}s waiting for prompt {prompt_id}; it may still be running on the server"
            )
        state = _queue_state(client, prompt_id)
        if state != last_state:
            print(f"[{elapsed:6.1f}s] {state}", flush=True)
            last_state = state
        time.sleep(poll_interval_s)


def save_images(client: ComfyClient, outputs: dict, out) -> list[Path]:
    images = [image for node_output in outputs.values() for image in node_output.get("images", [])]
    if not images:
        raise QueueCommandError("the workflow finished but returned no image (does it end in SaveImage?)")
    saved = []
    for index, image in enumerate(images):
        query = urllib.parse.urlencode(
            {"filename": image["filename"], "subfolder": image.get("subfolder", ""), "type": image.get("type", "output")}
        )
        if out is None:
            target = Path(image["filename"]).name
        elif index == 0:
            target = out
        else:
            first = Path(out)
            target = first.with_name(f"{first.stem}_{index}{first.suffix}")
        target = Path(target)
        content = client.get_bytes(f"/view?{query}")
        try:
            target.write_bytes(content)
        except OSError as error:
            raise QueueCommandError(f"{target}: cannot write the image: {error.strerror}") from None
        saved.append(target)
    return saved
