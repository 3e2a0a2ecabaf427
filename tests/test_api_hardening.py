"""Issue 20's findings against the bridge, each reproduced: cross-site and DNS-rebinding requests,
credentials and server paths in answers and logs, an empty key, links that never expired, and a
job left running on a server judged lost."""
from __future__ import annotations

import base64
import logging
import threading
import time
import urllib.error
import urllib.request

import pytest
from aiohttp import web

from helpers.aiohttp_thread import ServerThread
from helpers.api_client import MODEL, call, generate, start_api, start_fake
from helpers.fake_comfyui import FakeComfyUI

from comfyui_zimage_gguf.api.auth import ApiConfigError, resolve_api_key
from comfyui_zimage_gguf.api.openai_errors import ApiError, public_text, redact_url
from comfyui_zimage_gguf.api.request_checks import RequestPolicy, check_request, is_loopback_name
from comfyui_zimage_gguf.cli.main import main


def raw_request(url, body=b'{"prompt": "p", "size": "64x64"}', headers=None, method="POST"):
    """(status, headers, body bytes) for a request with exactly these headers."""
    request = urllib.request.Request(url, data=body if method == "POST" else None, headers=headers or {},
                                     method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


@pytest.fixture
def fake():
    server = start_fake()
    yield server
    server.thread.stop()


@pytest.fixture
def bridge(fake):
    api = start_api([fake.url])
    yield api
    api.stop()


# --- 1. request checks ---------------------------------------------------------------------------------

def test_cross_site_text_plain_post_is_refused_and_nothing_runs(bridge, fake):
    # before: 200, and the prompt ran on ComfyUI
    status, _, body = raw_request(f"{bridge.url}/v1/images/generations", headers={
        "Content-Type": "text/plain", "Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"})
    assert status == 403 and b"cross_site_request" in body
    assert fake.received == []


@pytest.mark.parametrize("headers", [
    {"Sec-Fetch-Site": "cross-site"},
    {"Origin": "http://evil.example"},
    {"Origin": "null"},
], ids=["sec-fetch-site", "foreign origin", "opaque origin"])
def test_cross_site_json_post_is_refused(bridge, fake, headers):
    status, _, body = raw_request(f"{bridge.url}/v1/images/generations",
                                  headers={"Content-Type": "application/json", **headers})
    assert status == 403 and b"cross_site_request" in body and fake.received == []


def test_same_origin_browser_request_is_answered(bridge, fake):
    status, headers, _ = raw_request(f"{bridge.url}/v1/images/generations", body=(
        b'{"prompt": "p", "size": "64x64", "model": "%s"}' % MODEL.encode()), headers={
        "Content-Type": "application/json", "Origin": bridge.url, "Sec-Fetch-Site": "same-origin"})
    assert status == 200 and len(fake.received) == 1
    assert "Access-Control-Allow-Origin" not in headers


@pytest.mark.parametrize("path", ["/v1/models", "/images/anything/x.png"])
def test_foreign_host_on_a_loopback_bridge_is_refused(bridge, path):
    # before: 200, so a DNS-rebinding page could read /v1/models and the images
    status, _, body = raw_request(bridge.url + path, headers={"Host": "rebind.evil.example:80"}, method="GET")
    assert status == 403 and b"host_not_allowed" in body
    assert raw_request(bridge.url + "/v1/models", headers={"Host": "localhost"}, method="GET")[0] == 200


def test_cors_only_for_the_allowed_origin(fake):
    api = start_api([fake.url])
    allowed = "http://localhost:3000"
    try:
        status, headers, _ = raw_request(f"{api.url}/v1/models", headers={"Origin": allowed}, method="GET")
        assert status == 403 and "Access-Control-Allow-Origin" not in headers
    finally:
        api.stop()
    from comfyui_zimage_gguf.api.bridge import build_bridge_app
    from comfyui_zimage_gguf.api.catalog import WorkflowCatalog
    from comfyui_zimage_gguf.api.service import ApiSettings
    from comfyui_zimage_gguf.api.upstream import HttpBackend

    app = build_bridge_app(HttpBackend([fake.url]), WorkflowCatalog(None), ApiSettings(),
                           RequestPolicy(loopback_only=True, allow_origin=allowed))
    server = ServerThread(app).start()
    try:
        status, headers, _ = raw_request(f"{server.url}/v1/models", headers={
            "Origin": allowed, "Sec-Fetch-Site": "cross-site"}, method="GET")
        assert status == 200 and headers["Access-Control-Allow-Origin"] == allowed
        status, headers, _ = raw_request(f"{server.url}/v1/images/generations", headers={
            "Origin": allowed, "Access-Control-Request-Method": "POST"}, method="OPTIONS")
        assert status == 204 and "Authorization" in headers["Access-Control-Allow-Headers"]
        status, headers, _ = raw_request(f"{server.url}/v1/models", headers={
            "Origin": "http://evil.example"}, method="GET")
        assert status == 403 and "Access-Control-Allow-Origin" not in headers
    finally:
        server.stop()


def test_host_checks_do_not_resolve_names():
    assert is_loopback_name("localhost") and is_loopback_name("127.0.0.5") and is_loopback_name("[::1]")
    assert is_loopback_name("app.localhost")
    assert not is_loopback_name("localhost.evil.example") and not is_loopback_name("10.0.0.1")
    assert not is_loopback_name("127.0.0.1.nip.io")  # resolves to 127.0.0.1: exactly what rebinding uses
    policy = RequestPolicy(loopback_only=False)
    assert check_request("GET", {"Host": "example.org"}, policy) is None  # a public bridge takes any Host
    assert check_request("GET", {"Host": "example.org", "Origin": "https://example.org"}, policy) is None
    assert check_request("GET", {"Host": "example.org:8001", "Origin": "http://example.org:8001"}, policy) is None
    assert check_request("GET", {"Host": "example.org", "Origin": "https://other.org"}, policy).status == 403


# --- 2. credentials --------------------------------------------------------------------------------------

def test_upstream_credentials_never_reach_answers_or_the_log(caplog):
    # before: `--comfyui http://admin:s3cret@host` was in the 503 body and in the log
    port = _closed_port()
    with caplog.at_level(logging.INFO, logger="comfyui_zimage_gguf.api"):
        api = start_api([f"http://admin:s3cret@127.0.0.1:{port}"])
        try:
            status, _, answer = generate(api.url, prompt="p", size="64x64")
        finally:
            api.stop()
    assert status == 503 and f"http://127.0.0.1:{port}" in answer["error"]["message"]
    assert "s3cret" not in str(answer) and "admin" not in str(answer)
    assert f"http://127.0.0.1:{port}" in caplog.text and "s3cret" not in caplog.text


def test_redact_url():
    assert redact_url("at http://admin:s3cret@host:8188/x and https://tok@h") == "at http://host:8188/x and https://h"


# --- 4. paths --------------------------------------------------------------------------------------------

def test_absolute_paths_leave_only_file_names_in_error_bodies(bridge, caplog):
    # before: the pack's error text, with the model's full path, reached the client
    with caplog.at_level(logging.INFO, logger="comfyui_zimage_gguf.api"):
        status, _, answer = generate(bridge.url, prompt="FAIL: cannot read /home/ann/ComfyUI/models/te/qwen.gguf: EOF")
    assert status == 422
    assert answer["error"]["message"].endswith("cannot read qwen.gguf: EOF")
    assert "/home/ann" in caplog.text  # the full text stays in the server log


def test_public_text_keeps_api_paths_and_urls():
    text = "POST /v1/images/generations at http://127.0.0.1:8188/prompt; C:\\Users\\ann\\m\\z.gguf; /srv/m/z.gguf"
    assert public_text(text) == "POST /v1/images/generations at http://127.0.0.1:8188/prompt; z.gguf; z.gguf"
    assert ApiError(422, "z.gguf: bad\n/opt/models/z.gguf").body()["error"]["message"] == "z.gguf: bad\nz.gguf"


# --- 9. empty key, link expiry, cancel before requeue ---------------------------------------------------

@pytest.mark.parametrize("key, key_file, environ", [
    ("", None, {}),
    (None, None, {"ZIMAGE_GGUF_API_KEY": ""}),
    (None, None, {"ZIMAGE_GGUF_API_KEY": "  "}),
    (None, None, {"ZIMAGE_GGUF_API_KEY_FILE": ""}),
], ids=["option", "environment", "blank environment", "file variable"])
def test_an_empty_key_is_an_error_not_an_open_api(key, key_file, environ):
    # before: ZIMAGE_GGUF_API_KEY="" left the API open
    with pytest.raises(ApiConfigError, match="empty"):
        resolve_api_key(key, key_file, environ)


def test_serve_refuses_to_start_with_an_empty_key(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("ZIMAGE_GGUF_API_KEY", "")
    assert main(["serve", "--comfyui", "http://127.0.0.1:9", "--port", str(_closed_port())]) == 1
    assert capsys.readouterr().err == ("error: ZIMAGE_GGUF_API_KEY is set but empty: set a non-empty key, or unset "
                                       "it to leave the API open\n")
    empty = tmp_path / "key"
    empty.write_text("\n")
    monkeypatch.delenv("ZIMAGE_GGUF_API_KEY")
    assert main(["serve", "--comfyui", "http://127.0.0.1:9", "--api-key-file", str(empty)]) == 1
    assert capsys.readouterr().err == f"error: {empty}: the API key file is empty\n"


def test_image_links_expire(bridge):
    # before: a link served its image for as long as the bridge ran
    bridge.backend.url_ttl_s = 1.0
    status, _, answer = generate(bridge.url, prompt="p", size="64x64", response_format="url")
    assert status == 200
    url = answer["data"][0]["url"]
    assert raw_request(url, method="GET")[0] == 200
    time.sleep(1.2)
    status, _, body = raw_request(url, method="GET")
    assert status == 404 and b"expired" in body


class HistoryFails(FakeComfyUI):
    """A server that stops answering /history (judged lost) while it still takes /queue and /interrupt."""

    broken = False

    async def get_history(self, request):
        if self.broken:
            return web.Response(text="<html>proxy error</html>", content_type="text/html")
        return await super().get_history(request)


def test_a_job_leaving_a_lost_server_is_cancelled_there_first(caplog):
    # before: the job was queued on the other server and kept running on the first (it ran twice)
    slow = HistoryFails(run_seconds=8, name="slow")
    slow.thread = ServerThread(slow.app).start()
    slow.url = slow.thread.url
    survivor = start_fake(name="survivor")
    api = start_api([slow.url, survivor.url])
    survivor.occupy(run_seconds=1)
    answers = {}
    try:
        thread = threading.Thread(target=lambda: answers.setdefault("a", generate(api.url, prompt="once", seed=3,
                                                                                   size="64x64")))
        thread.start()
        deadline = time.monotonic() + 10
        while slow.running is None:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        prompt_id = slow.running[1]
        slow.broken = True
        thread.join(30)
        status, _, answer = answers["a"]
        assert status == 200, answer
        assert slow.interrupted == [prompt_id]
        assert [w["5"]["inputs"]["text"] for w in survivor.received] == ["once"]
        assert base64.b64decode(answer["data"][0]["b64_json"])[:4] == b"\x89PNG"
    finally:
        api.stop()
        slow.thread.stop()
        survivor.thread.stop()


def _closed_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --- 3. bad bodies are 400 (or 415), never 500 ---------------------------------------------------------

BAD_BODIES = {
    "NaN": b'{"prompt": "p", "n": NaN}',
    "Infinity": b'{"prompt": "p", "seed": Infinity}',
    "-Infinity": b'{"prompt": "p", "steps": -Infinity}',
    "float overflow": b'{"prompt": "p", "n": 1e999}',
    "5000-digit integer": b'{"prompt": "p", "seed": ' + b"9" * 5000 + b"}",
    "5000-digit size": b'{"prompt": "p", "size": "' + b"9" * 5000 + b'x64"}',
    "deep nesting": b'{"prompt": "p", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "nesting past the limit": b'{"prompt": "p", "x": ' + b"[" * 40 + b"]" * 40 + b"}",
    "not UTF-8": b'{"prompt": "\xff\xfe"}',
    "negative_prompt too long": b'{"prompt": "p", "negative_prompt": "' + b"n" * 32001 + b'"}',
}


@pytest.mark.parametrize("raw", BAD_BODIES.values(), ids=BAD_BODIES.keys())
def test_malformed_bodies_are_400_openai_errors(bridge, fake, raw):
    # before: NaN/Infinity, integers of more than 4300 digits and deep nesting reached a traceback (500);
    # negative_prompt had no cap
    status, headers, body = raw_request(f"{bridge.url}/v1/images/generations", body=raw,
                                        headers={"Content-Type": "application/json"})
    assert status == 400, body[:300]
    assert headers.get_content_type() == "application/json"
    error = __import__("json").loads(body)["error"]
    assert error["type"] == "invalid_request_error" and len(error["message"]) <= 2000
    assert fake.received == []


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_generations_require_a_json_content_type(bridge, fake, content_type):
    # before: request.json() ignored Content-Type, so a text/plain "simple" request ran the prompt
    headers = {"Content-Type": content_type} if content_type else {}
    status, _, body = raw_request(f"{bridge.url}/v1/images/generations", body=(
        b'{"prompt": "p", "model": "%s", "size": "64x64"}' % MODEL.encode()), headers=headers)
    assert status == 415 and b"unsupported_media_type" in body
    assert fake.received == []


def test_edit_strength_beyond_float_range_is_400(bridge):
    body = (b'{"prompt": "p", "images": [{"image_url": "data:image/png;base64,AAAA"}], "strength": 1'
            + b"0" * 400 + b"}")
    status, _, answer = raw_request(f"{bridge.url}/v1/images/edits", body=body,
                                    headers={"Content-Type": "application/json"})
    assert status == 400 and b'"param": "strength"' in answer


# --- 1. inside ComfyUI: the same checks when ComfyUI's own are off ---------------------------------------

def test_in_server_routes_check_requests_only_when_comfyuis_middleware_is_off(fake):
    from types import SimpleNamespace

    from comfyui_zimage_gguf.api.catalog import WorkflowCatalog
    from comfyui_zimage_gguf.api.inserver import comfyui_request_policy
    from comfyui_zimage_gguf.api.service import ApiSettings, ImageApi
    from comfyui_zimage_gguf.api.upstream import HttpBackend

    assert comfyui_request_policy(SimpleNamespace(enable_cors_header=None, listen="127.0.0.1")) is None
    policy = comfyui_request_policy(SimpleNamespace(enable_cors_header="http://localhost:3000", listen="127.0.0.1"))
    assert policy == RequestPolicy(loopback_only=True, allow_origin="http://localhost:3000")
    assert not comfyui_request_policy(SimpleNamespace(enable_cors_header="*", listen="0.0.0.0,::")).loopback_only

    backend = HttpBackend([fake.url])
    app = web.Application()
    for method, path, handler in ImageApi(backend, WorkflowCatalog(None), ApiSettings(request_policy=policy)).routes():
        app.router.add_route(method, path, handler)
    app.on_startup.append(lambda _app: backend.start())
    app.on_cleanup.append(lambda _app: backend.close())
    server = ServerThread(app).start()
    try:
        assert raw_request(f"{server.url}/v1/models", method="GET")[0] == 200
        assert raw_request(f"{server.url}/v1/models", headers={"Origin": "http://localhost:3000"}, method="GET")[0] == 200
        status, _, body = raw_request(f"{server.url}/v1/images/generations", headers={
            "Content-Type": "application/json", "Origin": "http://evil.example"})
        assert status == 403 and b"cross_site_request" in body and fake.received == []
        assert raw_request(f"{server.url}/v1/models", headers={"Host": "evil.example"}, method="GET")[0] == 403
    finally:
        server.stop()


def test_edit_fields_of_the_wrong_type_are_400(bridge):
    # found by schemathesis: input_fidelity {} raised TypeError (unhashable) -> 500
    body = b'{"prompt": "p", "images": [{"image_url": "data:image/png;base64,AAAA"}], "input_fidelity": {}}'
    status, _, answer = raw_request(f"{bridge.url}/v1/images/edits", body=body,
                                    headers={"Content-Type": "application/json"})
    assert status == 400 and b'"param": "input_fidelity"' in answer


def test_a_damaged_multipart_part_is_400(bridge):
    # found by schemathesis: a part header aiohttp cannot parse raised InvalidHeader -> 500
    boundary = b"b0undary"
    body = (b"--" + boundary + b'\r\nContent-Disposition: form-data; name="prompt"\r\n\r\na fox\r\n--' + boundary
            + b'\r\nContent-Disposition: form-data; name="\x1f\x0b"\r\n\r\n{}\r\n--' + boundary + b"--\r\n")
    status, _, answer = raw_request(f"{bridge.url}/v1/images/edits", body=body,
                                    headers={"Content-Type": "multipart/form-data; boundary=b0undary"})
    assert status == 400 and b"invalid_multipart" in answer
