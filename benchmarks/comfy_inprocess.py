"""Run the pack inside a real ComfyUI, in this process, on the CPU: imports, generated model files
and the small helpers the in-process integration tests (and bench_e2e.py) share.

Nothing here imports ComfyUI at module level: `import_comfy()` does, once, from COMFYUI_PATH.
Generated files go to the test factories' cache directory (outside the repository) and are
written once per parameter set.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import importlib.util
import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGML_QUANT_VERSION, GGMLQuantizationType as Q, GGUFWriter

HERE = Path(__file__).resolve().parent
COMFYUI_PATH = os.environ.get("COMFYUI_PATH")
SKIP_REASON = (
    "COMFYUI_PATH is not set: the in-process integration tests need a ComfyUI checkout "
    "(e.g. COMFYUI_PATH=/tmp/ComfyUI, run with ComfyUI's Python)"
)
CACHE_VERSION = 1  # bump when what the writers below produce changes

# Qwen3 text-encoder shapes (hidden, heads, kv heads, ffn) as ComfyUI's configs have them; the
# vocabulary is the real one because ComfyUI's tokenizer emits ids up to 151,935.
QWEN3_SHAPES = {
    "qwen3_4b": dict(hidden=2560, heads=32, kv_heads=8, head_dim=128, ffn=9728),
    "qwen3_06b": dict(hidden=1024, heads=16, kv_heads=8, head_dim=128, ffn=3072),
}
QWEN3_VOCAB = 151_936


@functools.cache
def factory_module(name: str):
    """A model factory beside this file (zimage_factory, factories), imported by path under a private name."""
    path = HERE / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_zimage_inprocess_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


class ComfyUnavailable(RuntimeError):
    """ComfyUI cannot be imported in this Python (unset path, or its dependencies missing)."""


@functools.cache
def import_comfy() -> SimpleNamespace:
    """ComfyUI from COMFYUI_PATH, imported in this process and set to run on the CPU.

    `--cpu` is set on ComfyUI's parsed arguments before `comfy.model_management` reads them,
    instead of rewriting sys.argv.
    """
    if not COMFYUI_PATH:
        raise ComfyUnavailable(SKIP_REASON)
    root = str(Path(COMFYUI_PATH).resolve())
    if root not in sys.path:
        sys.path.insert(0, root)
    try:
        import comfy.cli_args

        comfy.cli_args.args.cpu = True
        modules = {name: importlib.import_module(f"comfy.{name}")
                   for name in ("model_management", "sd", "sample", "lora", "model_patcher", "utils")}
    except ImportError as error:
        raise ComfyUnavailable(
            f"ComfyUI at {root} cannot be imported in {sys.executable} ({error}); "
            "run the tests with ComfyUI's own Python"
        ) from error
    return SimpleNamespace(**modules)


def import_comfy_with_layouts() -> SimpleNamespace:
    """import_comfy() with ComfyUI's layers (comfy.ops, comfy.quant_ops) loaded and the pack's GGML
    layouts registered: the fast path the layout tests run on."""
    comfy = import_comfy()
    import comfy.ops  # noqa: F401
    import comfy.quant_ops  # noqa: F401

    from comfyui_zimage_gguf.ops.comfy_edge import comfy_layout

    assert comfy_layout.available(), "this ComfyUI lacks what the GGML layouts need (ops/comfy_edge/comfy_compat.py)"
    comfy_layout.register()
    return comfy


def _cache_path(kind: str, params: dict, extension: str) -> Path:
    factory = factory_module("zimage_factory")
    key = json.dumps({"kind": kind, "version": CACHE_VERSION, "params": params}, sort_keys=True)
    return factory.cache_dir() / f"{kind}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.{extension}"


@contextlib.contextmanager
def _written_atomically(*paths: Path):
    """Yield temporary names for `paths`; rename them into place only when the block succeeds, so
    a concurrent or interrupted run never sees half a file."""
    partials = [p.with_name(f"{p.name}.partial-{os.getpid()}") for p in paths]
    paths[0].parent.mkdir(parents=True, exist_ok=True)
    try:
        yield partials
        for partial, path in zip(partials, paths):
            os.replace(partial, path)
    finally:
        for partial in partials:
            partial.unlink(missing_ok=True)


def qwen3_encoder_files(model: str = "qwen3_4b", n_layers: int = 3, ggml_type: str = "Q8_0", seed: int = 0,
                        with_safetensors: bool = True,
                        safetensors_dtype: torch.dtype = torch.float32) -> tuple[Path, Path | None]:
    """A llama.cpp-style Qwen3 GGUF (full width, `n_layers` deep) and, if asked, the same weights
    (the quantization round trip applied) as an HF-named safetensors file: float32 holds them
    exactly, bfloat16 is what released checkpoints use."""
    params = dict(model=model, n_layers=n_layers, ggml_type=ggml_type, seed=seed)
    gguf_path = _cache_path("qwen3_gguf", params, "gguf")
    st_path = None
    if with_safetensors:
        st_path = _cache_path("qwen3_safetensors", {**params, "dtype": str(safetensors_dtype)}, "safetensors")
    if gguf_path.exists() and (st_path is None or st_path.exists()):
        return gguf_path, st_path
    import safetensors.torch

    # the GGUF is rewritten with its safetensors twin (same seed, same bytes) when the twin is missing
    targets = [gguf_path] + ([st_path] if st_path else [])
    with _written_atomically(*targets) as partials:
        written = factory_module("factories").write_llama_cpp_encoder_gguf(
            partials[0], arch="qwen3", n_layers=n_layers, vocab=QWEN3_VOCAB, ggml_type=Q[ggml_type], seed=seed,
            keep_state_dict=with_safetensors, **QWEN3_SHAPES[model])
        if st_path:
            state_dict = {name: value.to(safetensors_dtype) for name, value in written.hf_state_dict.items()}
            del written
            safetensors.torch.save_file(state_dict, str(partials[1]))
    return gguf_path, st_path


def zimage_city96_flat_pads_gguf(matrix_type: str = "Q4_K", pad_type: str = "F32", seed: int = 0,
                                 n_layers: int = 1) -> Path:
    """A city96-style Z-Image GGUF (lumina2 metadata, bare names) whose pad tokens are stored 1-D as
    [dim] (the factory writes them [1, dim] in this style); other tensors as the factory writes them."""
    path = _cache_path("zimage_city96_flat_pads", dict(matrix=matrix_type, pad=pad_type, seed=seed,
                                                       n_layers=n_layers), "gguf")
    if path.exists():
        return path
    factory = factory_module("zimage_factory")
    kinds = {"matrix": Q[matrix_type], "vector": Q.F32, "pad": Q[pad_type]}
    plan = []
    for spec in factory.zimage_tensor_specs(n_layers):
        stored_shape = (spec.shape[-1],) if spec.kind == "pad" else spec.shape
        ggml_type = kinds[spec.kind]
        if stored_shape[-1] % GGML_QUANT_SIZES[ggml_type][0]:
            ggml_type = factory.ROW_FALLBACK_TYPE
        plan.append((spec, stored_shape, ggml_type))
    with _written_atomically(path) as (partial,):
        writer = GGUFWriter(str(partial), arch="lumina2")
        writer.add_quantization_version(GGML_QUANT_VERSION)
        for spec, shape, ggml_type in plan:
            block, size = GGML_QUANT_SIZES[ggml_type]
            writer.add_tensor_info(spec.name, shape, np.dtype(np.float32), int(np.prod(shape)) // block * size,
                                   raw_dtype=ggml_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for index, (spec, shape, ggml_type) in enumerate(plan):
            writer.write_tensor_data(factory.encode_tensor(spec, seed, ggml_type, shape, index))
        writer.close()
    return path


def write_lora(path, target_shapes: dict[str, tuple[int, int]], rank: int = 8, seed: int = 0,
               std: float = 0.02) -> dict[str, torch.Tensor]:
    """A LoRA in ComfyUI's generic key format (`diffusion_model.<module>.lora_up/lora_down/alpha`)
    for modules named like `layers.0.attention.qkv` with (out, in) weight shapes; returns its tensors."""
    import safetensors.torch

    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for module, (rows, cols) in target_shapes.items():
        key = f"diffusion_model.{module}"
        tensors[f"{key}.lora_up.weight"] = torch.randn(rows, rank, generator=generator) * std
        tensors[f"{key}.lora_down.weight"] = torch.randn(rank, cols, generator=generator) * std
        tensors[f"{key}.alpha"] = torch.tensor(float(rank))
    safetensors.torch.save_file(tensors, str(path))
    return tensors


def sample_steps(comfy, patcher, noise: torch.Tensor, positive: torch.Tensor, steps: int = 1,
                 negative: torch.Tensor | None = None) -> torch.Tensor:
    """`steps` euler steps at cfg 1 (one model call per step) from `noise`, as KSampler runs them."""
    latent = torch.zeros_like(noise)
    negative = torch.zeros_like(positive) if negative is None else negative
    return comfy.sample.sample(patcher, noise, steps, 1.0, "euler", "simple", [[positive, {}]], [[negative, {}]],
                               latent, denoise=1.0, seed=0, disable_pbar=True)


@contextlib.contextmanager
def capped_weight_memory(patcher, budget_bytes: int):
    """Make ComfyUI load `patcher` partially (its lowvram path), as on a GPU with `budget_bytes` free.

    On the CPU ComfyUI always asks for a full load; the cap is applied where it hands the patcher
    its memory allowance (`partially_load`), so everything after that is ComfyUI's own code.
    """
    full = patcher.partially_load

    def partially_load(device_to, extra_memory=0, force_patch_weights=False):
        return full(device_to, min(extra_memory, budget_bytes), force_patch_weights)

    patcher.partially_load = partially_load
    try:
        yield patcher
    finally:
        del patcher.partially_load


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def mapped_files() -> set[str]:
    """Paths of the files this process currently has memory-mapped."""
    with open("/proc/self/maps") as maps:
        return {parts[5] for parts in (line.rstrip("\n").split(maxsplit=5) for line in maps) if len(parts) == 6}


def touch_pages(tensor: torch.Tensor) -> int:
    """Read one byte of every 4 KiB page of a tensor's raw bytes (faults a memory map in)."""
    raw = getattr(tensor, "raw", None)  # the pack's QuantizedTensor
    raw = getattr(tensor, "_qdata", tensor) if raw is None else raw  # ComfyUI's
    return int(raw.view(torch.uint8).reshape(-1)[::4096].sum())
