"""Schemathesis against a real ComfyUI 0.18.1 with the pack's /v1 routes: every generated request
(from api/openapi.json, the file /v1/openapi.json serves) gets no server error and an answer that
matches the description (status, content type, headers, body schema). Generated requests rarely
name a served model, so the 200 answers are checked by explicit cases of the same description:
a generation (b64_json, url, streamed) with the test models at 64x64.

The counts (cases per operation, statuses seen) are printed at the end of the module (-s).
"""
from __future__ import annotations

import base64
import collections
import json
import struct
import zlib
from pathlib import Path

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance, response_headers_conformance, response_schema_conformance, status_code_conformance,
)

from comfy_server import shipped_workflow  # noqa: E402

SPEC_FILE = Path(__file__).resolve().parents[2] / "api" / "openapi.json"
KEY = "sk-schemathesis-51c0"
MODEL, OTHER = "zimage_schema", "zimage_schema_other"
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]
EXAMPLES_PER_OPERATION = 60

schema = schemathesis.openapi.from_path(SPEC_FILE)
seen: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)


@pytest.fixture(scope="module")
def schema_server(start_comfy_server, tmp_path_factory, zimage_gguf_name, qwen3_4b_gguf_name, flux_vae_name):
    folder = tmp_path_factory.mktemp("schema-workflows")
    for name in (MODEL, OTHER):  # two served models: a generated body without `model` is a 400, not a run
        workflow = shipped_workflow(zimage_gguf_name, qwen3_4b_gguf_name, flux_vae_name, size=64)
        for node in workflow.values():
            if node["class_type"] == "KSampler":
                node["inputs"]["steps"] = 1
        (folder / f"{name}.json").write_text(json.dumps(workflow))
    server = start_comfy_server("comfyui-schema", env={
        "ZIMAGE_GGUF_API_KEY": KEY, "ZIMAGE_GGUF_API_WORKFLOWS": str(folder), "ZIMAGE_GGUF_API_TIMEOUT": "300"})
    yield server
    total = sum(sum(counter.values()) for counter in seen.values())
    print(f"\nschemathesis against {server.url}: {total} requests")
    for operation, counter in sorted(seen.items()):
        print(f"  {operation}: {sum(counter.values())} requests, statuses {dict(sorted(counter.items()))}")


def call(case, server):
    response = case.call_and_validate(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"},
                                      checks=CHECKS, timeout=600)
    seen[f"{case.method} {case.path}"][response.status_code] += 1
    return response


@schema.parametrize()
@settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
def test_generated_requests_get_no_server_error_and_match_the_description(case, schema_server):
    call(case, schema_server)


def _png(width: int, height: int) -> bytes:
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    rows = b"".join(b"\x00" + b"\x80\x40\x20" * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


SUCCESSES = {
    "b64_json": {"response_format": "b64_json"},
    "url": {"response_format": "url"},
    "stream": {"stream": True, "partial_images": 1},
}


@pytest.mark.parametrize("extra", SUCCESSES.values(), ids=SUCCESSES.keys())
def test_a_generation_that_runs_matches_the_description(schema_server, extra):
    operation = schema["/v1/images/generations"]["POST"]
    case = operation.Case(body={"model": MODEL, "prompt": "a fox", "size": "64x64", "seed": 1, **extra},
                          media_type="application/json")
    response = call(case, schema_server)
    assert response.status_code == 200, response.text[:500]
    if extra.get("stream"):
        assert response.headers.get("content-type", [""])[0].startswith("text/event-stream")
        assert "image_generation.completed" in response.text
    else:
        item = response.json()["data"][0]
        assert ("b64_json" in item) == (extra["response_format"] == "b64_json")


def test_an_edit_that_runs_matches_the_description(schema_server):
    operation = schema["/v1/images/edits"]["POST"]
    image = "data:image/png;base64," + base64.b64encode(_png(64, 64)).decode()
    case = operation.Case(body={"model": MODEL, "prompt": "a fox", "seed": 2, "images": [{"image_url": image}]},
                          media_type="application/json")
    response = call(case, schema_server)
    assert response.status_code in (200, 400), response.text[:500]  # 400: this model has no edit workflow
