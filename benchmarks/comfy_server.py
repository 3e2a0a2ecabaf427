"""A real ComfyUI server process for the integration tests and the end-to-end benchmark (no pytest here).

`start_server()` runs ComfyUI's own `main.py --cpu` on a free 127.0.0.1 port with a fresh base
directory whose custom_nodes/ holds symlinks to the packs (this repository, and city96's pack when
the benchmark compares against it), and an extra-model-paths file for the model folders.

`ComfyServer.run_traced()` queues a prompt through `POST /prompt` while listening on the server's
websocket and sampling the server process's memory, so a run reports what a user's run costs:
- memory from /proc/<server pid>/status: VmHWM (peak resident set) and RssAnon (anonymous memory,
  i.e. what the process allocated, not the model files it maps), sampled every few milliseconds;
- times from the server's own messages: when each node started executing and each sampler
  progress tick (`progress` value n of N), so the step time is the server's, not ours.
"""
from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

LOG_TAIL_LINES = 80
MEMORY_SAMPLE_S = 0.01


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def proc_status_kib(pid: int, field_name: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field_name} in /proc/{pid}/status")


def page_faults(pid: int) -> tuple[int, int]:
    """(minor, major) page faults of the whole process so far, fields 10 and 12 of /proc/<pid>/stat.
    Major: pages read in from disk (a mapped file's pages that had left the page cache); minor: pages
    mapped without I/O (fresh anonymous memory, or a file page still cached but unmapped from us)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return int(fields[7]), int(fields[9])


class MemorySampler:
    """RssAnon of a process sampled on a thread: (monotonic time, KiB) pairs, and their peak; and
    its (time, minor, major) page faults at the same moments."""

    def __init__(self, pid: int, interval_s: float = MEMORY_SAMPLE_S):
        self.pid, self.interval_s = pid, interval_s
        self.samples: list[tuple[float, int]] = []
        self.faults: list[tuple[float, int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                now = time.monotonic()
                self.samples.append((now, proc_status_kib(self.pid, "RssAnon")))
                self.faults.append((now, *page_faults(self.pid)))
            except (OSError, RuntimeError):
                return
            self._stop.wait(self.interval_s)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def peak_kib(self, start: float = float("-inf"), end: float = float("inf")) -> int:
        inside = [kib for t, kib in self.samples if start <= t <= end]
        return max(inside) if inside else 0

    def faults_between(self, start: float, end: float) -> tuple[int, int]:
        """(minor, major) faults between the last sample at or before `start` and the first at or after `end`."""
        before = [f for f in self.faults if f[0] <= start] or self.faults[:1]
        after = [f for f in self.faults if f[0] >= end] or self.faults[-1:]
        if not before or not after:
            return 0, 0
        return after[0][1] - before[-1][1], after[0][2] - before[-1][2]

    def last_kib_before(self, moment: float) -> int:
        before = [kib for t, kib in self.samples if t <= moment]
        return before[-1] if before else (self.samples[0][1] if self.samples else 0)


@dataclass
class RunTrace:
    """What one queued prompt did, as the server reported it."""

    prompt_id: str
    status: str = "unknown"  # success | error
    error: dict | None = None
    started: float = 0.0
    finished: float = 0.0
    node_starts: list[tuple[float, str]] = field(default_factory=list)  # (time, node id) in order
    progress: list[tuple[float, str, int, int]] = field(default_factory=list)  # (time, node, value, max)
    anon_baseline_kib: int = 0
    anon_peak_kib: int = 0
    vmhwm_kib: int = 0
    memory: MemorySampler | None = None
    history: dict | None = None

    def node_span(self, node: str) -> tuple[float, float]:
        """(start, end) of a node's execution: until the next node started, or the run ended."""
        for index, (moment, current) in enumerate(self.node_starts):
            if current == node:
                end = self.node_starts[index + 1][0] if index + 1 < len(self.node_starts) else self.finished
                return moment, end
        raise KeyError(f"node {node} did not execute (cached or not in the prompt)")

    def step_times(self, node: str) -> list[float]:
        """Seconds between consecutive sampler progress ticks of `node` (the first step, which also
        loads the model, is left out)."""
        ticks = [moment for moment, current, _, _ in self.progress if current == node]
        return [b - a for a, b in zip(ticks, ticks[1:])]

    def sampling_faults(self, node: str) -> tuple[int, int]:
        """(minor, major) page faults while `node`'s timed steps ran (its second progress tick to its last)."""
        ticks = [moment for moment, current, _, _ in self.progress if current == node]
        return self.memory.faults_between(ticks[1], ticks[-1]) if len(ticks) > 1 else (0, 0)

    def anon_growth_kib(self, node: str) -> int:
        """Peak RssAnon while `node` ran, above RssAnon just before it started."""
        start, end = self.node_span(node)
        return self.memory.peak_kib(start, end) - self.memory.last_kib_before(start)


@dataclass
class ComfyServer:
    url: str
    base_dir: Path
    log_path: Path
    process: subprocess.Popen

    @property
    def pid(self) -> int:
        return self.process.pid

    def request(self, path: str, body: dict | None = None, timeout: float = 60) -> tuple[int, object]:
        """(HTTP status, decoded JSON or raw bytes)."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                status, content_type, raw = response.status, response.headers.get_content_type(), response.read()
        except urllib.error.HTTPError as error:
            status, content_type, raw = error.code, error.headers.get_content_type(), error.read()
        return status, json.loads(raw) if content_type == "application/json" and raw else raw

    def get_json(self, path: str):
        status, data = self.request(path)
        assert status == 200, f"GET {path}: HTTP {status}: {data!r}"
        return data

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        if not self.log_path.exists():
            return "(no server log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def run_prompt(self, workflow: dict, timeout_s: float) -> dict:
        """POST /prompt and wait for its history entry; return the entry (or the /prompt error body)."""
        status, body = self.request("/prompt", {"prompt": workflow})
        if status != 200:
            return {"rejected": body, "http_status": status}
        prompt_id = body["prompt_id"]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            entry = self.get_json(f"/history/{prompt_id}").get(prompt_id)
            if entry is not None:
                return entry
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited while running the prompt:\n{self.log_tail()}")
            time.sleep(0.5)
        raise TimeoutError(f"prompt {prompt_id} not finished after {timeout_s}s\n{self.log_tail()}")

    def free_models(self) -> None:
        self.request("/free", {"unload_models": True, "free_memory": True})

    def run_traced(self, workflow: dict, timeout_s: float) -> RunTrace:
        """Queue `workflow` and follow it on the websocket, sampling the server's memory meanwhile."""
        return asyncio.run(self._run_traced(workflow, timeout_s))

    async def _run_traced(self, workflow: dict, timeout_s: float) -> RunTrace:
        import aiohttp

        client_id = uuid.uuid4().hex
        ws_url = self.url.replace("http://", "ws://") + f"/ws?clientId={client_id}"
        async with aiohttp.ClientSession() as session, session.ws_connect(ws_url, max_msg_size=0) as ws:
            with MemorySampler(self.pid) as memory:
                await asyncio.sleep(5 * MEMORY_SAMPLE_S)
                baseline = memory.samples[-1][1] if memory.samples else proc_status_kib(self.pid, "RssAnon")
                started = time.monotonic()
                async with session.post(self.url + "/prompt",
                                        json={"prompt": workflow, "client_id": client_id}) as response:
                    body = await response.json()
                    if response.status != 200:
                        raise AssertionError(f"POST /prompt refused (HTTP {response.status}): {body}")
                trace = RunTrace(prompt_id=body["prompt_id"], started=started, anon_baseline_kib=baseline,
                                 memory=memory)
                deadline = started + timeout_s
                while trace.status == "unknown":
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise TimeoutError(f"prompt {trace.prompt_id} not finished after {timeout_s}s\n"
                                           f"{self.log_tail()}")
                    try:
                        message = await ws.receive(timeout=min(remaining, 5))
                    except asyncio.TimeoutError:
                        if self.process.poll() is not None:
                            raise RuntimeError(f"ComfyUI exited during the run:\n{self.log_tail()}")
                        continue
                    if message.type != aiohttp.WSMsgType.TEXT:
                        continue  # binary previews
                    _follow(trace, json.loads(message.data), time.monotonic())
                trace.finished = time.monotonic()
                await asyncio.sleep(5 * MEMORY_SAMPLE_S)
        trace.anon_peak_kib = memory.peak_kib()
        trace.vmhwm_kib = proc_status_kib(self.pid, "VmHWM")
        trace.history = self.get_json(f"/history/{trace.prompt_id}").get(trace.prompt_id)
        return trace


def _follow(trace: RunTrace, message: dict, now: float) -> None:
    kind, data = message.get("type"), message.get("data") or {}
    if data.get("prompt_id") not in (None, trace.prompt_id):
        return
    if kind == "executing":
        if data.get("node") is None:
            trace.status = trace.status if trace.status == "error" else "success"
        else:
            trace.node_starts.append((now, str(data["node"])))
    elif kind == "progress":
        trace.progress.append((now, str(data.get("node")), int(data["value"]), int(data["max"])))
    elif kind == "execution_error":
        trace.status, trace.error = "error", data
    elif kind == "execution_success":
        trace.status = "success"


def wait_until_ready(server: ComfyServer, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"ComfyUI exited with code {server.process.returncode} during startup:\n"
                               f"{server.log_tail()}")
        try:
            with urllib.request.urlopen(server.url + "/system_stats", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(1)
    raise TimeoutError(f"ComfyUI did not answer within {timeout_s:g}s:\n{server.log_tail()}")


def stop_server(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)


def start_server(comfyui_path: str | Path, python: str, base_dir: Path, model_root: Path,
                 custom_nodes: dict[str, Path], env: dict | None = None, extra_args: tuple = (),
                 startup_timeout_s: float = 300, cpu: bool = True) -> ComfyServer:
    """Start ComfyUI (`main.py --cpu`; with cpu=False on its default device, for the GPU check) with
    `custom_nodes` {folder name: pack checkout} symlinked in and `model_root`'s diffusion_models /
    text_encoders / vae / loras folders as extra model paths; `extra_args` go after the others."""
    comfy_main = Path(comfyui_path) / "main.py"
    if not comfy_main.is_file():
        raise FileNotFoundError(f"COMFYUI_PATH={comfyui_path} holds no main.py: not a ComfyUI checkout")
    (base_dir / "custom_nodes").mkdir(parents=True, exist_ok=True)
    for name, checkout in custom_nodes.items():
        (base_dir / "custom_nodes" / name).symlink_to(Path(checkout).resolve(), target_is_directory=True)
    extra_paths = base_dir / "extra_model_paths.yaml"
    extra_paths.write_text(
        "zimage_gguf_integration:\n"
        f"  base_path: {json.dumps(str(model_root))}\n"
        "  diffusion_models: diffusion_models\n"
        "  text_encoders: text_encoders\n"
        "  vae: vae\n"
        "  loras: loras\n"
    )
    port = free_port()
    command = [
        python, str(comfy_main), *(["--cpu"] if cpu else []), "--listen", "127.0.0.1", "--port", str(port),
        "--disable-auto-launch", "--base-directory", str(base_dir), "--extra-model-paths-config", str(extra_paths),
        "--database-url", f"sqlite:///{base_dir / 'comfyui.db'}", *extra_args,
    ]
    log_path = base_dir / "comfyui.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=str(comfyui_path), stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})})
    server = ComfyServer(url=f"http://127.0.0.1:{port}", base_dir=base_dir, log_path=log_path, process=process)
    try:
        wait_until_ready(server, startup_timeout_s)
    except BaseException:
        stop_server(process)
        raise
    return server


# The ways to load the same Z-Image Turbo graph: ComfyUI's own loaders (safetensors), this pack's
# GGUF loaders, and city96's ComfyUI-GGUF for the diffusion model. (class_type, file input, extras)
# city96's CLIPLoaderGGUF fails on the shallow Qwen3-4B test encoders with torch's "mat1 and mat2
# shapes cannot be multiplied (19x2560 and 4096x2560)" (measured with ComfyUI-GGUF's last commit),
# so its comparison loads the encoder with this pack's loader: the DiT path is what differs.
LOADERS = {
    "native": {"unet": ("UNETLoader", "unet_name", {"weight_dtype": "default"}),
               "clip": ("CLIPLoader", "clip_name", {"type": "lumina2"})},
    "pack": {"unet": ("ZImageGGUFDiffusionModelLoader", "unet_name", {"dequant_dtype": "auto", "patch_on_device": False}),
             "clip": ("ZImageGGUFTextEncoderLoader", "clip_name", {"type": "lumina2"})},
    "city96": {"unet": ("UnetLoaderGGUF", "unet_name", {}),
               "clip": ("ZImageGGUFTextEncoderLoader", "clip_name", {"type": "lumina2"})},
}
SAMPLER_NODE, ENCODE_NODE, UNET_NODE, CLIP_NODE = "sampler", "encode", "unet", "clip"


def zimage_workflow(loaders: str, unet: str, clip: str, vae: str, size: int = 128, steps: int = 4,
                    seed: int = 0, prompt: str = "a photograph of a red fox in fresh snow at dawn") -> dict:
    """The shipped Z-Image Turbo graph (ModelSamplingAuraFlow shift 3, KSampler res_multistep/simple at
    cfg 1, ConditioningZeroOut negative) in API format, with the loaders of `loaders` (see LOADERS)."""
    unet_type, unet_input, unet_extra = LOADERS[loaders]["unet"]
    clip_type, clip_input, clip_extra = LOADERS[loaders]["clip"]
    return {
        UNET_NODE: {"class_type": unet_type, "inputs": {unet_input: unet, **unet_extra}},
        CLIP_NODE: {"class_type": clip_type, "inputs": {clip_input: clip, **clip_extra}},
        "vae": {"class_type": "VAELoader", "inputs": {"vae_name": vae}},
        ENCODE_NODE: {"class_type": "CLIPTextEncode", "inputs": {"text": prompt, "clip": [CLIP_NODE, 0]}},
        "zero": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": [ENCODE_NODE, 0]}},
        "shift": {"class_type": "ModelSamplingAuraFlow", "inputs": {"model": [UNET_NODE, 0], "shift": 3.0}},
        "latent": {"class_type": "EmptySD3LatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        SAMPLER_NODE: {"class_type": "KSampler", "inputs": {
            "model": ["shift", 0], "positive": [ENCODE_NODE, 0], "negative": ["zero", 0],
            "latent_image": ["latent", 0], "seed": seed, "steps": steps, "cfg": 1.0,
            "sampler_name": "res_multistep", "scheduler": "simple", "denoise": 1.0}},
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": [SAMPLER_NODE, 0], "vae": ["vae", 0]}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": "e2e"}},
    }


SHIPPED_API_WORKFLOW = Path(__file__).resolve().parents[1] / "workflows" / "api" / "z_image_turbo_gguf_api.json"


def node_of_type(workflow: dict, class_type: str) -> dict:
    (node,) = [node for node in workflow.values() if node["class_type"] == class_type]
    return node


def shipped_workflow(unet: str, clip: str, vae: str, clip_type: str = "lumina2", size: int | None = None,
                     steps: int = 1) -> dict:
    """The shipped API-format workflow with its model files swapped (by node type) for test files."""
    workflow = json.loads(SHIPPED_API_WORKFLOW.read_text(encoding="utf-8"))
    node_of_type(workflow, "ZImageGGUFDiffusionModelLoader")["inputs"]["unet_name"] = unet
    node_of_type(workflow, "ZImageGGUFTextEncoderLoader")["inputs"].update(clip_name=clip, type=clip_type)
    node_of_type(workflow, "VAELoader")["inputs"]["vae_name"] = vae
    if size is not None:
        node_of_type(workflow, "EmptySD3LatentImage")["inputs"].update(width=size, height=size)
    node_of_type(workflow, "KSampler")["inputs"]["steps"] = steps
    return workflow
