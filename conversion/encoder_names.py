"""`convert` for text encoders: a Qwen3 in HF/ComfyUI safetensors names (`model.embed_tokens.weight`,
`model.layers.N.self_attn.q_proj.weight` ...) -> a llama.cpp-style GGUF: `general.architecture =
qwen3`, `blk.N.*` names (the inverse of model_families/text_encoders.py's mapping; Qwen3's q/k rows
are not permuted, unlike llama's), the hyperparameters as `qwen3.*` metadata, llama.cpp's mix rules.

The hyperparameters come from the tensor shapes; rope base, RMS epsilon and context length from a
`config.json` beside the weights (an HF folder), else Qwen3's released values (1e6, 1e-6, 40960).
No tokenizer is written: ComfyUI tokenizes with its own Qwen tokenizer.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

QWEN3_MARKER = "model.layers.0.self_attn.q_norm.weight"
QWEN3_DEFAULTS = {"rope_theta": 1_000_000.0, "rms_norm_eps": 1e-6, "max_position_embeddings": 40960}
_LAYER = re.compile(r"model\.layers\.(\d+)\.")


@dataclass(frozen=True)
class Qwen3Shape:
    n_layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    vocab: int
    rope_theta: float
    rms_eps: float
    context_length: int


def qwen3_prefix(names) -> str | None:
    """The prefix before `model.` of a Qwen3 HF/ComfyUI state dict, None when the names are not one."""
    names = set(names)
    for name in names:
        if name.endswith(QWEN3_MARKER):
            prefix = name[:-len(QWEN3_MARKER)]
            if f"{prefix}model.embed_tokens.weight" in names:
                return prefix
    return None


def _config(source_path: Path) -> tuple[dict, str]:
    folder = source_path if source_path.is_dir() else source_path.parent
    path = folder / "config.json"
    if not path.is_file():
        return dict(QWEN3_DEFAULTS), "Qwen3 defaults"
    try:
        config = json.loads(path.read_text())
        config = config.get("text_config", config)
    except (ValueError, OSError, AttributeError):
        return dict(QWEN3_DEFAULTS), "Qwen3 defaults"
    return {k: config.get(k, v) for k, v in QWEN3_DEFAULTS.items()}, str(path)


def qwen3_shape(source_path: Path, shapes: dict[str, tuple[int, ...]], error) -> Qwen3Shape:
    """Hyperparameters from the (prefix-free) HF names' shapes; `error(message)` raises."""
    layers = {int(m.group(1)) for n in shapes if (m := _LAYER.match(n))}
    n_layers = max(layers) + 1
    if layers != set(range(n_layers)):
        error(f"layers {sorted(set(range(n_layers)) - layers)} are missing")
    vocab, hidden = shapes["model.embed_tokens.weight"]
    head_dim = shapes[QWEN3_MARKER][0]
    q_rows = shapes["model.layers.0.self_attn.q_proj.weight"][0]
    k_rows = shapes["model.layers.0.self_attn.k_proj.weight"][0]
    if q_rows % head_dim or k_rows % head_dim:
        error(f"q_proj/k_proj rows {q_rows}/{k_rows} are not whole heads of {head_dim} (q_norm's width)")
    config, _ = _config(source_path)
    return Qwen3Shape(n_layers=n_layers, hidden=hidden, heads=q_rows // head_dim, kv_heads=k_rows // head_dim,
                      head_dim=head_dim, ffn=shapes["model.layers.0.mlp.gate_proj.weight"][0], vocab=vocab,
                      rope_theta=float(config["rope_theta"]), rms_eps=float(config["rms_norm_eps"]),
                      context_length=int(config["max_position_embeddings"]))


def qwen3_tensors(source, prefix: str, tensor_type, error) -> tuple[list, Callable]:
    """(llama.cpp-named tensors, metadata writer) for a Qwen3 source; `tensor_type` builds the
    converter's SourceTensor; `error(message)` raises the converter's one-line error."""
    from ..model_families.text_encoders import llama_cpp_name

    renamed, unknown, biases = [], [], []
    for tensor in source.tensors:
        if not tensor.name.startswith(prefix):
            continue
        hf = tensor.name[len(prefix):]
        if hf.endswith(("_proj.bias",)):
            biases.append(hf)
            continue
        try:
            renamed.append((hf, tensor_type(llama_cpp_name(hf), tensor.shape, tensor.dtype, tensor.load)))
        except KeyError:
            unknown.append(hf)
    if biases:
        error(f"{', '.join(biases[:3])}: Qwen3 has no q/k/v biases (a Qwen2 model?); convert writes Qwen3 encoders")
    if unknown:
        error(f"tensors a Qwen3 text model does not have: {', '.join(unknown[:5])}")
    shape = qwen3_shape(source.path, {hf: t.shape for hf, t in renamed}, error)

    def metadata(writer) -> None:
        writer.add_name("Qwen3 text encoder")
        writer.add_context_length(shape.context_length)
        writer.add_embedding_length(shape.hidden)
        writer.add_block_count(shape.n_layers)
        writer.add_feed_forward_length(shape.ffn)
        writer.add_head_count(shape.heads)
        writer.add_head_count_kv(shape.kv_heads)
        writer.add_key_length(shape.head_dim)
        writer.add_value_length(shape.head_dim)
        writer.add_rope_freq_base(shape.rope_theta)
        writer.add_layer_norm_rms_eps(shape.rms_eps)
        writer.add_vocab_size(shape.vocab)

    return [t for _, t in renamed], metadata
