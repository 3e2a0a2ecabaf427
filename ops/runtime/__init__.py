"""The torch runtime: the quantized tensor, state dicts of them, reusable buffers, the layers and
the dtype policy.
"""
