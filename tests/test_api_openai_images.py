"""The OpenAI image API as real clients call it, with the official `openai` SDK and replayed client requests,
against the bridge app over a fake ComfyUI: output formats, edits (img2img and inpainting), streaming
partial images, models that follow the installed files, and OpenAI error objects on every /v1 path."""
from __future__ import annotations

import base64
import io
import json
import urllib.error
import urllib.request
import uuid

import pytest

from helpers.api_client import MODEL, call, start_api, start_fake
from helpers.fake_comfyui import PREVIEW_STEPS, expected_colour
from helpers.png import png_size, solid_png_colour

openai = pytest.importorskip("openai")
Image = pytest.importorskip("PIL.Image")

KEY = "sk-openai-images-test"
WEBP, JPEG, PNG = b"RIFF", b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n"
INSTALLED = {"id": "z-image-turbo-Q4_0", "unet": "z_image_turbo-Q4_0.gguf", "clip": "Qwen3-4B-Instruct-2507-Q4_0.gguf",
             "vae": "ae.safetensors", "created": 1700000000}


@pytest.fixture(scope="module")
def servers():
    fake = start_fake()
    server = start_api([fake.url], api_key=KEY, max_upload_bytes=200_000)
    yield fake, server
    server.stop()
    fake.thread.stop()


@pytest.fixture
def fake(servers):
    fake = servers[0]
    fake.installed = None
    return fake


@pytest.fixture
def api_url(servers):
    return servers[1].url


@pytest.fixture
def client(api_url):
    return openai.OpenAI(base_url=f"{api_url}/v1", api_key=KEY, max_retries=0, timeout=60)


def post_multipart(url: str, fields: dict, files: list) -> tuple[int, dict]:
    """POST multipart/form-data as a browser-side client builds it: text fields, then (name, (filename, bytes,
    content type)) file parts in order; (status, decoded JSON answer)."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, (filename, content, *content_type) in files:
        kind = content_type[0] if content_type else "application/octet-stream"
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                     f"Content-Type: {kind}\r\n\r\n".encode() + content + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Authorization": f"Bearer {KEY}", "Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def node(workflow: dict, class_type: str) -> dict:
    (found,) = [n for n in workflow.values() if n["class_type"] == class_type]
    return found


def picture(width=96, height=64, colour=(200, 40, 40), mode="RGB", fmt="PNG") -> bytes:
    out = io.BytesIO()
    Image.new(mode, (width, height), colour).save(out, format=fmt)
    return out.getvalue()


def mask_png(width=96, height=64, hole=(0, 0, 48, 64)) -> bytes:
    """Opaque, with a transparent rectangle: the part to repaint."""
    image = Image.new("RGBA", (width, height), (0, 0, 0, 255))
    image.paste((0, 0, 0, 0), hole)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


# --- output formats ---------------------------------------------------------------------------------

@pytest.mark.parametrize("output_format, magic, pil_format", [("webp", WEBP, "WEBP"), ("jpeg", JPEG, "JPEG"),
                                                              ("png", PNG, "PNG")])
def test_output_format_answers_in_that_format_with_openais_answer_fields(client, output_format, magic, pil_format):
    result = client.images.generate(model=MODEL, prompt="fmt fox", size="128x64", output_format=output_format,
                                    output_compression=80, extra_body={"seed": 5})
    content = base64.b64decode(result.data[0].b64_json)
    assert content.startswith(magic)
    if output_format == "webp":
        assert content[8:12] == b"WEBP"
    decoded = Image.open(io.BytesIO(content))
    assert decoded.format == pil_format and decoded.size == (128, 64)
    # the same solid colour ComfyUI saved (lossy formats within a few levels)
    colour = decoded.convert("RGB").getpixel((10, 10))
    assert all(abs(a - b) <= 6 for a, b in zip(colour, expected_colour("fmt fox", 5, 0)))
    assert result.output_format == output_format and result.size == "128x64"
    assert result.quality == "high" and result.background == "opaque"
    assert result.usage.total_tokens == 0 and result.created > 0


def test_output_compression_sets_the_quality_of_lossy_formats(client):
    sizes = {}
    for compression in (5, 100):
        result = client.images.generate(model=MODEL, prompt="gradient", size="256x256", output_format="jpeg",
                                        output_compression=compression, extra_body={"seed": 1})
        sizes[compression] = len(base64.b64decode(result.data[0].b64_json))
    assert sizes[5] < sizes[100]


@pytest.mark.parametrize("quality, steps", [("low", 4), ("medium", 6), ("high", 8), ("auto", 8), ("standard", 8),
                                            ("hd", 8)])
def test_quality_sets_the_samplers_steps(client, fake, quality, steps):
    result = client.images.generate(model=MODEL, prompt="q", size="64x64", quality=quality)
    assert node(fake.received[-1], "KSampler")["inputs"]["steps"] == steps
    assert result.quality == {"auto": "high", "standard": "high", "hd": "high"}.get(quality, quality)


def test_steps_extension_overrides_quality(client, fake):
    client.images.generate(model=MODEL, prompt="q", size="64x64", quality="low", extra_body={"steps": 3})
    assert node(fake.received[-1], "KSampler")["inputs"]["steps"] == 3


@pytest.mark.parametrize("fields, param, words", [
    ({"output_format": "gif"}, "output_format", "png, jpeg, webp"),
    ({"background": "transparent"}, "background", "Z-Image makes opaque images"),
    ({"quality": "ultra"}, "quality", "low, medium, high"),
    ({"output_compression": 101}, "output_compression", "0 to 100"),
    ({"partial_images": 4}, "partial_images", "0 to 3"),
    ({"output_format": "webp", "response_format": "url"}, "output_format", 'needs response_format "b64_json"'),
])
def test_unsupported_values_are_400_naming_the_field(client, fields, param, words):
    with pytest.raises(openai.BadRequestError) as refused:
        client.images.generate(model=MODEL, prompt="p", size="64x64", extra_body=fields)
    assert refused.value.body["param"] == param
    assert words in refused.value.body["message"]


def test_librechat_request_shape(api_url):
    """What LibreChat's OpenAI image tool sends; it reads data[0].b64_json only."""
    status, _, answer = call(f"{api_url}/v1/images/generations", {
        "model": MODEL, "prompt": "a lighthouse", "n": 1, "size": "auto", "quality": "auto", "background": "auto",
        "output_format": "webp", "output_compression": 80,
    }, key=KEY)
    assert status == 200, answer
    content = base64.b64decode(answer["data"][0]["b64_json"])
    assert content[:4] == WEBP and content[8:12] == b"WEBP"
    assert answer["output_format"] == "webp" and answer["size"] == "1024x1024" and answer["quality"] == "high"


# --- edits ------------------------------------------------------------------------------------------

def test_edit_with_a_mask_runs_the_inpainting_graph_on_the_uploaded_image(client, fake):
    result = client.images.edit(model=MODEL, image=("photo.png", picture(), "image/png"),
                                mask=("mask.png", mask_png(), "image/png"), prompt="a blue door", size="auto",
                                extra_body={"seed": 9})
    workflow = fake.received[-1]
    stored = node(workflow, "LoadImage")["inputs"]["image"]
    assert stored.startswith("zimage-gguf-api/") and stored in fake.uploads
    uploaded = Image.open(io.BytesIO(fake.uploads[stored]))
    assert uploaded.mode == "RGBA" and uploaded.size == (96, 64)
    assert uploaded.getpixel((10, 10)) == (200, 40, 40, 0)  # repaint: transparent, colour kept
    assert uploaded.getpixel((70, 10)) == (200, 40, 40, 255)  # keep: opaque
    sampler = node(workflow, "KSampler")["inputs"]
    assert workflow[sampler["latent_image"][0]]["class_type"] == "SetLatentNoiseMask"
    assert sampler["denoise"] == 1.0 and sampler["seed"] == 9
    assert node(workflow, "CLIPTextEncode")["inputs"]["text"] == "a blue door"
    content = base64.b64decode(result.data[0].b64_json)
    assert png_size(content) == (96, 64)
    assert solid_png_colour(content) == expected_colour("a blue door", 9, 0)
    assert result.size == "96x64"


@pytest.mark.parametrize("extra, denoise", [({}, 0.75), ({"input_fidelity": "high"}, 0.5),
                                            ({"input_fidelity": "low"}, 0.75), ({"strength": 0.3}, 0.3)])
def test_edit_without_a_mask_is_img2img_with_the_denoise_fidelity_or_strength_set(client, fake, extra, denoise):
    client.images.edit(model=MODEL, image=("photo.jpg", picture(fmt="JPEG"), "image/jpeg"), prompt="autumn",
                       extra_body=extra)
    workflow = fake.received[-1]
    assert not [n for n in workflow.values() if n["class_type"] == "SetLatentNoiseMask"]
    sampler = node(workflow, "KSampler")["inputs"]
    assert workflow[sampler["latent_image"][0]]["class_type"] == "VAEEncode"
    assert sampler["denoise"] == denoise


def test_edit_size_resizes_and_n_repeats_the_latent(client, fake):
    result = client.images.edit(model=MODEL, image=("photo.webp", picture(fmt="WEBP"), "image/webp"), prompt="x",
                                size="128x128", n=2, output_format="jpeg")
    assert len(result.data) == 2
    assert all(base64.b64decode(item.b64_json)[:3] == JPEG for item in result.data)
    workflow = fake.received[-1]
    assert node(workflow, "RepeatLatentBatch")["inputs"]["amount"] == 2
    assert png_size(fake.uploads[node(workflow, "LoadImage")["inputs"]["image"]]) == (128, 128)


def test_open_webui_multipart_shapes(api_url, fake):
    """Open WebUI's edit call: multipart with model, prompt, n, size, background and image or image[]."""
    for field in ("image", "image[]"):
        status, answer = post_multipart(
            f"{api_url}/v1/images/edits",
            {"model": MODEL, "prompt": "owui", "n": "1", "size": "64x64", "background": "auto"},
            [(field, ("a.png", picture(), "image/png")), (field, ("b.png", picture(colour=(0, 0, 255)), "image/png"))],
        )
        assert status == 200, answer
        content = base64.b64decode(answer["data"][0]["b64_json"])
        assert png_size(content) == (64, 64)
        stored = fake.uploads[node(fake.received[-1], "LoadImage")["inputs"]["image"]]
        assert Image.open(io.BytesIO(stored)).getpixel((1, 1))[:3] == (200, 40, 40)  # the first image


def test_json_edit_with_a_data_url(api_url, fake):
    data_url = "data:image/png;base64," + base64.b64encode(picture(64, 48)).decode()
    mask_url = "data:image/png;base64," + base64.b64encode(mask_png(64, 48, (0, 0, 16, 16))).decode()
    status, _, answer = call(f"{api_url}/v1/images/edits", {
        "model": MODEL, "prompt": "json edit", "images": [{"image_url": data_url}], "mask": {"image_url": mask_url},
    }, key=KEY)
    assert status == 200, answer
    assert png_size(base64.b64decode(answer["data"][0]["b64_json"])) == (64, 48)
    assert node(fake.received[-1], "KSampler")["inputs"]["denoise"] == 1.0


@pytest.mark.parametrize("files, status, code", [
    ([("image", ("a.txt", b"not an image at all", "text/plain"))], 400, "invalid_image"),
    ([("image", ("a.gif", picture(fmt="GIF"), "image/gif"))], 400, "invalid_image_format"),
    ([("image", ("a.png", picture())), ("mask", ("m.png", picture(), "image/png"))], 400, "invalid_mask"),
    ([("image", ("a.png", picture())), ("mask", ("m.png", mask_png(32, 32), "image/png"))], 400, "invalid_mask"),
    ([("image", ("big.png", b"\x89PNG" + bytes(300_000), "image/png"))], 413, "file_too_large"),
    ([], 400, "missing_required_parameter"),
])
def test_bad_edit_uploads_are_openai_errors(api_url, files, status, code):
    status_got, answer = post_multipart(f"{api_url}/v1/images/edits", {"model": MODEL, "prompt": "p"}, files)
    assert status_got == status, answer
    assert answer["error"]["code"] == code


# --- streaming --------------------------------------------------------------------------------------

@pytest.mark.parametrize("partials", [0, 1, 2, 3])
def test_stream_yields_the_requested_partials_then_completed(client, fake, partials):
    stream = client.images.generate(model=MODEL, prompt="stream", size="64x64", stream=True,
                                    partial_images=partials, output_format="webp", extra_body={"seed": 3})
    events = list(stream)
    assert [event.type for event in events] == ["image_generation.partial_image"] * partials + [
        "image_generation.completed"]
    assert [event.partial_image_index for event in events[:-1]] == list(range(partials))
    for event in events:
        assert base64.b64decode(event.b64_json)[:4] == WEBP and event.output_format == "webp"
        assert Image.open(io.BytesIO(base64.b64decode(event.b64_json))).size == (64, 64)  # previews are 16x16
        assert event.size == "64x64" and event.quality == "high" and event.background == "opaque"
    # partials are the sampler's previews, spread over the run (the fake's grey level is its step)
    greys = [Image.open(io.BytesIO(base64.b64decode(e.b64_json))).convert("L").getpixel((8, 8)) for e in events[:-1]]
    expected = [255 * -(-(k + 1) * PREVIEW_STEPS // (partials + 1)) // PREVIEW_STEPS for k in range(partials)]
    assert all(abs(a - b) <= 3 for a, b in zip(greys, expected)), (greys, expected)
    final = Image.open(io.BytesIO(base64.b64decode(events[-1].b64_json))).convert("RGB").getpixel((5, 5))
    assert all(abs(a - b) <= 6 for a, b in zip(final, expected_colour("stream", 3, 0)))
    assert events[-1].usage.total_tokens == 0
    asked = fake.extra_data[-1].get("preview_method")
    assert asked == ("latent2rgb" if partials else None)


def test_edit_stream_uses_the_edit_event_names(client):
    events = list(client.images.edit(model=MODEL, image=("a.png", picture(), "image/png"), prompt="s",
                                     stream=True, partial_images=2))
    assert [event.type for event in events] == ["image_edit.partial_image"] * 2 + ["image_edit.completed"]
    assert png_size(base64.b64decode(events[-1].b64_json)) == (96, 64)


def test_a_failing_run_ends_the_stream_with_an_error_event(client):
    with pytest.raises(openai.APIError) as failed:
        list(client.images.generate(model=MODEL, prompt="FAIL: encoder too narrow", stream=True, partial_images=1))
    assert "encoder too narrow" in failed.value.message


# --- models that follow the installed files ---------------------------------------------------------

def test_installed_files_are_models_running_the_packs_workflow_with_those_files():
    fake = start_fake()
    fake.installed = [INSTALLED]
    server = start_api([fake.url], api_key=KEY)
    try:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=60)
        assert [model.id for model in client.models.list()] == [MODEL, "z-image-turbo-Q4_0"]
        assert client.models.retrieve("z-image-turbo-Q4_0").created == 1700000000
        with pytest.raises(openai.UnprocessableEntityError) as missing:  # the fake has only the Q8_0 files
            client.images.generate(model="z-image-turbo-Q4_0", prompt="q4", size="64x64")
        assert "'z_image_turbo-Q4_0.gguf' is not on the server" in missing.value.body["message"]
        with pytest.raises(openai.UnprocessableEntityError):
            client.images.edit(model="z-image-turbo-Q4_0", image=("a.png", picture(), "image/png"), prompt="e")
        generated, edited = fake.received[-2:]
        for workflow in (generated, edited):
            assert node(workflow, "ZImageGGUFDiffusionModelLoader")["inputs"]["unet_name"] == INSTALLED["unet"]
            assert node(workflow, "ZImageGGUFTextEncoderLoader")["inputs"]["clip_name"] == INSTALLED["clip"]
            assert node(workflow, "VAELoader")["inputs"]["vae_name"] == INSTALLED["vae"]
        assert "EmptySD3LatentImage" in [n["class_type"] for n in generated.values()]
        assert "LoadImage" in [n["class_type"] for n in edited.values()]
    finally:
        server.stop()
        fake.thread.stop()


def test_the_pack_edit_workflow_is_no_model_of_its_own(client):
    assert "z_image_turbo_gguf_edit_api" not in [model.id for model in client.models.list()]


# --- errors on every /v1 path ----------------------------------------------------------------------

@pytest.mark.parametrize("method, path, status, code", [
    ("GET", "/v1/nope", 404, "unknown_url"),
    ("POST", "/v1/images/variations", 404, "unknown_url"),
    ("GET", "/v1/images/generations", 405, "method_not_allowed"),
    ("GET", "/v1/images/edits", 405, "method_not_allowed"),
    ("DELETE", "/v1/models/x", 405, "method_not_allowed"),
])
def test_every_v1_path_answers_openai_error_objects(api_url, method, path, status, code):
    status_got, headers, answer = call(f"{api_url}{path}", method=method, key=KEY)
    assert status_got == status
    assert set(answer["error"]) == {"message", "type", "param", "code"} and answer["error"]["code"] == code
    if status == 405:
        assert headers["Allow"] in ("GET", "POST")


def test_the_sdk_raises_not_found_for_an_unknown_route(client):
    with pytest.raises(openai.NotFoundError) as unknown:
        client.get("/nope", cast_to=object)
    assert unknown.value.body["code"] == "unknown_url"
