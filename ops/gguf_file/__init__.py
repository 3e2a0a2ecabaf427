"""The GGUF file: the reader (validates, memory-maps; knows no tensor class), the writer and
llama.cpp importance matrices.
"""
