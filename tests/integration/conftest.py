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
import sys
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
SKIP_REASON = (
    "COMFYUI_PATH is not set: integration tests need a ComfyUI checkout "
    "(e.g. COMFYUI_PATH=/tmp/ComfyUI; see CONTRIBUTING.md)"
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
def load_factory_module(name: str):
    """Import a model factory from benchmarks/ by path (ComfyUI's Python has no benchmarks/ on sys.path)."""
    path = REPO_ROOT / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_zimage_tests_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def load_tests_helper():
    """load_factory_module, for test modules (they cannot import this conftest)."""
    return load_factory_module


import comfy_server as comfy_server_module  # noqa: E402  (tests/integration is on pytest's pythonpath)


class ComfyServer(comfy_server_module.ComfyServer):
    def run_prompt(self, workflow: dict, timeout_s: float = RUN_TIMEOUT_S) -> dict:
        try:
            return super().run_prompt(workflow, timeout_s)
        except (RuntimeError, TimeoutError) as error:
            raise AssertionError(str(error)) from None


@pytest.fixture(scope="session")
def start_comfy_server(tmp_path_factory, model_cache):
    """Start a fresh server of its own (e.g. for memory figures no other run has touched):
    `start_comfy_server(name, env={...}, model_root=...)` (model_root: a folder with diffusion_models /
    text_encoders / vae in place of the shared cache); stopped at the end of the session."""
    if not COMFYUI_PATH:
        pytest.skip(SKIP_REASON)
    started = []

    def start(name: str = "comfyui-base", env: dict | None = None, custom_nodes: dict | None = None,
              model_root: Path | None = None):
        base_dir = tmp_path_factory.mktemp(name)
        try:
            server = comfy_server_module.start_server(
                COMFYUI_PATH, COMFYUI_PYTHON, base_dir, model_root or model_cache, custom_nodes or {PACK_NAME: REPO_ROOT},
                env={"ZIMAGE_GGUF_STRICT": "1", **(env or {})}, startup_timeout_s=STARTUP_TIMEOUT_S)
        except (RuntimeError, TimeoutError, FileNotFoundError) as error:
            pytest.fail(str(error))
        server.__class__ = ComfyServer
        started.append(server)
        return server

    yield start
    for server in started:
        comfy_server_module.stop_server(server.process)


@pytest.fixture(scope="session")
def model_cache() -> Path:
    for folder in ("diffusion_models", "text_encoders", "vae", "loras"):
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


def _qwen3_encoder(model_cache: Path, release: str, ggml_type: str = "Q8_0") -> str:
    """A shallow but full-width llama.cpp Qwen3 GGUF of the given release's shape and matrix type, cached.

    The cache key covers the factory's source, so a changed factory regenerates the file."""
    from gguf import GGMLQuantizationType

    factories = load_factory_module("factories")
    params = dict(arch="qwen3", n_layers=QWEN3_TEST_LAYERS, head_dim=128, vocab=151936, **QWEN3_SHAPES[release])
    key = json.dumps(params, sort_keys=True) + (REPO_ROOT / "benchmarks" / "factories.py").read_text()
    prefix = f"{release}-test-{QWEN3_TEST_LAYERS}layers-{ggml_type}-"
    name = f"{prefix}{hashlib.sha256(key.encode()).hexdigest()[:10]}.gguf"
    path = model_cache / "text_encoders" / name
    _drop_stale(path.parent, prefix, name)
    if not path.exists():
        partial = path.with_name(f"{name}.partial-{os.getpid()}")
        try:
            factories.write_llama_cpp_encoder_gguf(partial, keep_state_dict=False,
                                                   ggml_type=GGMLQuantizationType[ggml_type], **params)
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)
    return name


@pytest.fixture(scope="session")
def zimage_gguf_name(quantized_model_names) -> str:
    """Name (as the loader lists it) of a full-width (3840) Z-Image GGUF, Q8_0, with one main layer."""
    return quantized_model_names("Q8_0")["unet"]


@pytest.fixture(scope="session")
def quantized_model_names(model_cache):
    """`names(ggml_type)` -> (Z-Image GGUF, Qwen3-4B GGUF) file names, both with matrices in that type,
    plus their paths: generated once into the model cache."""

    def names(ggml_type: str) -> dict:
        factory = load_factory_module("zimage_factory")
        cached = factory.cached_model("zimage_gguf", n_layers=ZIMAGE_TEST_LAYERS, style="city96",
                                      type_rule={"matrix": ggml_type}, seed=0)
        unet = f"zimage-test-{ZIMAGE_TEST_LAYERS}layer-{ggml_type}-{cached.stem.rsplit('-', 1)[-1]}.gguf"
        _link(model_cache / "diffusion_models" / unet, cached, f"zimage-test-{ZIMAGE_TEST_LAYERS}layer-{ggml_type}-")
        clip = _qwen3_encoder(model_cache, "Qwen3-4B", ggml_type)
        return {"unet": unet, "clip": clip, "unet_path": model_cache / "diffusion_models" / unet,
                "clip_path": model_cache / "text_encoders" / clip}

    return names


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
    factory = load_factory_module("zimage_factory")
    cached = factory.cached_model("flux_vae")
    name = f"flux-vae-test-{cached.stem.rsplit('-', 1)[-1]}.safetensors"
    _link(model_cache / "vae" / name, cached, "flux-vae-test-")
    return name


@pytest.fixture(scope="session")
def comfy_server(start_comfy_server) -> ComfyServer:
    """The session's shared server, strict tripwire on (a whole-weight fallback dequantization fails the run)."""
    return start_comfy_server()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    server = getattr(item, "funcargs", {}).get("comfy_server")
    if report.failed and isinstance(server, ComfyServer):
        report.sections.append(("ComfyUI server log (tail)", server.log_tail()))
