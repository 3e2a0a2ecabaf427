"""`python -m comfyui_zimage_gguf inspect` on files the tests write, and its error paths."""
import json
import subprocess
import sys

import pytest
import torch
from factories import write_llama_cpp_encoder_gguf
from zimage_factory import write_zimage_gguf

from comfyui_zimage_gguf.cli.main import main

SMALL = dict(arch="qwen3", n_layers=2, heads=2, kv_heads=1, head_dim=128, ffn=64, vocab=300)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inspect")
    paths = {
        "qwen3_4b": folder / "Qwen3-4B-Q8_0.gguf",  # Z-Image's encoder width (2560), few and narrow heads
        "qwen3_06b": folder / "Qwen3-0.6B-Q8_0.gguf",  # 1024 wide: no use for Z-Image
        "dit": folder / "dit.gguf",
    }
    write_llama_cpp_encoder_gguf(paths["qwen3_4b"], hidden=2560, **SMALL)
    write_llama_cpp_encoder_gguf(paths["qwen3_06b"], hidden=1024, **SMALL)
    write_zimage_gguf(paths["dit"], n_layers=1, style="sdcpp", width=64, caption_width=32)
    return paths


def test_inspect_says_which_node_and_type_and_what_it_pairs_with(files, capsys):
    assert main(["inspect", str(files["qwen3_4b"]), str(files["qwen3_06b"]), str(files["dit"])]) == 0
    out = capsys.readouterr().out
    blocks = out.rstrip("\n").split("\n\n")
    assert len(blocks) == 3  # one blank line between files
    qwen4b, qwen06b, dit = (block.splitlines() for block in blocks)
    assert qwen4b[0] == "Qwen3-4B-Q8_0.gguf"
    assert qwen4b[1] == "  model:      Qwen3-4B text encoder (2 layers, 2560 wide)"
    assert qwen4b[2].startswith("  quant mix:  Q8_0 ") and qwen4b[2].endswith(" of the weights")
    assert qwen4b[4] == ("  load with:  Load Text Encoder (GGUF, Z-Image pack), type 'lumina2', "
                         "from models/text_encoders")
    assert qwen4b[5] == "  pairs with: Z-Image (type 'lumina2'), FLUX.2 (type 'flux2')"
    assert qwen06b[1] == "  model:      Qwen3-0.6B text encoder (2 layers, 1024 wide)"
    assert "  note:       does not fit Z-Image (needs Qwen3-4B, 2560 wide; this is 1024 wide)" in qwen06b
    assert dit[1].endswith("diffusion model (converted with stable-diffusion.cpp)")
    assert dit[4] == "  load with:  Load Diffusion Model (GGUF, Z-Image pack), from models/diffusion_models"
    for internal in ("prefix", "bare style", "architecture:"):
        assert internal not in out


def test_inspect_json_for_scripts(files, capsys):
    assert main(["inspect", "--json", str(files["qwen3_06b"]), str(files["dit"])]) == 0
    encoder, dit = json.loads(capsys.readouterr().out)
    assert encoder["kind"] == "text_encoder" and encoder["width"] == 1024 and encoder["pairs_with"] == []
    assert encoder["does_not_fit"].startswith("does not fit Z-Image")
    assert encoder["quant_mix"]["Q8_0"]["tensors"] > 0 and encoder["size_bytes"] == files["qwen3_06b"].stat().st_size
    assert dit["kind"] == "diffusion_model" and dit["caption_width"] == 32
    assert dit["node"] == "Load Diffusion Model (GGUF, Z-Image pack)"


def test_inspect_reports_bad_files_and_exits_non_zero(tmp_path, capsys):
    bad = tmp_path / "notgguf.gguf"
    bad.write_bytes(b"PK\x03\x04 definitely not gguf")
    assert main(["inspect", str(bad), str(tmp_path / "missing.gguf")]) == 1
    out = capsys.readouterr().out
    assert ("notgguf.gguf\n  error: notgguf.gguf is a zip archive (a PyTorch .ckpt/.pt?), not a GGUF file: "
            "load it with ComfyUI's own loaders") in out
    assert f"{bad}: not a valid GGUF file" in out
    assert "missing.gguf\n  error: no such file" in out


def test_inspect_says_download_again_only_for_a_damaged_gguf(files, tmp_path, capsys):
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(files["dit"].read_bytes()[:4096])
    page = tmp_path / "page.gguf"
    page.write_text("\n<!DOCTYPE html><html><body>Sign in</body></html>")
    pointer = tmp_path / "pointer.gguf"
    pointer.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 6000000000\n")
    assert main(["inspect", str(truncated), str(page), str(pointer)]) == 1
    out = capsys.readouterr().out
    assert "truncated.gguf is not a valid GGUF file: download it again" in out
    assert "page.gguf is a web page, not a GGUF file: the download saved a page instead of the model" in out
    assert "pointer.gguf is a Git LFS pointer, not a GGUF file: download the file itself" in out


def test_inspect_names_safetensors_files_for_what_they_hold(tmp_path, capsys):
    from safetensors.torch import save_file

    import zimage_factory

    vae = tmp_path / "ae.safetensors"
    save_file({"decoder.conv_in.weight": torch.zeros(8, 4, 3, 3, dtype=torch.bfloat16),
               "encoder.conv_in.weight": torch.zeros(8, 3, 3, 3, dtype=torch.bfloat16)}, str(vae))
    lora = tmp_path / "style_lora.safetensors"
    save_file({"diffusion_model.layers.0.attention.qkv.lora_A.weight": torch.zeros(4, 64)}, str(lora))
    dit = tmp_path / "z_image_turbo_bf16.safetensors"
    zimage_factory.write_zimage_safetensors(dit, n_layers=1, width=64, caption_width=32)
    assert main(["inspect", str(vae), str(lora), str(dit)]) == 0
    vae_text, lora_text, dit_text = capsys.readouterr().out.rstrip("\n").split("\n\n")
    assert vae_text.splitlines()[1:] == [
        "  model:      a VAE in safetensors",
        "  dtypes:     BF16 100% (safetensors, not a GGUF)",
        f"  size:       {vae.stat().st_size / 1e6:.1f} MB",
        "  load with:  Load VAE, from models/vae",
    ]
    assert "  model:      a LoRA in safetensors" in lora_text
    assert "Z-Image layout) of an unrecognised width diffusion model in safetensors\n" in dit_text  # 64 wide
    assert "  load with:  Load Diffusion Model (ComfyUI's own), from models/diffusion_models" in dit_text
    assert "python -m comfyui_zimage_gguf convert FILE OUT.gguf --type Q4_K_M" in dit_text
    assert "download" not in vae_text + lora_text + dit_text


def test_inspect_tells_the_packs_own_files(tmp_path, capsys):
    import zimage_factory

    from comfyui_zimage_gguf.cli.convert import convert

    source = tmp_path / "z.safetensors"
    zimage_factory.write_zimage_safetensors(source, n_layers=1, width=64, caption_width=32)
    made = convert(source, tmp_path / "z-Q8_0.gguf", "Q8_0", progress=False)
    assert main(["inspect", str(made)]) == 0
    model_line = capsys.readouterr().out.splitlines()[1]
    assert model_line.endswith(" diffusion model (made by this pack)")  # not "converted with city96's tool"


def test_module_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "comfyui_zimage_gguf", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for command in ("bench", "inspect", "queue"):
        assert command in result.stdout
