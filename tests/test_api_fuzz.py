"""Fuzzing the request parsers with hypothesis: whatever the body, the answer is the parsed request
or a 4xx OpenAI error, never another exception (which the server would answer with a 500).

Parser level (in process, fast): 10,000 generated JSON bodies (well-typed, mistyped, NaN/Infinity,
huge integers, deep nesting, unknown fields, raw byte mutations) through the strict decoder and the
generation and edit checks, and 2,000 multipart-style text forms. App level: a few hundred bodies
over HTTP through the bridge's aiohttp app against a fake ComfyUI (decoder, checks, routing,
workflow building and the answer together): never a 5xx.
"""
from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from helpers.api_client import MODEL, start_api, start_fake  # noqa: E402

from comfyui_zimage_gguf.api.edit_request import _edit_from_body  # noqa: E402
from comfyui_zimage_gguf.api.generation_request import form_to_body, parse_generation_request  # noqa: E402
from comfyui_zimage_gguf.api.openai_errors import ApiError  # noqa: E402
from comfyui_zimage_gguf.api.request_checks import decode_json  # noqa: E402

PARSER_EXAMPLES = 10_000
FORM_EXAMPLES = 2_000
APP_EXAMPLES = 300
FIELDS = ("prompt", "model", "n", "size", "response_format", "output_format", "output_compression", "background",
          "quality", "stream", "partial_images", "seed", "steps", "negative_prompt", "input_fidelity", "strength",
          "images", "mask", "user", "style")
FAST = settings(deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])

numbers = st.one_of(
    st.integers(), st.integers(min_value=-(10 ** 400), max_value=10 ** 400), st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 1, 4, 5, 16, 64, 100, 101, 2 ** 64 - 1, 2 ** 64, -1, 0.5, 1.0, 1e308]),
)
texts = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", " ", "auto", "64x64", "1024x1024", "63x64", "64X2048", "0x0", "9" * 20 + "x64",
                     "b64_json", "url", "png", "jpeg", "webp", "opaque", "transparent", "low", "hd", "high",
                     "true", "false", "1", "data:image/png;base64,AAAA", "data:image/png;base64,@@", MODEL]),
)
leaves = st.one_of(st.none(), st.booleans(), numbers, texts)
values = st.recursive(leaves, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                     st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                      max_leaves=8)
bodies = st.dictionaries(st.one_of(st.sampled_from(FIELDS), st.text(max_size=10)), values, max_size=10)


def encoded(body) -> bytes:
    return json.dumps(body, allow_nan=True).encode()


valid_generations = st.fixed_dictionaries(
    {"prompt": st.text(min_size=1, max_size=40).filter(str.strip), "model": st.just(MODEL), "size": st.just("64x64")},
    optional={"n": st.integers(1, 4), "seed": st.integers(0, 2 ** 64 - 1), "steps": st.integers(1, 3),
              "response_format": st.sampled_from(["b64_json", "url"]), "output_format": st.just("png"),
              "negative_prompt": st.text(max_size=40), "quality": st.sampled_from(["low", "high", "auto", "hd"]),
              "stream": st.booleans(), "partial_images": st.integers(0, 3), "user": st.text(max_size=10)})


@st.composite
def raw_bodies(draw) -> bytes:
    """JSON text of a body, a non-object, or such text cut, spliced or wrapped in deep nesting."""
    body = draw(st.one_of(bodies, values, valid_generations))
    if isinstance(body, dict) and draw(st.booleans()):  # a body that passes the first checks, with some fields wrong
        body = {**draw(valid_generations), "images": [{"image_url": "data:image/png;base64,AAAA"}],
                **draw(st.dictionaries(st.sampled_from(FIELDS), values, min_size=1, max_size=3))}
    raw = encoded(body)
    mutation = draw(st.sampled_from(["none", "none", "cut", "splice", "nest", "bytes"]))
    if mutation == "cut":
        raw = raw[: draw(st.integers(0, len(raw)))]
    elif mutation == "splice":
        at = draw(st.integers(0, len(raw)))
        raw = raw[:at] + draw(st.binary(max_size=8)) + raw[at:]
    elif mutation == "nest":
        depth = draw(st.integers(1, 100))  # 100,000 levels: test_api_hardening
        raw = b'{"prompt": "p", "x": ' + b"[" * depth + b"]" * depth + b"}"
    elif mutation == "bytes":
        raw = draw(st.binary(max_size=64))
    return raw


def parse_like_the_server(raw: bytes) -> None:
    """What a generations and an edit request do with a body before any workflow is touched."""
    try:
        body = decode_json(raw)
    except ApiError as error:
        assert error.status == 400, error
        return
    for check in (parse_generation_request, lambda b: _edit_from_body(b, b"image", None)):
        try:
            if check is parse_generation_request or isinstance(body, dict):
                check(body)
        except ApiError as error:
            assert 400 <= error.status < 500, error
            json.dumps(error.body())  # the answer itself can be written


@settings(FAST, max_examples=PARSER_EXAMPLES)
@given(raw_bodies())
def test_parser_never_raises_anything_but_a_400(raw):
    parse_like_the_server(raw)


@settings(FAST, max_examples=FORM_EXAMPLES)
@given(st.dictionaries(st.sampled_from(FIELDS), st.one_of(texts, st.text(max_size=30),
                                                           st.sampled_from(["9" * 5000, " 2 ", "nan", "1e999"])),
                       max_size=10))
def test_multipart_text_fields_never_raise_anything_but_a_400(fields):
    body = form_to_body(fields)
    for check in (parse_generation_request, lambda b: _edit_from_body(b, b"image", None)):
        try:
            check(body)
        except ApiError as error:
            assert 400 <= error.status < 500, error


@pytest.fixture(scope="module")
def bridge():
    fake = start_fake()
    api = start_api([fake.url], max_waiting=64)
    yield api
    api.stop()
    fake.thread.stop()


def post(url: str, raw: bytes, content_type: str) -> tuple[int, bytes, str]:
    request = urllib.request.Request(url, data=raw, headers={"Content-Type": content_type}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read(), response.headers.get_content_type()
    except urllib.error.HTTPError as error:
        return error.code, error.read(), error.headers.get_content_type()


@settings(FAST, max_examples=APP_EXAMPLES)
@given(raw=st.one_of(raw_bodies(), bodies.map(lambda b: encoded({**b, "model": MODEL, "size": "64x64"})),
                     valid_generations.map(encoded)),
       path=st.sampled_from(["/v1/images/generations", "/v1/images/edits"]),
       content_type=st.sampled_from(["application/json", "application/json", "text/plain"]))
def test_app_never_answers_a_server_error(bridge, raw, path, content_type):
    status, content, answer_type = post(bridge.url + path, raw, content_type)
    assert status < 500, content[:500]
    if status == 200 and answer_type == "text/event-stream":
        assert b"event: error" not in content, content[:500]
    if status >= 400:
        assert answer_type == "application/json" and "error" in json.loads(content)
