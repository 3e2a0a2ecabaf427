"""The body of `POST /v1/images/edits`: multipart as OpenAI's SDK and Open WebUI send it, or JSON.

Multipart: `image` or `image[]` (the first image is used; PNG, JPEG or WebP), optional `mask` (a PNG
whose transparent pixels mark where to repaint, the image's size), and text fields: prompt, model, n,
size, response_format, output_format, output_compression, background, quality, stream,
partial_images, input_fidelity (high | low), and the extensions seed, steps, negative_prompt and
`strength` (0-1, the sampler's denoise). JSON: the same fields, with `images: [{"image_url": "data:
image/png;base64,..."}]` and optionally `mask: {"image_url": ...}`.

Denoise: `strength` when given; else 1.0 with a mask (the masked area is repainted from noise), 0.5
for input_fidelity high and 0.75 for low (the default), which keep more or less of the image.
Each file is capped (ZIMAGE_GGUF_API_MAX_UPLOAD_MB, default 20 MB), and so are the text fields.
"""
from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass

from .generation_request import GenerationRequest, form_to_body, generation_fields
from .openai_errors import ApiError, bad_request

DEFAULT_MAX_UPLOAD_BYTES = 20 * 1024 * 1024
MAX_FIELD_BYTES = 256 * 1024
IMAGE_FIELDS = ("image", "image[]")
FIDELITY_DENOISE = {"low": 0.75, "high": 0.5}
MASKED_DENOISE = 1.0
_DATA_URL = re.compile(r"^data:([\w/+.-]*)(;[\w=-]+)*;base64,", re.IGNORECASE)


@dataclass(frozen=True)
class EditRequest:
    params: GenerationRequest
    image: bytes
    mask: bytes | None
    denoise: float


def too_large(what: str, limit: int) -> ApiError:
    return ApiError(413, f"{what} is larger than the {limit // (1024 * 1024)} MB limit", param=what,
                    code="file_too_large")


def _damaged_multipart() -> ApiError:
    return bad_request("the multipart body cannot be read (a damaged part or boundary)", code="invalid_multipart")


async def _next_part(reader):
    from aiohttp.http_exceptions import HttpProcessingError

    try:
        return await reader.next()
    except (ValueError, AssertionError, HttpProcessingError):  # e.g. InvalidHeader in a part's headers
        raise _damaged_multipart() from None


async def _read_chunk(part) -> bytes:
    from aiohttp.http_exceptions import HttpProcessingError

    try:
        return await part.read_chunk(64 * 1024)
    except (ValueError, AssertionError, HttpProcessingError):
        raise _damaged_multipart() from None


async def _read_part(part, limit: int, what: str) -> bytes:
    chunks, size = [], 0
    while chunk := await _read_chunk(part):
        size += len(chunk)
        if size > limit:
            raise too_large(what, limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _decode_data_url(value, what: str, limit: int) -> bytes:
    if isinstance(value, dict):
        if "file_id" in value and "image_url" not in value:
            raise bad_request(f"{what}: file_id references are not supported here; send image_url as a data URL",
                              what)
        value = value.get("image_url")
    if isinstance(value, dict):  # {"image_url": {"url": ...}} as chat messages write it
        value = value.get("url")
    if not isinstance(value, str) or not (match := _DATA_URL.match(value)):
        raise bad_request(f"{what} must be a data URL (data:image/png;base64,...); http(s) URLs are not fetched",
                          what)
    encoded = value[match.end():]
    if len(encoded) * 3 // 4 > limit:
        raise too_large(what, limit)
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise bad_request(f"{what}: the data URL is not valid base64", what) from None


def _edit_from_body(body: dict, image: bytes | None, mask: bytes | None) -> EditRequest:
    if image is None:
        raise bad_request("image is required: send image (or image[]) as a file, or images: [{image_url}]",
                          "image", code="missing_required_parameter")
    params = GenerationRequest(**generation_fields(body))
    fidelity = body.get("input_fidelity")
    if fidelity is not None and (not isinstance(fidelity, str) or fidelity not in FIDELITY_DENOISE):
        raise bad_request(f"input_fidelity must be high or low, got {fidelity!r}", "input_fidelity")
    strength = body.get("strength")
    if strength is not None:
        try:
            strength = float(strength)
        except (TypeError, ValueError, OverflowError):  # OverflowError: a JSON integer beyond float's range
            strength = None
        if strength is None or not 0.0 < strength <= 1.0:
            raise bad_request(f"strength must be a number above 0 and at most 1, got {body.get('strength')!r}",
                              "strength")
        denoise = strength
    elif mask is not None:
        denoise = MASKED_DENOISE
    else:
        denoise = FIDELITY_DENOISE[fidelity or "low"]
    return EditRequest(params, image, mask, denoise)


async def read_edit_request(request, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES, loads=json.loads) -> EditRequest:
    """Read and check the request (multipart or JSON, streamed under the caps); raise ApiError 400/413."""
    content_type = request.content_type
    if content_type == "multipart/form-data":
        try:
            reader = await request.multipart()
        except (ValueError, AssertionError):
            raise bad_request("the multipart body cannot be read", code="invalid_multipart") from None
        fields, image, mask = {}, None, None
        while (part := await _next_part(reader)) is not None:
            name = part.name or ""
            if name in IMAGE_FIELDS:
                content = await _read_part(part, max_upload_bytes, "image")
                image = content if image is None else image
            elif name == "mask":
                mask = await _read_part(part, max_upload_bytes, "mask")
            else:
                raw = await _read_part(part, MAX_FIELD_BYTES, name or "field")
                try:
                    fields[name] = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise bad_request(f"{name} is not UTF-8 text", name) from None
        return _edit_from_body(form_to_body(fields), image, mask)
    if content_type == "application/json":
        limit, chunks, size = 2 * max_upload_bytes + MAX_FIELD_BYTES, [], 0
        while chunk := await request.content.read(64 * 1024):
            size += len(chunk)
            if size > limit:
                raise too_large("request body", limit)
            chunks.append(chunk)
        raw = b"".join(chunks)
        try:
            body = loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise bad_request("the request body is not valid JSON", code="invalid_json") from None
        if not isinstance(body, dict):
            raise bad_request("the request body must be a JSON object", code="invalid_json")
        images = body.get("images")
        if images is not None and (not isinstance(images, list) or not images):
            raise bad_request("images must be a non-empty list of {image_url: data URL}", "images")
        image = _decode_data_url(images[0], "images", max_upload_bytes) if images else None
        mask = _decode_data_url(body["mask"], "mask", max_upload_bytes) if body.get("mask") is not None else None
        return _edit_from_body(body, image, mask)
    raise bad_request(
        f"send the edit as multipart/form-data (image, prompt, ...) or JSON, not {content_type or 'no content type'}",
        code="invalid_content_type",
    )
