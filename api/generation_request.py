"""The body of `POST /v1/images/generations` (and the shared fields of `/v1/images/edits`), checked.

OpenAI's fields: prompt, model, n (1-4), size ("WIDTHxHEIGHT" in multiples of 16 from 64 to 2048, or
"auto"), response_format (b64_json | url), output_format (png | jpeg | webp), output_compression (0-100,
jpeg/webp quality; 100 = best, the default), background (auto | opaque; transparent is refused: Z-Image
has no alpha), quality (low | medium | high | auto, and dall-e-3's standard | hd: step counts, see
`workflow_params.quality_steps`), stream (bool) and partial_images (0-3). Extensions: seed, steps
(overrides quality), negative_prompt. Any other field (moderation, style, user ...) is accepted and
ignored, as OpenAI-compatible servers do. Multipart form values arrive as text and are converted first.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .openai_errors import bad_request

MAX_IMAGES = 4
SIZE_MULTIPLE = 16
MIN_SIDE = 64
MAX_SIDE = 2048
MAX_STEPS = 100
MAX_SEED = 2**64 - 1  # ComfyUI's KSampler seed range
MAX_PROMPT_CHARS = 32000
RESPONSE_FORMATS = ("b64_json", "url")
OUTPUT_FORMATS = ("png", "jpeg", "webp")
BACKGROUNDS = ("auto", "opaque")
QUALITIES = ("low", "medium", "high", "auto", "standard", "hd")
MAX_PARTIAL_IMAGES = 3
# Fields a multipart form sends as text: converted before the checks (a bad value still gets its 400).
INTEGER_FIELDS = ("n", "seed", "steps", "output_compression", "partial_images")
BOOLEAN_FIELDS = ("stream",)
_SIZE = re.compile(r"^\s*(\d{1,6})\s*[xX×]\s*(\d{1,6})\s*$")  # bounded: int() of 4300+ digits raises


@dataclass(frozen=True)
class GenerationRequest:
    model: str | None
    prompt: str
    n: int = 1
    width: int | None = None
    height: int | None = None
    response_format: str = "b64_json"
    seed: int | None = None
    steps: int | None = None
    negative_prompt: str | None = None
    output_format: str = "png"
    output_compression: int | None = None
    background: str = "auto"
    quality: str = "auto"
    stream: bool = False
    partial_images: int = 0


def _integer(body: dict, name: str, low: int, high: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise bad_request(f"{name} must be an integer from {low} to {high}, got {value!r}", name)
    if not low <= int(value) <= high:
        raise bad_request(f"{name} must be from {low} to {high}, got {int(value)}", name)
    return int(value)


def _text(body: dict, name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise bad_request(f"{name} must be a string, got {type(value).__name__}", name)
    return value


def parse_size(value) -> tuple[int, int] | tuple[None, None]:
    """"WIDTHxHEIGHT" -> (width, height); None or "auto" keeps the workflow's size."""
    if value is None or value == "auto":
        return None, None
    match = _SIZE.match(value) if isinstance(value, str) else None
    if match is None:
        raise bad_request(f'size must be "WIDTHxHEIGHT" (e.g. "1024x1024"), got {value!r}', "size")
    width, height = int(match[1]), int(match[2])
    for side in (width, height):
        if side % SIZE_MULTIPLE or not MIN_SIDE <= side <= MAX_SIDE:
            raise bad_request(
                f"size {width}x{height} is not allowed: width and height must be multiples of {SIZE_MULTIPLE} "
                f"from {MIN_SIDE} to {MAX_SIDE}",
                "size",
            )
    return width, height


def _choice(body: dict, name: str, choices: tuple, default: str) -> str:
    value = body.get(name)
    if value is None:
        return default
    if value not in choices:
        raise bad_request(f"{name} must be one of {', '.join(choices)}; got {value!r}", name)
    return value


def form_to_body(fields) -> dict:
    """Multipart text fields -> a body like a JSON one: integers and booleans converted where they parse."""
    body = {}
    for name, value in fields.items():
        if isinstance(value, str) and name in INTEGER_FIELDS:
            try:
                value = int(value.strip())
            except ValueError:
                pass  # left as text: the check names the field
        elif isinstance(value, str) and name in BOOLEAN_FIELDS:
            value = {"true": True, "false": False, "1": True, "0": False}.get(value.strip().lower(), value)
        body[name] = value
    return body


def generation_fields(body: dict) -> dict:
    """The checked fields shared by generations and edits, as GenerationRequest keyword arguments."""
    prompt = _text(body, "prompt")
    if prompt is None or not prompt.strip():
        raise bad_request("prompt is required: a non-empty string", "prompt", code="missing_required_parameter")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise bad_request(f"prompt is {len(prompt)} characters long; the limit is {MAX_PROMPT_CHARS}", "prompt")
    model = _text(body, "model")
    negative_prompt = _text(body, "negative_prompt")
    if negative_prompt is not None and len(negative_prompt) > MAX_PROMPT_CHARS:
        raise bad_request(f"negative_prompt is {len(negative_prompt)} characters long; the limit is {MAX_PROMPT_CHARS}",
                          "negative_prompt")
    response_format = body.get("response_format") or "b64_json"
    if response_format not in RESPONSE_FORMATS:
        raise bad_request(
            f'response_format must be "b64_json" or "url", got {response_format!r}', "response_format"
        )
    if body.get("background") == "transparent":
        raise bad_request(
            'background "transparent" is not possible: Z-Image makes opaque images (use "auto" or "opaque")',
            "background",
        )
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise bad_request(f"stream must be true or false, got {stream!r}", "stream")
    width, height = parse_size(body.get("size"))
    return dict(
        model=model or None,
        prompt=prompt,
        n=_integer(body, "n", 1, MAX_IMAGES) or 1,
        width=width,
        height=height,
        response_format=response_format,
        seed=_integer(body, "seed", 0, MAX_SEED),
        steps=_integer(body, "steps", 1, MAX_STEPS),
        negative_prompt=negative_prompt,
        output_format=_choice(body, "output_format", OUTPUT_FORMATS, "png"),
        output_compression=_integer(body, "output_compression", 0, 100),
        background=_choice(body, "background", BACKGROUNDS, "auto"),
        quality=_choice(body, "quality", QUALITIES, "auto"),
        stream=bool(stream),
        partial_images=_integer(body, "partial_images", 0, MAX_PARTIAL_IMAGES) or 0,
    )


def parse_generation_request(body) -> GenerationRequest:
    """Check a decoded JSON body; raise a 400 ApiError naming the first bad field."""
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object", code="invalid_json")
    return GenerationRequest(**generation_fields(body))
