"""The OpenAI-compatible image API on a real ComfyUI 0.18.1, through the official `openai` client.

One server of its own, started with an API key and a workflows folder holding the shipped workflow
with its model names swapped for the generated test files (plus a wrong-encoder and a missing-model
variant); the standalone bridge (`serve`) runs in front of it on another port.

A second server has only the Q4_0 files installed (its own model folder) and no exported workflow for
them: it serves `z-image-turbo-Q4_0` from the installed files, and the output-format, edit (with the
sampler's latents saved to measure what a mask keeps), streaming and error-route tests run on it, in
the server and through the bridge.
"""
from __future__ import annotations

import base64
import io
import json
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zlib

import pytest

openai = pytest.importorskip("openai")

from comfy_server import SHIPPED_API_WORKFLOW, node_of_type, shipped_workflow  # noqa: E402

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
    assert "image API: POST /v1/images/generations, /v1/images/edits and GET /v1/models added" in log
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


# --- the OpenAI image API as clients call it, on a server with only the Q4_0 files (issue 17) -----------

INSTALLED_MODEL = "z-image-turbo-Q4_0"
PROBE_MODEL = "zimage_inpaint_probe"  # the pack's edit workflow + SaveLatent of the encoded and the sampled latent
EDIT_SIZE = 128
WEBP, JPEG = b"RIFF", b"\xff\xd8\xff"


def _edit_probe_workflow(unet: str, clip: str, vae: str) -> dict:
    workflow = json.loads((SHIPPED_API_WORKFLOW.parent / "z_image_turbo_gguf_edit_api.json").read_text())
    node_of_type(workflow, "ZImageGGUFDiffusionModelLoader")["inputs"]["unet_name"] = unet
    node_of_type(workflow, "ZImageGGUFTextEncoderLoader")["inputs"]["clip_name"] = clip
    node_of_type(workflow, "VAELoader")["inputs"]["vae_name"] = vae
    sampler_id = next(key for key, node in workflow.items() if node["class_type"] == "KSampler")
    encode_id = next(key for key, node in workflow.items() if node["class_type"] == "VAEEncode")
    workflow["90"] = {"class_type": "SaveLatent", "inputs": {"samples": [encode_id, 0],
                                                            "filename_prefix": "latents/probe_encoded"}}
    workflow["91"] = {"class_type": "SaveLatent", "inputs": {"samples": [sampler_id, 0],
                                                            "filename_prefix": "latents/probe_sampled"}}
    return workflow


@pytest.fixture(scope="module")
def installed_server(start_comfy_server, tmp_path_factory, quantized_model_names, flux_vae_name, model_cache):
    """A server whose model folders hold only the Q4_0 Z-Image GGUF, the Q4_0 Qwen3-4B GGUF and the VAE."""
    q4 = quantized_model_names("Q4_0")
    root = tmp_path_factory.mktemp("q4-only-models")
    for folder, name, path in (("diffusion_models", q4["unet"], q4["unet_path"]),
                               ("text_encoders", q4["clip"], q4["clip_path"]),
                               ("vae", flux_vae_name, model_cache / "vae" / flux_vae_name)):
        (root / folder).mkdir()
        (root / folder / name).symlink_to(path.resolve())
    workflows = tmp_path_factory.mktemp("probe-workflows")
    (workflows / f"{PROBE_MODEL}.json").write_text(json.dumps(_edit_probe_workflow(q4["unet"], q4["clip"], flux_vae_name)))
    server = start_comfy_server("comfyui-api-q4", model_root=root,
                               env={"ZIMAGE_GGUF_API_KEY": KEY, "ZIMAGE_GGUF_API_WORKFLOWS": str(workflows)})
    server.q4 = q4
    server.workflows_folder = workflows
    return server


@pytest.fixture(scope="module")
def q4_client(installed_server, run_timeout_s):
    return openai.OpenAI(base_url=f"{installed_server.url}/v1", api_key=KEY, max_retries=0, timeout=run_timeout_s)


def _rgb_png(size: int, colour=(180, 60, 40)) -> bytes:
    from PIL import Image

    image = Image.new("RGB", (size, size), colour)
    for x in range(0, size, 8):  # some structure for the VAE to encode
        for y in range(size):
            image.putpixel((x, y), (20, 20, 20))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def _left_half_mask(size: int) -> bytes:
    """Transparent (repaint) left half, opaque (keep) right half."""
    from PIL import Image

    mask = Image.new("RGBA", (size, size), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, size // 2, size))
    out = io.BytesIO()
    mask.save(out, format="PNG")
    return out.getvalue()


def test_models_follow_the_installed_files(q4_client, installed_server):
    ids = [model.id for model in q4_client.models.list()]
    assert INSTALLED_MODEL in ids and PROBE_MODEL in ids, ids
    assert not [model_id for model_id in ids if model_id.startswith("z-image-turbo-") and model_id != INSTALLED_MODEL]
    status, answer = installed_server.request("/zimage-gguf/installed-models")
    assert status == 200
    assert answer["models"] == [{"id": INSTALLED_MODEL, "unet": installed_server.q4["unet"],
                                 "clip": installed_server.q4["clip"], "vae": answer["models"][0]["vae"],
                                 "created": answer["models"][0]["created"]}]


@pytest.mark.parametrize("output_format, magic", [("webp", WEBP), ("jpeg", JPEG)])
def test_q4_0_model_answers_webp_and_jpeg(q4_client, output_format, magic):
    result = q4_client.images.generate(model=INSTALLED_MODEL, prompt="a red fox", size="64x64", quality="low",
                                       output_format=output_format, output_compression=80, extra_body={"seed": 21})
    content = base64.b64decode(result.data[0].b64_json)
    assert content.startswith(magic), content[:16]
    from PIL import Image

    assert Image.open(io.BytesIO(content)).size == (64, 64)
    assert result.output_format == output_format and result.size == "64x64" and result.quality == "low"


def test_stream_yields_the_samplers_previews_then_completed(q4_client):
    events = list(q4_client.images.generate(model=INSTALLED_MODEL, prompt="a heron", size="64x64", stream=True,
                                            partial_images=2, output_format="jpeg", extra_body={"seed": 22, "steps": 4}))
    assert [event.type for event in events] == ["image_generation.partial_image"] * 2 + ["image_generation.completed"]
    assert [event.partial_image_index for event in events[:2]] == [0, 1]
    from PIL import Image

    for event in events:
        content = base64.b64decode(event.b64_json)
        assert content.startswith(JPEG) and Image.open(io.BytesIO(content)).size == (64, 64)


def _saved_latent(server, prefix: str):
    from safetensors.torch import load_file

    (path,) = sorted((server.base_dir / "output" / "latents").glob(f"{prefix}_*.latent"))[-1:]
    return load_file(str(path))["latent_tensor"]


def test_inpainting_leaves_the_unmasked_latent_unchanged(q4_client, installed_server):
    """Measured on the sampler's output latent (SaveLatent) against the VAE-encoded input latent."""
    result = q4_client.images.edit(model=PROBE_MODEL, image=("in.png", _rgb_png(EDIT_SIZE), "image/png"),
                                   mask=("mask.png", _left_half_mask(EDIT_SIZE), "image/png"),
                                   prompt="a blue sky", extra_body={"seed": 23, "steps": 4})
    assert png_size(base64.b64decode(result.data[0].b64_json)) == (EDIT_SIZE, EDIT_SIZE)
    encoded = _saved_latent(installed_server, "probe_encoded")
    sampled = _saved_latent(installed_server, "probe_sampled")
    assert encoded.shape == sampled.shape and encoded.shape[-1] == EDIT_SIZE // 8
    half = encoded.shape[-1] // 2
    keep = (slice(None), slice(None), slice(None), slice(half + 1, None))  # right of the mask's edge column
    repaint = (slice(None), slice(None), slice(None), slice(0, half - 1))
    kept_difference = (sampled[keep] - encoded[keep]).abs().max().item()
    repainted_difference = (sampled[repaint] - encoded[repaint]).abs().mean().item()
    print(f"inpainting: kept region max |sampled - encoded| = {kept_difference:.3g}, "
          f"repainted region mean |sampled - encoded| = {repainted_difference:.3g}")
    assert kept_difference < 1e-3, kept_difference
    assert repainted_difference > 0.05, repainted_difference


def test_edit_without_a_mask_changes_the_whole_image(q4_client, installed_server):
    q4_client.images.edit(model=PROBE_MODEL, image=("in.png", _rgb_png(EDIT_SIZE), "image/png"), prompt="night",
                          extra_body={"seed": 24, "steps": 4, "strength": 0.8})
    encoded = _saved_latent(installed_server, "probe_encoded")
    sampled = _saved_latent(installed_server, "probe_sampled")
    half = encoded.shape[-1] // 2
    assert (sampled[..., half + 1:] - encoded[..., half + 1:]).abs().mean().item() > 0.05


@pytest.mark.parametrize("method, path, status", [("GET", "/v1/nope", 404), ("GET", "/api/v1/nope", 404),
                                                  ("GET", "/v1/images/generations", 405)])
def test_every_v1_path_answers_an_openai_error_object(installed_server, method, path, status):
    request = urllib.request.Request(f"{installed_server.url}{path}", method=method,
                                     headers={"Authorization": f"Bearer {KEY}"})
    try:
        urllib.request.urlopen(request, timeout=30)
        raise AssertionError("expected an error status")
    except urllib.error.HTTPError as error:
        assert error.code == status
        assert set(json.loads(error.read())["error"]) == {"message", "type", "param", "code"}
    with pytest.raises(openai.NotFoundError):
        openai.OpenAI(base_url=f"{installed_server.url}/v1", api_key=KEY, max_retries=0).get("/nope", cast_to=object)


def test_bridge_lists_installed_models_uploads_edits_and_streams(installed_server, cli_env, run_timeout_s):
    port = _free_port()
    bridge = subprocess.Popen(
        [sys.executable, "-m", "comfyui_zimage_gguf", "serve", "--comfyui", installed_server.url, "--port", str(port),
         "--api-key", KEY, "--timeout", str(run_timeout_s)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=cli_env,
    )
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0,
                               timeout=run_timeout_s)
        deadline = time.monotonic() + 60
        while True:
            try:
                ids = [model.id for model in client.models.list()]
                break
            except openai.APIConnectionError:
                assert bridge.poll() is None and time.monotonic() < deadline, "the bridge did not start"
                time.sleep(0.5)
        assert INSTALLED_MODEL in ids, ids
        result = client.images.edit(model=INSTALLED_MODEL, image=("in.png", _rgb_png(64), "image/png"),
                                    mask=("mask.png", _left_half_mask(64), "image/png"), prompt="a boat",
                                    output_format="webp", extra_body={"seed": 25, "steps": 2})
        assert base64.b64decode(result.data[0].b64_json).startswith(WEBP) and result.size == "64x64"
        uploaded = list((installed_server.base_dir / "input" / "zimage-gguf-api").glob("*.png"))
        assert uploaded, "the bridge stores the image through ComfyUI's /upload/image"
        events = list(client.images.generate(model=INSTALLED_MODEL, prompt="a gull", size="64x64", stream=True,
                                             partial_images=2, extra_body={"seed": 26, "steps": 4}))
        assert [event.type for event in events] == ["image_generation.partial_image"] * 2 + [
            "image_generation.completed"]
        from PIL import Image

        assert {Image.open(io.BytesIO(base64.b64decode(event.b64_json))).size for event in events} == {(64, 64)}
    finally:
        bridge.terminate()
        output, _ = bridge.communicate(timeout=30)
    assert KEY not in output
