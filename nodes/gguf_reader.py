"""Placeholder: filled in by the reader work."""


def load_gguf(path):
    raise NotImplementedError
