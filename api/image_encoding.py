"""Images in and out of the API, with Pillow (ComfyUI ships it; the bridge needs it for non-PNG answers).

Out: ComfyUI saves PNGs; an answer in jpeg or webp is the PNG re-encoded at `output_compression`
(0-100, OpenAI's scale: 100 = least compression = best quality). In: an edit's image and mask are
checked to be PNG, JPEG or WebP, sized to a multiple of 16 (what Z-Image's latent needs), and stored
as one PNG for ComfyUI's LoadImage: RGB, or RGBA whose alpha is the mask's (LoadImage's MASK output is
1 - alpha, so transparent = repaint, as OpenAI defines masks).
"""
from __future__ import annotations

import io
from dataclasses import dataclass

from .openai_errors import ApiError, bad_request

OUTPUT_FORMATS = ("png", "jpeg", "webp")
INPUT_FORMATS = {"PNG": "png", "JPEG": "jpeg", "WEBP": "webp"}
MAGIC = {"png": b"\x89PNG\r\n\x1a\n", "jpeg": b"\xff\xd8\xff", "webp": b"RIFF"}
MIME = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
DEFAULT_COMPRESSION = 100
SIDE_MULTIPLE = 16
MAX_INPUT_PIXELS = 4096 * 4096


def _pillow():
    try:
        from PIL import Image
    except ImportError:
        raise ApiError(
            500,
            "Pillow is not installed where the image API runs: install it (pip install pillow) to answer in "
            "jpeg or webp and to take edits",
            type="server_error",
            code="pillow_missing",
        ) from None
    return Image


def encode(image, output_format: str, compression: int | None = None, size: tuple[int, int] | None = None) -> bytes:
    """PNG bytes or a PIL image -> bytes in `output_format`, resized to `size` (width, height) when given;
    PNG bytes in and png out at their own size pass unchanged."""
    if (output_format == "png" and size is None and isinstance(image, (bytes, bytearray))
            and bytes(image[:8]) == MAGIC["png"]):
        return bytes(image)
    Image = _pillow()
    if isinstance(image, (bytes, bytearray)):
        image = Image.open(io.BytesIO(image))
    if size is not None and image.size != tuple(size):
        image = image.convert("RGB").resize(tuple(size), Image.Resampling.BILINEAR)
    quality = DEFAULT_COMPRESSION if compression is None else compression
    out = io.BytesIO()
    if output_format == "png":
        image.save(out, format="PNG", compress_level=4)
    elif output_format == "jpeg":
        image.convert("RGB").save(out, format="JPEG", quality=max(1, min(quality, 95)))
    else:
        image.convert("RGB").save(out, format="WEBP", quality=quality, lossless=False)
    return out.getvalue()


@dataclass(frozen=True)
class EditImage:
    png: bytes
    masked: bool
    width: int
    height: int


def _open(content: bytes, what: str):
    Image = _pillow()
    Image.MAX_IMAGE_PIXELS = MAX_INPUT_PIXELS
    try:
        image = Image.open(io.BytesIO(content))
        kind = image.format
        image.load()
    except Image.DecompressionBombError:
        raise bad_request(f"{what} is larger than {MAX_INPUT_PIXELS} pixels", what) from None
    except Exception:  # Pillow raises many types for bytes that are no image
        raise bad_request(f"{what} is not an image Pillow can read (send a PNG, JPEG or WebP file)", what,
                          code="invalid_image") from None
    if kind not in INPUT_FORMATS:
        raise bad_request(f"{what} is a {kind} image; send a PNG, JPEG or WebP file", what, code="invalid_image_format")
    return image


def _fit(side: int) -> int:
    return max(SIDE_MULTIPLE, side - side % SIDE_MULTIPLE)


def prepare_edit_image(image_bytes: bytes, mask_bytes: bytes | None, size) -> EditImage:
    """Check and normalise an edit's image and mask into one PNG for ComfyUI's LoadImage.

    The image is resized to `size` (width, height) when given, else cropped down to multiples of 16.
    The mask (OpenAI: transparent pixels mark where to repaint; same size as the image) must have an
    alpha channel; it becomes the PNG's alpha.
    """
    Image = _pillow()
    image = _open(image_bytes, "image")
    width, height = size if size[0] is not None else (_fit(image.width), _fit(image.height))
    alpha = None
    if mask_bytes is not None:
        mask = _open(mask_bytes, "mask")
        if "A" not in mask.getbands() and not (mask.mode == "P" and "transparency" in mask.info):
            raise bad_request(
                "mask has no alpha channel: send a PNG whose transparent pixels mark where to repaint", "mask",
                code="invalid_mask",
            )
        if mask.size != image.size:
            raise bad_request(
                f"mask is {mask.width}x{mask.height} but image is {image.width}x{image.height}; they must match",
                "mask", code="invalid_mask",
            )
        alpha = mask.convert("RGBA").getchannel("A")
    picture = image.convert("RGB")
    if alpha is not None:
        picture.putalpha(alpha)
    if (width, height) != picture.size:
        if size[0] is None:  # crop to multiples of 16: keeps pixels (and the mask's edges) where they are
            picture = picture.crop((0, 0, width, height))
        else:
            picture = picture.resize((width, height), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    picture.save(out, format="PNG", compress_level=1)
    return EditImage(out.getvalue(), alpha is not None, width, height)
