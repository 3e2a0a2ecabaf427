"""Triton kernels defined under Triton's interpreter (TRITON_INTERPRET=1), for tests on CPU tensors.

Triton reads TRITON_INTERPRET when a kernel is defined, so the kernel modules must be imported
with it set; where an earlier caller in the same process imported them for the compiler, they are
forgotten and imported again. The environment is restored on exit (the kernels stay interpreted).
"""
from __future__ import annotations

import contextlib
import os
import sys

from comfyui_zimage_gguf.ops.ggml import triton_kernels


@contextlib.contextmanager
def interpreted_registry():
    """Yield the Triton kernel registry with every kernel defined for the interpreter."""
    previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        if not all(type(kernel.fn).__name__ == "InterpretedFunction" for kernel in triton_kernels.registry().values()):
            # forget every kernel module, so that the registry imports them all afresh, helpers
            # before their users (reloading one by one could leave one holding compiled helpers)
            for name in [name for name in sys.modules if name.startswith(f"{triton_kernels.__name__}.")]:
                del sys.modules[name]
            triton_kernels._load.cache_clear()
        yield triton_kernels.registry()
    finally:
        if previous is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = previous
