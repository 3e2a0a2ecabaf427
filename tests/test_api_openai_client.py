"""The official `openai` client against the image API on a local port (the bridge app over a fake ComfyUI)."""
from __future__ import annotations

import base64

import pytest

from helpers.api_client import MODEL, start_api, start_fake
from helpers.fake_comfyui import expected_colour
from helpers.png import png_size, solid_png_colour

openai = pytest.importorskip("openai")

KEY = "sk-openai-client-test"


@pytest.fixture(scope="module")
def api_url():
    fake = start_fake()
    server = start_api([fake.url], api_key=KEY)
    yield server.url
    server.stop()
    fake.thread.stop()


@pytest.fixture
def client(api_url):
    return openai.OpenAI(base_url=f"{api_url}/v1", api_key=KEY, max_retries=0, timeout=60)


def test_models_list(client):
    assert [model.id for model in client.models.list()] == [MODEL]


def test_generate_b64_json(client):
    result = client.images.generate(model=MODEL, prompt="sdk fox", size="128x128", response_format="b64_json",
                                    extra_body={"seed": 77, "steps": 2})
    (image,) = result.data
    content = base64.b64decode(image.b64_json)
    assert png_size(content) == (128, 128)
    assert solid_png_colour(content) == expected_colour("sdk fox", 77, 0)


def test_generate_url_and_n(client):
    import urllib.request

    result = client.images.generate(model=MODEL, prompt="two", size="64x64", n=2, response_format="url")
    contents = [urllib.request.urlopen(item.url, timeout=30).read() for item in result.data]
    assert len(set(contents)) == 2 and all(png_size(content) == (64, 64) for content in contents)


def test_errors_raise_the_sdks_exception_classes(client, api_url):
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{api_url}/v1", api_key="sk-wrong", max_retries=0).images.generate(
            model=MODEL, prompt="p"
        )
    with pytest.raises(openai.NotFoundError) as not_found:
        client.images.generate(model="dall-e-3", prompt="p")
    assert "'dall-e-3' does not exist" in not_found.value.message
    with pytest.raises(openai.BadRequestError) as bad_size:
        client.images.generate(model=MODEL, prompt="p", size="1000x1000")
    assert bad_size.value.body["param"] == "size"
    with pytest.raises(openai.APIStatusError) as failed:
        client.images.generate(model=MODEL, prompt="FAIL: Text encoder q.gguf is 2048 wide")
    assert failed.value.status_code == 422
    assert failed.value.body["message"].endswith("IncompatibleModelError: Text encoder q.gguf is 2048 wide")
