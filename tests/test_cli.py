"""`python -m comfyui_zimage_gguf inspect` on files the tests write, and its error paths."""
import subprocess
import sys

from helpers.factories import write_llama_cpp_encoder_gguf
from helpers.zimage_factory import write_zimage_gguf

from comfyui_zimage_gguf.cli.main import main


def test_inspect_text_encoder(tmp_path, capsys):
    path = tmp_path / "enc.gguf"
    write_llama_cpp_encoder_gguf(path, arch="qwen3", n_layers=2, hidden=64, heads=4, kv_heads=2, head_dim=16,
                                 ffn=128, vocab=300)
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "architecture: qwen3" in out
    assert "2 layers, hidden 64, heads 4 (kv 2, dim 16), ffn 128, vocab 300" in out
    assert "Load Text Encoder (GGUF, Z-Image pack)" in out


def test_inspect_diffusion_model_without_metadata(tmp_path, capsys):
    path = tmp_path / "dit.gguf"
    write_zimage_gguf(path, n_layers=1, style="sdcpp", width=64, caption_width=32)
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "(none: no general.architecture key)" in out
    assert "sdcpp style" in out and "prefix 'model.diffusion_model.'" in out
    assert "Load Diffusion Model (GGUF, Z-Image pack)" in out


def test_inspect_reports_bad_files_and_exits_non_zero(tmp_path, capsys):
    bad = tmp_path / "notgguf.gguf"
    bad.write_bytes(b"PK\x03\x04 definitely not gguf")
    assert main(["inspect", str(bad), str(tmp_path / "missing.gguf")]) == 1
    out = capsys.readouterr().out
    assert "error: notgguf.gguf is not a valid GGUF file" in out and f"{bad}: not a valid GGUF file" in out
    assert "missing.gguf: no such file" in out


def test_module_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "comfyui_zimage_gguf", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for command in ("bench", "inspect", "queue"):
        assert command in result.stdout
