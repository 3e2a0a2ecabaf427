"""A real ComfyUI server with this pack installed the way users install it, for the integration tests.

Runs only where COMFYUI_PATH points at a ComfyUI checkout (everything here is skipped, with that
reason, elsewhere). The server runs from COMFYUI_PYTHON (default: this Python) with --cpu on a free
127.0.0.1 port and a temporary base directory: its custom_nodes holds a symlink to this repository,
and an extra-model-paths file points diffusion_models / text_encoders / vae at a model cache outside
the repository (ZIMAGE_GGUF_TEST_MODELS, default ~/.cache/comfyui_zimage_gguf/integration-models),
where the fixtures below generate small but full-width model files once and reuse them.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
TESTS_DIR = REPO_ROOT / "tests"
PACK_NAME = "comfyui_zimage_gguf"
COMFYUI_PATH = os.environ.get("COMFYUI_PATH")
COMFYUI_PYTHON = os.environ.get("COMFYUI_PYTHON") or sys.executable
MODEL_CACHE = Path(
    os.environ.get("ZIMAGE_GGUF_TEST_MODELS", "~/.cache/comfyui_zimage_gguf/integration-models")
).expanduser()
STARTUP_TIMEOUT_S = float(os.environ.get("ZIMAGE_GGUF_STARTUP_TIMEOUT", "300"))
# One small run takes seconds on an idle machine, but minutes where many processes share the CPU.
RUN_TIMEOUT_S = float(os.environ.get("ZIMAGE_GGUF_RUN_TIMEOUT", "1800"))
LOG_TAIL_LINES = 80
SKIP_REASON = (
    "COMFYUI_PATH is not set: integration tests need a ComfyUI checkout "
    "(e.g. COMFYUI_PATH=/tmp/ComfyUI; see the README's Testing section)"
)




@pytest.fixture(scope="session")
def run_timeout_s() -> float:
    return RUN_TIMEOUT_S


@pytest.fixture(scope="session")
def cli_env() -> dict:
    """Environment in which `python -m comfyui_zimage_gguf` works from this Python (tests/conftest.py
    puts the package on PYTHONPATH where it is not installed)."""
    return dict(os.environ)


def pytest_collection_modifyitems(config, items):
    if COMFYUI_PATH:
        return
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.skip(reason=SKIP_REASON))


@functools.cache
def load_tests_module(name: str):
    """Import a helper module from tests/helpers/ by path (ComfyUI's Python has no tests/ on sys.path)."""
    path = TESTS_DIR / "helpers" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_zimage_tests_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def load_tests_helper():
    """load_tests_module, for test modules (they cannot import this conftest)."""
    return load_tests_module


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class ComfyServer:
    url: str
    base_dir: Path
    log_path: Path
    process: subprocess.Popen

    def request(self, path: str, body: dict | None = None, timeout: float = 60) -> tuple[int, object]:
        """(HTTP status, decoded JSON or raw bytes)."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                status, content_type, raw = response.status, response.headers.get_content_type(), response.read()
        except urllib.error.HTTPError as error:
            status, content_type, raw = error.code, error.headers.get_content_type(), error.read()
        return status, json.loads(raw) if content_type == "application/json" else raw

    def get_json(self, path: str):
        status, data = self.request(path)
        assert status == 200, f"GET {path}: HTTP {status}: {data!r}"
        return data

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        if not self.log_path.exists():
            return "(no server log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def run_prompt(self, workflow: dict, timeout_s: float = RUN_TIMEOUT_S) -> dict:
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
            assert self.process.poll() is None, f"ComfyUI exited while running the prompt:\n{self.log_tail()}"
            time.sleep(0.5)
        raise AssertionError(f"prompt {prompt_id} not finished after {timeout_s}s\n{self.log_tail()}")


def _wait_until_ready(server: ComfyServer) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(f"ComfyUI exited with code {server.process.returncode} during startup:\n{server.log_tail()}")
        try:
            with urllib.request.urlopen(server.url + "/system_stats", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(1)
    pytest.fail(f"ComfyUI did not answer within {STARTUP_TIMEOUT_S:g}s:\n{server.log_tail()}")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)


@pytest.fixture(scope="session")
def model_cache() -> Path:
    for folder in ("diffusion_models", "text_encoders", "vae"):
        (MODEL_CACHE / folder).mkdir(parents=True, exist_ok=True)
    return MODEL_CACHE


# Qwen3 shapes (hidden, heads, kv heads, feed-forward) of the real releases; head size 128, the
# full vocabulary (the tokenizer ComfyUI ships emits ids up to 151k) and 3 layers: Z-Image reads
# the second-to-last hidden state, and ComfyUI asserts |layer index| < layer count.
QWEN3_SHAPES = {
    "Qwen3-4B": dict(hidden=2560, heads=32, kv_heads=8, ffn=9728),
    "Qwen3-1.7B": dict(hidden=2048, heads=16, kv_heads=8, ffn=6144),
}
QWEN3_TEST_LAYERS = 3
ZIMAGE_TEST_LAYERS = 1


def _drop_stale(folder: Path, prefix: str, keep: str) -> None:
    """Remove earlier generations of a test file (other digests), so loaders list one of each."""
    for old in folder.glob(f"{prefix}*"):
        if old.name != keep:
            old.unlink()


def _link(link: Path, target: Path, prefix: str) -> None:
    _drop_stale(link.parent, prefix, link.name)
    if link.is_symlink() or link.exists():
        if link.resolve() == target.resolve():
            return
        link.unlink()
    link.symlink_to(target)


def _qwen3_encoder(model_cache: Path, release: str) -> str:
    """A shallow but full-width llama.cpp Qwen3 GGUF (Q8_0) of the given release's shape, cached.

    The cache key covers the factory's source, so a changed factory regenerates the file."""
    factories = load_tests_module("factories")
    params = dict(arch="qwen3", n_layers=QWEN3_TEST_LAYERS, head_dim=128, vocab=151936, **QWEN3_SHAPES[release])
    key = json.dumps(params, sort_keys=True) + (TESTS_DIR / "helpers" / "factories.py").read_text()
    prefix = f"{release}-test-"
    name = f"{prefix}{QWEN3_TEST_LAYERS}layers-Q8_0-{hashlib.sha256(key.encode()).hexdigest()[:10]}.gguf"
    path = model_cache / "text_encoders" / name
    _drop_stale(path.parent, prefix, name)
    if not path.exists():
        partial = path.with_name(f"{name}.partial-{os.getpid()}")
        try:
            factories.write_llama_cpp_encoder_gguf(partial, keep_state_dict=False, **params)
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)
    return name


@pytest.fixture(scope="session")
def zimage_gguf_name(model_cache) -> str:
    """Name (as the loader lists it) of a full-width (3840) Z-Image GGUF, Q8_0, with one main layer."""
    factory = load_tests_module("zimage_factory")
    cached = factory.cached_model("zimage_gguf", n_layers=ZIMAGE_TEST_LAYERS, style="city96")
    name = f"zimage-test-{ZIMAGE_TEST_LAYERS}layer-Q8_0-{cached.stem.rsplit('-', 1)[-1]}.gguf"
    _link(model_cache / "diffusion_models" / name, cached, "zimage-test-")
    return name


@pytest.fixture(scope="session")
def qwen3_4b_gguf_name(model_cache) -> str:
    """The text encoder Z-Image takes: Qwen3-4B shape (2560 wide)."""
    return _qwen3_encoder(model_cache, "Qwen3-4B")


@pytest.fixture(scope="session")
def qwen3_narrow_gguf_name(model_cache) -> str:
    """A text encoder of the wrong width for Z-Image: Qwen3-1.7B shape (2048 wide)."""
    return _qwen3_encoder(model_cache, "Qwen3-1.7B")


@pytest.fixture(scope="session")
def flux_vae_name(model_cache) -> str:
    factory = load_tests_module("zimage_factory")
    cached = factory.cached_model("flux_vae")
    name = f"flux-vae-test-{cached.stem.rsplit('-', 1)[-1]}.safetensors"
    _link(model_cache / "vae" / name, cached, "flux-vae-test-")
    return name


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory, model_cache) -> ComfyServer:
    if not COMFYUI_PATH:
        pytest.skip(SKIP_REASON)
    comfy_main = Path(COMFYUI_PATH) / "main.py"
    if not comfy_main.is_file():
        pytest.fail(f"COMFYUI_PATH={COMFYUI_PATH} holds no main.py: not a ComfyUI checkout")
    base_dir = tmp_path_factory.mktemp("comfyui-base")
    (base_dir / "custom_nodes").mkdir()
    (base_dir / "custom_nodes" / PACK_NAME).symlink_to(REPO_ROOT, target_is_directory=True)
    extra_paths = base_dir / "extra_model_paths.yaml"
    extra_paths.write_text(
        "zimage_gguf_integration:\n"
        f"  base_path: {json.dumps(str(model_cache))}\n"
        "  diffusion_models: diffusion_models\n"
        "  text_encoders: text_encoders\n"
        "  vae: vae\n"
    )
    port = _free_port()
    command = [
        COMFYUI_PYTHON, str(comfy_main), "--cpu", "--listen", "127.0.0.1", "--port", str(port),
        "--disable-auto-launch", "--base-directory", str(base_dir), "--extra-model-paths-config", str(extra_paths),
        "--database-url", f"sqlite:///{base_dir / 'comfyui.db'}",
    ]
    log_path = base_dir / "comfyui.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=COMFYUI_PATH, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)
    server = ComfyServer(url=f"http://127.0.0.1:{port}", base_dir=base_dir, log_path=log_path, process=process)
    try:
        _wait_until_ready(server)
        yield server
    finally:
        _stop(process)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    server = getattr(item, "funcargs", {}).get("comfy_server")
    if report.failed and isinstance(server, ComfyServer):
        report.sections.append(("ComfyUI server log (tail)", server.log_tail()))
