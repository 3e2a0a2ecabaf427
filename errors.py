"""The pack's error types: every message names the file, what was found, what was expected and what to do."""


class ZImageGGUFError(Exception):
    """Base class for every error this pack raises on purpose."""


class GGUFFormatError(ZImageGGUFError, ValueError):
    """The file is not a well-formed GGUF file."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: not a valid GGUF file: {problem}")


class UnsupportedQuantTypeError(ZImageGGUFError, ValueError):
    """A tensor uses a GGML type this pack cannot dequantize."""


class ModelDetectionError(ZImageGGUFError, ValueError):
    """The file holds no model this loader knows how to build."""


class IncompatibleModelError(ZImageGGUFError, ValueError):
    """Two files (encoder and diffusion model) or a file and a loader cannot work together."""
