"""Test factories: real Z-Image GGUF files in both circulating layouts, a safetensors file of the
same weights, and a Flux-VAE-shaped safetensors file. Nothing here needs ComfyUI.

Weights are random but sane (matrices and biases ~N(0, 0.02), norm weights ~1), drawn per tensor
from (seed, ComfyUI name), so files of either style with one seed hold the same weights up to
quantization in every type gguf-py can quantize (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0,
TQ1_0, TQ2_0, MXFP4). K-quant and I-quant tensors are instead random valid blocks with values
~N(0, 0.02)-like (norms included). Files are written streaming: at most one tensor's data is in
memory at a time.

Z-Image layouts:
  * "city96": `general.architecture = lumina2`, ComfyUI's bare names, pad tokens [1, dim];
  * "sdcpp" (stable-diffusion.cpp): no metadata at all, names under `model.diffusion_model.`,
    pad tokens stored 1-D as [dim], 1-D tensors quantized like the matrices by default.
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Union

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGML_QUANT_VERSION, GGMLQuantizationType as Q, GGUFWriter, quants

FACTORY_VERSION = 1  # bump when generated contents change, to invalidate cached files
CACHE_ENV = "COMFYUI_ZIMAGE_GGUF_TEST_CACHE"
SDCPP_PREFIX = "model.diffusion_model."
ZIMAGE_WIDTH = 3840
ZIMAGE_CAPTION_WIDTH = 2560
ZIMAGE_REFINER_BLOCKS = 2
LATENT_CHANNELS = 16
PATCH = 2
HEAD_DIM = 128
WEIGHT_STD = 0.02
PAD_TOKEN_NAMES = ("x_pad_token", "cap_pad_token")

TypeRule = Union[Callable[[str, tuple], Q], Mapping[str, Union[Q, str]]]

DEFAULT_TYPE_RULES = {
    "city96": {"matrix": Q.Q8_0, "vector": Q.F32, "pad": Q.F32},
    "sdcpp": {"matrix": Q.Q8_0, "vector": Q.Q8_0, "pad": Q.Q8_0},
}
# Where a type's block does not divide a tensor's rows, converters store the tensor in F16.
ROW_FALLBACK_TYPE = Q.F16

# Types gguf-py cannot quantize: byte offsets of the fp16 super-scales (d, and dmin where the
# layout has one) inside each block. Every other byte of these layouts is a grid index, sign
# bits or a small integer scale, for which any value is valid; so random bytes with these fields
# set to small finite values are valid blocks of a chosen magnitude.
FP16_SCALE_OFFSETS: dict[Q, tuple[int, ...]] = {
    Q.Q2_K: (80, 82),
    Q.Q3_K: (108,),
    Q.Q4_K: (0, 2),
    Q.Q5_K: (0, 2),
    Q.Q6_K: (208,),
    Q.IQ2_XXS: (0,),
    Q.IQ2_XS: (0,),
    Q.IQ2_S: (0,),
    Q.IQ3_XXS: (0,),
    Q.IQ3_S: (0,),
    Q.IQ1_S: (0,),
    Q.IQ4_NL: (0,),
    Q.IQ4_XS: (0,),
}
QUANTIZABLE_TYPES = frozenset(
    {Q.F32, Q.F16, Q.BF16, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0, Q.TQ1_0, Q.TQ2_0, Q.MXFP4}
)
SUPPORTED_TYPES = QUANTIZABLE_TYPES | FP16_SCALE_OFFSETS.keys()


@dataclass(frozen=True)
class TensorSpec:
    name: str  # ComfyUI's name
    shape: tuple[int, ...]  # the shape ComfyUI's model declares (torch order)
    norm: bool = False  # a norm weight: values around 1 instead of around 0

    @property
    def kind(self) -> str:
        if self.name in PAD_TOKEN_NAMES:
            return "pad"
        return "vector" if len(self.shape) == 1 else "matrix"


@dataclass(frozen=True)
class WrittenTensor:
    name: str  # ComfyUI's name
    stored_name: str
    stored_shape: tuple[int, ...]  # torch order
    ggml_type: Q


def zimage_tensor_specs(n_layers: int = 1, width: int = ZIMAGE_WIDTH,
                        caption_width: int = ZIMAGE_CAPTION_WIDTH) -> list[TensorSpec]:
    """The Z-Image (NextDiT with Z-Image modulation) state dict ComfyUI builds for these sizes."""
    n_heads = max(1, width // HEAD_DIM)
    head_dim = width // n_heads
    ffn = 256 * math.ceil(int(width * 8 / 3) / 256)
    t_hidden = min(width, 1024)
    adaln_in = min(width, 256)
    patch_features = PATCH * PATCH * LATENT_CHANNELS

    def block(prefix: str, modulated: bool) -> list[TensorSpec]:
        specs = [
            TensorSpec(f"{prefix}.attention.qkv.weight", (3 * width, width)),
            TensorSpec(f"{prefix}.attention.out.weight", (width, width)),
            TensorSpec(f"{prefix}.attention.q_norm.weight", (head_dim,), norm=True),
            TensorSpec(f"{prefix}.attention.k_norm.weight", (head_dim,), norm=True),
            TensorSpec(f"{prefix}.feed_forward.w1.weight", (ffn, width)),
            TensorSpec(f"{prefix}.feed_forward.w2.weight", (width, ffn)),
            TensorSpec(f"{prefix}.feed_forward.w3.weight", (ffn, width)),
        ]
        specs += [TensorSpec(f"{prefix}.{n}.weight", (width,), norm=True)
                  for n in ("attention_norm1", "ffn_norm1", "attention_norm2", "ffn_norm2")]
        if modulated:
            specs += [TensorSpec(f"{prefix}.adaLN_modulation.0.weight", (4 * width, adaln_in)),
                      TensorSpec(f"{prefix}.adaLN_modulation.0.bias", (4 * width,))]
        return specs

    specs = [
        TensorSpec("x_pad_token", (1, width)),
        TensorSpec("cap_pad_token", (1, width)),
        TensorSpec("x_embedder.weight", (width, patch_features)),
        TensorSpec("x_embedder.bias", (width,)),
    ]
    for i in range(ZIMAGE_REFINER_BLOCKS):
        specs += block(f"noise_refiner.{i}", modulated=True)
    for i in range(ZIMAGE_REFINER_BLOCKS):
        specs += block(f"context_refiner.{i}", modulated=False)
    specs += [
        TensorSpec("t_embedder.mlp.0.weight", (t_hidden, 256)),
        TensorSpec("t_embedder.mlp.0.bias", (t_hidden,)),
        TensorSpec("t_embedder.mlp.2.weight", (256, t_hidden)),
        TensorSpec("t_embedder.mlp.2.bias", (256,)),
        TensorSpec("cap_embedder.0.weight", (caption_width,), norm=True),
        TensorSpec("cap_embedder.1.weight", (width, caption_width)),
        TensorSpec("cap_embedder.1.bias", (width,)),
    ]
    for i in range(n_layers):
        specs += block(f"layers.{i}", modulated=True)
    specs += [
        TensorSpec("final_layer.linear.weight", (patch_features, width)),
        TensorSpec("final_layer.linear.bias", (patch_features,)),
        TensorSpec("final_layer.adaLN_modulation.1.weight", (width, adaln_in)),
        TensorSpec("final_layer.adaLN_modulation.1.bias", (width,)),
    ]
    return specs


def tensor_values(seed: int, spec: TensorSpec, std: float = WEIGHT_STD) -> torch.Tensor:
    """float32 values of one tensor, a pure function of (seed, name, shape)."""
    generator = torch.Generator().manual_seed((seed << 32) ^ zlib.crc32(spec.name.encode()))
    values = torch.randn(spec.shape, generator=generator, dtype=torch.float32).mul_(std)
    return values.add_(1.0) if spec.norm else values


def _as_type(value) -> Q:
    return value if isinstance(value, Q) else Q[str(value)]


def _rule_callable(style: str, type_rule: TypeRule | None) -> Callable[[TensorSpec], Q]:
    if callable(type_rule):
        return lambda spec: _as_type(type_rule(spec.name, spec.shape))
    rules = {**DEFAULT_TYPE_RULES[style], **(type_rule or {})}
    return lambda spec: _as_type(rules.get(spec.name, rules[spec.kind]))


def _row_fits(ggml_type: Q, shape: tuple[int, ...]) -> bool:
    return shape[-1] % GGML_QUANT_SIZES[ggml_type][0] == 0


@functools.lru_cache(maxsize=None)
def _unit_scale_std(ggml_type: Q) -> float:
    """Std of values of random blocks whose fp16 scales are drawn as in `random_weight_blocks`
    with magnitude 1, measured with gguf-py's reference dequantizer."""
    blocks = _random_blocks_with_scales(ggml_type, 512, np.random.default_rng(12345), 1.0)
    return float(quants.dequantize(blocks, ggml_type).std())


def _random_blocks_with_scales(ggml_type: Q, n_blocks: int, rng: np.random.Generator, magnitude: float) -> np.ndarray:
    blocks = rng.integers(0, 256, (n_blocks, GGML_QUANT_SIZES[ggml_type][1]), dtype=np.uint8)
    for offset in FP16_SCALE_OFFSETS[ggml_type]:
        scales = rng.uniform(0.5, 1.0, n_blocks) * rng.choice((-1.0, 1.0), n_blocks) * magnitude
        blocks[:, offset:offset + 2] = scales.astype("<f2").view(np.uint8).reshape(n_blocks, 2)
    return blocks


def random_weight_blocks(ggml_type: Q, n_blocks: int, rng: np.random.Generator, std: float = WEIGHT_STD) -> np.ndarray:
    """(n_blocks, type_size) uint8 of valid blocks of a type gguf-py cannot quantize, whose
    dequantized values have roughly the given std (values scatter around 0)."""
    return _random_blocks_with_scales(ggml_type, n_blocks, rng, std / _unit_scale_std(ggml_type))


def encode_tensor(spec: TensorSpec, seed: int, ggml_type: Q, stored_shape: tuple[int, ...], index: int) -> np.ndarray:
    """What GGUF stores for one tensor: the seeded weights quantized by gguf-py, or, for types
    gguf-py cannot quantize, random blocks of the same spread around 0 (so in those types norm
    weights are not ~1 and values are not the seeded weights)."""
    if ggml_type in QUANTIZABLE_TYPES:
        return quants.quantize(tensor_values(seed, spec).reshape(stored_shape).numpy(), ggml_type)
    block_size, type_size = GGML_QUANT_SIZES[ggml_type]
    n_blocks = math.prod(stored_shape) // block_size
    blocks = random_weight_blocks(ggml_type, n_blocks, np.random.default_rng([seed, index]))
    return blocks.reshape(*stored_shape[:-1], stored_shape[-1] // block_size * type_size)


def _nbytes(ggml_type: Q, shape: tuple[int, ...]) -> int:
    block_size, type_size = GGML_QUANT_SIZES[ggml_type]
    return math.prod(shape) // block_size * type_size


def write_zimage_gguf(path, *, n_layers: int = 1, style: str = "city96", type_rule: TypeRule | None = None,
                      seed: int = 0, width: int = ZIMAGE_WIDTH,
                      caption_width: int = ZIMAGE_CAPTION_WIDTH) -> list[WrittenTensor]:
    """Write a Z-Image GGUF in the given style; returns what was stored for each tensor.

    `type_rule` is either fn(name, shape) -> GGMLQuantizationType or a dict with keys "matrix",
    "vector" (1-D tensors), "pad" (pad tokens) and/or exact ComfyUI names, values types or type
    names; missing keys take the style's defaults. A tensor whose rows the chosen type's block
    does not divide is stored as F16, as converters do.
    """
    if style not in DEFAULT_TYPE_RULES:
        raise ValueError(f"unknown style {style!r}; expected one of {sorted(DEFAULT_TYPE_RULES)}")
    choose = _rule_callable(style, type_rule)
    plan: list[tuple[TensorSpec, WrittenTensor]] = []
    for spec in zimage_tensor_specs(n_layers, width, caption_width):
        if style == "sdcpp":
            stored_name = SDCPP_PREFIX + spec.name
            stored_shape = (spec.shape[-1],) if spec.kind == "pad" else spec.shape
        else:
            stored_name, stored_shape = spec.name, spec.shape
        ggml_type = choose(spec)
        if ggml_type not in SUPPORTED_TYPES:
            raise ValueError(
                f"the test factory cannot write {ggml_type.name} tensors ({spec.name}); it writes "
                + ", ".join(sorted(t.name for t in SUPPORTED_TYPES))
            )
        if not _row_fits(ggml_type, stored_shape):
            ggml_type = ROW_FALLBACK_TYPE
        plan.append((spec, WrittenTensor(spec.name, stored_name, stored_shape, ggml_type)))

    # An empty architecture makes GGUFWriter skip `general.architecture`: sd.cpp files have no metadata.
    writer = GGUFWriter(str(path), arch="lumina2" if style == "city96" else "")
    if style == "city96":
        writer.add_quantization_version(GGML_QUANT_VERSION)
    for _, w in plan:
        writer.add_tensor_info(w.stored_name, w.stored_shape, np.dtype(np.float32),
                               _nbytes(w.ggml_type, w.stored_shape), raw_dtype=w.ggml_type)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for index, (spec, w) in enumerate(plan):
            writer.write_tensor_data(encode_tensor(spec, seed, w.ggml_type, w.stored_shape, index))
    finally:
        writer.close()
    return [w for _, w in plan]


_SAFETENSORS_DTYPES = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32"}


def write_safetensors_streaming(path, specs, values_of: Callable[[TensorSpec], torch.Tensor],
                                dtype: torch.dtype, metadata: dict[str, str] | None = None) -> None:
    """A safetensors file written one tensor at a time (the library's writer needs them all at once)."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    header: dict[str, object] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for spec in specs:
        size = math.prod(spec.shape) * itemsize
        header[spec.name] = {"dtype": _SAFETENSORS_DTYPES[dtype], "shape": list(spec.shape),
                             "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for spec in specs:
            f.write(values_of(spec).to(dtype).contiguous().view(torch.uint8).numpy().data)


def write_zimage_safetensors(path, *, n_layers: int = 1, seed: int = 0, width: int = ZIMAGE_WIDTH,
                             caption_width: int = ZIMAGE_CAPTION_WIDTH, dtype: torch.dtype = torch.bfloat16) -> None:
    """The weights `write_zimage_gguf` writes for the same seed and sizes, as a native ComfyUI
    safetensors file (bare names, pad tokens [1, dim])."""
    specs = zimage_tensor_specs(n_layers, width, caption_width)
    write_safetensors_streaming(path, specs, lambda spec: tensor_values(seed, spec), dtype)


# Flux VAE (ae.safetensors, 16 latent channels): every module's weight shape, taken once from
# ComfyUI 0.18.1's AutoencodingEngine built on the meta device. Every module also has a bias of
# shape [weight.shape[0]].
FLUX_VAE_WEIGHT_SHAPES = """
encoder.conv_in 128x3x3x3
encoder.down.0.block.0.norm1 128
encoder.down.0.block.0.conv1 128x128x3x3
encoder.down.0.block.0.norm2 128
encoder.down.0.block.0.conv2 128x128x3x3
encoder.down.0.block.1.norm1 128
encoder.down.0.block.1.conv1 128x128x3x3
encoder.down.0.block.1.norm2 128
encoder.down.0.block.1.conv2 128x128x3x3
encoder.down.0.downsample.conv 128x128x3x3
encoder.down.1.block.0.norm1 128
encoder.down.1.block.0.conv1 256x128x3x3
encoder.down.1.block.0.norm2 256
encoder.down.1.block.0.conv2 256x256x3x3
encoder.down.1.block.0.nin_shortcut 256x128x1x1
encoder.down.1.block.1.norm1 256
encoder.down.1.block.1.conv1 256x256x3x3
encoder.down.1.block.1.norm2 256
encoder.down.1.block.1.conv2 256x256x3x3
encoder.down.1.downsample.conv 256x256x3x3
encoder.down.2.block.0.norm1 256
encoder.down.2.block.0.conv1 512x256x3x3
encoder.down.2.block.0.norm2 512
encoder.down.2.block.0.conv2 512x512x3x3
encoder.down.2.block.0.nin_shortcut 512x256x1x1
encoder.down.2.block.1.norm1 512
encoder.down.2.block.1.conv1 512x512x3x3
encoder.down.2.block.1.norm2 512
encoder.down.2.block.1.conv2 512x512x3x3
encoder.down.2.downsample.conv 512x512x3x3
encoder.down.3.block.0.norm1 512
encoder.down.3.block.0.conv1 512x512x3x3
encoder.down.3.block.0.norm2 512
encoder.down.3.block.0.conv2 512x512x3x3
encoder.down.3.block.1.norm1 512
encoder.down.3.block.1.conv1 512x512x3x3
encoder.down.3.block.1.norm2 512
encoder.down.3.block.1.conv2 512x512x3x3
encoder.mid.block_1.norm1 512
encoder.mid.block_1.conv1 512x512x3x3
encoder.mid.block_1.norm2 512
encoder.mid.block_1.conv2 512x512x3x3
encoder.mid.attn_1.norm 512
encoder.mid.attn_1.q 512x512x1x1
encoder.mid.attn_1.k 512x512x1x1
encoder.mid.attn_1.v 512x512x1x1
encoder.mid.attn_1.proj_out 512x512x1x1
encoder.mid.block_2.norm1 512
encoder.mid.block_2.conv1 512x512x3x3
encoder.mid.block_2.norm2 512
encoder.mid.block_2.conv2 512x512x3x3
encoder.norm_out 512
encoder.conv_out 32x512x3x3
decoder.conv_in 512x16x3x3
decoder.mid.block_1.norm1 512
decoder.mid.block_1.conv1 512x512x3x3
decoder.mid.block_1.norm2 512
decoder.mid.block_1.conv2 512x512x3x3
decoder.mid.attn_1.norm 512
decoder.mid.attn_1.q 512x512x1x1
decoder.mid.attn_1.k 512x512x1x1
decoder.mid.attn_1.v 512x512x1x1
decoder.mid.attn_1.proj_out 512x512x1x1
decoder.mid.block_2.norm1 512
decoder.mid.block_2.conv1 512x512x3x3
decoder.mid.block_2.norm2 512
decoder.mid.block_2.conv2 512x512x3x3
decoder.up.0.block.0.norm1 256
decoder.up.0.block.0.conv1 128x256x3x3
decoder.up.0.block.0.norm2 128
decoder.up.0.block.0.conv2 128x128x3x3
decoder.up.0.block.0.nin_shortcut 128x256x1x1
decoder.up.0.block.1.norm1 128
decoder.up.0.block.1.conv1 128x128x3x3
decoder.up.0.block.1.norm2 128
decoder.up.0.block.1.conv2 128x128x3x3
decoder.up.0.block.2.norm1 128
decoder.up.0.block.2.conv1 128x128x3x3
decoder.up.0.block.2.norm2 128
decoder.up.0.block.2.conv2 128x128x3x3
decoder.up.1.block.0.norm1 512
decoder.up.1.block.0.conv1 256x512x3x3
decoder.up.1.block.0.norm2 256
decoder.up.1.block.0.conv2 256x256x3x3
decoder.up.1.block.0.nin_shortcut 256x512x1x1
decoder.up.1.block.1.norm1 256
decoder.up.1.block.1.conv1 256x256x3x3
decoder.up.1.block.1.norm2 256
decoder.up.1.block.1.conv2 256x256x3x3
decoder.up.1.block.2.norm1 256
decoder.up.1.block.2.conv1 256x256x3x3
decoder.up.1.block.2.norm2 256
decoder.up.1.block.2.conv2 256x256x3x3
decoder.up.1.upsample.conv 256x256x3x3
decoder.up.2.block.0.norm1 512
decoder.up.2.block.0.conv1 512x512x3x3
decoder.up.2.block.0.norm2 512
decoder.up.2.block.0.conv2 512x512x3x3
decoder.up.2.block.1.norm1 512
decoder.up.2.block.1.conv1 512x512x3x3
decoder.up.2.block.1.norm2 512
decoder.up.2.block.1.conv2 512x512x3x3
decoder.up.2.block.2.norm1 512
decoder.up.2.block.2.conv1 512x512x3x3
decoder.up.2.block.2.norm2 512
decoder.up.2.block.2.conv2 512x512x3x3
decoder.up.2.upsample.conv 512x512x3x3
decoder.up.3.block.0.norm1 512
decoder.up.3.block.0.conv1 512x512x3x3
decoder.up.3.block.0.norm2 512
decoder.up.3.block.0.conv2 512x512x3x3
decoder.up.3.block.1.norm1 512
decoder.up.3.block.1.conv1 512x512x3x3
decoder.up.3.block.1.norm2 512
decoder.up.3.block.1.conv2 512x512x3x3
decoder.up.3.block.2.norm1 512
decoder.up.3.block.2.conv1 512x512x3x3
decoder.up.3.block.2.norm2 512
decoder.up.3.block.2.conv2 512x512x3x3
decoder.up.3.upsample.conv 512x512x3x3
decoder.norm_out 128
decoder.conv_out 3x128x3x3
"""


def flux_vae_specs() -> list[TensorSpec]:
    specs = []
    for line in FLUX_VAE_WEIGHT_SHAPES.strip().splitlines():
        module, shape_text = line.split()
        shape = tuple(int(d) for d in shape_text.split("x"))
        is_norm = len(shape) == 1
        specs.append(TensorSpec(f"{module}.weight", shape, norm=is_norm))
        specs.append(TensorSpec(f"{module}.bias", (shape[0],)))
    return specs


def vae_values(seed: int, spec: TensorSpec) -> torch.Tensor:
    """Norm weights ~1, biases ~0, conv weights scaled by 1/sqrt(fan-in) so activations stay O(1)."""
    if spec.norm or len(spec.shape) == 1:
        return tensor_values(seed, spec)
    fan_in = math.prod(spec.shape[1:])
    return tensor_values(seed, spec, std=0.5 / math.sqrt(fan_in))


def write_flux_vae_safetensors(path, seed: int = 0, dtype: torch.dtype = torch.float32) -> None:
    """A random but finite VAE with the keys and shapes of Flux's ae.safetensors."""
    write_safetensors_streaming(path, flux_vae_specs(), lambda spec: vae_values(seed, spec), dtype)


# --- cache -------------------------------------------------------------------------------------

_WRITERS: dict[str, tuple[str, Callable]] = {
    "zimage_gguf": ("gguf", write_zimage_gguf),
    "zimage_safetensors": ("safetensors", write_zimage_safetensors),
    "flux_vae": ("safetensors", write_flux_vae_safetensors),
}


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "comfyui_zimage_gguf" / "models")


def _cache_token(value) -> object:
    if isinstance(value, Q):
        return value.name
    if isinstance(value, torch.dtype):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _cache_token(v) for k, v in sorted(value.items())}
    if callable(value):
        raise TypeError("cached_model needs parameters it can key on; pass type_rule as a dict, not a function")
    return value


def cached_model(kind: str, **params) -> Path:
    """Path of a generated file for (kind, params), written once into the cache directory
    (outside the repository; override with $COMFYUI_ZIMAGE_GGUF_TEST_CACHE)."""
    if kind not in _WRITERS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {sorted(_WRITERS)}")
    extension, writer = _WRITERS[kind]
    key = json.dumps({"kind": kind, "factory": FACTORY_VERSION, "torch": torch.__version__,
                      "params": _cache_token(params)}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    path = cache_dir() / f"{kind}-{digest}.{extension}"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.partial-{os.getpid()}")
        try:
            writer(partial, **params)
            os.replace(partial, path)  # atomic: concurrent sessions never see half a file
        finally:
            partial.unlink(missing_ok=True)
    return path
