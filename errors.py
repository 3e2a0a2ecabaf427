"""The pack's error types.

Every message starts with one line of plain words, within about 120 characters: the problem and
what to do. Details (full paths, both widths, what was found) follow on the next lines. ComfyUI's
editor shows the exception's type and that first line in its error toast.

ComfyUI names an error `type(e).__module__ + "." + type(e).__qualname__`, and for a custom node
the module is its folder path. Every class here (and every subclass elsewhere in the pack) reports
the module `ZImageGGUF` instead, so the editor shows `ZImageGGUF.IncompatibleModelError`
whatever folder the pack is installed in.
"""
import os

ERROR_MODULE = "ZImageGGUF"


class ZImageGGUFError(Exception):
    """Base class for every error this pack raises on purpose."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.__module__ = ERROR_MODULE


ZImageGGUFError.__module__ = ERROR_MODULE


class GGUFFormatError(ZImageGGUFError, ValueError):
    """The file is not a well-formed GGUF file."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(
            f"{os.path.basename(self.path)} is not a valid GGUF file: download it again (damaged or incomplete?)\n"
            f"{self.path}: not a valid GGUF file: {problem}")


class NotGGUFError(GGUFFormatError):
    """The file is another format (safetensors, a web page, a Git LFS pointer ...): downloading the
    same file again would not help, so the first line says what it is and what to do instead."""

    def __init__(self, path, kind: str, advice: str):
        self.path, self.kind = str(path), kind
        self.problem = f"it is {kind}"
        ZImageGGUFError.__init__(
            self, f"{os.path.basename(self.path)} is {kind}, not a GGUF file: {advice}\n"
                  f"{self.path}: not a valid GGUF file: {self.problem}")


class UnsupportedQuantTypeError(ZImageGGUFError, ValueError):
    """A tensor uses a GGML type this pack cannot dequantize."""


class ModelDetectionError(ZImageGGUFError, ValueError):
    """The file holds no model this loader knows how to build."""


class IncompatibleModelError(ZImageGGUFError, ValueError):
    """Two files (encoder and diffusion model) or a file and a loader cannot work together."""


class ConvertError(ZImageGGUFError):
    """A model cannot be converted (layout, format, dtype) or the GGUF cannot be written."""
