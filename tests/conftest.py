"""Test-wide settings.

* The package imports as `comfyui_zimage_gguf` even in a Python without the editable install
  (ComfyUI's own venv, for the integration tests): a symlink named like the package, in a
  temporary folder put on sys.path and on PYTHONPATH (for subprocesses).
* The quantized-tensor tripwire is strict in every test: a whole GGUF weight dequantized by the
  dispatch fallback (outside a layer's forward) raises `FallbackDequantization`; tests of the
  fallback itself opt out with `FALLBACKS.allowed()`.
"""
import atexit
import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

PACK_NAME = "comfyui_zimage_gguf"
REPO_ROOT = Path(__file__).resolve().parents[1]

if importlib.util.find_spec(PACK_NAME) is None:
    _folder = Path(tempfile.mkdtemp(prefix="zimage-gguf-pkg-"))
    (_folder / PACK_NAME).symlink_to(REPO_ROOT, target_is_directory=True)
    sys.path.insert(0, str(_folder))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_folder), os.environ.get("PYTHONPATH")]))
    atexit.register(shutil.rmtree, _folder, ignore_errors=True)

from comfyui_zimage_gguf.ops.runtime.tensor import FALLBACKS  # noqa: E402

import helpers.gguf_q1_0  # noqa: E402,F401  (gguf-py's Q1_0 reference where gguf-py lacks the class)


@pytest.fixture(autouse=True)
def strict_quantized_tensors():
    previous, FALLBACKS.strict = FALLBACKS.strict, True
    try:
        yield
    finally:
        FALLBACKS.strict = previous
