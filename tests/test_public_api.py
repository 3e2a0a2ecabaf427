"""The documented entry points: `load_gguf` (metadata + quantized state dict) and `ops.dequantize`."""
import numpy as np
import torch
from gguf import GGMLQuantizationType as T, GGUFWriter, quants

import comfyui_zimage_gguf
from comfyui_zimage_gguf.ops import dequantize
from comfyui_zimage_gguf.ops.runtime.state_dict import quantized_state_dict
from comfyui_zimage_gguf.ops.runtime.tensor import QuantizedTensor


def test_load_gguf_gives_metadata_and_quantized_tensors(tmp_path):
    path = tmp_path / "small.gguf"
    values = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
    writer = GGUFWriter(str(path), arch="qwen3")
    writer.add_uint32("qwen3.block_count", 7)
    writer.add_tensor("blk.0.ffn_up.weight", quants.quantize(values, T.Q8_0), raw_dtype=T.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    gguf_file = comfyui_zimage_gguf.load_gguf(path)
    assert gguf_file.architecture == "qwen3" and gguf_file.metadata["qwen3.block_count"] == 7
    state_dict = quantized_state_dict(gguf_file, torch.bfloat16)
    weight = state_dict["blk.0.ffn_up.weight"]
    assert isinstance(weight, QuantizedTensor)
    assert weight.shape == (4, 64) and weight.dtype == torch.bfloat16 and weight.ggml_type == T.Q8_0
    expected = quants.dequantize(quants.quantize(values, T.Q8_0), T.Q8_0)
    assert torch.equal(weight.dequantize(torch.float32), torch.from_numpy(expected))
    assert torch.equal(dequantize(gguf_file.raw_tensor("blk.0.ffn_up.weight"), T.Q8_0, (4, 64), torch.float32),
                       torch.from_numpy(expected))
