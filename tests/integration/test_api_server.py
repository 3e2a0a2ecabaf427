"""The OpenAI-compatible image API on a real ComfyUI 0.18.1, through the official `openai` client.

One server of its own, started with an API key and a workflows folder holding the shipped workflow
with its model names swapped for the generated test files (plus a wrong-encoder and a missing-model
variant); the standalone bridge (`serve`) runs in front of it on another port.
"""
from __future__ import annotations

import base64
import json
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
import zlib

import pytest

openai = pytest.importorskip("openai")

from comfy_server import node_of_type, shipped_workflow  # noqa: E402

KEY = "sk-integration-9f2c41d7"
MODEL, WRONG_ENCODER, MISSING_FILE = "zimage_small", "zimage_wrong_encoder", "zimage_missing_vae"
SIZE = "128x128"


def served_workflow(unet: str, clip: str, vae: str, clip_type: str = "lumina2") -> dict:
    return shipped_workflow(unet, clip, vae, clip_type)


def png_chunks(content: bytes) -> list[tuple[bytes, bytes]]:
    assert content[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    chunks, position = [], 8
    while position < len(content):
        (length,) = struct.unpack(">I", content[position:position + 4])
        chunks.append((content[position + 4:position + 8], content[position + 8:position + 8 + length]))
        position += 12 + length
    return chunks


def png_size(content: bytes) -> tuple[int, int]:
    return struct.unpack(">II", png_chunks(content)[0][1][:8])


def png_pixels(content: bytes) -> bytes:
    return zlib.decompress(b"".join(data for kind, data in png_chunks(content) if kind == b"IDAT"))


def png_prompt(content: bytes) -> dict:
    """The API-format prompt ComfyUI's Save Image writes into the PNG (tEXt chunk "prompt")."""
    for kind, data in png_chunks(content):
        if kind == b"tEXt" and data.startswith(b"prompt\x00"):
            return json.loads(data[len(b"prompt\x00"):])
    raise AssertionError("no prompt in the PNG")


def b64_images(result) -> list[bytes]:
    return [base64.b64decode(item.b64_json) for item in result.data]


@pytest.fixture(scope="module")
def api_server(start_comfy_server, tmp_path_factory, zimage_gguf_name, qwen3_4b_gguf_name, qwen3_narrow_gguf_name,
               flux_vae_name):
    folder = tmp_path_factory.mktemp("api-workflows")
    workflows = {
        MODEL: served_workflow(zimage_gguf_name, qwen3_4b_gguf_name, flux_vae_name),
        # "ovis" builds a 2048-wide Qwen3: it loads and encodes, and the mismatch shows at the model.
        WRONG_ENCODER: served_workflow(zimage_gguf_name, qwen3_narrow_gguf_name, flux_vae_name, clip_type="ovis"),
        MISSING_FILE: served_workflow(zimage_gguf_name, qwen3_4b_gguf_name, "no-such-vae.safetensors"),
    }
    for name, workflow in workflows.items():
        (folder / f"{name}.json").write_text(json.dumps(workflow))
    (folder / "editor_export.json").write_text(json.dumps({"nodes": [], "links": [], "version": 0.4}))
    server = start_comfy_server("comfyui-api", env={"ZIMAGE_GGUF_API_KEY": KEY, "ZIMAGE_GGUF_API_WORKFLOWS": str(folder)})
    server.workflows_folder = folder
    return server


@pytest.fixture(scope="module")
def client(api_server, run_timeout_s):
    return openai.OpenAI(base_url=f"{api_server.url}/v1", api_key=KEY, max_retries=0, timeout=run_timeout_s)


def test_startup_registers_the_routes_and_skips_ui_files_with_a_reason(api_server, client):
    ids = [model.id for model in client.models.list()]
    assert {MODEL, WRONG_ENCODER, MISSING_FILE, "z_image_turbo_gguf_api"} <= set(ids)
    assert "editor_export" not in ids
    skipped = f"image API: skipped {api_server.workflows_folder / 'editor_export.json'}: this is a UI-format workflow"
    deadline = time.monotonic() + 10
    while skipped not in api_server.log_path.read_text(errors="replace"):
        assert time.monotonic() < deadline, api_server.log_tail()
        time.sleep(0.2)
    log = api_server.log_path.read_text(errors="replace")
    assert "image API: POST /v1/images/generations and GET /v1/models added" in log
    assert KEY not in log
    assert "open to whoever" not in log, "a key is set"
    status, answer = api_server.request("/api/v1/models")  # ComfyUI's /api prefix applies too; still keyed
    assert status == 401 and answer["error"]["code"] == "invalid_api_key"


def test_b64_json_returns_a_png_of_the_size(client):
    result = client.images.generate(model=MODEL, prompt="a red fox in fresh snow", size=SIZE,
                                    response_format="b64_json", extra_body={"seed": 11})
    (image,) = b64_images(result)
    assert png_size(image) == (128, 128)
    sampler = node_of_type(png_prompt(image), "KSampler")["inputs"]
    assert sampler["seed"] == 11


def test_n_2_returns_two_different_images(client):
    result = client.images.generate(model=MODEL, prompt="two foxes", size=SIZE, n=2, extra_body={"seed": 12})
    images = b64_images(result)
    assert len(images) == 2 and all(png_size(image) == (128, 128) for image in images)
    assert png_pixels(images[0]) != png_pixels(images[1])


def test_url_serves_the_png(client, api_server):
    result = client.images.generate(model=MODEL, prompt="a fox at dusk", size=SIZE, response_format="url",
                                    extra_body={"seed": 13})
    (item,) = result.data
    assert item.url.startswith(f"{api_server.url}/view?")
    with urllib.request.urlopen(item.url, timeout=60) as response:
        assert response.headers.get_content_type() == "image/png"
        assert png_size(response.read()) == (128, 128)


def test_wrong_key_unknown_model_bad_size(api_server, client):
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{api_server.url}/v1", api_key="sk-wrong", max_retries=0).images.generate(
            model=MODEL, prompt="p", size=SIZE)
    with pytest.raises(openai.NotFoundError) as unknown:
        client.images.generate(model="dall-e-3", prompt="p", size=SIZE)
    assert MODEL in unknown.value.message
    with pytest.raises(openai.BadRequestError) as bad_size:
        client.images.generate(model=MODEL, prompt="p", size="100x100")
    assert bad_size.value.body["param"] == "size"


def test_wrong_width_encoder_is_the_packs_mismatch_error(client, qwen3_narrow_gguf_name):
    with pytest.raises(openai.APIStatusError) as failed:
        client.images.generate(model=WRONG_ENCODER, prompt="p", size=SIZE, extra_body={"seed": 1})
    message = failed.value.body["message"]
    assert failed.value.status_code == 422, message
    assert "IncompatibleModelError" in message and qwen3_narrow_gguf_name in message, message
    assert "2048" in message and "2560" in message, message
    assert "mat1 and mat2" not in message


def test_missing_model_file_names_the_file_and_folder(client):
    with pytest.raises(openai.UnprocessableEntityError) as missing:
        client.images.generate(model=MISSING_FILE, prompt="p", size=SIZE)
    assert missing.value.body["message"] == (
        "model file 'no-such-vae.safetensors' is not on the server (node 3 VAELoader, input vae_name); "
        "put it in models/vae/"
    )


def test_three_concurrent_requests_each_get_their_own_image(client):
    seeds = {"a lighthouse": 101, "a red barn": 202, "a tide pool": 303}
    results = {}

    def request(prompt, seed):
        results[prompt] = client.images.generate(model=MODEL, prompt=prompt, size=SIZE, extra_body={"seed": seed})

    threads = [threading.Thread(target=request, args=item) for item in seeds.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    pixels = set()
    for prompt, seed in seeds.items():
        (image,) = b64_images(results[prompt])
        written = png_prompt(image)  # what ComfyUI actually ran for this image
        assert node_of_type(written, "KSampler")["inputs"]["seed"] == seed
        assert node_of_type(written, "CLIPTextEncode")["inputs"]["text"] == prompt
        pixels.add(png_pixels(image))
    assert len(pixels) == 3


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_bridge_gives_the_same_image_as_the_in_server_route(api_server, client, cli_env, run_timeout_s):
    port = _free_port()
    bridge = subprocess.Popen(
        [sys.executable, "-m", "comfyui_zimage_gguf", "serve", "--comfyui", api_server.url, "--port", str(port),
         "--api-key", KEY, "--workflows", str(api_server.workflows_folder), "--timeout", str(run_timeout_s)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=cli_env,
    )
    try:
        bridge_client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0,
                                      timeout=run_timeout_s)
        deadline = time.monotonic() + 60
        while True:
            try:
                assert MODEL in [model.id for model in bridge_client.models.list()]
                break
            except openai.APIConnectionError:
                assert bridge.poll() is None and time.monotonic() < deadline, "the bridge did not start"
                time.sleep(0.5)
        request = dict(model=MODEL, prompt="a heron in reeds", size=SIZE, extra_body={"seed": 4242})
        (through_bridge,) = b64_images(bridge_client.images.generate(**request))
        (in_server,) = b64_images(client.images.generate(**request))
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-wrong", max_retries=0).models.list()
    finally:
        bridge.terminate()
        output, _ = bridge.communicate(timeout=30)
    assert png_size(through_bridge) == (128, 128)
    assert png_pixels(through_bridge) == png_pixels(in_server)
    assert KEY not in output


def test_client_that_disconnects_has_its_queued_prompt_removed(api_server, client):
    busy = threading.Thread(target=client.images.generate,
                            kwargs=dict(model=MODEL, prompt="keeps the server busy", size=SIZE, extra_body={"seed": 555}))
    busy.start()

    def pending_ids(text):
        queue = api_server.get_json("/queue")
        return [item[1] for item in queue["queue_pending"]
                if node_of_type(item[2], "CLIPTextEncode")["inputs"]["text"] == text]

    deadline = time.monotonic() + 30
    while not api_server.get_json("/queue")["queue_running"]:
        assert time.monotonic() < deadline and busy.is_alive(), "the first request never ran"
        time.sleep(0.02)
    body = json.dumps({"model": MODEL, "prompt": "a client that leaves", "size": SIZE, "seed": 556}).encode()
    host, port = api_server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as connection:
        connection.sendall(
            b"POST /v1/images/generations HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (host.encode(), KEY.encode(), len(body), body)
        )
        deadline = time.monotonic() + 30
        while not (leaving := pending_ids("a client that leaves")):
            assert time.monotonic() < deadline, "the request never reached ComfyUI's queue"
            time.sleep(0.05)
    deadline = time.monotonic() + 10
    while pending_ids("a client that leaves"):
        assert time.monotonic() < deadline, "the prompt stayed queued after its client left"
        time.sleep(0.1)
    busy.join()
    assert api_server.get_json(f"/history/{leaving[0]}") == {}, "the removed prompt must never run"
