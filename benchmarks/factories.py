"""Test-file factory: llama.cpp-style LLM text-encoder GGUFs written with gguf-py.

The file is laid out as llama.cpp's converter would write it: HF names mapped through gguf-py's
own TensorNameMap, `<arch>.*` hyperparameters through GGUFWriter's helpers, 1-D tensors kept F32,
matrices quantized with `gguf.quants.quantize`, and for the `llama` arch the q/k rows permuted
the way convert_hf_to_gguf.py does. It also returns the HF-named float32 state dict a correct
loader must reproduce (the quantization round trip applied, in HF row order), computed without
any of the pack's code so tests of the pack's mappings are not circular.

Full-width shallow files (Qwen3-4B: hidden 2560, vocab 151936) are generated and written one
tensor at a time, in row chunks, so memory stays near the largest quantized tensor.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import torch
from gguf import GGMLQuantizationType

# What llama.cpp's converter does per arch: whether the HF model has q/k/v biases, q/k norms,
# whether the converter permutes q/k rows, and the mrope split written for VL models.
_ARCHS = {
    "qwen3": dict(model_arch=gguf.MODEL_ARCH.QWEN3, qkv_bias=False, qk_norm=True, permute=False),
    "qwen3vl": dict(model_arch=gguf.MODEL_ARCH.QWEN3VL, qkv_bias=False, qk_norm=True, permute=False),
    "qwen2": dict(model_arch=gguf.MODEL_ARCH.QWEN2, qkv_bias=True, qk_norm=False, permute=False),
    "qwen2vl": dict(model_arch=gguf.MODEL_ARCH.QWEN2VL, qkv_bias=True, qk_norm=False, permute=False),
    "llama": dict(model_arch=gguf.MODEL_ARCH.LLAMA, qkv_bias=False, qk_norm=False, permute=True),
}

# what gguf.quants.quantize returns per type: float arrays for F32/F16, raw uint8 blocks otherwise
_STORAGE_DTYPES = {GGMLQuantizationType.F32: np.dtype(np.float32), GGMLQuantizationType.F16: np.dtype(np.float16)}
_ROWS_PER_CHUNK = 4096  # fixed, so a seed always gives the same values whatever the tensor size


@dataclass
class WrittenEncoder:
    path: Path
    metadata: dict  # every key/value written, as python values
    tensor_types: dict  # llama.cpp tensor name -> GGMLQuantizationType written
    hf_state_dict: dict | None  # HF name -> float32 torch tensor a correct loader yields; None if not kept


def _hf_tensors(arch: dict, n_layers, hidden, heads, kv_heads, head_dim, ffn, vocab, with_output):
    """(HF name, shape, kind) in the order HF checkpoints list them; kind picks the random init."""
    out = [("model.embed_tokens.weight", (vocab, hidden), "weight")]
    for i in range(n_layers):
        p = f"model.layers.{i}."
        out += [(p + "input_layernorm.weight", (hidden,), "norm")]
        out += [
            (p + "self_attn.q_proj.weight", (heads * head_dim, hidden), "weight"),
            (p + "self_attn.k_proj.weight", (kv_heads * head_dim, hidden), "weight"),
            (p + "self_attn.v_proj.weight", (kv_heads * head_dim, hidden), "weight"),
        ]
        if arch["qkv_bias"]:
            out += [
                (p + "self_attn.q_proj.bias", (heads * head_dim,), "bias"),
                (p + "self_attn.k_proj.bias", (kv_heads * head_dim,), "bias"),
                (p + "self_attn.v_proj.bias", (kv_heads * head_dim,), "bias"),
            ]
        if arch["qk_norm"]:
            out += [(p + "self_attn.q_norm.weight", (head_dim,), "norm"), (p + "self_attn.k_norm.weight", (head_dim,), "norm")]
        out += [
            (p + "self_attn.o_proj.weight", (hidden, heads * head_dim), "weight"),
            (p + "post_attention_layernorm.weight", (hidden,), "norm"),
            (p + "mlp.gate_proj.weight", (ffn, hidden), "weight"),
            (p + "mlp.up_proj.weight", (ffn, hidden), "weight"),
            (p + "mlp.down_proj.weight", (hidden, ffn), "weight"),
        ]
    out.append(("model.norm.weight", (hidden,), "norm"))
    if with_output:
        out.append(("lm_head.weight", (vocab, hidden), "weight"))
    return out


def _llama_cpp_permute(rows: np.ndarray, n_heads: int) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute: split rotary halves -> interleaved pairs."""
    return rows.reshape(n_heads, 2, rows.shape[0] // n_heads // 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


def _tensor_type(shape, ggml_type: GGMLQuantizationType) -> GGMLQuantizationType:
    if len(shape) == 1:
        return GGMLQuantizationType.F32  # llama.cpp never quantizes norms and biases
    block_size = gguf.GGML_QUANT_SIZES[ggml_type][0]
    return ggml_type if shape[-1] % block_size == 0 else GGMLQuantizationType.F16


def _random_rows(generator: torch.Generator, n_rows: int, shape, kind: str) -> np.ndarray:
    # torch's generator: several times faster than numpy's, which matters for full-width files
    values = torch.randn((n_rows, *shape[1:]), generator=generator)
    if kind == "norm":
        return values.mul_(0.1).add_(1.0).numpy()
    return values.mul_(0.02 if kind == "weight" else 0.1).numpy()


def _metadata(writer: gguf.GGUFWriter, arch_name, n_layers, hidden, heads, kv_heads, head_dim, ffn, vocab,
              file_type, rope_theta, rms_eps, context_length):
    writer.add_type("model")
    writer.add_name(f"factory {arch_name} {hidden}x{n_layers}")
    writer.add_context_length(context_length)
    writer.add_embedding_length(hidden)
    writer.add_block_count(n_layers)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(rope_theta)
    writer.add_layer_norm_rms_eps(rms_eps)
    if arch_name in ("qwen3", "qwen3vl"):  # Qwen3 configs carry head_dim; the converter writes it
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    if arch_name == "llama":
        writer.add_vocab_size(vocab)
        writer.add_rope_dimension_count(head_dim)
    if arch_name == "qwen2vl":  # mrope sections, [16, 24, 24, 0] at head_dim 128
        wide = 3 * head_dim // 16
        writer.add_rope_dimension_sections([head_dim // 2 - 2 * wide, wide, wide, 0])
    if arch_name == "qwen3vl":  # [24, 20, 20, 0] at head_dim 128
        wide = 5 * head_dim // 32
        writer.add_rope_dimension_sections([head_dim // 2 - 2 * wide, wide, wide, 0])
        writer.add_num_deepstack_layers(3)
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _tokenizer(writer: gguf.GGUFWriter, arch_name, vocab):
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("llama-bpe" if arch_name == "llama" else "qwen2")
    writer.add_token_list([f"tok{i}" for i in range(vocab)])
    writer.add_token_types([int(gguf.TokenType.NORMAL)] * vocab)
    writer.add_token_merges(["t o", "to k"])
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(vocab - 1)
    writer.add_pad_token_id(vocab - 1)


def _file_type(ggml_type: GGMLQuantizationType) -> gguf.LlamaFileType:
    if ggml_type == GGMLQuantizationType.F32:
        return gguf.LlamaFileType.ALL_F32
    members = gguf.LlamaFileType.__members__
    # K-quant files are named by their mix (Q4_K -> Q4_K_M), as llama.cpp writes them
    return members.get(f"MOSTLY_{ggml_type.name}") or members[f"MOSTLY_{ggml_type.name}_M"]


def write_llama_cpp_encoder_gguf(
    path,
    arch: str = "qwen3",
    n_layers: int = 2,
    hidden: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
    head_dim: int = 16,
    ffn: int = 128,
    vocab: int = 1000,
    ggml_type: GGMLQuantizationType = GGMLQuantizationType.Q8_0,
    with_tokenizer: bool = False,
    with_output: bool = False,
    seed: int = 0,
    permute_qk_for_llama: bool = True,
    keep_state_dict: bool = True,
    rope_theta: float = 1_000_000.0,
    rms_eps: float = 1e-6,
    context_length: int = 40960,
) -> WrittenEncoder:
    """Write a llama.cpp text-model GGUF and return what was written (see the module docstring).

    `ggml_type` applies to every matrix whose rows fit its block size (else F16) and must be a
    type gguf-py can quantize (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, ...).
    `permute_qk_for_llama=False` writes a llama file with q/k in HF order, as a broken
    converter would. Set `keep_state_dict=False` for full-width files to keep memory low.
    """
    spec = _ARCHS[arch]
    ggml_type = GGMLQuantizationType(ggml_type)
    path = Path(path)
    generator = torch.Generator().manual_seed(seed)
    name_map = gguf.get_tensor_name_map(spec["model_arch"], n_layers)
    plan = []
    for hf, shape, kind in _hf_tensors(spec, n_layers, hidden, heads, kv_heads, head_dim, ffn, vocab, with_output):
        cpp = name_map.get_name(hf, try_suffixes=(".weight", ".bias"))
        heads_permuted = None
        if spec["permute"] and permute_qk_for_llama:
            heads_permuted = {"self_attn.q_proj": heads, "self_attn.k_proj": kv_heads}.get(hf.split(".", 3)[-1].rsplit(".", 1)[0])
        plan.append((hf, cpp, shape, kind, _tensor_type(shape, ggml_type), heads_permuted))

    writer = gguf.GGUFWriter(path, arch)
    _metadata(writer, arch, n_layers, hidden, heads, kv_heads, head_dim, ffn, vocab, _file_type(ggml_type),
              rope_theta, rms_eps, context_length)
    if with_tokenizer:
        _tokenizer(writer, arch, vocab)
    for _, cpp, shape, _, qtype, _ in plan:
        byte_shape = gguf.quant_shape_to_byte_shape(shape, qtype)
        dtype = _STORAGE_DTYPES.get(qtype, np.uint8)
        writer.add_tensor_info(cpp, byte_shape if dtype == np.uint8 else shape, dtype, int(np.prod(byte_shape)), qtype)
    metadata = {key: _plain(value.value) for key, value in writer.kv_data[0].items()}

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    hf_state_dict = {} if keep_state_dict else None
    for hf, _, shape, kind, qtype, heads_permuted in plan:
        stored, expected = _generate(generator, shape, kind, qtype, heads_permuted, keep_state_dict)
        writer.write_tensor_data(stored)
        if keep_state_dict:
            hf_state_dict[hf] = torch.from_numpy(expected)
    writer.close()
    return WrittenEncoder(path, metadata, {cpp: qtype for _, cpp, _, _, qtype, _ in plan}, hf_state_dict)


def _quantize(rows: np.ndarray, qtype) -> np.ndarray:
    """gguf-py's quantizer where it has the type; the pack's torch quantizers (ggml's reference bytes)
    for the K- and IQ4 types gguf-py cannot write."""
    try:
        return gguf.quants.quantize(rows, qtype)
    except NotImplementedError:
        import torch

        from comfyui_zimage_gguf.ops import quantize

        return quantize(torch.from_numpy(np.ascontiguousarray(rows, np.float32)), qtype).numpy()


def _generate(generator, shape, kind, qtype, heads_permuted, keep):
    """The bytes to store (llama.cpp row order) and, if `keep`, the dequantized values in HF row order."""
    n_rows = shape[0]
    stored = None
    expected = np.empty(shape, np.float32) if keep else None
    for start in range(0, n_rows, _ROWS_PER_CHUNK):
        rows = _random_rows(generator, min(_ROWS_PER_CHUNK, n_rows - start), shape, kind)
        if heads_permuted:
            # q/k tensors are far below one chunk, so the permutation sees whole heads
            assert len(rows) == n_rows
            quantized = _quantize(_llama_cpp_permute(rows, heads_permuted), qtype)
        else:
            quantized = _quantize(rows, qtype)
        if stored is None:
            stored = np.empty((n_rows, *quantized.shape[1:]), quantized.dtype)
        stored[start:start + len(rows)] = quantized
        if keep:
            # blocks never straddle rows, so quantizing HF-order rows gives the same values, HF-ordered
            hf_order = _quantize(rows, qtype) if heads_permuted else quantized
            expected[start:start + len(rows)] = gguf.quants.dequantize(hf_order, qtype).reshape(rows.shape)
    return stored, expected


def _plain(value):
    return int(value) if isinstance(value, enum.IntEnum) else value
