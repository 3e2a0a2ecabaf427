"""gguf-py's reference for Q1_0, for a gguf-py that has the type but not its class (0.19.0).

A transcription of the Q1_0 class of upstream gguf-py (ggml-org/llama.cpp, gguf-py/gguf/quants.py),
registered in gguf-py's own table so that `gguf.quants.dequantize` / `quantize` serve it like every
other type. A gguf-py that ships the class keeps its own.
"""
import numpy as np
from gguf import GGMLQuantizationType, quants

if GGMLQuantizationType.Q1_0 not in quants._type_traits:

    class Q1_0(quants.__dict__["__Quant"], qtype=GGMLQuantizationType.Q1_0):
        @classmethod
        def quantize_blocks(cls, blocks: np.ndarray) -> np.ndarray:
            n_blocks = blocks.shape[0]
            d = np.mean(np.abs(blocks), axis=-1, keepdims=True).astype(np.float16).view(np.uint8)
            signs = (blocks >= 0).astype(np.uint8).reshape((n_blocks, cls.block_size // 8, 8))
            shifts = np.arange(8, dtype=np.uint8).reshape((1, 1, 8))
            qs = np.sum(signs << shifts, axis=-1, dtype=np.uint8)
            return np.concatenate([d, qs], axis=-1)

        @classmethod
        def dequantize_blocks(cls, blocks: np.ndarray) -> np.ndarray:
            n_blocks = blocks.shape[0]
            d, qs = np.hsplit(blocks, [2])
            d = d.view(np.float16).astype(np.float32)
            bits = qs.reshape((n_blocks, cls.block_size // 8, 1)) >> np.arange(8, dtype=np.uint8).reshape((1, 1, 8))
            bits = (bits & np.uint8(0x01)).reshape((n_blocks, cls.block_size))
            return np.where(bits != 0, d, -d)
