"""The body of `POST /v1/images/generations`, checked: OpenAI's fields plus seed, steps, negative_prompt.

Any other field is accepted and ignored, as OpenAI-compatible servers do.
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
_SIZE = re.compile(r"^\s*(\d+)\s*[xX×]\s*(\d+)\s*$")


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


def parse_generation_request(body) -> GenerationRequest:
    """Check a decoded JSON body; raise a 400 ApiError naming the first bad field."""
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object", code="invalid_json")
    prompt = _text(body, "prompt")
    if prompt is None or not prompt.strip():
        raise bad_request("prompt is required: a non-empty string", "prompt", code="missing_required_parameter")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise bad_request(f"prompt is {len(prompt)} characters long; the limit is {MAX_PROMPT_CHARS}", "prompt")
    model = _text(body, "model")
    response_format = body.get("response_format") or "b64_json"
    if response_format not in RESPONSE_FORMATS:
        raise bad_request(
            f'response_format must be "b64_json" or "url", got {response_format!r}', "response_format"
        )
    width, height = parse_size(body.get("size"))
    return GenerationRequest(
        model=model or None,
        prompt=prompt,
        n=_integer(body, "n", 1, MAX_IMAGES) or 1,
        width=width,
        height=height,
        response_format=response_format,
        seed=_integer(body, "seed", 0, MAX_SEED),
        steps=_integer(body, "steps", 1, MAX_STEPS),
        negative_prompt=_text(body, "negative_prompt"),
    )
