"""llama.cpp importance-matrix files (ops.gguf_file.imatrix) and `convert --imatrix`."""
import struct

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as T, GGUFWriter

from comfyui_zimage_gguf.cli.main import main
from comfyui_zimage_gguf.cli.convert import convert
from comfyui_zimage_gguf.ops.gguf_file.imatrix import ImatrixError, load_imatrix
from comfyui_zimage_gguf.ops.ggml.quant_rules import plan_types
from comfyui_zimage_gguf.ops.ggml.quantize import quantize
from comfyui_zimage_gguf.ops.gguf_file.reader import load_gguf
from test_cli_convert import narrow_source, run_failing


def write_legacy(path, entries: dict[str, tuple[int, np.ndarray]], trailer: bool = True):
    """llama-imatrix's legacy layout: count, then (name length, name, ncall, nval, values) per entry."""
    parts = [struct.pack("<i", len(entries))]
    for name, (ncall, values) in entries.items():
        encoded = name.encode()
        parts += [struct.pack("<i", len(encoded)), encoded, struct.pack("<ii", ncall, values.size),
                  values.astype("<f4").tobytes()]
    if trailer:  # last call and dataset name, as newer legacy files end
        parts += [struct.pack("<ii", 10, 8), b"data.txt"]
    path.write_bytes(b"".join(parts))
    return path


def write_gguf_imatrix(path, entries: dict[str, tuple[np.ndarray, np.ndarray]]):
    """llama-imatrix's GGUF layout: <name>.in_sum2 (n_mat x columns) and <name>.counts (n_mat x 1)."""
    writer = GGUFWriter(str(path), arch="imatrix")
    for name, (sums, counts) in entries.items():
        writer.add_tensor(f"{name}.in_sum2", sums.astype(np.float32))
        writer.add_tensor(f"{name}.counts", counts.astype(np.float32).reshape(-1, 1))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_legacy_dat_values_are_divided_by_ncall(tmp_path):
    values = np.array([3.0, 6.0, 9.0, 0.5], dtype=np.float32)
    path = write_legacy(tmp_path / "m.dat", {"blk.0.attn_q.weight": (3, values), "raw": (0, values)})
    loaded = load_imatrix(path)
    assert torch.equal(loaded["blk.0.attn_q.weight"], torch.from_numpy(values / np.float32(3)))
    assert torch.equal(loaded["raw"], torch.from_numpy(values))  # ncall 0: left as stored
    assert set(load_imatrix(write_legacy(tmp_path / "n.dat", {"a": (2, values)}, trailer=False))) == {"a"}


def test_gguf_values_are_sums_over_counts_and_one_without_input(tmp_path):
    sums = np.array([[2.0, 4.0, 8.0], [5.0, 5.0, 5.0]], dtype=np.float32)
    path = write_gguf_imatrix(tmp_path / "m.gguf", {"x.weight": (sums, np.array([2.0, 0.0]))})
    loaded = load_imatrix(path)
    assert loaded["x.weight"].tolist() == [1.0, 2.0, 4.0, 1.0, 1.0, 1.0]


@pytest.mark.parametrize("content, problem", [
    (b"", "the file ends inside the entry count"),
    (struct.pack("<i", 0), "it declares 0 entries"),
    (struct.pack("<ii", 1, 5) + b"ab", "the file ends inside entry 1's name"),
    (struct.pack("<ii", 1, 1) + b"a" + struct.pack("<ii", 1, 4) + b"\0" * 8, "the file ends inside entry a's values"),
])
def test_damaged_legacy_files_are_refused(tmp_path, content, problem):
    path = tmp_path / "bad.dat"
    path.write_bytes(content)
    with pytest.raises(ImatrixError, match=f"^bad.dat is not a readable llama.cpp imatrix file: {problem}"):
        load_imatrix(path)


def test_model_gguf_is_not_an_imatrix(tmp_path):
    writer = GGUFWriter(str(tmp_path / "model.gguf"), arch="lumina2")
    writer.add_tensor("x.weight", np.ones((2, 4), dtype=np.float32))
    writer.write_header_to_file(), writer.write_kv_data_to_file(), writer.write_tensors_to_file(), writer.close()
    with pytest.raises(ImatrixError, match="a model, not an imatrix"):
        load_imatrix(tmp_path / "model.gguf")


def _weighted_name(values, mix="Q4_K_M"):
    plan = plan_types({n: (tuple(v.shape), torch.bfloat16) for n, v in values.items()}, mix, "lumina2")
    names = sorted(n for n, t in plan.items() if t in (T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K) and values[n].dim() == 2)
    return plan, names


@pytest.mark.parametrize("fmt", ["dat", "gguf"])
def test_convert_weights_the_tensors_the_imatrix_names(tmp_path, fmt):
    src, values = narrow_source(tmp_path)
    plan, names = _weighted_name(values)
    weighted = names[0]
    columns = values[weighted].shape[-1]
    weights = np.exp(np.random.default_rng(3).normal(0, 1.5, columns)).astype(np.float32)
    if fmt == "dat":
        imatrix = write_legacy(tmp_path / "m.dat", {weighted: (1, weights)})
    else:
        imatrix = write_gguf_imatrix(tmp_path / "m.gguf", {weighted: (weights.reshape(1, -1), np.ones(1))})
    out = convert(src, tmp_path / "z.gguf", "Q4_K_M", progress=False, imatrix=imatrix)
    plain = convert(src, tmp_path / "plain.gguf", "Q4_K_M", progress=False)
    got, reference = load_gguf(out), load_gguf(plain)
    try:
        source = values[weighted].to(torch.bfloat16)
        expected = quantize(source, plan[weighted], imatrix=torch.from_numpy(weights)).reshape(-1)
        assert torch.equal(got.raw_tensor(weighted).reshape(-1), expected)
        assert not torch.equal(got.raw_tensor(weighted), reference.raw_tensor(weighted))
        for name in names[1:]:  # not in the imatrix: quantized as without one
            assert torch.equal(got.raw_tensor(name), reference.raw_tensor(name))
    finally:
        got.close(), reference.close()


def test_cli_unreadable_imatrix_is_one_line(tmp_path, capsys):
    src, _ = narrow_source(tmp_path)
    (tmp_path / "m.dat").write_bytes(b"\x01\x00")
    error = run_failing(["convert", str(src), str(tmp_path / "o.gguf"), "--quiet", "--imatrix",
                         str(tmp_path / "m.dat")], capsys, tmp_path)
    assert error == ("error: m.dat is not a readable llama.cpp imatrix file: the file ends inside the entry count "
                     "(truncated, or not an imatrix)")


def test_cli_type_without_imatrix_support_names_the_supported_ones(tmp_path, capsys):
    src, values = narrow_source(tmp_path)
    imatrix = write_legacy(tmp_path / "m.dat", {"x": (1, np.ones(4, dtype=np.float32))})
    error = run_failing(["convert", str(src), str(tmp_path / "o.gguf"), "--quiet", "--type", "Q4_0",
                         "--imatrix", str(imatrix)], capsys, tmp_path)
    assert error == ("error: Q4_0 cannot be made with an imatrix here: this pack weights "
                     "Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS (mixes based on them)")


def test_cli_imatrix_of_another_model_is_refused(tmp_path, capsys):
    src, values = narrow_source(tmp_path)
    _, names = _weighted_name(values)
    imatrix = write_legacy(tmp_path / "m.dat", {names[0]: (1, np.ones(7, dtype=np.float32))})
    error = run_failing(["convert", str(src), str(tmp_path / "o.gguf"), "--quiet", "--imatrix", str(imatrix)],
                        capsys, tmp_path)
    assert error.startswith(f"error: the imatrix entry for {names[0]} has 7 weights but the tensor has ")
    assert error.endswith("columns: was it computed on another model?")
