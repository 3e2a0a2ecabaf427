"""GGUF and GGML in torch, in four parts: ggml/ (the math: quant types, kernels, quantizers, type
rules), gguf_file/ (reader, writer, imatrix), runtime/ (quantized tensor, state dicts, buffers,
layers, dtype policy) and comfy_edge/ (ComfyUI's layouts, ops namespaces, patchers, compatibility
probe). This package re-exports the public names.

Nothing here imports ComfyUI at module level.
"""
from .ggml.dequant import dequantize
from .ggml.quantize import quantize
from .ggml.quant_types import QUANT_TYPES, FLOAT_TYPES, QuantType, quant_type

__all__ = ["dequantize", "quantize", "QUANT_TYPES", "FLOAT_TYPES", "QuantType", "quant_type"]
