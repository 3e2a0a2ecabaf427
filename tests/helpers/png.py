"""Tiny PNG writer/reader (standard library) for the image API tests: solid RGB images."""
from __future__ import annotations

import struct
import zlib

SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def solid_png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    row = b"\x00" + bytes(rgb) * width
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(row * height)) + _chunk(b"IEND", b"")


def png_size(content: bytes) -> tuple[int, int]:
    """(width, height) from the IHDR chunk; AssertionError when the bytes are no PNG."""
    assert content[:8] == SIGNATURE, f"not a PNG: {content[:16]!r}"
    assert content[12:16] == b"IHDR"
    return struct.unpack(">II", content[16:24])


def solid_png_colour(content: bytes) -> tuple[int, int, int]:
    """The first pixel of an 8-bit RGB PNG written by solid_png."""
    png_size(content)
    data, position = b"", 8
    while position < len(content):
        (length,) = struct.unpack(">I", content[position : position + 4])
        kind = content[position + 4 : position + 8]
        if kind == b"IDAT":
            data += content[position + 8 : position + 8 + length]
        position += 12 + length
    pixels = zlib.decompress(data)
    return tuple(pixels[1:4])
