"""Parameters applied by node type (shared by the queue command and the image API)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from comfyui_zimage_gguf.api.workflow_params import MissingNodeError, WorkflowError, apply_overrides, load_api_workflow

API_WORKFLOW = Path(__file__).resolve().parents[1] / "workflows" / "api" / "z_image_turbo_gguf_api.json"
UI_WORKFLOW = API_WORKFLOW.parents[1] / "Z-Image Turbo GGUF - text to image.json"


def sd_style_workflow() -> dict:
    """A graph with a real negative text encoder and node ids unlike the shipped file's."""
    return {
        "a": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "m.safetensors"}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": "p", "clip": ["a", 1]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "n", "clip": ["a", 1]}},
        "lat": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1}},
        "s": {
            "class_type": "KSamplerAdvanced",
            "inputs": {"noise_seed": 1, "steps": 20, "positive": ["pos", 0], "negative": ["neg", 0],
                       "latent_image": ["lat", 0], "model": ["a", 0]},
        },
    }


def test_shipped_workflow_gets_every_parameter_on_the_right_node():
    original = load_api_workflow(API_WORKFLOW)
    applied = apply_overrides(
        original, prompt="a fox", seed=7, width=128, height=256, steps=3, batch_size=2, negative_prompt="blur"
    )
    workflow = applied.workflow
    assert workflow["5"]["inputs"]["text"] == "a fox"
    assert (workflow["8"]["inputs"]["seed"], workflow["8"]["inputs"]["steps"]) == (7, 3)
    assert {key: workflow["4"]["inputs"][key] for key in ("width", "height", "batch_size")} == {
        "width": 128, "height": 256, "batch_size": 2
    }
    # Turbo's negative side is a ConditioningZeroOut: nothing to write the text into, and a note says so.
    assert len(applied.notes) == 1 and applied.notes[0].startswith("negative_prompt ignored")
    assert "blur" not in json.dumps(workflow)
    assert original == load_api_workflow(API_WORKFLOW), "the input workflow must not be modified"


def test_negative_prompt_goes_to_the_negative_encoder_only():
    applied = apply_overrides(sd_style_workflow(), prompt="cat", negative_prompt="dog", seed=9)
    workflow = applied.workflow
    assert (workflow["pos"]["inputs"]["text"], workflow["neg"]["inputs"]["text"]) == ("cat", "dog")
    assert workflow["s"]["inputs"]["noise_seed"] == 9
    assert applied.notes == []


def test_negative_prompt_never_overwrites_an_encoder_that_also_feeds_the_positive_side():
    workflow = sd_style_workflow()
    workflow["s"]["inputs"]["negative"] = ["pos", 0]
    applied = apply_overrides(workflow, prompt="cat", negative_prompt="dog")
    assert applied.workflow["pos"]["inputs"]["text"] == "cat"
    assert applied.notes and "negative_prompt ignored" in applied.notes[0]


def test_parameters_left_out_keep_the_workflow_values():
    workflow = sd_style_workflow()
    assert apply_overrides(workflow).workflow == workflow


@pytest.mark.parametrize(
    ("parameter", "what"),
    [("seed", "KSampler"), ("steps", "KSampler"), ("batch_size", "EmptySD3LatentImage or EmptyLatentImage"),
     ("prompt", "CLIPTextEncode feeding a sampler's positive input")],
)
def test_missing_node_names_the_parameter_in_the_callers_spelling(parameter, what):
    vae_only = {"1": {"class_type": "VAELoader", "inputs": {"vae_name": "ae.safetensors"}}}
    value = "x" if parameter == "prompt" else 2
    with pytest.raises(MissingNodeError) as raised:
        apply_overrides(vae_only, **{parameter: value})
    assert str(raised.value) == f"the workflow has no {what} to apply {parameter} to"
    assert raised.value.parameter == parameter
    with pytest.raises(MissingNodeError, match=f"to apply --{parameter} to$"):
        apply_overrides(vae_only, label="--{}", **{parameter: value})


def test_ui_format_file_is_refused_with_the_reason():
    with pytest.raises(WorkflowError, match="this is a UI-format workflow"):
        load_api_workflow(UI_WORKFLOW)
