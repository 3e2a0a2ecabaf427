"""Test-wide settings: the quantized-tensor tripwire is strict in every test.

A whole GGUF weight dequantized by the dispatch fallback (outside a layer's forward) raises
`FallbackDequantization`; tests of the fallback itself opt out with `FALLBACKS.allowed()`.
"""
import pytest

from comfyui_zimage_gguf.ops.tensor import FALLBACKS


@pytest.fixture(autouse=True)
def strict_quantized_tensors():
    previous, FALLBACKS.strict = FALLBACKS.strict, True
    try:
        yield
    finally:
        FALLBACKS.strict = previous
