"""`convert`: Z-Image safetensors/GGUF -> city96-style quantized GGUF, its rules and its errors.

Narrow models (width 256, caption 256, detected as NextDiT/lumina2) keep the files small and fast;
the per-tensor types of a full-width model are tested in test_quant_rules.py.
"""
import io
import math
import struct

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as T, LlamaFileType

import zimage_factory as factory

from comfyui_zimage_gguf.cli.convert import ConvertError, convert
from comfyui_zimage_gguf.cli.main import main
from comfyui_zimage_gguf.model_families.diffusion import detect_diffusion_model
from comfyui_zimage_gguf.ops import dequantize
from comfyui_zimage_gguf.ops.ggml.quant_rules import plan_types
from comfyui_zimage_gguf.ops.gguf_file.reader import load_gguf

NARROW = dict(width=256, caption_width=256)


def narrow_source(tmp_path, name="z.safetensors", dtype=torch.bfloat16, prefix=""):
    path = tmp_path / name
    specs = factory.zimage_tensor_specs(1, **NARROW)
    renamed = [factory.TensorSpec(prefix + s.name, s.shape, norm=s.norm) if prefix else s for s in specs]
    values = {prefix + s.name: factory.tensor_values(0, s) for s in specs}
    factory.write_safetensors_streaming(path, renamed, lambda spec: values[spec.name], dtype)
    return path, {s.name: values[prefix + s.name] for s in specs}


def assert_close_to_source(out, values, mix_types):
    gguf_file = load_gguf(out)
    try:
        assert gguf_file.metadata["general.architecture"] == "lumina2"
        assert set(gguf_file.tensors) == set(values)
        for name, info in gguf_file.tensors.items():
            assert info.ggml_type == mix_types[name], name
            restored = dequantize(gguf_file.raw_tensor(name), info.ggml_type, info.shape, torch.float32)
            source = values[name].to(torch.bfloat16).float()
            error = float(((restored - source) ** 2).sum()) / max(float((source ** 2).sum()), 1e-30)
            assert error < 0.02, (name, info.ggml_type.name, error)
        info = detect_diffusion_model(gguf_file.metadata, gguf_file.shapes, str(out))
        assert info.style == "city96" and info.prefix == ""
    finally:
        gguf_file.close()


@pytest.mark.parametrize("prefix", ["", "model.diffusion_model."])
def test_safetensors_with_or_without_prefix_become_city96_gguf(tmp_path, prefix):
    src, values = narrow_source(tmp_path, prefix=prefix)
    out = convert(src, tmp_path / "z.gguf", "Q4_K_M", progress=False)
    assert out == tmp_path / "z.gguf" and list(tmp_path.glob("z.gguf.*")) == []
    plan = plan_types({n: (tuple(v.shape), torch.bfloat16) for n, v in values.items()}, "Q4_K_M", "lumina2")
    assert_close_to_source(out, values, plan)
    gguf_file = load_gguf(out)
    try:
        assert gguf_file.metadata["general.file_type"] == LlamaFileType.MOSTLY_Q4_K_M
        assert gguf_file.metadata["general.quantization_version"] == 2
    finally:
        gguf_file.close()


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_fp16_and_fp32_sources(tmp_path, dtype):
    src, values = narrow_source(tmp_path, dtype=dtype)
    out = convert(src, tmp_path / "z.gguf", "Q8_0", progress=False)
    gguf_file = load_gguf(out)
    try:
        kept = gguf_file.tensors["context_refiner.0.attention.qkv.weight"].ggml_type
        assert kept == T.F16  # city96 keeps non-BF16 sources' unquantized matrices in F16
        assert gguf_file.tensors["layers.0.attention.qkv.weight"].ggml_type == T.Q8_0
        norm = gguf_file.tensors["layers.0.attention_norm1.weight"].ggml_type
        assert norm == (T.F32 if dtype == torch.float32 else T.F16)
    finally:
        gguf_file.close()


def test_gguf_source_is_requantized_with_a_warning(tmp_path):
    src, values = narrow_source(tmp_path)
    q8 = convert(src, tmp_path / "q8.gguf", "Q8_0", progress=False)
    warnings = []
    out = convert(q8, tmp_path / "q4.gguf", "Q4_K_S", progress=False, warn=warnings.append)
    assert len(warnings) == 1 and "already quantized" in warnings[0]
    gguf_file = load_gguf(out)
    try:
        assert gguf_file.tensors["layers.0.feed_forward.w2.weight"].ggml_type == T.Q5_K  # Q4_K_S ffn_down bump
        assert gguf_file.tensors["layers.0.attention.out.weight"].ggml_type == T.Q4_K
    finally:
        gguf_file.close()


def test_cli_progress_and_output(tmp_path, capsys):
    src, _ = narrow_source(tmp_path)
    assert main(["convert", str(src), str(tmp_path / "z.gguf"), "--type", "Q6_K"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(tmp_path / "z.gguf")
    assert "% of the weights, ETA" in captured.err and "done in" in captured.err
    assert "\r" not in captured.err  # captured stderr is no terminal: plain lines
    assert load_gguf_metadata(tmp_path / "z.gguf")["general.quantized_by"] == "comfyui-zimage-gguf"


def load_gguf_metadata(path) -> dict:
    with load_gguf(path) as gguf_file:
        return dict(gguf_file.metadata)


class FakeStream:
    def __init__(self, tty: bool):
        self.tty, self.text = tty, ""

    def isatty(self):
        return self.tty

    def write(self, text):
        self.text += text

    def flush(self):
        pass


def test_progress_counts_elements_and_updates_in_place_only_on_a_terminal(monkeypatch):
    from comfyui_zimage_gguf.cli import convert as convert_module

    clock = iter([0.0, 10.0, 20.0, 30.0, 40.0])
    monkeypatch.setattr(convert_module.time, "monotonic", lambda: next(clock))
    terminal = FakeStream(tty=True)
    progress = convert_module.Progress(3, 400, stream=terminal)
    progress.update(1, "a", 100)  # a quarter of the work in 10 s: 30 s to go
    assert terminal.text.startswith("\r[1/3]  25.0% of the weights, ETA 0:30  a")
    progress.update(2, "b", 100)
    progress.update(3, "c", 200)
    assert terminal.text.count("\n") == 2 and terminal.text.endswith("done in 30.0 s\n")

    clock = iter([0.0, 1.0, 12.0, 13.0])
    log = FakeStream(tty=False)
    progress = convert_module.Progress(3, 300, stream=log, log_every_s=10)
    for index, name in enumerate("abc", 1):
        progress.update(index, name, 100)
    assert "\r" not in log.text
    assert log.text.splitlines() == ["[2/3]  66.7% of the weights, ETA 0:06  b",
                                     "[3/3] 100.0% of the weights, ETA 0:00  c", "done in 13.0 s"]


def test_existing_output_is_refused_unless_overwrite(tmp_path, capsys):
    src, _ = narrow_source(tmp_path)
    out = tmp_path / "z.gguf"
    out.write_bytes(b"keep me")
    assert main(["convert", str(src), str(out), "--quiet"]) == 1
    assert capsys.readouterr().err.strip() == "error: z.gguf already exists: choose another name or allow overwriting"
    assert out.read_bytes() == b"keep me"
    assert main(["convert", str(src), str(out), "--quiet", "--overwrite"]) == 0
    assert load_gguf(out).metadata["general.architecture"] == "lumina2"


def run_failing(args, capsys, tmp_path):
    assert main(args) == 1
    error = capsys.readouterr().err.strip()
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix in (".gguf", ".partial")) == []
    return error


def test_not_safetensors_nor_gguf(tmp_path, capsys):
    src = tmp_path / "model.ckpt"
    src.write_bytes(b"PK\x03\x04 not a model")
    error = run_failing(["convert", str(src), str(tmp_path / "o.gguf")], capsys, tmp_path)
    assert error == "error: model.ckpt is neither a safetensors nor a GGUF file: convert reads those two formats"


def test_unknown_layout(tmp_path, capsys):
    src = tmp_path / "other.safetensors"
    spec = factory.TensorSpec("encoder.weight", (4, 4))
    factory.write_safetensors_streaming(src, [spec], lambda s: torch.ones(4, 4), torch.float16)
    error = run_failing(["convert", str(src), str(tmp_path / "o.gguf")], capsys, tmp_path)
    assert error == "error: other.safetensors: unknown model layout, convert writes Z-Image models"


def test_unsupported_dtype(tmp_path, capsys):
    src = tmp_path / "int.safetensors"
    header = {"layers.0.attention.qkv.weight": {"dtype": "I32", "shape": [4, 4], "data_offsets": [0, 64]}}
    encoded = __import__("json").dumps(header).encode()
    src.write_bytes(struct.pack("<Q", len(encoded)) + encoded + bytes(64))
    error = run_failing(["convert", str(src), str(tmp_path / "o.gguf")], capsys, tmp_path)
    assert error == ("error: int.safetensors: tensor layers.0.attention.qkv.weight is I32; convert reads BF16, "
                     "F16, F32 and (scaled) fp8 E4M3/E5M2 weights")


def test_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    src, _ = narrow_source(tmp_path)
    from comfyui_zimage_gguf.ops.gguf_file import writer as module

    calls = {"n": 0}
    real = module._encode

    def failing(values, ggml_type):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(values, ggml_type)

    monkeypatch.setattr(module, "_encode", failing)
    with pytest.raises(KeyboardInterrupt):
        convert(src, tmp_path / "z.gguf", "Q4_K_M", progress=False)
    assert list(tmp_path.glob("z.gguf*")) == []


def test_no_disk_space(tmp_path, monkeypatch):
    src, _ = narrow_source(tmp_path)
    from comfyui_zimage_gguf.ops.gguf_file import writer as module

    monkeypatch.setattr(module.shutil, "disk_usage", lambda path: type("U", (), {"free": 1000})())
    with pytest.raises(ConvertError, match=r"not enough disk space for z.gguf: it needs 0\.\d\d GB, 0\.00 GB free"):
        convert(src, tmp_path / "z.gguf", "Q4_K_M", progress=False)
    assert list(tmp_path.glob("z.gguf*")) == []


# --- the output is written atomically (fileio.AtomicWrite) -----------------------------------------

def test_a_planted_partial_link_is_not_followed(tmp_path):
    # before: write_gguf opened OUT.partial with open(..., "wb"), following a link planted there
    src, _ = narrow_source(tmp_path)
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    (tmp_path / "z.gguf.partial").symlink_to(victim)
    out = convert(src, tmp_path / "z.gguf", "Q8_0", progress=False)
    assert victim.read_bytes() == b"precious" and (tmp_path / "z.gguf.partial").is_symlink()
    assert load_gguf(out).metadata["general.architecture"] == "lumina2"


@pytest.mark.skipif(not __import__("os").path.exists("/dev/full"), reason="needs /dev/full")
def test_full_disk_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    # before: close() raised inside the except block and the .partial file stayed
    from comfyui_zimage_gguf import fileio
    from test_fileio import full_disk_file

    src, _ = narrow_source(tmp_path)
    monkeypatch.setattr(fileio, "_open_file", full_disk_file)
    assert main(["convert", str(src), str(tmp_path / "z.gguf"), "--quiet"]) == 1
    assert capsys.readouterr().err.strip() == (
        f"error: cannot write {tmp_path / 'z.gguf'}: No space left on device (disk full?)")
    assert list(tmp_path.glob("z.gguf*")) == []


def test_missing_output_folder_is_one_line(tmp_path, capsys):
    src, _ = narrow_source(tmp_path)
    out = tmp_path / "missing" / "z.gguf"
    assert main(["convert", str(src), str(out), "--quiet"]) == 1
    assert capsys.readouterr().err.strip() == (
        f"error: cannot write {out}: the folder {out.parent} does not exist")
