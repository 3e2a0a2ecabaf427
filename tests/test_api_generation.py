"""The image API end to end over HTTP, against a fake ComfyUI: answers, parameters, errors, limits."""
from __future__ import annotations

import base64
import json
import logging
import socket
import threading
import time

import pytest

from helpers.api_client import MODEL, call, generate, start_api, start_fake
from helpers.fake_comfyui import expected_colour
from helpers.png import png_size, solid_png_colour

from comfyui_zimage_gguf.api.catalog import WorkflowCatalog

API_WORKFLOW = WorkflowCatalog(None).workflows()[MODEL].path


@pytest.fixture
def fake():
    fake = start_fake()
    yield fake
    fake.thread.stop()


@pytest.fixture
def api(fake):
    server = start_api([fake.url])
    yield server
    server.stop()


def images_of(answer) -> list[bytes]:
    return [base64.b64decode(item["b64_json"]) for item in answer["data"]]


def test_models_lists_the_served_workflows_in_openai_list_format(api):
    status, _, answer = call(f"{api.url}/v1/models")
    assert status == 200
    assert answer["object"] == "list"
    assert [(m["id"], m["object"]) for m in answer["data"]] == [(MODEL, "model")]
    assert isinstance(answer["data"][0]["created"], int)
    assert call(f"{api.url}/v1/models/{MODEL}")[2]["id"] == MODEL


def test_generation_applies_every_parameter_by_node_type_and_returns_base64_png(api, fake):
    status, _, answer = generate(
        api.url, prompt="a fox in snow", size="128x192", seed=1234, steps=3, n=1, user="ignored", quality="hd"
    )
    assert status == 200, answer
    assert isinstance(answer["created"], int) and len(answer["data"]) == 1
    (image,) = images_of(answer)
    assert png_size(image) == (128, 192)
    assert solid_png_colour(image) == expected_colour("a fox in snow", 1234, 0)
    (workflow,) = fake.received
    assert workflow["5"]["inputs"]["text"] == "a fox in snow"
    assert (workflow["8"]["inputs"]["seed"], workflow["8"]["inputs"]["steps"]) == (1234, 3)
    assert (workflow["4"]["inputs"]["width"], workflow["4"]["inputs"]["height"]) == (128, 192)
    assert workflow["4"]["inputs"]["batch_size"] == 1


def test_n_images_are_one_batch_and_all_different(api, fake):
    status, _, answer = generate(api.url, prompt="p", size="64x64", seed=5, n=3)
    assert status == 200
    images = images_of(answer)
    assert [solid_png_colour(image) for image in images] == [expected_colour("p", 5, i) for i in range(3)]
    assert len(set(images)) == 3
    assert len(fake.received) == 1 and fake.received[0]["4"]["inputs"]["batch_size"] == 3


def test_url_format_answers_absolute_urls_that_serve_the_png(api):
    status, _, answer = generate(api.url, prompt="p", size="64x80", seed=9, n=2, response_format="url")
    assert status == 200
    urls = [item["url"] for item in answer["data"]]
    assert all(url.startswith(f"{api.url}/images/") for url in urls)
    contents = [call(url)[2] for url in urls]
    assert [png_size(content) for content in contents] == [(64, 80)] * 2
    assert [solid_png_colour(c) for c in contents] == [expected_colour("p", 9, i) for i in range(2)]
    assert call(f"{api.url}/images/not-a-token/x.png")[0] == 404


def test_seed_left_out_is_random_per_request(api, fake):
    for _ in range(2):
        assert generate(api.url, prompt="p", size="64x64")[0] == 200
    seeds = [workflow["8"]["inputs"]["seed"] for workflow in fake.received]
    assert seeds[0] != seeds[1]


def test_negative_prompt_on_a_workflow_without_one_is_ignored_with_a_note(api, fake):
    status, _, answer = generate(api.url, prompt="p", size="64x64", negative_prompt="blurry")
    assert status == 200
    assert answer["notes"] and answer["notes"][0].startswith("negative_prompt ignored")
    assert "blurry" not in str(fake.received[0])


def error_of(status_headers_answer, status: int) -> dict:
    status_got, headers, answer = status_headers_answer
    assert status_got == status, answer
    assert set(answer) == {"error"} and set(answer["error"]) == {"message", "type", "param", "code"}
    return answer["error"]


@pytest.mark.parametrize(
    ("body", "param", "message"),
    [
        ({"model": MODEL}, "prompt", "prompt is required"),
        ({"model": MODEL, "prompt": "  "}, "prompt", "prompt is required"),
        ({"model": MODEL, "prompt": "p", "size": "100x100"}, "size", "multiples of 16"),
        ({"model": MODEL, "prompt": "p", "size": "4096x4096"}, "size", "from 64 to 2048"),
        ({"model": MODEL, "prompt": "p", "size": "big"}, "size", 'size must be "WIDTHxHEIGHT"'),
        ({"model": MODEL, "prompt": "p", "n": 5}, "n", "n must be from 1 to 4, got 5"),
        ({"model": MODEL, "prompt": "p", "n": 0}, "n", "n must be from 1 to 4, got 0"),
        ({"model": MODEL, "prompt": "p", "steps": 1.5}, "steps", "steps must be an integer"),
        ({"model": MODEL, "prompt": "p", "steps": 0}, "steps", "steps must be from 1 to 100"),
        ({"model": MODEL, "prompt": "p", "seed": -1}, "seed", "seed must be from 0"),
        ({"model": MODEL, "prompt": "p", "response_format": "png"}, "response_format", "b64_json"),
    ],
)
def test_bad_fields_are_400_naming_the_field(api, fake, body, param, message):
    error = error_of(call(f"{api.url}/v1/images/generations", body), 400)
    assert error["param"] == param and message in error["message"]
    assert error["type"] == "invalid_request_error"
    assert fake.received == []


def test_bad_json_is_400(api):
    error = error_of(call(f"{api.url}/v1/images/generations", raw=b"{not json", method="POST"), 400)
    assert error["code"] == "invalid_json"


def test_unknown_model_is_404_listing_the_served_ones(api):
    error = error_of(generate(api.url, model="dall-e-3", prompt="p"), 404)
    assert error["code"] == "model_not_found" and error["param"] == "model"
    assert "'dall-e-3' does not exist" in error["message"] and MODEL in error["message"]


def test_workflow_failure_is_422_with_comfyuis_exception_text(api):
    error = error_of(generate(api.url, prompt="FAIL: Text encoder x.gguf is 2048 wide; y.gguf needs 2560"), 422)
    assert error["message"] == (
        "ComfyUI failed to run the workflow: node 2 (ZImageGGUFTextEncoderLoader) failed: "
        "IncompatibleModelError: Text encoder x.gguf is 2048 wide; y.gguf needs 2560"
    )
    assert error["code"] == "workflow_failed"


def test_missing_model_file_names_the_file_and_its_folder(tmp_path, fake):
    workflow = json.loads(API_WORKFLOW.read_text())
    workflow["1"]["inputs"]["unet_name"] = "not-here-Q4_K.gguf"
    (tmp_path / "needs_other_model.json").write_text(json.dumps(workflow))
    server = start_api([fake.url], workflows=tmp_path)
    try:
        assert "needs_other_model" in [m["id"] for m in call(f"{server.url}/v1/models")[2]["data"]]
        error = error_of(generate(server.url, model="needs_other_model", prompt="p"), 422)
    finally:
        server.stop()
    assert error["code"] == "model_file_missing"
    assert error["message"] == (
        "model file 'not-here-Q4_K.gguf' is not on the server (node 1 ZImageGGUFDiffusionModelLoader, "
        "input unet_name); put it in models/diffusion_models/"
    )


def test_ui_format_file_in_the_workflows_folder_is_skipped_with_a_log_line(tmp_path, fake, caplog):
    (tmp_path / "from_the_editor.json").write_text('{"nodes": [], "links": []}')
    (tmp_path / "broken.json").write_text("{")
    server = start_api([fake.url], workflows=tmp_path)
    try:
        with caplog.at_level(logging.WARNING, logger="comfyui_zimage_gguf.api"):
            ids = [m["id"] for m in call(f"{server.url}/v1/models")[2]["data"]]
            call(f"{server.url}/v1/models")
    finally:
        server.stop()
    assert ids == [MODEL]
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skipped) == 2, "once per file, not once per request"
    assert any("from_the_editor.json: this is a UI-format workflow" in line for line in skipped)
    assert any("broken.json: not JSON" in line for line in skipped)


def test_timeout_is_504_and_the_run_is_removed_from_the_queue():
    fake = start_fake(run_seconds=30)
    server = start_api([fake.url], timeout_s=1.0)
    try:
        started = time.monotonic()
        error = error_of(generate(server.url, prompt="slow", size="64x64"), 504)
        elapsed = time.monotonic() - started
        time.sleep(0.3)
    finally:
        server.stop()
        fake.thread.stop()
    assert error["code"] == "timeout" and "not ready after 1s" in error["message"]
    assert elapsed < 5
    assert len(fake.received) == 1 and fake.interrupted == list(fake.history)
    assert fake.running is None and fake.pending == []


def test_queued_request_that_times_out_is_deleted_from_the_pending_queue():
    fake = start_fake()
    server = start_api([fake.url], timeout_s=1.0)
    try:
        foreign = fake.occupy(run_seconds=3)
        status, headers, _ = generate(server.url, prompt="queued", size="64x64")
    finally:
        server.stop()
        fake.thread.stop()
    assert status == 504 and headers["x-should-retry"] == "false"
    assert len(fake.received) == 1 and len(fake.deleted) == 1
    assert fake.interrupted == [], f"the running prompt {foreign} is another client's: never interrupt it"
    assert fake.deleted[0] not in fake.history


def test_client_that_disconnects_gets_its_queued_prompt_removed():
    fake = start_fake(run_seconds=2)
    server = start_api([fake.url])
    try:
        busy = threading.Thread(target=generate, args=(server.url,), kwargs={"prompt": "busy", "size": "64x64"})
        busy.start()
        time.sleep(0.3)
        with socket.create_connection(("127.0.0.1", server.port)) as connection:
            body = b'{"model": "%s", "prompt": "leaving", "size": "64x64"}' % MODEL.encode()
            connection.sendall(
                b"POST /v1/images/generations HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            deadline = time.monotonic() + 5
            while len(fake.pending) < 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            leaving_id = fake.pending[0][1]
        deadline = time.monotonic() + 5
        while leaving_id not in fake.deleted and time.monotonic() < deadline:
            time.sleep(0.05)
        busy.join()
    finally:
        server.stop()
        fake.thread.stop()
    assert fake.deleted == [leaving_id]
    assert leaving_id not in fake.history, "the removed prompt must never run"


def test_concurrent_clients_each_get_their_own_images(api, fake):
    answers = {}

    def client(seed):
        answers[seed] = generate(api.url, prompt=f"client {seed}", size="64x64", seed=seed, n=2)

    threads = [threading.Thread(target=client, args=(seed,)) for seed in (11, 22, 33, 44)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for seed, (status, _, answer) in answers.items():
        assert status == 200
        assert [solid_png_colour(image) for image in images_of(answer)] == [
            expected_colour(f"client {seed}", seed, index) for index in range(2)
        ]


def test_more_waiting_requests_than_the_limit_get_429_with_retry_after():
    fake = start_fake(run_seconds=0.6)
    server = start_api([fake.url], max_waiting=2)
    try:
        waiting = [
            threading.Thread(target=generate, args=(server.url,), kwargs={"prompt": f"w{i}", "size": "64x64"})
            for i in range(2)
        ]
        for thread in waiting:
            thread.start()
        deadline = time.monotonic() + 5
        while len(fake.received) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        status, headers, answer = generate(server.url, prompt="one too many", size="64x64")
        for thread in waiting:
            thread.join()
        after = generate(server.url, prompt="later", size="64x64")[0]
    finally:
        server.stop()
        fake.thread.stop()
    assert status == 429 and headers["Retry-After"] == "10"
    assert answer["error"]["code"] == "queue_full" and "limit is 2" in answer["error"]["message"]
    assert after == 200


def test_with_a_key_every_v1_request_needs_it(fake, caplog):
    key = "sk-test-0123456789abcdef"
    with caplog.at_level(logging.DEBUG):
        server = start_api([fake.url], api_key=key)
        try:
            for path in ("/v1/models", f"/v1/models/{MODEL}"):
                assert error_of(call(server.url + path), 401)["code"] == "invalid_api_key"
                assert error_of(call(server.url + path, key="sk-wrong"), 401)["code"] == "invalid_api_key"
                assert call(server.url + path, key=key)[0] == 200
            assert error_of(generate(server.url, prompt="p", key=key[:-1]), 401)["code"] == "invalid_api_key"
            assert fake.received == []
            status, _, answer = generate(server.url, prompt="p", size="64x64", key=key, response_format="url")
            assert status == 200
            assert call(answer["data"][0]["url"])[0] == 200, "image links work without the key, like OpenAI's"
        finally:
            server.stop()
    assert key not in caplog.text
    assert "open to whoever" not in caplog.text


def test_without_a_key_the_startup_log_says_the_endpoint_is_open(fake, caplog):
    with caplog.at_level(logging.WARNING, logger="comfyui_zimage_gguf.api"):
        server = start_api([fake.url])
        server.stop()
    assert "no API key is set: the image API (/v1/*) is open to whoever can reach this server" in caplog.text
