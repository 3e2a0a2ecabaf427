"""Diffusion-model detection, key normalisation and pad-token shape fixes (model_families/diffusion.py),
and the test factory's Z-Image / VAE files read back through the pack's GGUF reader.

Full-width Z-Image is tested through shape tables (a real 3840-wide file takes ~15-20 s to write
on a 2-core machine); real files are written at narrow widths.
"""
import json
import math
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as Q, quants

from comfyui_zimage_gguf import load_gguf
from comfyui_zimage_gguf.errors import ModelDetectionError
from comfyui_zimage_gguf.model_families.diffusion import (
    DIFFUSION_SIGNATURES,
    detect_diffusion_model,
    expected_shape_fixes,
    normalize_diffusion_keys,
)
from comfyui_zimage_gguf.ops import dequantize

sys.path.insert(0, str(Path(__file__).parent))
import zimage_factory as factory  # noqa: E402

SDCPP = "model.diffusion_model."


def zimage_shapes(style: str, width: int = 3840, n_layers: int = 2) -> dict[str, tuple]:
    """Stored names and shapes of a Z-Image file of the given style, without writing it."""
    shapes = {}
    for spec in factory.zimage_tensor_specs(n_layers=n_layers, width=width):
        if style == "sdcpp":
            shape = (spec.shape[-1],) if spec.kind == "pad" else spec.shape
            shapes[SDCPP + spec.name] = shape
        else:
            shapes[spec.name] = spec.shape
    return shapes


def reader_inputs(path):
    gguf_file = load_gguf(path)
    return gguf_file, gguf_file.shapes


# --- Z-Image detection -----------------------------------------------------------------------

def test_city96_zimage_detected_from_metadata_and_bare_names():
    info = detect_diffusion_model({"general.architecture": "lumina2"}, zimage_shapes("city96"))
    assert (info.family, info.style, info.prefix, info.key_format) == ("zimage", "city96", "", "comfy")
    assert (info.width, info.caption_width, info.caption_encoder) == (3840, 2560, "Qwen3-4B")
    assert info.architecture == "lumina2"
    assert info.other_tensors == 0


def test_sdcpp_zimage_detected_without_metadata():
    shapes = zimage_shapes("sdcpp")
    info = detect_diffusion_model({}, shapes)
    assert (info.family, info.style, info.prefix) == ("zimage", "sdcpp", SDCPP)
    assert info.architecture is None
    assert (info.width, info.caption_width) == (3840, 2560)
    assert info.n_tensors == len(shapes)


def test_placeholder_architecture_is_ignored_for_style():
    info = detect_diffusion_model({"general.architecture": "pig"}, zimage_shapes("sdcpp"))
    assert (info.family, info.style, info.architecture) == ("zimage", "sdcpp", "pig")


def test_width_separates_zimage_lumina2_and_unknown_nextdit():
    lumina = zimage_shapes("city96")
    lumina["cap_embedder.1.weight"] = (2304, 2304)
    info = detect_diffusion_model(None, lumina)
    assert (info.family, info.caption_width, info.caption_encoder) == ("lumina2", 2304, "Gemma-2-2B")

    narrow = zimage_shapes("city96", width=256)
    info = detect_diffusion_model(None, narrow)
    assert (info.family, info.width, info.style) == ("nextdit", 256, "bare")


def test_diffusers_named_zimage_is_left_for_comfyui_to_convert():
    shapes = {
        "cap_embedder.1.weight": (3840, 2560),
        "noise_refiner.0.attention.norm_k.weight": (128,),
        "noise_refiner.0.attention.to_k.weight": (3840, 3840),
        "all_x_embedder.2-1.weight": (3840, 64),
    }
    info = detect_diffusion_model(None, shapes)
    assert (info.family, info.key_format, info.width) == ("zimage", "diffusers", 3840)


# --- other families ----------------------------------------------------------------------------

FAMILY_CASES = {
    "flux": ({"double_blocks.0.img_attn.proj.weight": (3072, 3072), "img_in.weight": (3072, 64),
              "txt_in.weight": (3072, 4096)}, 3072, 4096),
    "chroma": ({"double_blocks.0.img_attn.proj.weight": (3072, 3072), "img_in.weight": (3072, 64),
                "distilled_guidance_layer.in_proj.weight": (5120, 64), "txt_in.weight": (3072, 4096)}, 3072, 4096),
    "flux2": ({"double_blocks.0.img_attn.proj.weight": (6144, 6144), "img_in.weight": (6144, 128),
               "double_stream_modulation_img.lin.weight": (36864, 6144), "txt_in.weight": (6144, 15360)}, 6144, 15360),
    "sd3": ({"joint_blocks.0.context_block.attn.qkv.weight": (4608, 1536), "x_embedder.proj.weight": (1536, 16, 2, 2),
             "context_embedder.weight": (1536, 4096)}, 1536, 4096),
    "qwen_image": ({"txt_norm.weight": (3584,), "img_in.weight": (3072, 64), "txt_in.weight": (3072, 3584)}, 3072, 3584),
    "wan": ({"head.modulation": (1, 2, 5120), "blocks.0.self_attn.norm_q.weight": (5120,),
             "patch_embedding.weight": (5120, 16, 1, 2, 2), "text_embedding.0.weight": (5120, 4096)}, 5120, 4096),
    "hidream": ({"caption_projection.0.linear.weight": (2560, 4096),
                 "double_stream_blocks.0.block.ff_i.shared_experts.w3.weight": (3584, 2560)}, None, None),
    "hunyuan_video": ({"txt_in.individual_token_refiner.blocks.0.norm1.weight": (3072,),
                       "img_in.proj.weight": (3072, 16, 1, 2, 2), "txt_in.input_embedder.weight": (3072, 4096)}, 3072, 4096),
    "ltxv": ({"adaln_single.emb.timestep_embedder.linear_1.bias": (2048,), "patchify_proj.weight": (2048, 128),
              "caption_projection.linear_1.weight": (2048, 4096)}, 2048, 4096),
    "pixart": ({"adaln_single.emb.timestep_embedder.linear_1.bias": (1152,), "pos_embed.proj.bias": (1152,)}, None, None),
    "cosmos": ({"blocks.0.mlp.layer1.weight": (8192, 2048), "blocks.0.adaln_modulation_cross_attn.1.weight": (256, 2048)},
               None, None),
    "aura_flow": ({"double_layers.0.attn.w1q.weight": (3072, 3072), "cond_seq_linear.weight": (3072, 2048)}, 3072, 2048),
    "sdxl": ({"input_blocks.0.0.weight": (320, 4, 3, 3), "label_emb.0.0.weight": (1280, 2816),
              "input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight": (640, 2048)}, 320, 2048),
    "sd1": ({"input_blocks.0.0.weight": (320, 4, 3, 3),
             "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 768)}, 320, 768),
    "sd2": ({"input_blocks.0.0.weight": (320, 4, 3, 3),
             "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 1024)}, 320, 1024),
}


@pytest.mark.parametrize("family", sorted(FAMILY_CASES))
def test_family_detected_from_its_signature_keys(family):
    shapes, width, caption_width = FAMILY_CASES[family]
    info = detect_diffusion_model(None, shapes)
    assert (info.family, info.width, info.caption_width) == (family, width, caption_width)


def test_family_cases_cover_every_row_with_comfy_names():
    # A new signature row must come with a case above, which also checks it is not shadowed.
    families_with_rows = {s.family for s in DIFFUSION_SIGNATURES if s.key_format == "comfy"}
    assert set(FAMILY_CASES) | {"zimage", "zimage_pixel", "lumina2", "nextdit"} == families_with_rows


def test_sdcpp_checkpoint_with_packed_vae_keeps_only_the_diffusion_model():
    shapes = zimage_shapes("sdcpp", n_layers=1)
    shapes["first_stage_model.decoder.conv_in.weight"] = (512, 16, 3, 3)
    shapes["cond_stage_model.transformer.model.embed_tokens.weight"] = (151936, 2560)
    info = detect_diffusion_model({}, shapes)
    assert (info.family, info.other_tensors) == ("zimage", 2)
    names = normalize_diffusion_keys(shapes)
    assert not any("decoder" in n or "embed_tokens" in n for n in names)


# --- not a diffusion model -----------------------------------------------------------------------

LLAMA_CPP_ENCODER = {
    "token_embd.weight": (151936, 2560),
    "blk.0.attn_q.weight": (4096, 2560),
    "blk.0.attn_k.weight": (1024, 2560),
    "output_norm.weight": (2560,),
}


def test_text_encoder_gguf_is_refused_with_a_pointer_to_the_text_encoder_loader():
    with pytest.raises(ModelDetectionError) as caught:
        detect_diffusion_model({"general.architecture": "qwen3"}, LLAMA_CPP_ENCODER, source="/m/Qwen3-4B-Q4_K_M.gguf")
    first, *details = str(caught.value).splitlines()
    assert first == ("Qwen3-4B-Q4_K_M.gguf is a text encoder: "
                     "load it with 'Load Text Encoder (GGUF, Z-Image pack)' from models/text_encoders.")
    assert len(first) <= 120
    assert details[0] == ("It is not a diffusion model. Move the file into ComfyUI/models/text_encoders: "
                          "'Load Text Encoder (GGUF, Z-Image pack)' lists only that folder.")
    assert "/m/Qwen3-4B-Q4_K_M.gguf" in details[1] and "'qwen3'" in details[1]


def test_transformers_named_text_encoder_without_metadata_is_refused():
    shapes = {"model.embed_tokens.weight": (151936, 2560), "model.layers.0.self_attn.q_proj.weight": (4096, 2560)}
    with pytest.raises(ModelDetectionError, match="text encoder .*its tensor names"):
        detect_diffusion_model(None, shapes, source="qwen.gguf")


def test_vae_is_refused_with_a_pointer_to_load_vae():
    shapes = {spec.name: spec.shape for spec in factory.flux_vae_specs()}
    with pytest.raises(ModelDetectionError, match="ae.gguf is a VAE: load it with 'Load VAE' "
                                                  "from models/vae.\nIt is not a diffusion model. Move the file into ComfyUI/models/vae"):
        detect_diffusion_model(None, shapes, source="ae.gguf")


def test_unknown_file_error_lists_names_found():
    shapes = {"foo.weight": (4, 4), "bar.bias": (4,)}
    with pytest.raises(ModelDetectionError) as caught:
        detect_diffusion_model({"general.architecture": "mystery"}, shapes, source="odd.gguf")
    message = str(caught.value)
    assert "odd.gguf" in message and "bar.bias" in message and "foo.weight" in message
    assert "'mystery'" in message and "Z-Image" in message


def test_file_without_tensors_is_refused():
    with pytest.raises(ModelDetectionError, match="empty.gguf: the file holds no tensors"):
        detect_diffusion_model({"general.architecture": "lumina2"}, {}, source="empty.gguf")


# --- names and shapes ------------------------------------------------------------------------------

@pytest.mark.parametrize("prefix", ["model.diffusion_model.", "diffusion_model.", "model.", ""])
def test_prefixes_are_stripped_and_map_back_to_stored_names(prefix):
    bare = zimage_shapes("city96", n_layers=1)
    stored = {prefix + name: shape for name, shape in bare.items()}
    names = normalize_diffusion_keys(stored)
    assert set(names) == set(bare)
    assert all(names[new] == prefix + new for new in names)
    assert detect_diffusion_model(None, stored).prefix == prefix


def test_sdcpp_pad_tokens_get_a_leading_dimension_and_nothing_else_changes():
    stored = zimage_shapes("sdcpp")
    shapes = {new: stored[old] for new, old in normalize_diffusion_keys(stored).items()}
    assert expected_shape_fixes("zimage", shapes) == {"x_pad_token": (1, 3840), "cap_pad_token": (1, 3840)}


def test_city96_pad_tokens_and_other_families_need_no_fix():
    assert expected_shape_fixes("zimage", zimage_shapes("city96")) == {}
    assert expected_shape_fixes("flux", {"x_pad_token": (3072,)}) == {}


def test_shape_fix_keeps_the_row_so_quantized_bytes_stay_valid():
    fixes = expected_shape_fixes("zimage", {"cap_pad_token": (3840,)})
    target = fixes["cap_pad_token"]
    assert target[-1] == 3840 and math.prod(target) == 3840


# --- real files from the factory ------------------------------------------------------------------

NARROW = 64


def test_city96_factory_file_reads_back_and_is_detected(tmp_path):
    path = tmp_path / "z.gguf"
    written = factory.write_zimage_gguf(path, style="city96", width=NARROW, n_layers=2,
                                        type_rule={"matrix": Q.Q8_0, "pad": Q.BF16})
    gguf_file, shapes = reader_inputs(path)
    assert gguf_file.architecture == "lumina2"
    assert {w.stored_name: (w.stored_shape, w.ggml_type) for w in written} == {
        name: (info.shape, info.ggml_type) for name, info in gguf_file.tensors.items()}
    info = detect_diffusion_model(gguf_file.metadata, shapes, source=str(path))
    assert (info.family, info.style, info.width, info.caption_width) == ("nextdit", "city96", NARROW, 2560)
    assert gguf_file.tensors["x_pad_token"].shape == (1, NARROW)
    assert gguf_file.tensors["x_pad_token"].ggml_type == Q.BF16
    assert gguf_file.tensors["layers.1.ffn_norm1.weight"].ggml_type == Q.F32
    gguf_file.close()


def test_sdcpp_factory_file_has_no_metadata_prefixed_names_and_quantized_vectors(tmp_path):
    path = tmp_path / "z.gguf"
    factory.write_zimage_gguf(path, style="sdcpp", width=NARROW)
    gguf_file, shapes = reader_inputs(path)
    assert len(gguf_file.metadata) == 0
    assert all(name.startswith(SDCPP) for name in shapes)
    pad = gguf_file.tensors[SDCPP + "cap_pad_token"]
    assert (pad.shape, pad.ggml_type) == ((NARROW,), Q.Q8_0)
    assert gguf_file.tensors[SDCPP + "layers.0.attention_norm1.weight"].ggml_type == Q.Q8_0

    info = detect_diffusion_model(gguf_file.metadata, shapes, source=str(path))
    assert (info.family, info.style, info.prefix) == ("nextdit", "sdcpp", SDCPP)
    names = normalize_diffusion_keys(shapes)
    assert set(names) == {spec.name for spec in factory.zimage_tensor_specs(1, width=NARROW)}
    gguf_file.close()


def test_factory_values_are_the_seeded_weights_up_to_quantization(tmp_path):
    path = tmp_path / "z.gguf"
    factory.write_zimage_gguf(path, style="sdcpp", width=NARROW, seed=7,
                              type_rule={"matrix": "BF16", "vector": "Q8_0", "pad": "BF16"})
    specs = {spec.name: spec for spec in factory.zimage_tensor_specs(1, width=NARROW)}
    with load_gguf(path) as gguf_file:
        for name in ("cap_embedder.1.weight", "layers.0.ffn_norm1.weight", "x_pad_token"):
            info = gguf_file.tensors[SDCPP + name]
            got = dequantize(gguf_file.raw_tensor(SDCPP + name), info.ggml_type, info.shape, torch.float32)
            want = factory.tensor_values(7, specs[name]).reshape(info.shape)
            if info.ggml_type == Q.BF16:
                assert torch.equal(got, want.to(torch.bfloat16).float()), name
            else:  # Q8_0: off by at most half a step of max|block| / 127
                assert float((got - want).abs().max()) <= float(want.abs().max()) / 127, name
    norm = factory.tensor_values(7, specs["layers.0.ffn_norm1.weight"])
    assert abs(float(norm.mean()) - 1.0) < 0.02


def test_rows_that_a_block_does_not_divide_fall_back_to_f16(tmp_path):
    path = tmp_path / "z.gguf"
    written = {w.name: w for w in factory.write_zimage_gguf(path, style="sdcpp", width=256,
                                                             type_rule={"matrix": "Q4_K", "vector": "Q4_K"})}
    assert written["layers.0.feed_forward.w1.weight"].ggml_type == Q.Q4_K
    assert written["layers.0.attention_norm1.weight"].ggml_type == Q.Q4_K  # 256 wide: fits
    assert written["layers.0.attention.q_norm.weight"].ggml_type == Q.F16  # 128 wide
    assert written["x_embedder.weight"].ggml_type == Q.F16  # rows of 64
    with load_gguf(path) as gguf_file:
        info = gguf_file.tensors[SDCPP + "layers.0.feed_forward.w1.weight"]
        values = dequantize(gguf_file.raw_tensor(info.name), info.ggml_type, info.shape, torch.float32)
    assert torch.isfinite(values).all() and 0.01 < float(values.std()) < 0.04


def test_factory_refuses_types_it_cannot_write(tmp_path):
    with pytest.raises(ValueError, match=r"cannot write IQ1_M tensors \(x_embedder.weight\)"):
        factory.write_zimage_gguf(tmp_path / "z.gguf", width=256, type_rule={"matrix": "IQ1_M"})
    assert not (tmp_path / "z.gguf").exists()


@pytest.mark.parametrize("ggml_type", sorted(factory.FP16_SCALE_OFFSETS, key=lambda t: t.name))
def test_random_weight_blocks_are_valid_and_small(ggml_type):
    blocks = factory.random_weight_blocks(ggml_type, 64, np.random.default_rng(1), std=0.02)
    assert blocks.shape == (64, GGML_QUANT_SIZES[ggml_type][1])
    values = quants.dequantize(blocks, ggml_type)
    assert np.isfinite(values).all()
    assert 0.01 < values.std() < 0.04
    assert np.abs(values).max() < 0.5


def test_safetensors_holds_the_same_weights_as_a_bf16_gguf(tmp_path):
    from safetensors import safe_open

    gguf_path, st_path = tmp_path / "z.gguf", tmp_path / "z.safetensors"
    factory.write_zimage_gguf(gguf_path, style="city96", width=NARROW, seed=3,
                              type_rule={"matrix": "BF16", "vector": "BF16", "pad": "BF16"})
    factory.write_zimage_safetensors(st_path, width=NARROW, seed=3)
    with load_gguf(gguf_path) as gguf_file, safe_open(str(st_path), "pt") as st:
        assert set(st.keys()) == set(gguf_file.tensors)
        for name, info in gguf_file.tensors.items():
            from_gguf = dequantize(gguf_file.raw_tensor(name), info.ggml_type, info.shape, torch.bfloat16)
            assert torch.equal(st.get_tensor(name), from_gguf), name


def test_streaming_safetensors_header_is_aligned_and_contiguous(tmp_path):
    from safetensors.torch import load_file

    specs = [factory.TensorSpec("a.weight", (3, 5)), factory.TensorSpec("a.bias", (3,), norm=True)]
    path = tmp_path / "small.safetensors"
    factory.write_safetensors_streaming(path, specs, lambda s: factory.tensor_values(0, s), torch.float32,
                                        metadata={"origin": "test"})
    raw = path.read_bytes()
    header_len = struct.unpack("<Q", raw[:8])[0]
    assert header_len % 8 == 0
    assert json.loads(raw[8:8 + header_len])["__metadata__"] == {"origin": "test"}
    loaded = load_file(str(path))
    for spec in specs:
        assert torch.equal(loaded[spec.name], factory.tensor_values(0, spec))


def test_flux_vae_table_matches_ae_safetensors_layout():
    specs = {s.name: s.shape for s in factory.flux_vae_specs()}
    assert len(specs) == 244
    assert sum(math.prod(s) for s in specs.values()) == 83_819_683
    assert specs["decoder.conv_in.weight"] == (512, 16, 3, 3)  # 16 latent channels
    assert specs["encoder.conv_out.weight"] == (32, 512, 3, 3)  # mean and log-variance
    assert specs["decoder.conv_out.bias"] == (3,)


def test_cached_model_writes_once_outside_the_repo(tmp_path, monkeypatch):
    monkeypatch.setenv(factory.CACHE_ENV, str(tmp_path / "cache"))
    first = factory.cached_model("zimage_gguf", width=NARROW, style="sdcpp", type_rule={"matrix": Q.Q8_0})
    stamp = first.stat().st_mtime_ns
    again = factory.cached_model("zimage_gguf", type_rule={"matrix": "Q8_0"}, style="sdcpp", width=NARROW)
    other = factory.cached_model("zimage_gguf", width=NARROW, style="city96")
    assert again == first and first.stat().st_mtime_ns == stamp
    assert other != first and first.parent == tmp_path / "cache"
    assert [p.name for p in first.parent.iterdir() if "partial" in p.name] == []
    with pytest.raises(TypeError, match="type_rule as a dict"):
        factory.cached_model("zimage_gguf", width=NARROW, type_rule=lambda name, shape: Q.F16)
