"""API-format workflows and the parameters applied to them by node type, never by node id.

Shared by the `queue` command and the image API, so both change the same inputs of any API export
of a similar graph: the text of the CLIPTextEncode feeding the sampler's positive (or negative)
input, the sampler's seed, steps and denoise, the empty latent's size and batch size, the loaders'
files, and for edits the LoadImage file (an RGBA PNG whose alpha is the mask: LoadImage's MASK output
feeds SetLatentNoiseMask; a graph edited without a mask loses its SetLatentNoiseMask; n > 1 without an
empty latent repeats the encoded latent with RepeatLatentBatch).
"""
from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ZImageGGUFError

SAMPLER_SEED_INPUT = {"KSampler": "seed", "KSamplerAdvanced": "noise_seed"}
LATENT_TYPES = ("EmptySD3LatentImage", "EmptyLatentImage")
PROMPT_ENCODER_TYPE = "CLIPTextEncode"
IMAGE_LOADER_TYPE = "LoadImage"
NOISE_MASK_TYPE = "SetLatentNoiseMask"
REPEAT_LATENT_TYPE = "RepeatLatentBatch"
# quality -> share of the workflow's own step count, unless the sampler's _meta.quality_steps sets them
QUALITY_SHARES = {"low": 0.5, "medium": 0.75, "high": 1.0}
QUALITY_ALIASES = {"auto": "high", "standard": "high", "hd": "high"}
# Model files, set by loader node type: parameter -> {class_type: input name}
MODEL_FILE_INPUTS = {
    "unet": {"ZImageGGUFDiffusionModelLoader": "unet_name", "UNETLoader": "unet_name", "UnetLoaderGGUF": "unet_name"},
    "clip": {"ZImageGGUFTextEncoderLoader": "clip_name", "CLIPLoader": "clip_name", "CLIPLoaderGGUF": "clip_name"},
    "vae": {"VAELoader": "vae_name"},
}


class WorkflowError(ZImageGGUFError, ValueError):
    """A workflow file cannot be used; the message is one line naming the file and the problem."""


class MissingNodeError(WorkflowError):
    """The workflow has no node to apply a requested parameter to."""

    def __init__(self, what: str, parameter: str, label: str):
        self.parameter = parameter
        super().__init__(f"the workflow has no {what} to apply {label} to")


def is_ui_format(data) -> bool:
    return isinstance(data, dict) and "nodes" in data and "links" in data


def is_api_format(data) -> bool:
    return (
        isinstance(data, dict)
        and bool(data)
        and all(
            isinstance(node, dict) and "class_type" in node and isinstance(node.get("inputs"), dict)
            for node in data.values()
        )
    )


def load_api_workflow(path) -> dict:
    """Read an API-format workflow; raise WorkflowError naming the file and what is wrong with it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise WorkflowError(f"{path}: no such file") from None
    except OSError as error:
        raise WorkflowError(f"{path}: cannot read: {error.strerror}") from None
    except UnicodeDecodeError:
        raise WorkflowError(f"{path}: not JSON (not UTF-8 text)") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise WorkflowError(f"{path}: not JSON ({error.msg} at line {error.lineno})") from None
    if is_ui_format(data):
        raise WorkflowError(f"{path}: this is a UI-format workflow; use the *_api.json file or export it with File → Export (API)")
    if not is_api_format(data):
        raise WorkflowError(
            f"{path}: not an API-format workflow (expected an object of nodes with class_type and inputs)"
        )
    return data


@dataclass
class AppliedWorkflow:
    workflow: dict
    notes: list[str] = field(default_factory=list)


def _nodes_of_type(workflow: dict, class_types) -> list[dict]:
    return [node for node in workflow.values() if node["class_type"] in class_types]


def _require(nodes: list, what: str, parameter: str, label: str) -> list:
    if not nodes:
        raise MissingNodeError(what, parameter, label.format(parameter))
    return nodes


def _sampler_prompt_encoders(workflow: dict, sampler_input: str) -> list[dict]:
    encoders = []
    for sampler in _nodes_of_type(workflow, SAMPLER_SEED_INPUT):
        source = sampler["inputs"].get(sampler_input)
        if isinstance(source, list) and workflow.get(str(source[0]), {}).get("class_type") == PROMPT_ENCODER_TYPE:
            encoder = workflow[str(source[0])]
            if all(encoder is not known for known in encoders):
                encoders.append(encoder)
    return encoders


def is_edit_workflow(workflow: dict) -> bool:
    """True for a graph that starts from an image (a LoadImage node): it serves /v1/images/edits."""
    return bool(_nodes_of_type(workflow, (IMAGE_LOADER_TYPE,)))


def quality_steps(workflow: dict) -> dict[str, int]:
    """{"low", "medium", "high"} -> step count for this workflow.

    A KSampler's `_meta.quality_steps` (e.g. {"low": 4, "medium": 6, "high": 8}) sets them per
    workflow; otherwise high is the sampler's own steps, medium 3/4 and low 1/2 of it (rounded up).
    """
    samplers = _nodes_of_type(workflow, SAMPLER_SEED_INPUT)
    if not samplers:
        return {}
    configured = (samplers[0].get("_meta") or {}).get("quality_steps") or {}
    steps = samplers[0]["inputs"].get("steps")
    table = {}
    for name, share in QUALITY_SHARES.items():
        value = configured.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            table[name] = value
        elif isinstance(steps, int) and steps > 0:
            table[name] = max(1, math.ceil(steps * share))
    return table


def resolve_quality(quality: str) -> str:
    """OpenAI's quality names -> low, medium or high (auto, standard and hd run the workflow's own steps)."""
    return QUALITY_ALIASES.get(quality, quality)


def _replace_links(workflow: dict, old: list, new: list) -> None:
    for node in workflow.values():
        for name, value in node["inputs"].items():
            if isinstance(value, list) and len(value) == 2 and str(value[0]) == str(old[0]) and value[1] == old[1]:
                node["inputs"][name] = list(new)


def _bypass_noise_masks(workflow: dict) -> None:
    """Without a mask the whole image is redone: wire each SetLatentNoiseMask's input past it."""
    for node_id in [key for key, node in workflow.items() if node["class_type"] == NOISE_MASK_TYPE]:
        _replace_links(workflow, [node_id, 0], workflow[node_id]["inputs"]["samples"])
        del workflow[node_id]


def _repeat_latents(workflow: dict, amount: int) -> None:
    """n images from one encoded image: a RepeatLatentBatch in front of every sampler's latent input."""
    next_id = max((int(key) for key in workflow if key.isdigit()), default=0) + 1
    for sampler in _nodes_of_type(workflow, SAMPLER_SEED_INPUT):
        source = sampler["inputs"].get("latent_image")
        if not isinstance(source, list):
            continue
        workflow[str(next_id)] = {"class_type": REPEAT_LATENT_TYPE, "inputs": {"samples": source, "amount": amount}}
        sampler["inputs"]["latent_image"] = [str(next_id), 0]
        next_id += 1


def _set_prompts(workflow: dict, prompt, negative_prompt, label: str) -> list[str]:
    """The positive and negative prompt texts; returns the notes (a negative prompt with nowhere to go)."""
    notes = []
    positive_encoders = _sampler_prompt_encoders(workflow, "positive")
    if prompt is not None:
        what = f"{PROMPT_ENCODER_TYPE} feeding a sampler's positive input"
        for encoder in _require(positive_encoders, what, "prompt", label):
            encoder["inputs"]["text"] = prompt
    if negative_prompt is not None:
        negative_encoders = [
            encoder
            for encoder in _sampler_prompt_encoders(workflow, "negative")
            if all(encoder is not positive for positive in positive_encoders)
        ]
        for encoder in negative_encoders:
            encoder["inputs"]["text"] = negative_prompt
        if not negative_encoders:
            notes.append(
                f"negative_prompt ignored: the workflow has no {PROMPT_ENCODER_TYPE} of its own feeding a "
                "sampler's negative input"
            )
    return notes


def _set_sampler_inputs(workflow: dict, values: dict, label: str) -> None:
    """seed (under each sampler's own input name), steps and denoise (KSampler only) on every sampler."""
    samplers = _nodes_of_type(workflow, SAMPLER_SEED_INPUT)
    if values["seed"] is not None:
        for sampler in _require(samplers, "KSampler", "seed", label):
            sampler["inputs"][SAMPLER_SEED_INPUT[sampler["class_type"]]] = values["seed"]
    if values["steps"] is not None:
        for sampler in _require(samplers, "KSampler", "steps", label):
            sampler["inputs"]["steps"] = values["steps"]
    if values["denoise"] is not None:
        for sampler in _require(_nodes_of_type(workflow, ("KSampler",)), "KSampler", "denoise", label):
            sampler["inputs"]["denoise"] = values["denoise"]


def _set_image_inputs(workflow: dict, image, masked, batch_size, label: str):
    """An edit's input image and mask; returns the batch size left for a latent node to take (None
    when an edit workflow repeats its one encoded latent instead)."""
    if image is not None:
        for loader in _require(_nodes_of_type(workflow, (IMAGE_LOADER_TYPE,)), IMAGE_LOADER_TYPE, "image", label):
            loader["inputs"]["image"] = image
    if masked:
        _require(_nodes_of_type(workflow, (NOISE_MASK_TYPE,)), NOISE_MASK_TYPE, "mask", label)
    elif masked is not None:
        _bypass_noise_masks(workflow)
    has_latent = bool(_nodes_of_type(workflow, LATENT_TYPES))
    if batch_size is not None and batch_size > 1 and not has_latent and is_edit_workflow(workflow):
        _repeat_latents(workflow, batch_size)
        return None
    return batch_size


def apply_overrides(
    workflow: dict,
    *,
    prompt=None,
    seed=None,
    width=None,
    height=None,
    steps=None,
    batch_size=None,
    negative_prompt=None,
    unet=None,
    clip=None,
    vae=None,
    denoise=None,
    image=None,
    masked=None,
    label: str = "{}",
) -> AppliedWorkflow:
    """Return a copy of the workflow with the given inputs replaced on every node of the matching type.

    A parameter whose node is missing raises MissingNodeError (its message uses `label`, e.g. "--{}"
    for command-line options), except negative_prompt: a workflow with no text encoder on the negative
    side (Z-Image Turbo zeroes it and runs at cfg 1) ignores it, and the result's notes say so.
    """
    workflow = copy.deepcopy(workflow)
    notes = _set_prompts(workflow, prompt, negative_prompt, label)
    _set_sampler_inputs(workflow, {"seed": seed, "steps": steps, "denoise": denoise}, label)
    batch_size = _set_image_inputs(workflow, image, masked, batch_size, label)
    for name, value in (("width", width), ("height", height), ("batch_size", batch_size)):
        if value is not None:
            for latent in _require(_nodes_of_type(workflow, LATENT_TYPES), " or ".join(LATENT_TYPES), name, label):
                latent["inputs"][name] = value
    for name, value in (("unet", unet), ("clip", clip), ("vae", vae)):
        if value is not None:
            inputs = MODEL_FILE_INPUTS[name]
            for loader in _require(_nodes_of_type(workflow, inputs), " or ".join(inputs), name, label):
                loader["inputs"][inputs[loader["class_type"]]] = value
    return AppliedWorkflow(workflow, notes)
