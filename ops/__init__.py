"""Pure torch + gguf: quant-type table, dequant kernels, quantizers, quantized tensor, layers, dtype policy.

Nothing here imports ComfyUI at module level.
"""
from .dequant import dequantize
from .quantize import quantize
from .quant_types import QUANT_TYPES, FLOAT_TYPES, QuantType, quant_type

__all__ = ["dequantize", "quantize", "QUANT_TYPES", "FLOAT_TYPES", "QuantType", "quant_type"]
