"""ops/ggml/rows.py: the one row-view rule and the one embedding-row lookup, for both tensor kinds."""
import torch
from gguf import GGMLQuantizationType as T

from comfyui_zimage_gguf.ops import dequantize, quantize
from comfyui_zimage_gguf.ops.ggml.rows import embedding_rows, row_view_shape


def test_views_that_keep_whole_rows_and_those_that_do_not():
    assert row_view_shape((3840,), (1, 3840)) == [1, 3840]
    assert row_view_shape((1, 3840), (-1,)) == [3840]
    assert row_view_shape((4, 256), (2, -1, 256)) == [2, 2, 256]
    assert row_view_shape((4, 256), (8, 128)) is None  # splits rows
    assert row_view_shape((4, 256), (4, 255)) is None


def test_embedding_rows_dequantizes_only_the_rows_looked_up():
    table = torch.randn(10, 64, generator=torch.Generator().manual_seed(0))
    raw = quantize(table, T.Q8_0)
    ids = torch.tensor([[3, 0], [9, 3]])
    got = embedding_rows(raw.reshape(-1), T.Q8_0, (10, 64), ids, torch.float32)
    whole = dequantize(raw.reshape(-1), T.Q8_0, (10, 64), torch.float32)
    assert got.shape == (2, 2, 64) and torch.equal(got, whole[ids])
