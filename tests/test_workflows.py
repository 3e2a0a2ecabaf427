"""The shipped workflows: the API file is a valid graph, and it is exactly what the UI file means.

No ComfyUI here: the node classes' inputs and outputs are a table below (the integration suite checks
the same equivalence against the real graph editor). The UI -> API conversion follows the editor's
rules: widget values in input order, one extra value after a seed widget (control_after_generate),
links override widgets, frontend-only notes dropped.
"""
from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows"
UI_FILE = WORKFLOWS / "Z-Image Turbo GGUF - text to image.json"
API_FILE = WORKFLOWS / "api" / "z_image_turbo_gguf_api.json"


@dataclass(frozen=True)
class NodeSchema:
    widgets: tuple[str, ...]  # widget inputs, in the order the editor stores their values
    sockets: dict[str, str] = field(default_factory=dict)  # link inputs: name -> type
    outputs: tuple[str, ...] = ()
    seed_widget: str | None = None  # followed in widgets_values by its control_after_generate value


NODE_SCHEMAS = {
    "ZImageGGUFDiffusionModelLoader": NodeSchema(("unet_name", "dequant_dtype", "patch_on_device"), outputs=("MODEL",)),
    "ZImageGGUFTextEncoderLoader": NodeSchema(("clip_name", "type", "device"), outputs=("CLIP",)),
    "VAELoader": NodeSchema(("vae_name",), outputs=("VAE",)),
    "EmptySD3LatentImage": NodeSchema(("width", "height", "batch_size"), outputs=("LATENT",)),
    "EmptyLatentImage": NodeSchema(("width", "height", "batch_size"), outputs=("LATENT",)),
    "CLIPTextEncode": NodeSchema(("text",), {"clip": "CLIP"}, ("CONDITIONING",)),
    "ConditioningZeroOut": NodeSchema((), {"conditioning": "CONDITIONING"}, ("CONDITIONING",)),
    "ModelSamplingAuraFlow": NodeSchema(("shift",), {"model": "MODEL"}, ("MODEL",)),
    "KSampler": NodeSchema(
        ("seed", "steps", "cfg", "sampler_name", "scheduler", "denoise"),
        {"model": "MODEL", "positive": "CONDITIONING", "negative": "CONDITIONING", "latent_image": "LATENT"},
        ("LATENT",),
        seed_widget="seed",
    ),
    "VAEDecode": NodeSchema((), {"samples": "LATENT", "vae": "VAE"}, ("IMAGE",)),
    # the edit workflow's (its UI and API twins are checked in test_workflows_edit.py)
    "LoadImage": NodeSchema(("image", "upload"), outputs=("IMAGE", "MASK")),
    "VAEEncode": NodeSchema((), {"pixels": "IMAGE", "vae": "VAE"}, ("LATENT",)),
    "SetLatentNoiseMask": NodeSchema((), {"samples": "LATENT", "mask": "MASK"}, ("LATENT",)),
    "SaveImage": NodeSchema(("filename_prefix",), {"images": "IMAGE"}),
}
FRONTEND_ONLY_TYPES = {"MarkdownNote", "Note"}
LOADER_MODEL_DIRECTORIES = {
    "ZImageGGUFDiffusionModelLoader": "diffusion_models",
    "ZImageGGUFTextEncoderLoader": "text_encoders",
    "VAELoader": "vae",
}


def is_link(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


def api_graph_problems(api: dict) -> list[str]:
    """Everything that would make ComfyUI refuse the API-format graph, as readable lines."""
    problems = []
    for node_id, node in api.items():
        schema = NODE_SCHEMAS.get(node.get("class_type"))
        if schema is None:
            problems.append(f"node {node_id}: unknown class_type {node.get('class_type')!r}")
            continue
        inputs = node.get("inputs", {})
        for name in (*schema.widgets, *schema.sockets):
            if name not in inputs:
                problems.append(f"node {node_id} ({node['class_type']}): required input {name!r} not set")
        for name in inputs.keys() - {*schema.widgets, *schema.sockets}:
            problems.append(f"node {node_id} ({node['class_type']}): unknown input {name!r}")
        for name, expected_type in schema.sockets.items():
            value = inputs.get(name)
            if name not in inputs:
                continue
            if not is_link(value):
                problems.append(f"node {node_id}.{name}: expected a link [node_id, output_index], got {value!r}")
                continue
            source_id, slot = value
            source = api.get(source_id)
            if source is None:
                problems.append(f"node {node_id}.{name}: links to missing node {source_id}")
                continue
            source_outputs = NODE_SCHEMAS[source["class_type"]].outputs if source["class_type"] in NODE_SCHEMAS else ()
            if not 0 <= slot < len(source_outputs):
                problems.append(f"node {node_id}.{name}: node {source_id} ({source['class_type']}) has no output {slot}")
            elif source_outputs[slot] != expected_type:
                problems.append(
                    f"node {node_id}.{name}: needs {expected_type}, node {source_id} output {slot} is {source_outputs[slot]}"
                )
        for name in schema.widgets:
            if is_link(inputs.get(name)):
                problems.append(f"node {node_id}.{name}: widget input is linked, expected a value")
    return problems


def ui_to_api(ui: dict) -> dict:
    """What the editor queues for a UI-format workflow (flat graph, every node active)."""
    origin_of_link = {link[0]: (str(link[1]), link[2]) for link in ui["links"]}
    api = {}
    for node in ui["nodes"]:
        if node["type"] in FRONTEND_ONLY_TYPES:
            continue
        assert node.get("mode", 0) == 0, f"node {node['id']}: muted or bypassed nodes are not expected here"
        schema = NODE_SCHEMAS[node["type"]]
        values = list(node.get("widgets_values", []))
        inputs = {}
        for name in schema.widgets:
            assert values, f"node {node['id']} ({node['type']}): no widget value left for {name!r}"
            inputs[name] = values.pop(0)
            if name == schema.seed_widget:
                assert values, f"node {node['id']}: {name!r} must be followed by its control_after_generate value"
                values.pop(0)
        assert not values, f"node {node['id']} ({node['type']}): widget values left over: {values!r}"
        for socket in node.get("inputs", []):
            if socket.get("link") is not None:
                assert socket["link"] in origin_of_link, f"node {node['id']}.{socket['name']}: no link {socket['link']}"
                inputs[socket["name"]] = list(origin_of_link[socket["link"]])
        api[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return api


def _plain(value):
    # The editor writes 1.0 as 1; compare numbers by value.
    return int(value) if isinstance(value, float) and value.is_integer() else value


def canonical_graph(api: dict) -> list[dict]:
    """The graph with node ids replaced by a hash of each node's content and everything upstream of it.

    Two API graphs are the same workflow up to node ids exactly when these sorted lists are equal.
    """
    digests: dict[str, str] = {}

    def digest(node_id: str, visiting: frozenset = frozenset()) -> str:
        if node_id in digests:
            return digests[node_id]
        assert node_id not in visiting, f"cycle through node {node_id}"
        node = api[node_id]
        content = {
            name: ("link", digest(value[0], visiting | {node_id}), value[1]) if is_link(value) else _plain(value)
            for name, value in node["inputs"].items()
        }
        text = json.dumps([node["class_type"], content], sort_keys=True)
        digests[node_id] = hashlib.sha256(text.encode()).hexdigest()[:12]
        return digests[node_id]

    described = []
    for node_id, node in api.items():
        inputs = {}
        for name, value in node["inputs"].items():
            if is_link(value):
                inputs[name] = f"<{api[value[0]]['class_type']} {digest(value[0])} output {value[1]}>"
            else:
                inputs[name] = _plain(value)
        described.append({"node": digest(node_id), "class_type": node["class_type"], "inputs": inputs})
    # str(): a node the editor could not resolve has class_type None
    return sorted(described, key=lambda entry: (str(entry["class_type"]), entry["node"]))


@pytest.fixture(scope="module")
def ui() -> dict:
    return json.loads(UI_FILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def api() -> dict:
    return json.loads(API_FILE.read_text(encoding="utf-8"))


def nodes_of_type(api: dict, class_type: str) -> list[dict]:
    return [node for node in api.values() if node["class_type"] == class_type]


def test_api_file_is_a_valid_graph(api):
    assert api_graph_problems(api) == []


def test_ui_file_means_the_api_file(ui, api):
    assert canonical_graph(ui_to_api(ui)) == canonical_graph(api)


def test_ui_links_agree_with_node_sockets(ui):
    nodes = {node["id"]: node for node in ui["nodes"]}
    for link_id, origin, origin_slot, target, target_slot, link_type in ui["links"]:
        assert link_id in nodes[origin]["outputs"][origin_slot]["links"]
        assert nodes[origin]["outputs"][origin_slot]["type"] == link_type
        assert nodes[target]["inputs"][target_slot]["link"] == link_id
        assert nodes[target]["inputs"][target_slot]["type"] == link_type
    assert ui["last_link_id"] >= max(link[0] for link in ui["links"])
    assert ui["last_node_id"] >= max(nodes)


def test_loaders_offer_downloads_of_the_files_they_select(ui):
    for node in ui["nodes"]:
        directory = LOADER_MODEL_DIRECTORIES.get(node["type"])
        if directory is None:
            continue
        selected = node["widgets_values"][0]
        entries = node["properties"]["models"]
        assert [entry["name"] for entry in entries] == [selected]
        assert entries[0]["directory"] == directory
        assert entries[0]["url"].startswith("https://huggingface.co/")
        assert entries[0]["url"].rsplit("/", 1)[-1] == selected


def test_api_file_uses_the_z_image_turbo_settings(api):
    (sampler,) = nodes_of_type(api, "KSampler")
    assert {key: sampler["inputs"][key] for key in ("steps", "cfg", "sampler_name", "scheduler", "denoise")} == {
        "steps": 8, "cfg": 1, "sampler_name": "res_multistep", "scheduler": "simple", "denoise": 1,
    }
    assert api[sampler["inputs"]["model"][0]]["class_type"] == "ModelSamplingAuraFlow"
    assert api[sampler["inputs"]["model"][0]]["inputs"]["shift"] == 3
    negative = api[sampler["inputs"]["negative"][0]]
    assert negative["class_type"] == "ConditioningZeroOut"
    assert negative["inputs"]["conditioning"] == sampler["inputs"]["positive"]
    (encoder,) = nodes_of_type(api, "ZImageGGUFTextEncoderLoader")
    assert encoder["inputs"]["type"] == "lumina2"
    (latent,) = nodes_of_type(api, "EmptySD3LatentImage")
    assert (latent["inputs"]["width"], latent["inputs"]["height"], latent["inputs"]["batch_size"]) == (1024, 1024, 1)


# The checks above must be able to fail: each breakage below is one a hand edit could make.

def test_link_to_a_missing_node_is_reported(api):
    broken = copy.deepcopy(api)
    (sampler_id,) = [key for key, node in broken.items() if node["class_type"] == "KSampler"]
    broken[sampler_id]["inputs"]["latent_image"] = ["999", 0]
    assert api_graph_problems(broken) == [f"node {sampler_id}.latent_image: links to missing node 999"]


def test_link_to_a_missing_output_index_is_reported(api):
    broken = copy.deepcopy(api)
    (decode_id,) = [key for key, node in broken.items() if node["class_type"] == "VAEDecode"]
    vae_id = broken[decode_id]["inputs"]["vae"][0]
    broken[decode_id]["inputs"]["vae"] = [vae_id, 1]
    assert api_graph_problems(broken) == [f"node {decode_id}.vae: node {vae_id} (VAELoader) has no output 1"]


def test_link_of_the_wrong_type_is_reported(api):
    broken = copy.deepcopy(api)
    (sampler_id,) = [key for key, node in broken.items() if node["class_type"] == "KSampler"]
    model_source = broken[sampler_id]["inputs"]["model"]
    broken[sampler_id]["inputs"]["positive"] = model_source
    assert api_graph_problems(broken) == [
        f"node {sampler_id}.positive: needs CONDITIONING, node {model_source[0]} output 0 is MODEL"
    ]


def test_missing_required_input_is_reported(api):
    broken = copy.deepcopy(api)
    (loader_id,) = [key for key, node in broken.items() if node["class_type"] == "ZImageGGUFDiffusionModelLoader"]
    del broken[loader_id]["inputs"]["dequant_dtype"]
    assert api_graph_problems(broken) == [
        f"node {loader_id} (ZImageGGUFDiffusionModelLoader): required input 'dequant_dtype' not set"
    ]


def test_rewired_ui_file_no_longer_matches(ui, api):
    rewired = copy.deepcopy(ui)
    positive, negative = (
        next(link for link in rewired["links"] if link[5] == "CONDITIONING" and link[4] == slot) for slot in (1, 2)
    )
    positive[1], positive[2], negative[1], negative[2] = negative[1], negative[2], positive[1], positive[2]
    assert canonical_graph(ui_to_api(rewired)) != canonical_graph(api)


def test_changed_widget_value_no_longer_matches(ui, api):
    changed = copy.deepcopy(ui)
    sampler = next(node for node in changed["nodes"] if node["type"] == "KSampler")
    sampler["widgets_values"][2] = 9  # steps (after seed and its control value)
    assert canonical_graph(ui_to_api(changed)) != canonical_graph(api)


def test_seed_without_its_control_value_is_rejected(ui):
    shifted = copy.deepcopy(ui)
    sampler = next(node for node in shifted["nodes"] if node["type"] == "KSampler")
    del sampler["widgets_values"][1]
    with pytest.raises(AssertionError, match="widget"):
        ui_to_api(shifted)


def test_canonical_graph_ignores_node_ids(api):
    renumbered_ids = {old: str(100 + index) for index, old in enumerate(reversed(list(api)))}
    renumbered = {
        renumbered_ids[old]: {
            "class_type": node["class_type"],
            "inputs": {
                name: [renumbered_ids[value[0]], value[1]] if is_link(value) else value
                for name, value in node["inputs"].items()
            },
        }
        for old, node in api.items()
    }
    assert canonical_graph(renumbered) == canonical_graph(api)


# --- What the editor offers and shows ---------------------------------------------------------

# The frontend (comfyui-frontend-package 1.42) opens a template with fitView(): nodes' bounds scaled by
# 0.75 of the canvas, and draws no node text below MinFontSizeForLOD (8 px) / NODE_TEXT_SIZE (14 px).
FIT_ZOOM = 0.75
TEXT_DRAWS_FROM_SCALE = 8 / 14
WINDOW = (1600, 1000)
NODE_TITLE_HEIGHT = 30


def node_bounds(ui: dict) -> tuple[float, float, float, float]:
    """(x, y, width, height) of all nodes with their title bars, as the editor's fitView measures them."""
    left = min(n["pos"][0] for n in ui["nodes"])
    top = min(n["pos"][1] - NODE_TITLE_HEIGHT for n in ui["nodes"])
    right = max(n["pos"][0] + n["size"][0] for n in ui["nodes"])
    bottom = max(n["pos"][1] + n["size"][1] for n in ui["nodes"])
    return left, top, right - left, bottom - top


def test_only_ui_format_files_are_offered_as_templates():
    """ComfyUI lists every workflows/*.json as a template (custom_node_manager: `*/workflows/*.json`);
    the API-format file lives in workflows/api/, which it does not scan."""
    for path in WORKFLOWS.glob("*.json"):
        data = json.loads(path.read_text(encoding="utf-8"))
        assert "nodes" in data and "links" in data, f"{path.name} is not a UI-format workflow"
    assert API_FILE.parent == WORKFLOWS / "api" and API_FILE.is_file()


def test_every_template_has_a_thumbnail_the_frontend_shows():
    """Extension templates are shown with `/api/workflow_templates/<pack>/<name>.jpg` (mediaSubtype jpg)."""
    for path in WORKFLOWS.glob("*.json"):
        thumbnail = path.with_suffix(".jpg")
        assert thumbnail.is_file(), f"{thumbnail.name} missing"
        data = thumbnail.read_bytes()
        assert data[:3] == b"\xff\xd8\xff", f"{thumbnail.name} is not a JPEG"
        assert len(data) < 200_000


def test_template_opens_at_a_zoom_where_text_draws(ui):
    _, _, width, height = node_bounds(ui)
    fit_scale = min(FIT_ZOOM * WINDOW[0] / max(width, 300), FIT_ZOOM * WINDOW[1] / max(height, 300))
    assert fit_scale > TEXT_DRAWS_FROM_SCALE + 0.1, (fit_scale, width, height)


def test_stored_view_shows_every_node_at_a_readable_zoom(ui):
    ds = ui["extra"]["ds"]
    scale, (offset_x, offset_y) = ds["scale"], ds["offset"]
    assert scale >= 0.7
    left, top, width, height = node_bounds(ui)
    # screen = (canvas + offset) * scale: the whole graph lies inside a 1600x1000 window
    assert (left + offset_x) * scale >= 0 and (left + width + offset_x) * scale <= WINDOW[0]
    assert (top + offset_y) * scale >= 0 and (top + height + offset_y) * scale <= WINDOW[1]


def test_note_names_the_recommended_folder_and_every_model_link(ui):
    (note,) = [n for n in ui["nodes"] if n["type"] in FRONTEND_ONLY_TYPES]
    text = note["widgets_values"][0]
    assert "custom_nodes/comfyui-zimage-gguf" in text
    for entry in (e for n in ui["nodes"] for e in n.get("properties", {}).get("models", [])):
        assert entry["url"] in text and f"models/{entry['directory']}/" in text
