"""`convert` for Qwen3 text encoders: HF/ComfyUI safetensors -> llama.cpp-style GGUF (`qwen3` arch,
`blk.N.*`, hyperparameters in metadata) that the pack's text-encoder path reads back.

The source is the factory's Q8_0 Qwen3 GGUF's weights as an HF-named float32 safetensors (its
`hf_state_dict`: the Q8_0 values, dequantized), so converting it to Q8_0 must give the factory's
bytes back: Q8_0 of Q8_0-representable rows is exact.
"""
import json

import numpy as np
import pytest
import safetensors.torch
import torch
from gguf import GGMLQuantizationType as T, LlamaFileType

import factories

from comfyui_zimage_gguf.cli.convert import convert
from comfyui_zimage_gguf.cli.main import main
from comfyui_zimage_gguf.model_families.text_encoders import detect_text_encoder, encoder_config, hf_names
from comfyui_zimage_gguf.ops import dequantize
from comfyui_zimage_gguf.ops.ggml.quant_rules import plan_types
from comfyui_zimage_gguf.ops.gguf_file.reader import load_gguf

SHAPE = dict(n_layers=3, hidden=256, heads=4, kv_heads=2, head_dim=64, ffn=512, vocab=1000)


@pytest.fixture
def qwen3_files(tmp_path):
    written = factories.write_llama_cpp_encoder_gguf(tmp_path / "reference.gguf", arch="qwen3", seed=3,
                                                     rope_theta=5e5, rms_eps=1e-5, context_length=8192, **SHAPE)
    src = tmp_path / "hf" / "model.safetensors"
    src.parent.mkdir()
    safetensors.torch.save_file({n: v.float().contiguous() for n, v in written.hf_state_dict.items()}, str(src))
    return written, src


def read(path):
    gguf_file = load_gguf(path)
    try:
        tensors = {n: (i.ggml_type, np.asarray(gguf_file.raw_tensor(n)).tobytes()) for n, i in gguf_file.tensors.items()}
        return dict(gguf_file.metadata), dict(gguf_file.shapes), tensors, gguf_file
    finally:
        gguf_file.close()


def test_qwen3_safetensors_becomes_the_llama_cpp_file(qwen3_files, tmp_path):
    written, src = qwen3_files
    (src.parent / "config.json").write_text(json.dumps(
        {"architectures": ["Qwen3ForCausalLM"], "rope_theta": 5e5, "rms_norm_eps": 1e-5, "max_position_embeddings": 8192}))
    out = convert(src, tmp_path / "qwen3-Q8_0.gguf", "Q8_0", progress=False)
    metadata, shapes, tensors, _ = read(out)
    ref_metadata, ref_shapes, reference, _ = read(written.path)
    assert metadata["general.architecture"] == "qwen3"
    assert metadata["general.file_type"] == LlamaFileType.MOSTLY_Q8_0
    # the pack's text-encoder path reads it: detection, every hyperparameter, the name mapping
    arch = detect_text_encoder(metadata, shapes, str(out))
    assert arch.arch == "qwen3"
    config = encoder_config(arch, metadata, shapes, str(out))
    assert config == encoder_config(arch, ref_metadata, ref_shapes, str(written.path))
    assert (config.n_layers, config.hidden_size, config.n_heads, config.n_kv_heads, config.head_dim,
            config.intermediate_size, config.vocab_size) == (3, 256, 4, 2, 64, 512, 1000)
    assert (config.rope_theta, config.max_position) == (5e5, 8192) and config.rms_eps == pytest.approx(1e-5)
    assert set(hf_names(arch, shapes, str(out)).values()) == set(written.hf_state_dict)
    # the very bytes llama.cpp's naming + gguf-py's Q8_0 gave the factory's file
    assert tensors == reference


def test_qwen3_q4_k_m_follows_llama_cpp_mix_and_round_trips(qwen3_files, tmp_path):
    written, src = qwen3_files
    assert main(["convert", str(src), str(tmp_path / "qwen3-Q4_K_M.gguf"), "--type", "Q4_K_M", "--quiet"]) == 0
    metadata, shapes, tensors, _ = read(tmp_path / "qwen3-Q4_K_M.gguf")
    # no config.json: Qwen3's released rope base / epsilon / context
    assert metadata["qwen3.rope.freq_base"] == 1e6 and metadata["qwen3.context_length"] == 40960
    expected = plan_types({n: (tuple(s), torch.float32) for n, s in shapes.items()}, "Q4_K_M", "qwen3")
    assert {n: t for n, (t, _) in tensors.items()} == expected
    assert tensors["token_embd.weight"][0] == T.Q6_K and tensors["blk.1.attn_q.weight"][0] == T.Q4_K
    # llama.cpp's use_more_bits at 3 layers: layer 2 only (i >= 7n/8, (i - n/8) % 3 == 2)
    assert [tensors[f"blk.{i}.attn_v.weight"][0] for i in range(3)] == [T.Q4_K, T.Q4_K, T.Q6_K]
    assert tensors["blk.0.attn_norm.weight"][0] == T.F32
    gguf_file = load_gguf(tmp_path / "qwen3-Q4_K_M.gguf")
    try:
        names = hf_names("qwen3", gguf_file.shapes, "q4")
        for cpp, hf in names.items():
            info = gguf_file.tensors[cpp]
            got = dequantize(gguf_file.raw_tensor(cpp), info.ggml_type, info.shape, torch.float32)
            source = written.hf_state_dict[hf].float()
            error = float(((got - source) ** 2).sum() / (source ** 2).sum())
            assert error < (1e-12 if info.ggml_type == T.F32 else 0.01), (cpp, info.ggml_type.name, error)
    finally:
        gguf_file.close()


def test_qwen2_style_biases_are_refused(qwen3_files, tmp_path, capsys):
    written, src = qwen3_files
    state = {n: v.float() for n, v in written.hf_state_dict.items()}
    state["model.layers.0.self_attn.q_proj.bias"] = torch.zeros(256)
    bad = tmp_path / "biased.safetensors"
    safetensors.torch.save_file(state, str(bad))
    assert main(["convert", str(bad), str(tmp_path / "o.gguf"), "--quiet"]) == 1
    assert capsys.readouterr().err.strip() == (
        "error: biased.safetensors: model.layers.0.self_attn.q_proj.bias: Qwen3 has no q/k/v biases (a Qwen2 "
        "model?); convert writes Qwen3 encoders")
    assert list(tmp_path.glob("o.gguf*")) == []
