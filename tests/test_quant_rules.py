"""Per-tensor type rules (ops.ggml.quant_rules) on a full-width Z-Image and a Qwen3-4B-shaped encoder.

The expected types are the rows of docs/CONVERTING.md's tables, written out per tensor kind.
"""
import gguf
import pytest
import torch
from gguf import GGMLQuantizationType as T

import factories, zimage_factory

from comfyui_zimage_gguf.ops.ggml.quant_rules import MIXES, ggml_dims, plan_types, use_more_bits

ZIMAGE = {s.name: (s.shape, torch.bfloat16) for s in zimage_factory.zimage_tensor_specs(n_layers=30)}
QWEN3_LAYERS = 36


def qwen3_4b_tensors():
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN3, QWEN3_LAYERS)
    hf = factories._hf_tensors(factories._ARCHS["qwen3"], QWEN3_LAYERS, 2560, 32, 8, 128, 9728, 151936, False)
    return {name_map.get_name(n, try_suffixes=(".weight", ".bias")): (shape, torch.bfloat16) for n, shape, _ in hf}


def zimage_kind(name: str) -> str:
    if any(name.startswith(p) for p in ("t_embedder.", "x_embedder.", "final_layer.", "cap_embedder.",
                                        "context_refiner.", "noise_refiner.")) or name.endswith("pad_token"):
        return "kept"
    for part in ("attention.qkv", "feed_forward.w2"):
        if part in name:
            return part
    return "layer matrix"


# mix -> {kind: type} for a 2-D layer tensor; "kept" 2-D tensors stay BF16 (the source dtype)
ZIMAGE_TABLE = {
    "Q8_0": {"attention.qkv": T.Q8_0, "feed_forward.w2": T.Q8_0, "layer matrix": T.Q8_0},
    "Q6_K": {"attention.qkv": T.Q6_K, "feed_forward.w2": T.Q6_K, "layer matrix": T.Q6_K},
    "Q5_K_M": {"attention.qkv": T.Q6_K, "feed_forward.w2": T.Q6_K, "layer matrix": T.Q5_K},
    "Q5_K_S": {"attention.qkv": T.Q5_K, "feed_forward.w2": T.Q5_K, "layer matrix": T.Q5_K},
    "Q4_K_M": {"attention.qkv": T.Q5_K, "feed_forward.w2": T.Q6_K, "layer matrix": T.Q4_K},
    "Q4_K_S": {"attention.qkv": T.Q4_K, "feed_forward.w2": T.Q5_K, "layer matrix": T.Q4_K},
    "Q4_0": {"attention.qkv": T.Q4_0, "feed_forward.w2": T.Q4_1, "layer matrix": T.Q4_0},
    "Q5_0": {"attention.qkv": T.Q5_0, "feed_forward.w2": T.Q5_1, "layer matrix": T.Q5_0},
    "Q3_K_L": {"attention.qkv": T.Q4_K, "feed_forward.w2": T.Q5_K, "layer matrix": T.Q3_K},
    "Q3_K_M": {"attention.qkv": T.Q4_K, "feed_forward.w2": T.Q4_K, "layer matrix": T.Q3_K},
    "Q3_K_S": {"attention.qkv": T.Q3_K, "feed_forward.w2": T.Q3_K, "layer matrix": T.Q3_K},
    "Q2_K": {"attention.qkv": T.Q2_K, "feed_forward.w2": T.Q2_K, "layer matrix": T.Q2_K},
}


@pytest.mark.parametrize("mix", list(ZIMAGE_TABLE))
def test_zimage_types_follow_city96(mix):
    plan = plan_types(ZIMAGE, mix, "lumina2")
    for name, (shape, _) in ZIMAGE.items():
        kind = zimage_kind(name)
        if len(shape) == 1 or name.endswith("pad_token"):  # pad tokens: F32, city96's loader needs it
            expected = T.F32
        elif kind == "kept":
            expected = T.BF16
        else:
            expected = ZIMAGE_TABLE[mix][kind]
        assert plan[name] == expected, (name, plan[name].name, expected.name)


def test_zimage_bf16_mix_keeps_vectors_in_f32():
    plan = plan_types(ZIMAGE, "BF16", "lumina2")
    assert plan["layers.0.feed_forward.w2.weight"] == T.BF16 and plan["layers.0.ffn_norm1.weight"] == T.F32


@pytest.mark.parametrize("mix", ["Q4_K_M", "BF16"])
def test_zimage_pad_tokens_are_never_bf16(mix):
    # [1, 3840] nn.Parameters: BF16 would be city96's loader's 7680-byte rows; F16 sources stay F16
    assert plan_types(ZIMAGE, mix, "lumina2")["x_pad_token"] == T.F32
    f16 = {name: (shape, torch.float16) for name, (shape, _) in ZIMAGE.items()}
    assert plan_types(f16, mix, "lumina2")["cap_pad_token"] == (T.F16 if mix == "Q4_K_M" else T.F32)


def test_rows_that_are_not_whole_blocks_fall_back_to_f16():
    plan = plan_types({"layers.0.attention.out.weight": ((64, 320), torch.bfloat16)}, "Q4_K_M", "lumina2")
    assert plan["layers.0.attention.out.weight"] == T.F16


def test_ggml_dims_ignores_trailing_ones():
    assert ggml_dims((1, 3840)) == 1 and ggml_dims((3840, 1)) == 2 and ggml_dims((1, 1, 5, 4)) == 2


def test_qwen3_4b_q4_k_m_follows_llama_cpp():
    tensors = qwen3_4b_tensors()
    plan = plan_types(tensors, "Q4_K_M", "qwen3")
    assert plan["token_embd.weight"] == T.Q6_K  # tied output
    assert plan["output_norm.weight"] == T.F32 and plan["blk.0.attn_q_norm.weight"] == T.F32
    for i in range(QWEN3_LAYERS):
        bumped = T.Q6_K if use_more_bits(i, QWEN3_LAYERS) else T.Q4_K
        assert plan[f"blk.{i}.attn_v.weight"] == bumped
        assert plan[f"blk.{i}.ffn_down.weight"] == bumped
        for other in ("attn_q", "attn_k", "attn_output", "ffn_gate", "ffn_up"):
            assert plan[f"blk.{i}.{other}.weight"] == T.Q4_K
    bumped_layers = [i for i in range(QWEN3_LAYERS) if plan[f"blk.{i}.attn_v.weight"] == T.Q6_K]
    assert bumped_layers == [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 30, 31, 32, 33, 34, 35]


def test_qwen3_4b_other_mixes():
    tensors = qwen3_4b_tensors()
    q3m = plan_types(tensors, "Q3_K_M", "qwen3")
    assert [q3m[f"blk.{i}.attn_v.weight"] for i in (0, 1, 2)] == [T.Q5_K, T.Q5_K, T.Q4_K]
    assert [q3m[f"blk.{i}.ffn_down.weight"] for i in (0, 1, 2, 3)] == [T.Q5_K, T.Q5_K, T.Q4_K, T.Q4_K]
    assert q3m["blk.5.attn_output.weight"] == T.Q4_K and q3m["blk.5.attn_q.weight"] == T.Q3_K
    q8 = plan_types(tensors, "Q8_0", "qwen3")
    assert set(q8[n] for n, (s, _) in tensors.items() if len(s) == 2) == {T.Q8_0}
    q4s = plan_types(tensors, "Q4_K_S", "qwen3")
    assert [q4s[f"blk.{i}.attn_v.weight"] for i in (3, 4)] == [T.Q5_K, T.Q4_K]
    assert [q4s[f"blk.{i}.ffn_down.weight"] for i in (3, 4, 5)] == [T.Q5_K, T.Q4_K, T.Q4_K]


def test_every_mix_names_a_file_type():
    assert MIXES["Q4_K_M"].file_type == gguf.LlamaFileType.MOSTLY_Q4_K_M and MIXES["Q4_K_M"].base == T.Q4_K
