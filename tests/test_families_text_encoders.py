"""llama.cpp text-model GGUFs -> ComfyUI names and config: name maps, config derivation and checks,
q/k un-permutation for the llama arch, detection messages. Files are written by benchmarks/factories.py."""
from __future__ import annotations

import ast
import importlib.util
import os
import sys
from pathlib import Path

import gguf
import pytest
import torch
from gguf import GGMLQuantizationType as T

from comfyui_zimage_gguf import load_gguf
from comfyui_zimage_gguf.errors import IncompatibleModelError, ModelDetectionError
from comfyui_zimage_gguf.model_families.text_encoders import (
    BLOCK_NAMES, ENCODER_ARCHS, GLOBAL_NAMES, comfy_config_kwargs, comfy_te_model_name, detect_text_encoder,
    encoder_config, hf_name, hf_names, llama_cpp_name, qk_permute_heads, unpermute_qk_rows,
)


import factories

SMALL = dict(n_layers=2, hidden=64, heads=4, kv_heads=2, head_dim=16, ffn=128, vocab=1000)


def _read(path):
    """metadata, shapes and float32 tensors (gguf-py's reference dequantization) of a written file."""
    f = load_gguf(path)
    shapes = f.shapes
    values = {
        name: torch.from_numpy(
            gguf.quants.dequantize(f.raw_tensor(name).numpy(), info.ggml_type).reshape(info.shape).copy()
        )
        for name, info in f.tensors.items()
    }
    return f.metadata, shapes, values


@pytest.fixture(scope="module", params=list(ENCODER_ARCHS))
def small_file(request, tmp_path_factory):
    arch = request.param
    path = tmp_path_factory.mktemp("te") / f"{arch}.gguf"
    written = factories.write_llama_cpp_encoder_gguf(path, arch=arch, with_output=True, **SMALL)
    return arch, written, *_read(path)


# ---------------------------------------------------------------------------------------------
# Names

@pytest.mark.parametrize("block", [0, 7, 35])
def test_every_table_name_round_trips(block):
    for cpp in list(GLOBAL_NAMES) + [f"blk.{block}.{suffix}" for suffix in BLOCK_NAMES]:
        assert llama_cpp_name(hf_name(cpp)) == cpp
        assert hf_name(llama_cpp_name(hf_name(cpp))) == hf_name(cpp)


def test_names_match_what_llama_cpp_wrote_for_each_arch(small_file):
    """The factory names tensors with gguf-py's TensorNameMap, as llama.cpp's converter does."""
    arch, written, _, shapes, _ = small_file
    mapping = hf_names(arch, shapes, written.path)
    assert sorted(mapping.values()) == sorted(written.hf_state_dict)
    assert {llama_cpp_name(hf): cpp for cpp, hf in mapping.items()} == {cpp: cpp for cpp in mapping}


def test_hf_names_drop_rope_freqs_and_refuse_foreign_tensors(small_file):
    arch, written, _, shapes, _ = small_file
    with_rope = {**shapes, "rope_freqs.weight": (8,)}
    assert "rope_freqs.weight" not in hf_names(arch, with_rope, written.path)
    with pytest.raises(ModelDetectionError, match=r"v\.blk\.0\.attn_q\.weight"):
        hf_names(arch, {**shapes, "v.blk.0.attn_q.weight": (4, 4)}, written.path)


def test_qwen3_file_with_qkv_bias_is_refused():
    shapes = {"token_embd.weight": (10, 8), "blk.0.attn_q.weight": (8, 8), "blk.0.attn_q.bias": (8,)}
    with pytest.raises(ModelDetectionError) as err:
        hf_names("qwen3", shapes, "odd.gguf")
    assert "odd.gguf" in str(err.value) and "blk.0.attn_q.bias" in str(err.value) and "'qwen3'" in str(err.value)


# ---------------------------------------------------------------------------------------------
# Tensors: a correct load reproduces the HF weights the file was made from

def test_mapped_tensors_reproduce_the_hf_weights(small_file):
    arch, written, metadata, shapes, values = small_file
    config = encoder_config(arch, metadata, shapes, written.path)
    for cpp, hf in hf_names(arch, shapes, written.path).items():
        tensor = values[cpp]
        heads = qk_permute_heads(arch, cpp, config)
        if heads:
            tensor = unpermute_qk_rows(tensor, heads)
        assert torch.equal(tensor, written.hf_state_dict[hf]), cpp


def test_only_llama_q_and_k_are_permuted(small_file):
    arch, written, metadata, shapes, values = small_file
    config = encoder_config(arch, metadata, shapes, written.path)
    permuted = {cpp for cpp in shapes if qk_permute_heads(arch, cpp, config)}
    expected = {f"blk.{i}.attn_{x}.weight" for i in range(SMALL["n_layers"]) for x in "qk"} if arch == "llama" else set()
    assert permuted == expected
    for cpp in permuted:  # the file really holds them permuted: used raw they would be wrong
        assert not torch.equal(values[cpp], written.hf_state_dict[hf_name(cpp)])


def test_unpermute_undoes_llama_cpp_rotary_interleave_by_hand():
    # 2 heads of dim 6: HF halves (0,1,2 | 3,4,5) are stored by llama.cpp as pairs (0,3), (1,4), (2,5)
    stored = torch.tensor([0, 3, 1, 4, 2, 5, 6, 9, 7, 10, 8, 11])
    assert unpermute_qk_rows(stored, 2).tolist() == list(range(12))
    assert unpermute_qk_rows(stored.numpy().reshape(12, 1), 2).ravel().tolist() == list(range(12))
    with pytest.raises(ValueError, match="5 heads"):
        unpermute_qk_rows(stored, 5)


def test_unpermuting_quantized_rows_equals_unpermuting_values(tmp_path):
    written = factories.write_llama_cpp_encoder_gguf(tmp_path / "l.gguf", arch="llama", ggml_type=T.Q4_0, **SMALL)
    f = load_gguf(written.path)
    info = f.tensors["blk.1.attn_k.weight"]
    raw_rows = f.raw_tensor(info.name).reshape(info.shape[0], -1)
    fixed = unpermute_qk_rows(raw_rows, SMALL["kv_heads"]).contiguous().numpy()
    values = gguf.quants.dequantize(fixed, T.Q4_0).reshape(info.shape)
    assert torch.equal(torch.from_numpy(values), written.hf_state_dict["model.layers.1.self_attn.k_proj.weight"])


# ---------------------------------------------------------------------------------------------
# Config

def test_config_from_written_file(small_file):
    arch, written, metadata, shapes, _ = small_file
    config = encoder_config(arch, metadata, shapes, written.path)
    assert (config.n_layers, config.hidden_size, config.n_heads, config.n_kv_heads, config.head_dim) == (2, 64, 4, 2, 16)
    assert (config.intermediate_size, config.vocab_size, config.max_position) == (128, 1000, 40960)
    assert (config.rope_theta, config.rms_eps, config.has_lm_head) == (1e6, pytest.approx(1e-6), True)
    assert config.family == ENCODER_ARCHS[arch].family


def _llm(arch, layers, hidden, heads, kv, head_dim, ffn, vocab, rope, ctx, lm_head, write_key_length=True):
    """Metadata and torch-order shapes of a whole llama.cpp LLM, written out independently of the module."""
    meta = {
        "general.architecture": arch, f"{arch}.block_count": layers, f"{arch}.embedding_length": hidden,
        f"{arch}.feed_forward_length": ffn, f"{arch}.attention.head_count": heads,
        f"{arch}.attention.head_count_kv": kv, f"{arch}.rope.freq_base": rope,
        f"{arch}.attention.layer_norm_rms_epsilon": 1e-6, f"{arch}.context_length": ctx,
    }
    if write_key_length:
        meta[f"{arch}.attention.key_length"] = head_dim
    shapes = {"token_embd.weight": (vocab, hidden), "output_norm.weight": (hidden,)}
    if lm_head:
        shapes["output.weight"] = (vocab, hidden)
    for i in range(layers):
        b = f"blk.{i}."
        shapes |= {
            b + "attn_norm.weight": (hidden,), b + "ffn_norm.weight": (hidden,),
            b + "attn_q.weight": (heads * head_dim, hidden), b + "attn_k.weight": (kv * head_dim, hidden),
            b + "attn_v.weight": (kv * head_dim, hidden), b + "attn_output.weight": (hidden, heads * head_dim),
            b + "ffn_gate.weight": (ffn, hidden), b + "ffn_up.weight": (ffn, hidden), b + "ffn_down.weight": (hidden, ffn),
        }
        if arch in ("qwen3", "qwen3vl"):
            shapes |= {b + "attn_q_norm.weight": (head_dim,), b + "attn_k_norm.weight": (head_dim,)}
        if arch in ("qwen2", "qwen2vl"):
            shapes |= {b + "attn_q.bias": (heads * head_dim,), b + "attn_k.bias": (kv * head_dim,), b + "attn_v.bias": (kv * head_dim,)}
    return meta, shapes


REAL_MODELS = {
    # name: (_llm args, ComfyUI model name)
    "Qwen3-4B-Instruct-2507": (("qwen3", 36, 2560, 32, 8, 128, 9728, 151936, 5e6, 262144, False), "qwen3_4b"),
    "Qwen3-0.6B": (("qwen3", 28, 1024, 16, 8, 128, 3072, 151936, 1e6, 40960, False), "qwen3_06b"),
    "Qwen3-8B": (("qwen3", 36, 4096, 32, 8, 128, 12288, 151936, 1e6, 40960, True), "qwen3_8b"),
    "Qwen3-VL-4B text": (("qwen3vl", 36, 2560, 32, 8, 128, 9728, 151936, 5e6, 262144, False), "qwen3_4b"),
    "Qwen2.5-VL-7B": (("qwen2vl", 28, 3584, 28, 4, 128, 18944, 152064, 1e6, 128000, True, False), "qwen25_7b"),
    "Llama-3.1-8B": (("llama", 32, 4096, 32, 8, 128, 14336, 128256, 5e5, 131072, True), "llama"),
}


@pytest.mark.parametrize("model", list(REAL_MODELS))
def test_config_of_real_model_metadata(model):
    args, comfy_name = REAL_MODELS[model]
    arch, layers, hidden, heads, kv, head_dim, ffn, vocab, rope, ctx, lm_head = args[:11]
    meta, shapes = _llm(*args)
    config = encoder_config(detect_text_encoder(meta, shapes, model), meta, shapes, model)
    assert comfy_te_model_name(config) == comfy_name
    assert comfy_config_kwargs(config) == {
        "vocab_size": vocab, "hidden_size": hidden, "intermediate_size": ffn, "num_hidden_layers": layers,
        "num_attention_heads": heads, "num_key_value_heads": kv, "max_position_embeddings": ctx,
        "rms_norm_eps": 1e-6, "rope_theta": rope, "lm_head": lm_head,
    }
    assert config.head_dim == head_dim


@pytest.mark.parametrize(
    "key, value, names",
    [
        ("qwen3.embedding_length", 2048, ["token_embd.weight", "[151936, 2560]", "[151936, 2048]"]),
        ("qwen3.attention.head_count_kv", 4, ["blk.0.attn_k.weight", "[1024, 2560]", "[512, 2560]", "= 4 x"]),
        ("qwen3.feed_forward_length", 9000, ["ffn_gate.weight", "[9728, 2560]", "= 9000"]),
        ("qwen3.attention.key_length", 64, ["attn_q.weight", "head size 64"]),
        ("qwen3.attention.head_count", 0, ["head_count = 0", "must be positive"]),
        ("qwen3.block_count", 37, ["block_count = 37", "0-35"]),
    ],
)
def test_metadata_that_contradicts_the_tensors_is_named(key, value, names):
    meta, shapes = _llm(*REAL_MODELS["Qwen3-4B-Instruct-2507"][0])
    meta[key] = value
    with pytest.raises(ModelDetectionError) as err:
        encoder_config("qwen3", meta, shapes, "/models/Qwen3-4B.gguf")
    message = str(err.value)
    assert "/models/Qwen3-4B.gguf" in message and key in message
    for fragment in names:
        assert fragment in message


def test_missing_tensor_and_missing_key_are_named():
    meta, shapes = _llm("qwen3", 2, 64, 4, 2, 16, 128, 1000, 1e6, 4096, False)
    del shapes["blk.1.attn_k_norm.weight"]
    with pytest.raises(ModelDetectionError, match=r"x\.gguf: .*lacks: blk\.1\.attn_k_norm\.weight"):
        encoder_config("qwen3", meta, shapes, "x.gguf")
    meta, shapes = _llm("qwen3", 2, 64, 4, 2, 16, 128, 1000, 1e6, 4096, False)
    del meta["qwen3.attention.layer_norm_rms_epsilon"]
    with pytest.raises(ModelDetectionError, match=r"x\.gguf: metadata key qwen3\.attention\.layer_norm_rms_epsilon is missing"):
        encoder_config("qwen3", meta, shapes, "x.gguf")


def test_declared_vocab_size_must_match_the_embedding():
    meta, shapes = _llm(*REAL_MODELS["Llama-3.1-8B"][0])
    meta["llama.vocab_size"] = 128000
    with pytest.raises(ModelDetectionError, match=r"l\.gguf: metadata llama\.vocab_size = 128000 but token_embd\.weight has 128256 rows"):
        encoder_config("llama", meta, shapes, "l.gguf")


def test_width_comfyui_has_no_model_for_is_refused_with_the_known_widths():
    meta, shapes = _llm("qwen3", 2, 1536, 12, 4, 128, 4096, 1000, 1e6, 4096, False)
    config = encoder_config("qwen3", meta, shapes, "odd.gguf")
    with pytest.raises(ModelDetectionError) as err:
        comfy_te_model_name(config)
    assert "odd.gguf" in str(err.value) and "1536" in str(err.value) and "2560 (Qwen3-4B, qwen3_4b)" in str(err.value)


def test_head_dim_comfyui_cannot_build_is_refused():
    meta, shapes = _llm("qwen3", 2, 2560, 40, 8, 64, 9728, 1000, 1e6, 4096, False)
    config = encoder_config("qwen3", meta, shapes, "hd64.gguf")
    with pytest.raises(IncompatibleModelError, match=r"hd64\.gguf: head size 64 .*Qwen3_4BConfig fixes it at 128"):
        comfy_config_kwargs(config)


@pytest.mark.skipif(not os.environ.get("COMFYUI_PATH"), reason="COMFYUI_PATH is not set")
def test_kwargs_are_fields_of_comfyuis_config_dataclasses():
    """Read comfy/text_encoders/llama.py (no import): every kwarg must be a dataclass field there."""
    source = Path(os.environ["COMFYUI_PATH"], "comfy", "text_encoders", "llama.py").read_text()
    fields = {
        node.name: {s.target.id for s in node.body if isinstance(s, ast.AnnAssign)}
        for node in ast.parse(source).body
        if isinstance(node, ast.ClassDef)
    }
    from comfyui_zimage_gguf.model_families.text_encoders import comfy_te_model

    for model, (args, _) in REAL_MODELS.items():
        meta, shapes = _llm(*args)
        config = encoder_config(args[0], meta, shapes, model)
        assert set(comfy_config_kwargs(config)) <= fields[comfy_te_model(config).comfy_config], model


# ---------------------------------------------------------------------------------------------
# Detection

def test_detects_each_arch_from_its_file(small_file):
    arch, written, metadata, shapes, _ = small_file
    assert detect_text_encoder(metadata, shapes, written.path) is ENCODER_ARCHS[arch]


@pytest.mark.parametrize(
    "metadata, names, fragments",
    [
        ({"general.architecture": "lumina2"}, ["cap_embedder.1.weight"], ["diffusion model", "'lumina2'", "Load Diffusion Model (GGUF"]),
        ({}, ["model.diffusion_model.cap_embedder.1.weight"], ["diffusion model", "model.diffusion_model.*"]),
        ({"general.architecture": "clip"}, ["v.blk.0.attn_q.weight"], ["mmproj", "LLM GGUF"]),
        ({"general.architecture": "t5"}, ["enc.blk.0.attn_q.weight"], ["'t5'", "qwen3, qwen3vl, qwen2, qwen2vl, llama", "enc.blk.0.attn_q.weight"]),
        ({}, ["foo.weight"], ["no general.architecture", "foo.weight"]),
        ({"general.architecture": "qwen3"}, ["foo.weight"], ["'qwen3'", "token_embd.weight", "found foo.weight"]),
    ],
)
def test_detection_says_what_the_file_is(metadata, names, fragments):
    with pytest.raises(ModelDetectionError) as err:
        detect_text_encoder(metadata, names, "/m/file.gguf")
    message = str(err.value)
    assert "/m/file.gguf" in message
    for fragment in fragments:
        assert fragment in message


# ---------------------------------------------------------------------------------------------
# Full width: the shapes ComfyUI's Qwen3_4B is built with. The vocabulary is cut to 8192 rows
# (ComfyUI takes vocab_size from the file's config) because writing all 151936 takes 15-30 s here.

def test_full_width_qwen3_4b_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("full") / "Qwen3-4B-shallow-Q4_0.gguf"
    written = factories.write_llama_cpp_encoder_gguf(
        path, arch="qwen3", n_layers=1, hidden=2560, heads=32, kv_heads=8, head_dim=128, ffn=9728, vocab=8192,
        ggml_type=T.Q4_0, rope_theta=5e6, keep_state_dict=False,
    )
    f = load_gguf(path)
    shapes = f.shapes
    config = encoder_config(detect_text_encoder(f.metadata, shapes, path), f.metadata, shapes, path)
    assert comfy_te_model_name(config) == "qwen3_4b"
    kwargs = comfy_config_kwargs(config)
    assert (kwargs["num_hidden_layers"], kwargs["vocab_size"], kwargs["rope_theta"]) == (1, 8192, 5e6)
    assert written.tensor_types["blk.0.ffn_down.weight"] == T.Q4_0 and written.tensor_types["blk.0.attn_norm.weight"] == T.F32
    assert f.tensors["blk.0.ffn_down.weight"].n_bytes == 2560 * 9728 // 32 * 18  # Q4_0: 18 bytes per 32 weights
