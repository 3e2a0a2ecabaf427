"""`bench --gpu-check` without a GPU: its arguments, the no-CUDA refusal, the table and the CPU side
of the CUDA-vs-CPU dequantization comparison (the GPU side itself needs a device: not run here)."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from comfyui_zimage_gguf.cli import bench_gpu
from comfyui_zimage_gguf.cli.main import main
from comfyui_zimage_gguf.ops import QUANT_TYPES

REPO_ROOT = Path(__file__).resolve().parents[1]
needs_no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: no refusal to see")


@needs_no_cuda
def test_without_cuda_the_check_prints_one_line_and_exits_at_once():
    result = subprocess.run([sys.executable, "-m", "comfyui_zimage_gguf", "bench", "--gpu-check"],
                            capture_output=True, text=True, timeout=120, cwd=REPO_ROOT.parent)
    assert result.returncode == 2
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("bench --gpu-check needs an NVIDIA GPU: torch ")
    assert lines[0].endswith("sees no CUDA device; nothing was run")


@needs_no_cuda
def test_refusal_comes_before_any_comfyui_or_model_work(capsys, monkeypatch):
    monkeypatch.delenv("COMFYUI_PATH", raising=False)
    started = []
    monkeypatch.setattr(bench_gpu, "comfy_rows", lambda *a: started.append(a) or [])
    assert main(["bench", "--gpu-check"]) == 2
    assert started == []
    assert "needs an NVIDIA GPU" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--models", "Q9_9"], "unknown GGML type(s) Q9_9"),
    (["--types", "Q8_0", "NOPE"], "unknown GGML type(s) NOPE"),
    (["--size", "500"], "--size 500: expected a multiple of 16"),
    (["--size", "32"], "--size 32: expected a multiple of 16, at least 64"),
    (["--steps", "2"], "--steps 2: at least 3"),
    (["--vram-left", "0"], "--vram-left 0: expected a positive number of GiB"),
    (["--time-limit", "-1"], "--time-limit -1: expected a positive number of seconds"),
])
def test_bad_arguments_are_named(argv, message, capsys):
    assert main(["bench", "--gpu-check", *argv]) == 2
    out = capsys.readouterr().out
    assert out.startswith("bench --gpu-check: ")
    assert message in out


def test_defaults_are_the_documented_ones():
    import argparse

    parser = argparse.ArgumentParser()
    bench_gpu.add_gpu_check_arguments(parser)
    args = parser.parse_args([])
    assert (args.gpu_check, args.models, args.size, args.steps, args.vram_left, args.dequant_only) == (
        False, ["Q8_0", "Q4_K"], 512, 6, 2.0, False)
    args.types = None
    assert bench_gpu.gpu_check_argument_error(args) is None


def test_source_checkout_refusal_names_the_missing_helpers(tmp_path):
    assert bench_gpu.source_checkout_refusal(REPO_ROOT) is None
    (tmp_path / "benchmarks").mkdir(parents=True)
    (tmp_path / "benchmarks" / "comfy_server.py").write_text("")
    refusal = bench_gpu.source_checkout_refusal(tmp_path)
    assert "needs a source checkout" in refusal
    assert "bench_e2e.py, comfy_inprocess.py" in refusal
    assert "comfy_server.py" not in refusal.split("lacks")[1]


def test_format_table_aligns_columns_under_the_header():
    table = bench_gpu.format_table(("a", "bee", "c"), [("x", 1, "long cell"), ("yyyy", 22.5, "")])
    lines = table.splitlines()
    assert lines[0] == "a     bee   c"
    assert lines[1] == "-" * len(lines[0])
    assert lines[2] == "x     1     long cell"
    assert lines[3] == "yyyy  22.5"  # trailing padding stripped


def test_format_table_refuses_a_row_of_the_wrong_width():
    with pytest.raises(ValueError, match="has 2 cells, the table 3 columns"):
        bench_gpu.format_table(("a", "b", "c"), [("x", "y")])


def test_compare_bits_counts_every_differing_element():
    a = torch.tensor([1.0, -0.0, float("nan"), 2.0, 3.0], dtype=torch.float16)
    same = bench_gpu.compare_bits(a, a.clone())
    assert same == {"mismatches": 0, "elements": 5, "max_abs_diff": 0.0}
    b = a.clone()
    b[1] = 0.0  # +0 vs -0: equal as numbers, not as bits
    b.view(torch.int16)[3] += 1  # one float16 ulp: 2 -> 2.001953125
    result = bench_gpu.compare_bits(a, b)
    assert result["mismatches"] == 2
    assert result["max_abs_diff"] == pytest.approx(2 ** -9)


def test_compare_bits_treats_any_two_nans_as_equal_and_nan_vs_number_as_a_mismatch():
    a = torch.tensor([float("nan"), 1.0], dtype=torch.float32)
    other_nan = a.clone().view(torch.int32)
    other_nan[0] |= 1  # another NaN payload
    assert bench_gpu.compare_bits(a, other_nan.view(torch.float32))["mismatches"] == 0
    b = torch.tensor([0.0, float("nan")], dtype=torch.float32)
    result = bench_gpu.compare_bits(a, b)
    assert result["mismatches"] == 2
    assert result["max_abs_diff"] == float("inf")


def test_compare_bits_refuses_different_dtypes_or_shapes():
    with pytest.raises(ValueError, match="cannot compare"):
        bench_gpu.compare_bits(torch.zeros(3, dtype=torch.float16), torch.zeros(3, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="cannot compare"):
        bench_gpu.compare_bits(torch.zeros(3), torch.zeros(4))


@pytest.mark.parametrize("type_name", [t.name for t in QUANT_TYPES])
def test_dequant_check_runs_every_type_and_reports_every_dtype(type_name):
    # CPU against CPU: the same kernel on the same bytes must agree bit for bit; on a GPU machine
    # the same function compares against "cuda"
    check = bench_gpu.dequant_check(type_name, "cpu", shape=(4, 512))
    assert check["type"] == type_name
    assert set(check["results"]) == {"f16", "bf16", "f32"}
    for result in check["results"].values():
        assert result == {"mismatches": 0, "elements": 4 * 512, "max_abs_diff": 0.0}
    assert bench_gpu.dequant_row(check)[2] == "bit-exact (f16, bf16, f32)"


def test_dequant_row_spells_out_a_mismatch():
    check = {"type": "Q4_K", "results": {"f16": {"mismatches": 3, "elements": 100, "max_abs_diff": 0.5},
                                         "bf16": {"mismatches": 0, "elements": 100, "max_abs_diff": 0.0}}}
    row = bench_gpu.dequant_row(check)
    assert len(row) == len(bench_gpu.TABLE_HEADERS)
    assert row[1] == "Q4_K"
    assert row[2] == "MISMATCH f16 3/100 max|d| 0.5"


def test_load_summary_reads_comfyui_log_lines():
    log = ("loaded partially; 1200.00 MB usable, 700.50 MB loaded, 1034.70 MB offloaded, 80.00 MB buffer reserved, "
           "lowvram patches: 0\nloaded partially; 1200.00 MB usable, 900.00 MB loaded, 12.00 MB offloaded\n"
           "loaded completely; 9000.00 MB usable, 800.00 MB loaded, full load: True\n")
    assert bench_gpu.load_summary(log) == "partial 1035 MB off, full"
    dynamic = "Model Lumina2 prepared for dynamic VRAM loading. 1700MB Staged. 0 patches attached."
    assert bench_gpu.load_summary(dynamic) == "dynamic"
    assert bench_gpu.load_summary("nothing relevant") == "(no load line)"


def test_server_modes_cap_leaves_the_asked_vram():
    modes = dict(bench_gpu.server_modes(vram_left=2.0, free_gib=139.5))
    assert modes["dynamic on"] == []
    assert modes["dynamic off"] == ["--disable-dynamic-vram"]
    assert modes["dynamic on, cap 2 GiB"] == ["--reserve-vram", "137.50"]
    assert modes["dynamic off, cap 2 GiB"] == ["--disable-dynamic-vram", "--reserve-vram", "137.50"]
    assert dict(bench_gpu.server_modes(3.0, 2.0))["dynamic on, cap 3 GiB"] == ["--reserve-vram", "0.00"]


def test_disable_flag_is_comfyuis_own():
    import os

    comfyui = os.environ.get("COMFYUI_PATH")
    if not comfyui:
        pytest.skip("COMFYUI_PATH is not set")
    cli_args = (Path(comfyui) / "comfy" / "cli_args.py").read_text()
    assert '"--disable-dynamic-vram"' in cli_args and '"--reserve-vram"' in cli_args


def test_lora_is_inserted_between_the_loader_and_the_sampler():
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    try:
        import comfy_server
    finally:
        sys.path.pop(0)
    workflow = comfy_server.zimage_workflow("pack", "u.gguf", "c.gguf", "v.safetensors")
    patched = bench_gpu.with_lora(comfy_server, workflow, "l.safetensors")
    assert patched["lora"] == {"class_type": "LoraLoaderModelOnly", "inputs": {
        "model": [comfy_server.UNET_NODE, 0], "lora_name": "l.safetensors", "strength_model": 1.0}}
    assert patched["shift"]["inputs"]["model"] == ["lora", 0]
    assert workflow["shift"]["inputs"]["model"] == [comfy_server.UNET_NODE, 0]  # the original is untouched


def test_dequant_speed_times_each_backend_and_a_copy_or_says_why_not():
    speed = bench_gpu.dequant_speed("Q4_0", "cpu", shape=(8, 256), repeat=2)
    assert speed["type"] == "Q4_0" and speed["bytes"] == (8 * 256 // 32 * 18, 8 * 256 * 2)
    seconds = speed["seconds"]
    assert isinstance(seconds["torch"], float) and isinstance(seconds["copy"], float)
    # Triton needs a GPU (or the interpreter): on this CPU tensor the cell says why instead
    assert isinstance(seconds["triton"], str)
    assert "the tensor is on the CPU" in seconds["triton"] or "triton does not import" in seconds["triton"]


def test_speed_row_reports_gb_per_s_of_bytes_read_plus_written():
    speed = {"type": "Q8_0", "bytes": (34_000_000, 64_000_000),
             "seconds": {"torch": 0.01, "triton": 0.001, "copy": 0.0008}}
    row = bench_gpu.speed_row(speed)
    assert len(row) == len(bench_gpu.TABLE_HEADERS) and row[:2] == ("dequant GB/s", "Q8_0")
    assert row[2] == ("torch 9.8 GB/s (10.00 ms); triton 98.0 GB/s (1.00 ms); copy 160.0 GB/s (0.80 ms); "
                      "triton 1.25x copy time")
    failed = bench_gpu.speed_row({**speed, "seconds": {"torch": 0.01, "triton": "FAILED: boom", "copy": 0.001}})
    assert failed[2].startswith("FAILED torch 9.8 GB/s")


def test_server_runs_measure_both_backends_beside_native_in_the_first_mode():
    runs = bench_gpu.server_runs(bench_gpu.server_modes(vram_left=2.0, free_gib=20.0))
    assert [(mode, backend, lora) for mode, _, backend, lora in runs] == [
        ("dynamic on", "auto", True), ("dynamic on", "torch", False), ("dynamic off", "auto", False),
        ("dynamic on, cap 2 GiB", "auto", False), ("dynamic off, cap 2 GiB", "auto", False)]
