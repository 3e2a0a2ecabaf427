"""The OpenAPI 3.1 description of the /v1 API: the file in the repository is what /v1/openapi.json
serves, it names every route the service adds, and every field the request parsers read."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers.api_client import call, start_api, start_fake

from comfyui_zimage_gguf.api import generation_request
from comfyui_zimage_gguf.api.service import OPENAPI_FILE, ImageApi

SPEC_FILE = Path(__file__).resolve().parents[1] / "api" / "openapi.json"


@pytest.fixture(scope="module")
def spec():
    return json.loads(SPEC_FILE.read_text())


def test_the_served_description_is_the_file_in_the_repository(spec):
    assert OPENAPI_FILE.resolve() == SPEC_FILE
    fake = start_fake()
    api = start_api([fake.url], api_key="sk-x")
    try:
        status, headers, served = call(f"{api.url}/v1/openapi.json")  # readable without the key
    finally:
        api.stop()
        fake.thread.stop()
    assert status == 200 and headers.get_content_type() == "application/json"
    assert served == spec


def test_it_is_openapi_3_1_and_names_every_route(spec):
    assert spec["openapi"] == "3.1.0"
    routes = {(method.lower(), path) for method, path, _ in ImageApi(None, None, None).routes() if method != "*"}
    described = {(method, path.replace("{model}", "{model}")) for path, item in spec["paths"].items()
                 for method in item}
    assert routes == described


def test_every_generation_field_is_described(spec):
    schema = spec["components"]["schemas"]["GenerationRequest"]["properties"]
    fields = {"prompt", "model", "n", "size", "response_format", "output_format", "output_compression",
              "background", "quality", "stream", "partial_images", "seed", "steps", "negative_prompt"}
    assert fields == set(schema)
    assert set(generation_request.INTEGER_FIELDS) <= set(schema)
    assert schema["prompt"]["maxLength"] == schema["negative_prompt"]["maxLength"] == generation_request.MAX_PROMPT_CHARS
    assert schema["n"]["maximum"] == generation_request.MAX_IMAGES
    assert schema["steps"]["maximum"] == generation_request.MAX_STEPS
    assert schema["seed"]["maximum"] == generation_request.MAX_SEED
    assert set(schema["output_format"]["enum"]) - {None} == set(generation_request.OUTPUT_FORMATS)
    assert set(schema["quality"]["enum"]) - {None} == set(generation_request.QUALITIES)
    edits = spec["paths"]["/v1/images/edits"]["post"]["requestBody"]["content"]
    assert set(edits) == {"multipart/form-data", "application/json"}
    answer = spec["paths"]["/v1/images/generations"]["post"]["responses"]["200"]["content"]
    assert set(answer) == {"application/json", "text/event-stream"}


# --- schemathesis against the bridge app in process (the real-server run: tests/integration/test_api_schema.py)

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance, response_headers_conformance, response_schema_conformance, status_code_conformance,
)

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]
schema = schemathesis.openapi.from_path(SPEC_FILE)


@pytest.fixture(scope="module")
def keyed_bridge():
    fake = start_fake()
    api = start_api([fake.url], api_key="sk-schema", max_waiting=64)
    yield api
    api.stop()
    fake.thread.stop()


@schema.parametrize()
@settings(max_examples=30, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_bridge_answers_match_the_description(case, keyed_bridge):
    # One served model here, so a generated body without `model` runs (200, streamed or not) on the fake ComfyUI.
    case.call_and_validate(base_url=keyed_bridge.url, headers={"Authorization": "Bearer sk-schema"}, checks=CHECKS,
                           timeout=60)
