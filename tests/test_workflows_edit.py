"""The shipped edit workflow (img2img / inpainting): its API file is a valid graph and exactly what its UI
file means, by the same editor rules as the text-to-image pair (test_workflows.py)."""
from __future__ import annotations

import copy
import json

import pytest

from test_workflows import WORKFLOWS, api_graph_problems, canonical_graph, nodes_of_type, ui_to_api

from comfyui_zimage_gguf.api.workflow_params import apply_overrides, is_edit_workflow, quality_steps

UI_FILE = WORKFLOWS / "Z-Image Turbo GGUF - edit and inpaint.json"
API_FILE = WORKFLOWS / "api" / "z_image_turbo_gguf_edit_api.json"
GENERATE_API_FILE = WORKFLOWS / "api" / "z_image_turbo_gguf_api.json"


@pytest.fixture(scope="module")
def ui() -> dict:
    return json.loads(UI_FILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def api() -> dict:
    return json.loads(API_FILE.read_text(encoding="utf-8"))


def test_api_file_is_a_valid_graph(api):
    assert api_graph_problems(api) == []


def test_ui_file_means_the_api_file(ui, api):
    assert canonical_graph(ui_to_api(ui)) == canonical_graph(api)


def test_changed_denoise_in_the_ui_file_no_longer_matches(ui, api):
    changed = copy.deepcopy(ui)
    sampler = next(node for node in changed["nodes"] if node["type"] == "KSampler")
    sampler["widgets_values"][-1] = 0.5
    assert canonical_graph(ui_to_api(changed)) != canonical_graph(api)


def test_image_is_encoded_masked_by_its_own_alpha_and_sampled(api):
    (loader,) = nodes_of_type(api, "LoadImage")
    (encode,) = nodes_of_type(api, "VAEEncode")
    (noise_mask,) = nodes_of_type(api, "SetLatentNoiseMask")
    (sampler,) = nodes_of_type(api, "KSampler")
    loader_id = next(key for key, node in api.items() if node is loader)
    assert encode["inputs"]["pixels"] == [loader_id, 0]
    assert noise_mask["inputs"]["mask"] == [loader_id, 1]  # LoadImage's MASK: 1 - alpha
    assert api[noise_mask["inputs"]["samples"][0]] is encode
    assert api[sampler["inputs"]["latent_image"][0]] is noise_mask
    assert is_edit_workflow(api) and not nodes_of_type(api, "EmptySD3LatentImage")


def test_same_models_and_sampler_settings_as_the_text_to_image_workflow(api):
    generate = json.loads(GENERATE_API_FILE.read_text(encoding="utf-8"))
    for class_type in ("ZImageGGUFDiffusionModelLoader", "ZImageGGUFTextEncoderLoader", "VAELoader",
                       "ModelSamplingAuraFlow"):
        assert [n["inputs"] for n in nodes_of_type(api, class_type)] == [
            n["inputs"] for n in nodes_of_type(generate, class_type)]
    (sampler,), (generate_sampler,) = nodes_of_type(api, "KSampler"), nodes_of_type(generate, "KSampler")
    for key in ("steps", "cfg", "sampler_name", "scheduler"):
        assert sampler["inputs"][key] == generate_sampler["inputs"][key]
    assert quality_steps(api) == quality_steps(generate) == {"low": 4, "medium": 6, "high": 8}


def test_without_a_mask_the_noise_mask_is_bypassed_and_the_graph_stays_valid(api):
    applied = apply_overrides(api, image="zimage-gguf-api/x.png", masked=False, denoise=0.6, batch_size=3)
    graph = applied.workflow
    links = [value for node in graph.values() for value in node["inputs"].values() if isinstance(value, list)]
    assert all(str(link[0]) in graph for link in links)
    assert not nodes_of_type(graph, "SetLatentNoiseMask")
    (sampler,) = nodes_of_type(graph, "KSampler")
    repeat = graph[sampler["inputs"]["latent_image"][0]]
    assert repeat["class_type"] == "RepeatLatentBatch" and repeat["inputs"]["amount"] == 3
    assert graph[repeat["inputs"]["samples"][0]]["class_type"] == "VAEEncode"
    assert sampler["inputs"]["denoise"] == 0.6
    assert nodes_of_type(graph, "LoadImage")[0]["inputs"]["image"] == "zimage-gguf-api/x.png"


def test_with_a_mask_the_noise_mask_stays(api):
    graph = apply_overrides(api, image="a.png", masked=True, denoise=1.0).workflow
    assert api_graph_problems(graph) == []
    (sampler,) = nodes_of_type(graph, "KSampler")
    assert graph[sampler["inputs"]["latent_image"][0]]["class_type"] == "SetLatentNoiseMask"


def test_thumbnail_and_template_listing():
    thumbnail = UI_FILE.with_suffix(".jpg")
    assert thumbnail.read_bytes()[:3] == b"\xff\xd8\xff"
    assert API_FILE.parent.name == "api"
