"""Request validation, the API key and the workflow catalog, without a server."""
from __future__ import annotations

import importlib
import sys

import pytest

from comfyui_zimage_gguf.api.auth import ApiConfigError, is_authorized, resolve_api_key
from comfyui_zimage_gguf.api.catalog import DEFAULT_SUBFOLDER, PACK_WORKFLOWS, WorkflowCatalog, default_user_folder
from comfyui_zimage_gguf.api.generation_request import GenerationRequest, parse_generation_request
from comfyui_zimage_gguf.api.openai_errors import ApiError


def test_openai_fields_and_extensions_are_read_and_unknown_fields_ignored():
    request = parse_generation_request({
        "model": "m", "prompt": "p", "n": 2, "size": "1024x768", "response_format": "url",
        "seed": 2**64 - 1, "steps": 8, "negative_prompt": "n", "quality": "hd", "style": "vivid", "user": "u",
    })
    assert request == GenerationRequest(
        model="m", prompt="p", n=2, width=1024, height=768, response_format="url", seed=2**64 - 1, steps=8,
        negative_prompt="n", quality="hd",
    )


def test_defaults_keep_the_workflow_values():
    assert parse_generation_request({"prompt": "p", "size": "auto", "response_format": None}) == GenerationRequest(
        model=None, prompt="p"
    )


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ([], None),
        ({"prompt": 3}, "prompt"),
        ({"prompt": "p", "n": True}, "n"),
        ({"prompt": "p", "n": "2"}, "n"),
        ({"prompt": "p", "size": "64x2064"}, "size"),
        ({"prompt": "p", "size": "48x48"}, "size"),
        ({"prompt": "p", "size": 512}, "size"),
        ({"prompt": "p", "steps": 101}, "steps"),
        ({"prompt": "p", "seed": 2**64}, "seed"),
        ({"prompt": "p", "negative_prompt": ["x"]}, "negative_prompt"),
        ({"prompt": "x" * 32001}, "prompt"),
    ],
)
def test_each_bad_field_is_a_400_naming_it(body, param):
    with pytest.raises(ApiError) as raised:
        parse_generation_request(body)
    assert raised.value.status == 400 and raised.value.param == param
    assert raised.value.body()["error"]["type"] == "invalid_request_error"


def test_key_is_compared_as_a_bearer_token():
    assert is_authorized(None, None)
    assert is_authorized("Bearer sk-1", "sk-1") and is_authorized("bearer  sk-1", "sk-1")
    for header in (None, "", "sk-1", "Bearer sk-12", "Bearer sk-", "Basic sk-1", "Bearer"):
        assert not is_authorized(header, "sk-1"), header


def test_key_comes_from_option_then_file_then_environment(tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("sk-from-file\n")
    env = {"ZIMAGE_GGUF_API_KEY": "sk-env", "ZIMAGE_GGUF_API_KEY_FILE": str(key_file)}
    assert resolve_api_key("sk-option", None, env) == "sk-option"
    assert resolve_api_key(None, key_file, env) == "sk-from-file"
    assert resolve_api_key(None, None, env) == "sk-env"
    assert resolve_api_key(None, None, {"ZIMAGE_GGUF_API_KEY_FILE": str(key_file)}) == "sk-from-file"
    assert resolve_api_key(None, None, {}) is None


@pytest.mark.parametrize(("content", "problem"), [(None, "cannot read"), ("\n", "is empty")])
def test_unusable_key_file_is_an_error_naming_it(tmp_path, content, problem):
    key_file = tmp_path / "key"
    if content is not None:
        key_file.write_text(content)
    with pytest.raises(ApiConfigError, match=f"^{key_file}: .*{problem}"):
        resolve_api_key(environ={"ZIMAGE_GGUF_API_KEY_FILE": str(key_file)})


def test_workflows_folder_defaults_under_comfyuis_user_directory(tmp_path):
    assert default_user_folder(tmp_path, environ={}) == tmp_path / DEFAULT_SUBFOLDER
    assert default_user_folder(tmp_path, environ={"ZIMAGE_GGUF_API_WORKFLOWS": "/srv/wf"}) == tmp_path.__class__(
        "/srv/wf"
    )
    assert default_user_folder(None, environ={}) is None


def test_catalog_serves_the_pack_api_workflows_and_user_files_by_stem(tmp_path):
    shipped = WorkflowCatalog(None).workflows()["z_image_turbo_gguf_api"].path
    assert PACK_WORKFLOWS in shipped.parents
    (tmp_path / "my_flow.json").write_text(shipped.read_text())
    (tmp_path / "notes.txt").write_text("not a workflow")
    served = WorkflowCatalog(tmp_path).workflows()
    assert sorted(served) == ["my_flow", "z_image_turbo_gguf_api"]
    assert served["my_flow"].path == tmp_path / "my_flow.json"
    (tmp_path / "later.json").write_text(shipped.read_text())
    assert "later" in WorkflowCatalog(tmp_path).workflows(), "a new file is served without a restart"


def test_importing_the_pack_outside_comfyui_adds_no_routes():
    from comfyui_zimage_gguf.api.inserver import register_with_comfyui

    assert "server" not in sys.modules
    assert register_with_comfyui() is False
    importlib.import_module("comfyui_zimage_gguf")
