"""The one size formula of the quant-type table (ops.ggml.quant_types.tensor_bytes) against gguf-py's."""
import math

import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import quant_shape_to_byte_shape

from comfyui_zimage_gguf.ops.ggml.quant_types import QUANT_TYPES, rows_are_whole_blocks, tensor_bytes


@pytest.mark.parametrize("ggml_type", list(GGML_QUANT_SIZES), ids=lambda t: t.name)
def test_tensor_bytes_equals_gguf_py_for_every_type(ggml_type):
    block_size, _ = GGML_QUANT_SIZES[ggml_type]
    shape = (3, 2 * block_size)
    assert rows_are_whole_blocks(ggml_type, shape)
    assert tensor_bytes(ggml_type, shape) == math.prod(quant_shape_to_byte_shape(shape, ggml_type))


def test_a_row_that_is_no_whole_number_of_blocks_is_refused():
    assert not rows_are_whole_blocks(GGMLQuantizationType.Q4_K, (2, 100))
    with pytest.raises(ValueError, match="Q4_K stores rows of whole 256-element blocks; a tensor of shape \\[2, 100\\]"):
        tensor_bytes(GGMLQuantizationType.Q4_K, (2, 100))


def test_the_table_records_use_the_same_formula():
    q8 = QUANT_TYPES[GGMLQuantizationType.Q8_0]
    assert q8.tensor_bytes((4, 64)) == 4 * 2 * 34
    assert q8.row_bytes(64) == 68
    assert tensor_bytes(GGMLQuantizationType.F32, ()) == 4  # a scalar is one row of one element
