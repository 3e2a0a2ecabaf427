"""`convert` inputs beyond plain ComfyUI safetensors: ComfyUI's scaled fp8 checkpoints (both naming
generations) and diffusers-format Z-Image transformer folders. Narrow (width 256) models built from
the test factory's values."""
import json

import numpy as np
import pytest
import safetensors.torch
import torch
from gguf import GGMLQuantizationType as T

import zimage_factory as factory

from comfyui_zimage_gguf.cli.convert import ConvertError, convert
from comfyui_zimage_gguf.cli.main import main
from comfyui_zimage_gguf.ops import quantize
from comfyui_zimage_gguf.ops.ggml.quant_rules import plan_types
from comfyui_zimage_gguf.ops.gguf_file.reader import load_gguf

NARROW = dict(width=256, caption_width=256)
FP8_MAX = 448.0


def comfy_values() -> dict[str, torch.Tensor]:
    return {s.name: factory.tensor_values(0, s) for s in factory.zimage_tensor_specs(1, **NARROW)}


def stored(path) -> dict[str, tuple[T, bytes]]:
    gguf_file = load_gguf(path)
    try:
        return {name: (info.ggml_type, bytes(np.asarray(gguf_file.raw_tensor(name)).tobytes()))
                for name, info in gguf_file.tensors.items()}
    finally:
        gguf_file.close()


def expected_bytes(value: torch.Tensor, ggml_type: T) -> bytes:
    if ggml_type == T.BF16:
        return value.to(torch.bfloat16).view(torch.int16).numpy().tobytes()
    if ggml_type == T.F32:
        return value.to(torch.float32).numpy().tobytes()
    return quantize(value.reshape(-1, value.shape[-1]), ggml_type).numpy().tobytes()


# --- scaled fp8 ---------------------------------------------------------------------------------


def fp8_checkpoint(values, style: str, per_row: bool = False):
    """Every 2-D weight float8_e4m3fn with a float32 scale (per tensor, or per row); returns the file's
    tensors and the weights ComfyUI computes with (float(weight) * scale)."""
    tensors, dequantized = {}, {}
    for name, value in values.items():
        if value.dim() != 2 or not name.endswith(".weight"):
            tensors[name] = value.to(torch.bfloat16)
            dequantized[name] = tensors[name].float()
            continue
        layer = name[:-len(".weight")]
        amax = value.abs().amax(dim=1, keepdim=True) if per_row else value.abs().max()
        scale = (amax / FP8_MAX).float()
        weight = (value / scale).to(torch.float8_e4m3fn)
        tensors[name] = weight
        dequantized[name] = weight.float() * scale
        if style == "scale_weight":  # older ComfyUI "scaled_fp8" files
            tensors[f"{layer}.scale_weight"] = scale.reshape(-1) if per_row else scale.reshape(())
            tensors[f"{layer}.scale_input"] = torch.tensor(1.0)
        else:  # current: weight_scale + comfy_quant JSON
            tensors[f"{layer}.weight_scale"] = scale.reshape(-1) if per_row else scale.reshape(())
            tensors[f"{layer}.comfy_quant"] = torch.tensor(list(json.dumps({"format": "float8_e4m3fn"}).encode()),
                                                           dtype=torch.uint8)
    if style == "scale_weight":
        tensors["scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    return tensors, dequantized


@pytest.mark.parametrize("style,per_row", [("scale_weight", False), ("weight_scale", False), ("weight_scale", True)])
def test_scaled_fp8_checkpoint_is_converted_with_its_scales_applied(tmp_path, style, per_row):
    values = comfy_values()
    tensors, dequantized = fp8_checkpoint(values, style, per_row)
    src = tmp_path / "z_fp8_scaled.safetensors"
    safetensors.torch.save_file({f"model.diffusion_model.{n}": v for n, v in tensors.items()}, str(src))
    warnings = []
    out = convert(src, tmp_path / "z.gguf", "Q4_K_M", progress=False, warn=warnings.append)
    assert len(warnings) == 1 and "already quantized" in warnings[0]
    written = stored(out)
    assert set(written) == set(values)  # scales, input scales, markers and comfy_quant are not model tensors
    # fp8 weights are planned as the BF16 weights they were made from: same types as the BF16 source
    assert {n: t for n, (t, _) in written.items()} == plan_types(
        {n: (tuple(v.shape), torch.bfloat16) for n, v in values.items()}, "Q4_K_M", "lumina2")
    assert written["layers.0.feed_forward.w1.weight"][0] == T.Q4_K
    for name, (ggml_type, data) in written.items():
        assert data == expected_bytes(dequantized[name], ggml_type), (name, ggml_type.name)
    # and the scales matter: without them the weights are ~1/scale too large
    unscaled = tensors["layers.0.feed_forward.w1.weight"].float()
    assert written["layers.0.feed_forward.w1.weight"][1] != expected_bytes(unscaled, T.Q4_K)


def test_unscaled_fp8_weights_are_read_as_they_are(tmp_path):
    values = comfy_values()
    tensors = {n: (v.to(torch.float8_e5m2) if v.dim() == 2 else v.to(torch.bfloat16)) for n, v in values.items()}
    src = tmp_path / "z_fp8_e5m2.safetensors"
    safetensors.torch.save_file(tensors, str(src))
    written = stored(convert(src, tmp_path / "z.gguf", "Q8_0", progress=False))
    name = "layers.0.attention.out.weight"
    assert written[name] == (T.Q8_0, expected_bytes(tensors[name].float(), T.Q8_0))


def test_other_comfy_quant_formats_are_refused(tmp_path, capsys):
    values = comfy_values()
    tensors, _ = fp8_checkpoint(values, "weight_scale")
    tensors["layers.0.attention.out.comfy_quant"] = torch.tensor(list(b'{"format": "nvfp4"}'), dtype=torch.uint8)
    src = tmp_path / "z_nvfp4.safetensors"
    safetensors.torch.save_file(tensors, str(src))
    assert main(["convert", str(src), str(tmp_path / "o.gguf"), "--quiet"]) == 1
    assert capsys.readouterr().err.strip() == (
        "error: z_nvfp4.safetensors: layer layers.0.attention.out is stored as nvfp4; convert reads ComfyUI's "
        "scaled fp8 (float8_e4m3fn, float8_e5m2), not nvfp4 checkpoints")
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix in (".gguf", ".partial")) == []


def test_fp8_weight_with_comfy_quant_but_no_scale_is_refused(tmp_path):
    values = comfy_values()
    tensors, _ = fp8_checkpoint(values, "weight_scale")
    del tensors["layers.0.attention.out.weight_scale"]
    src = tmp_path / "z_broken.safetensors"
    safetensors.torch.save_file(tensors, str(src))
    with pytest.raises(ConvertError, match=r"^z_broken.safetensors: layers.0.attention.out.weight is float8_e4m3fn "
                                           r"but the file has no layers.0.attention.out.weight_scale"):
        convert(src, tmp_path / "o.gguf", "Q8_0", progress=False)
    assert list(tmp_path.glob("o.gguf*")) == []


# --- diffusers folders --------------------------------------------------------------------------

BLOCK_TO_DIFFUSERS = {
    "attention.q_norm.weight": "attention.norm_q.weight",
    "attention.k_norm.weight": "attention.norm_k.weight",
    "attention.out.weight": "attention.to_out.0.weight",
}


def diffusers_state_dict(values, width=256) -> dict[str, torch.Tensor]:
    """The same model under diffusers' ZImageTransformer2DModel names (written independently of the
    converter's table: qkv split in three, renamed block parts, "2-1" embedder and final layer)."""
    out = {}
    for name, value in values.items():
        parts = name.split(".")
        if parts[0] in ("layers", "noise_refiner", "context_refiner"):
            block, rest = ".".join(parts[:2]), ".".join(parts[2:])
            if rest == "attention.qkv.weight":
                for letter, chunk in zip("qkv", value.split(width, dim=0)):
                    out[f"{block}.attention.to_{letter}.weight"] = chunk.clone()
                continue
            out[f"{block}.{BLOCK_TO_DIFFUSERS.get(rest, rest)}"] = value
        elif parts[0] == "final_layer":
            out["all_final_layer.2-1." + ".".join(parts[1:])] = value
        elif parts[0] == "x_embedder":
            out["all_x_embedder.2-1." + ".".join(parts[1:])] = value
        else:
            out[name] = value
    return out


@pytest.mark.parametrize("layout", ["model_folder", "transformer_folder"])
def test_diffusers_folder_gives_the_same_file_as_the_comfy_safetensors(tmp_path, layout):
    values = comfy_values()
    comfy_src = tmp_path / "z_comfy.safetensors"
    safetensors.torch.save_file({n: v.to(torch.bfloat16) for n, v in values.items()}, str(comfy_src))
    expected = stored(convert(comfy_src, tmp_path / "from_comfy.gguf", "Q4_K_M", progress=False))

    diffusers = diffusers_state_dict(values)
    root = tmp_path / "Z-Image-Turbo"
    transformer = root / "transformer"
    transformer.mkdir(parents=True)
    (root / "model_index.json").write_text('{"_class_name": "ZImagePipeline"}')
    names = sorted(diffusers)
    shards = {"diffusion_pytorch_model-00001-of-00002.safetensors": names[::2],
              "diffusion_pytorch_model-00002-of-00002.safetensors": names[1::2]}
    for shard, shard_names in shards.items():
        safetensors.torch.save_file({n: diffusers[n].to(torch.bfloat16) for n in shard_names}, str(transformer / shard))
    (transformer / "config.json").write_text('{"_class_name": "ZImageTransformer2DModel"}')

    src = root if layout == "model_folder" else transformer
    got = stored(convert(src, tmp_path / "from_diffusers.gguf", "Q4_K_M", progress=False))
    assert got == expected


def test_diffusers_folder_missing_a_projection_is_refused(tmp_path, capsys):
    diffusers = diffusers_state_dict(comfy_values())
    del diffusers["layers.0.attention.to_v.weight"]
    folder = tmp_path / "transformer"
    folder.mkdir()
    safetensors.torch.save_file({n: v.to(torch.bfloat16) for n, v in diffusers.items()},
                                str(folder / "diffusion_pytorch_model.safetensors"))
    assert main(["convert", str(folder), str(tmp_path / "o.gguf"), "--quiet"]) == 1
    assert capsys.readouterr().err.strip() == (
        "error: transformer: layers.0.attention.qkv.weight needs to_q, to_k and to_v; to_v missing")
    assert list(tmp_path.glob("o.gguf*")) == []


def test_folder_without_safetensors_is_refused(tmp_path, capsys):
    folder = tmp_path / "empty_model"
    folder.mkdir()
    assert main(["convert", str(folder), str(tmp_path / "o.gguf"), "--quiet"]) == 1
    assert capsys.readouterr().err.strip().startswith(
        "error: empty_model is a folder without safetensors files: convert reads one safetensors or GGUF file, "
        "or a diffusers folder")


# --- reading ------------------------------------------------------------------------------------


def test_safetensors_are_read_without_a_memory_map(tmp_path, monkeypatch):
    # a map's pages count in RSS: converting a 12 GB file through one reads like a 12 GB process
    from comfyui_zimage_gguf.ops.gguf_file import writer as module

    src = tmp_path / "z.safetensors"
    safetensors.torch.save_file({n: v.to(torch.bfloat16) for n, v in comfy_values().items()}, str(src))
    mapped = []
    real = module._encode

    def spying(values, ggml_type):
        with open("/proc/self/maps") as maps:
            mapped.append(any(line.rstrip().endswith(str(src)) for line in maps))
        return real(values, ggml_type)

    monkeypatch.setattr(module, "_encode", spying)
    convert(src, tmp_path / "z.gguf", "Q8_0", progress=False)
    assert len(mapped) > 10 and not any(mapped)


def test_truncated_safetensors_is_refused(tmp_path):
    src = tmp_path / "cut.safetensors"
    safetensors.torch.save_file({n: v.to(torch.bfloat16) for n, v in comfy_values().items()}, str(src))
    src.write_bytes(src.read_bytes()[:-1000])
    with pytest.raises(ConvertError, match=r"^cut.safetensors is not a readable safetensors file: .*not fully covered"):
        convert(src, tmp_path / "o.gguf", "Q8_0", progress=False)
    assert list(tmp_path.glob("o.gguf*")) == []


# --- damaged safetensors headers: the library checks them, convert names the file ----------------

def raw_safetensors(path, header, data=bytes(16)):
    encoded = json.dumps(header).encode()
    path.write_bytes(len(encoded).to_bytes(8, "little") + encoded + data)
    return path


F32_4 = {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}
BAD_HEADERS = {
    "end past the file (2^40)": {"layers.0.attention.qkv.weight": {**F32_4, "data_offsets": [0, 2 ** 40]}},
    "unknown dtype": {"layers.0.attention.qkv.weight": {**F32_4, "dtype": "Q9"}},
    "no offsets": {"layers.0.attention.qkv.weight": {"dtype": "F32", "shape": [4]}},
    "shape against offsets": {"layers.0.attention.qkv.weight": {**F32_4, "shape": [5]}},
    "negative shape": {"layers.0.attention.qkv.weight": {**F32_4, "shape": [-4]}},
    "entry is a string": {"layers.0.attention.qkv.weight": "F32"},
    "metadata not strings": {"__metadata__": {"n": 1}, "layers.0.attention.qkv.weight": F32_4},
    "overlapping tensors": {"a.weight": F32_4, "b.weight": F32_4},
}


@pytest.mark.parametrize("header", BAD_HEADERS.values(), ids=BAD_HEADERS.keys())
def test_bad_safetensors_header_is_one_line_naming_the_file(tmp_path, capsys, header):
    src = raw_safetensors(tmp_path / "bad.safetensors", header)
    assert main(["convert", str(src), str(tmp_path / "o.gguf"), "--quiet"]) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: bad.safetensors is not a readable safetensors file: ") and "\n" not in error
    assert list(tmp_path.glob("o.gguf*")) == []


def test_header_length_past_the_file_is_refused(tmp_path):
    src = tmp_path / "long.safetensors"
    src.write_bytes((50_000_000).to_bytes(8, "little") + b'{"a": 1}')
    with pytest.raises(ConvertError, match="^long.safetensors is not a readable safetensors file: "):
        convert(src, tmp_path / "o.gguf", "Q8_0", progress=False)
