"""GGUF files made by the converters users actually get them from, for the tool-made-file tests.

* llama.cpp's quantizer, through llama-cpp-python (`llama_cpp.llama_model_quantize`, what the
  `llama-quantize` command runs), quantizes llama.cpp-style Qwen3 text encoders written by
  `benchmarks/factories.py` in F16;
* stable-diffusion.cpp's converter, through stable-diffusion-cpp-python (`convert`, what
  `sd -M convert` runs), turns Z-Image safetensors written by `benchmarks/zimage_factory.py` into GGUF;
* ggml's own dequantizer (`ggml_get_type_traits(type)->to_float`, from the libggml that
  llama-cpp-python ships) gives reference values for any file.

The tools live in their own Python, named by $ZIMAGE_GGUF_TOOLS_PYTHON, never in the test
environment: this file runs there as a script (`python tool_files.py <command> <json>`, standard
library + the tool only) and, imported by the tests, drives that script by subprocess. Made files
are cached in ~/.cache/comfyui_zimage_gguf/tool-made/ under a digest of everything that made them
(tool version included), so each is made once; earlier generations of a file are removed.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

TOOLS_PYTHON_ENV = "ZIMAGE_GGUF_TOOLS_PYTHON"
CACHE_DIR = Path.home() / ".cache" / "comfyui_zimage_gguf" / "tool-made"
CACHE_VERSION = 1  # bump when what this module makes changes
LLAMA_CPP = ("llama_cpp", "llama-cpp-python")  # (module, distribution)
SD_CPP = ("stable_diffusion_cpp", "stable-diffusion-cpp-python")
LOG_TAIL_CHARS = 3000
DIGEST_CHARS = 12
SDCPP_PREFIX = "model.diffusion_model."

# The small encoder: every matrix row is 256 or 768 long, so every K- and I-quant block fits
# and llama.cpp quantizes each matrix to the type asked for instead of falling back.
SMALL_QWEN3 = dict(arch="qwen3", n_layers=2, hidden=256, heads=4, kv_heads=2, head_dim=64, ffn=768, vocab=512)
# Qwen3-4B's width and full vocabulary, 3 layers (Z-Image reads the second-to-last hidden state).
FULL_QWEN3_4B = dict(arch="qwen3", n_layers=3, hidden=2560, heads=32, kv_heads=8, head_dim=128, ffn=9728,
                     vocab=151_936)


# --------------------------------------------------------------------------------------------------
# Tool side: runs in the tools' Python (standard library, numpy and the tool itself).

def _tool_quantize(jobs: list[dict]) -> None:
    """llama_model_quantize per job: {src, dst, ftype, imatrix: {tensor: columns} | None,
    overrides: {regex: ggml type id} | None}."""
    import ctypes

    import llama_cpp
    import numpy as np

    for job in jobs:
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{job['ftype']}")
        keep_alive = []
        if job.get("imatrix"):
            # a uniform importance matrix, standing in for a calibration run (`llama-imatrix`)
            entries = (llama_cpp.llama_model_imatrix_data * (len(job["imatrix"]) + 1))()
            for entry, (name, columns) in zip(entries, job["imatrix"].items()):
                ones = np.ones(columns, np.float32)
                keep_alive.append(ones)
                entry.name = name.encode()
                entry.data = ones.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
                entry.size = columns
            params.imatrix = ctypes.cast(entries, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
            keep_alive.append(entries)
        if job.get("overrides"):  # `llama-quantize --tensor-type REGEX=TYPE`
            overrides = (llama_cpp.llama_model_tensor_override * (len(job["overrides"]) + 1))()
            for entry, (pattern, ggml_type) in zip(overrides, job["overrides"].items()):
                entry.pattern = pattern.encode()
                entry.type = ggml_type
            params.tt_overrides = ctypes.cast(overrides, ctypes.POINTER(llama_cpp.llama_model_tensor_override))
            keep_alive.append(overrides)
        status = llama_cpp.llama_model_quantize(job["src"].encode(), job["dst"].encode(), ctypes.byref(params))
        if status != 0:
            raise SystemExit(f"llama_model_quantize({job['ftype']}) returned {status}")


def _tool_convert(jobs: list[dict]) -> None:
    """stable-diffusion.cpp's convert per job: {src, vae, dst, type} (type as sd_type_t's name)."""
    import stable_diffusion_cpp as sd

    for job in jobs:
        sd_type = getattr(sd.GGMLType, f"SD_TYPE_{job['type'].upper()}")
        ok = sd.convert(job["src"].encode(), job.get("vae", "").encode(), job["dst"].encode(), int(sd_type), b"", True)
        if not ok:
            raise SystemExit(f"stable-diffusion.cpp convert({job['type']}) failed")


def _tool_ggml_dequantize(job: dict) -> None:
    """ggml's to_float for each tensor {offset, n_bytes, ggml_type, n_elements} of job['path'],
    written as one float32 run, tensor after tensor, to job['out']."""
    import ctypes
    import importlib.util
    import mmap

    import numpy as np

    class TypeTraits(ctypes.Structure):  # struct ggml_type_traits, ggml.h
        _fields_ = [("type_name", ctypes.c_char_p), ("blck_size", ctypes.c_int64),
                    ("blck_size_interleave", ctypes.c_int64), ("type_size", ctypes.c_size_t),
                    ("is_quantized", ctypes.c_bool), ("to_float", ctypes.c_void_p),
                    ("from_float_ref", ctypes.c_void_p)]

    # the library only: importing llama_cpp itself would cost most of this command's run time
    package = Path(importlib.util.find_spec("llama_cpp").origin).parent
    ggml = ctypes.CDLL(str(min((package / "lib").glob("*ggml-base.*"))))  # .so / .dylib / .dll
    ggml.ggml_get_type_traits.restype = ctypes.POINTER(TypeTraits)
    ggml.ggml_get_type_traits.argtypes = [ctypes.c_int]
    to_float_type = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)
    with open(job["path"], "rb") as source:
        data = np.frombuffer(mmap.mmap(source.fileno(), 0, access=mmap.ACCESS_READ), np.uint8)
    with open(job["out"], "wb") as out:
        for tensor in job["tensors"]:
            traits = ggml.ggml_get_type_traits(tensor["ggml_type"]).contents
            n = tensor["n_elements"]
            if n * traits.type_size // traits.blck_size != tensor["n_bytes"]:  # checks the struct layout too
                raise SystemExit(f"ggml type {tensor['ggml_type']} ({traits.type_name}): {tensor['n_bytes']} bytes "
                                 f"do not hold {n} elements")
            raw = np.ascontiguousarray(data[tensor["offset"]:tensor["offset"] + tensor["n_bytes"]])
            if tensor["ggml_type"] == 0:  # F32 has no to_float
                values = raw.view(np.float32)
            else:
                values = np.empty(n, np.float32)
                to_float_type(traits.to_float)(raw.ctypes.data, values.ctypes.data, n)
            out.write(values.tobytes())


_TOOL_COMMANDS = {"quantize": _tool_quantize, "convert": _tool_convert, "ggml_dequantize": _tool_ggml_dequantize}


# --------------------------------------------------------------------------------------------------
# Test side

class ToolUnavailable(RuntimeError):
    """No tools Python is configured, or it cannot import the tool (the tests skip with this text)."""


class ToolFailed(RuntimeError):
    """A tool ran and failed; the message holds the end of its log."""


@functools.cache
def _tool_version_of(tool: tuple[str, str]) -> str:
    """The tool's distribution version, checking on the way that the tools Python imports it."""
    module, distribution = tool
    python = os.environ.get(TOOLS_PYTHON_ENV)
    if not python:
        raise ToolUnavailable(
            f"{TOOLS_PYTHON_ENV} is not set: the tool-made-file tests need a Python with {distribution} "
            f"installed (e.g. {TOOLS_PYTHON_ENV}=/tmp/tools-venv/bin/python)")
    try:
        probe = subprocess.run([python, "-c", f"import {module}, importlib.metadata as m; "
                                              f"print(m.version({distribution!r}))"],
                               capture_output=True, text=True, env=_tool_env())
    except OSError as error:
        raise ToolUnavailable(f"{TOOLS_PYTHON_ENV}={python} cannot be run: {error}") from None
    if probe.returncode != 0:
        raise ToolUnavailable(f"{TOOLS_PYTHON_ENV}={python} cannot import {module} ({distribution}): "
                              f"{probe.stderr.strip()[-500:]}")
    return probe.stdout.strip()


def skip_reason(tool: tuple[str, str]) -> str | None:
    """None when the tool can run here, else why not."""
    try:
        _tool_version_of(tool)
    except ToolUnavailable as error:
        return str(error)
    return None


def _tool_env() -> dict:
    # the tools' Python must see its own site-packages only, not the test environment's
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}


def run_tool(tool: tuple[str, str], command: str, argument) -> None:
    """Run this file's `command` in the tools Python; ToolFailed with the end of its log if it fails."""
    _tool_version_of(tool)
    result = subprocess.run([os.environ[TOOLS_PYTHON_ENV], __file__, command, json.dumps(argument)],
                            capture_output=True, text=True, env=_tool_env())
    if result.returncode != 0:
        log = result.stdout + result.stderr
        raise ToolFailed(f"{tool[1]} {command} exited with {result.returncode}:\n...{log[-LOG_TAIL_CHARS:]}")


@functools.cache
def _factory_module(name: str):
    """A model factory from benchmarks/, imported by path the way comfy_inprocess does it."""
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "comfy_inprocess.py"
    spec = importlib.util.spec_from_file_location("_zimage_tool_files_inprocess", path)
    inprocess = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = inprocess
    spec.loader.exec_module(inprocess)
    return inprocess.factory_module(name)


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:DIGEST_CHARS]


def _source_digest(module_name: str) -> str:
    path = Path(__file__).resolve().parents[2] / "benchmarks" / f"{module_name}.py"
    return hashlib.sha256(path.read_bytes()).hexdigest()[:DIGEST_CHARS]


def _cached(stem: str, key: dict, make) -> Path:
    """CACHE_DIR/<stem>-<digest of key>.gguf, made by `make(partial_path)` unless present; earlier
    generations of <stem> are removed first (full-width files are gigabytes)."""
    path = CACHE_DIR / f"{stem}-{_digest({'cache': CACHE_VERSION, **key})}.gguf"
    if path.exists():
        return path
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    for old in CACHE_DIR.glob(f"{stem}-{'[0-9a-f]' * DIGEST_CHARS}.gguf"):
        old.unlink(missing_ok=True)
    partial = path.with_name(f"{path.stem}.partial-{os.getpid()}.gguf")
    try:
        make(partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


# --- llama.cpp ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LlamaQuant:
    """One `llama-quantize` run: the file type asked for and the GGML type most matrices get."""

    ftype: str  # LLAMA_FTYPE_MOSTLY_<ftype>
    main_type: str  # GGML type name
    imatrix: bool = False  # llama.cpp refuses these types without an importance matrix
    override_type: str | None = None  # every block matrix forced to this type (`--tensor-type`)

    @property
    def name(self) -> str:
        return self.override_type or self.ftype


# Every GGML type the pack reads appears as a main type; F16, F32 and the K-quants llama.cpp
# mixes in (Q6_K for token_embd / attn_v / ffn_down, ...) appear alongside.
LLAMA_QUANTS = {q.name: q for q in (
    LlamaQuant("BF16", "BF16"),
    LlamaQuant("Q4_0", "Q4_0"), LlamaQuant("Q4_1", "Q4_1"), LlamaQuant("Q5_0", "Q5_0"), LlamaQuant("Q5_1", "Q5_1"),
    LlamaQuant("Q8_0", "Q8_0"),
    LlamaQuant("Q2_K", "Q2_K"), LlamaQuant("Q3_K_M", "Q3_K"), LlamaQuant("Q4_K_M", "Q4_K"),
    LlamaQuant("Q5_K_M", "Q5_K"), LlamaQuant("Q6_K", "Q6_K"),
    LlamaQuant("IQ4_NL", "IQ4_NL"), LlamaQuant("IQ4_XS", "IQ4_XS"), LlamaQuant("IQ3_S", "IQ3_S"),
    LlamaQuant("IQ3_XXS", "IQ3_XXS", imatrix=True), LlamaQuant("IQ2_M", "IQ2_S", imatrix=True),
    LlamaQuant("IQ2_XS", "IQ2_XS", imatrix=True), LlamaQuant("IQ2_XXS", "IQ2_XXS", imatrix=True),
    LlamaQuant("IQ1_M", "IQ1_M", imatrix=True), LlamaQuant("IQ1_S", "IQ1_S", imatrix=True),
    LlamaQuant("TQ1_0", "TQ1_0"), LlamaQuant("TQ2_0", "TQ2_0"),
    LlamaQuant("Q8_0", "MXFP4", override_type="MXFP4"), LlamaQuant("Q8_0", "NVFP4", override_type="NVFP4"),
)}
# Types newer than gguf-py 0.19's classes (Q1_0 read by the pack, Q2_0 not): their tests skip where
# the installed llama-cpp-python cannot write them.
LLAMA_NEWER_QUANTS = {q.name: q for q in (LlamaQuant("Q1_0", "Q1_0"), LlamaQuant("Q2_0", "Q2_0"))}


def llama_encoder_source(params: dict) -> Path:
    """The F16 llama.cpp-style Qwen3 GGUF (with tokenizer metadata) the quantizer starts from."""
    factories = _factory_module("factories")

    def make(partial):
        from gguf import GGMLQuantizationType

        factories.write_llama_cpp_encoder_gguf(partial, ggml_type=GGMLQuantizationType.F16, with_tokenizer=True,
                                               keep_state_dict=False, **params)

    return _cached(_encoder_stem(params, "F16"), {"params": params, "factories": _source_digest("factories")}, make)


def _encoder_stem(params: dict, what: str) -> str:
    return f"qwen3-{params['hidden']}x{params['n_layers']}-{what}"


def _imatrix_columns(path: Path) -> dict[str, int]:
    """{matrix name: row length}: what a uniform importance matrix for the file needs."""
    from gguf import GGUFReader

    return {t.name: int(t.shape[0]) for t in GGUFReader(str(path)).tensors if len(t.shape) == 2}


def llama_quantized_encoder(name: str, params: dict = SMALL_QWEN3) -> tuple[Path, Path]:
    """(F16 source, the file llama.cpp's quantizer makes from it) for a LLAMA_QUANTS or
    LLAMA_NEWER_QUANTS row. A Qwen3-4B-wide source (FULL_QWEN3_4B) is ~1.4 GB and takes a
    minute or more to write and quantize."""
    from gguf import GGMLQuantizationType

    quant = LLAMA_QUANTS.get(name) or LLAMA_NEWER_QUANTS[name]
    source = llama_encoder_source(params)
    key = {"source": source.name, "quant": vars(quant), "llama_cpp": _tool_version_of(LLAMA_CPP)}

    def make(partial):
        job = dict(src=str(source), dst=str(partial), ftype=quant.ftype,
                   imatrix=_imatrix_columns(source) if quant.imatrix else None)
        if quant.override_type:
            job["overrides"] = {r"blk\..*\.weight": int(GGMLQuantizationType[quant.override_type])}
        run_tool(LLAMA_CPP, "quantize", [job])

    return source, _cached(_encoder_stem(params, quant.name), key, make)


# --- stable-diffusion.cpp ----------------------------------------------------------------------------

# Output types of sd.cpp's convert (sd_type_t names) that it can store; Q8_1 and Q8_K abort it.
SDCPP_TYPES = ("f32", "f16", "bf16", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k",
               "iq4_nl", "iq4_xs", "iq3_s", "iq3_xxs", "iq2_s", "iq2_xs", "iq2_xxs", "iq1_m", "iq1_s",
               "tq1_0", "tq2_0", "mxfp4", "nvfp4")


def _zimage_safetensors(width: int, caption_width: int, prefixed: bool, partial_dir: Path) -> tuple[Path, bool]:
    """(a float16 Z-Image safetensors, whether it is temporary): the factory's cached file with
    ComfyUI's bare names, or the same weights under `model.diffusion_model.` as in a full checkpoint."""
    import dataclasses

    import torch

    factory = _factory_module("zimage_factory")
    params = dict(n_layers=1, seed=0, dtype=torch.float16)
    if width != factory.ZIMAGE_WIDTH:
        params.update(width=width, caption_width=caption_width)
    if not prefixed:
        return factory.cached_model("zimage_safetensors", **params), False
    specs = factory.zimage_tensor_specs(1, width, caption_width)
    renamed = {SDCPP_PREFIX + spec.name: spec for spec in specs}
    path = partial_dir / f"zimage-prefixed.partial-{os.getpid()}.safetensors"
    factory.write_safetensors_streaming(path, [dataclasses.replace(s, name=n) for n, s in renamed.items()],
                                        lambda spec: factory.tensor_values(0, renamed[spec.name]), torch.float16)
    return path, True


def sdcpp_zimage(sd_type: str, *, width: int = 3840, caption_width: int = 2560, prefixed: bool = False,
                 with_vae: bool = False) -> Path:
    """A Z-Image GGUF made by stable-diffusion.cpp's convert from the factory's float16 safetensors
    (one main layer, seed 0: the weights of the integration tests' native model).

    `prefixed`: the input names its tensors `model.diffusion_model.*`, as a full checkpoint does
    (sd.cpp keeps input names as they are); `with_vae`: the factory's Flux VAE is passed as
    convert's VAE and lands in the same file.
    """
    version = _tool_version_of(SD_CPP)
    factory = _factory_module("zimage_factory")
    key = {"type": sd_type, "width": width, "caption_width": caption_width, "prefixed": prefixed, "vae": with_vae,
           "zimage_factory": _source_digest("zimage_factory"), "sd_cpp": version}
    layout = ("prefixed" if prefixed else "bare") + ("-vae" if with_vae else "")
    stem = f"zimage-{width}-sdcpp-{layout}-{sd_type}"

    def make(partial: Path):
        vae = str(factory.cached_model("flux_vae")) if with_vae else ""
        source, temporary = _zimage_safetensors(width, caption_width, prefixed, partial.parent)
        try:
            run_tool(SD_CPP, "convert", [dict(src=str(source), vae=vae, dst=str(partial), type=sd_type)])
        finally:
            if temporary:
                source.unlink(missing_ok=True)

    return _cached(stem, key, make)


# --- references ----------------------------------------------------------------------------------------

def ggml_dequantized(path: Path) -> dict:
    """{tensor name: float32 numpy array (flat)} as ggml's own to_float gives them. Tensor
    locations come from gguf-py's reader, so nothing of the pack is involved."""
    import tempfile

    import numpy as np
    from gguf import GGUFReader

    tensors = [dict(name=t.name, offset=int(t.data_offset), n_bytes=int(t.n_bytes), ggml_type=int(t.tensor_type),
                    n_elements=int(t.n_elements)) for t in GGUFReader(str(path)).tensors]
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "values.f32"
        run_tool(LLAMA_CPP, "ggml_dequantize", dict(path=str(path), tensors=tensors, out=str(out)))
        values = np.fromfile(out, np.float32)
    split = np.cumsum([t["n_elements"] for t in tensors])[:-1]
    return dict(zip((t["name"] for t in tensors), np.split(values, split)))


if __name__ == "__main__":
    _TOOL_COMMANDS[sys.argv[1]](json.loads(sys.argv[2]))
