"""The shipped UI workflow in ComfyUI's real graph editor (served by the server, driven in headless Chromium).

It must open with every node type known and no error, offer its three model files as missing
downloads (the real files are not here), and the prompt the editor builds from it must equal the
shipped API file up to node ids. It opens at a zoom where the editor draws text, in a 1600x1000
window, both as a template and as a file; a wrong encoder shows our error in the toast; and the node
search finds the loaders by the words users type. Screenshots of each go to $ZIMAGE_GGUF_SCREENSHOTS
(default /tmp/zimage-screens).
"""
from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed in this Python")

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
    "--disable-component-update", "--disable-sync",
]
EDITOR_READY_TIMEOUT_MS = 180_000
WINDOW = {"width": 1600, "height": 1000}
SCREENSHOTS = Path(os.environ.get("ZIMAGE_GGUF_SCREENSHOTS", "/tmp/zimage-screens"))
# The frontend draws node text from MinFontSizeForLOD (8 px) / NODE_TEXT_SIZE (14 px) zoom up.
TEXT_DRAWS_FROM_SCALE = 8 / 14

OPEN_WORKFLOW_JS = """async (workflow) => {
    await window.app.loadGraphData(workflow);
    const prompt = await window.app.graphToPrompt();
    const unregistered = workflow.nodes.map((node) => node.type)
        .filter((type) => !(type in window.LiteGraph.registered_node_types));
    return {output: prompt.output, unregistered};
}"""


@dataclass
class Editor:
    page: object
    problems: list[str] = field(default_factory=list)  # console errors, uncaught errors, failed requests


@pytest.fixture(scope="module")
def editor(comfy_server, tmp_path_factory):
    """The graph editor loaded in a page, recording console errors and failed requests."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (set CHROMIUM_PATH)")
    # A first-time user gets the template browser as a modal dialog over the canvas; mark the
    # (temporary) server's user as past that.
    status, body = comfy_server.request("/settings/Comfy.TutorialCompleted", True)
    assert status == 200, body
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=CHROMIUM, headless=True,
            args=CHROMIUM_FLAGS, viewport=WINDOW,
        )
        try:
            page = context.new_page()
            editor = Editor(page)
            page.on("pageerror", lambda error: editor.problems.append(f"uncaught: {error}"))
            page.on("console", lambda message: editor.problems.append(f"console error: {message.text}")
                    if message.type == "error" else None)
            page.on("requestfailed", lambda request: editor.problems.append(
                f"request failed: {request.url} ({request.failure})"))
            page.on("response", lambda response: editor.problems.append(f"HTTP {response.status}: {response.url}")
                    if response.status >= 400 else None)
            page.goto(comfy_server.url, wait_until="domcontentloaded")
            page.wait_for_function("() => window.app && window.app.rootGraph && window.LiteGraph",
                                   timeout=EDITOR_READY_TIMEOUT_MS)
            yield editor
        finally:
            context.close()


def open_workflow(editor: Editor, workflow: dict) -> dict:
    """Load the workflow through the app's own API; return the prompt, unknown types and load-time problems.

    Requests to other hosts are left out: the editor asks the model hosts for the sizes of missing
    files and api.comfy.org for releases, and this machine may be offline. Console lines about
    failed resources are left out too: the request and response handlers record them with URLs.
    So are requests the page cancels itself (net::ERR_ABORTED, e.g. a settings write superseded
    by the next one): the server never failed them.
    """
    first_new = len(editor.problems)
    result = editor.page.evaluate(OPEN_WORKFLOW_JS, workflow)
    editor.page.wait_for_timeout(1000)  # the missing-model checks and overlays settle asynchronously
    server_host = urlsplit(editor.page.url).netloc
    problems = []
    for problem in editor.problems[first_new:]:
        if problem.startswith("console error: Failed to load resource"):
            continue
        if problem.startswith(("request failed:", "HTTP")):
            url = problem.split(" ", 2)[-1].split(" ", 1)[0]
            if urlsplit(url).netloc != server_host or problem.endswith("(net::ERR_ABORTED)"):
                continue
        problems.append(problem)
    result["problems"] = problems
    result["overlay"] = editor.page.evaluate("() => document.body.innerText")
    return result


def model_entries(ui: dict) -> list[dict]:
    return [entry for node in ui["nodes"] for entry in node.get("properties", {}).get("models", [])]


@pytest.fixture(scope="module")
def graphs():
    """tests/test_workflows.py (its graph helpers), imported by path: ComfyUI's Python has no tests/ on sys.path."""
    import importlib.util
    import sys

    path = Path(__file__).resolve().parents[1] / "test_workflows.py"
    spec = importlib.util.spec_from_file_location("_zimage_test_workflows", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def test_ui_workflow_opens_cleanly_and_builds_the_api_prompt(editor, graphs):
    ui = json.loads((WORKFLOWS / "z_image_turbo_gguf.json").read_text(encoding="utf-8"))
    api = json.loads((WORKFLOWS / "api" / "z_image_turbo_gguf_api.json").read_text(encoding="utf-8"))
    models = model_entries(ui)
    opened = open_workflow(editor, ui)

    assert opened["unregistered"] == []
    assert "Missing Node" not in opened["overlay"]
    assert opened["problems"] == []
    assert graphs.canonical_graph(opened["output"]) == graphs.canonical_graph(api)

    # The editor read the download entries: it lists exactly these files as missing models.
    assert f"Missing Models ({len(models)})" in opened["overlay"]
    editor.page.get_by_text("See Errors").click()
    editor.page.wait_for_timeout(1000)
    panel = editor.page.evaluate("() => document.body.innerText")
    for entry in models:
        assert entry["name"] in panel and entry["directory"] in panel


def test_a_missing_node_type_would_be_caught(editor, graphs):
    # The same checks on a copy naming a node type no server has: proves they can fail.
    ui = json.loads((WORKFLOWS / "z_image_turbo_gguf.json").read_text(encoding="utf-8"))
    api = json.loads((WORKFLOWS / "api" / "z_image_turbo_gguf_api.json").read_text(encoding="utf-8"))
    broken = copy.deepcopy(ui)
    loader = next(node for node in broken["nodes"] if node["type"] == "ZImageGGUFTextEncoderLoader")
    loader["type"] = "ZImageGGUFTextEncoderLoaderThatDoesNotExist"
    opened = open_workflow(editor, broken)

    assert opened["unregistered"] == ["ZImageGGUFTextEncoderLoaderThatDoesNotExist"]
    assert "Missing Node" in opened["overlay"]
    assert graphs.canonical_graph(opened["output"]) != graphs.canonical_graph(api)


def screenshot(editor: Editor, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / name
    editor.page.screenshot(path=str(path))
    return path


OPEN_AND_READ_ZOOM_JS = """async ([workflow, source]) => {
    // as a file: under no name, so no open tab's saved view of the same workflow is reused
    await window.app.loadGraphData(workflow, true, true, source ? "z_image_turbo_gguf" : null,
                                   source ? {openSource: source} : {});
    await new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(resolve)));
    const canvas = window.app.canvas;
    return {scale: canvas.ds.scale, low_quality: canvas.low_quality,
            canvas: [canvas.canvas.clientWidth, canvas.canvas.clientHeight]};
}"""


@pytest.mark.parametrize("source", ["template", None], ids=["as-template", "as-file"])
def test_workflow_opens_at_a_zoom_where_text_draws(editor, source):
    ui = json.loads((WORKFLOWS / "z_image_turbo_gguf.json").read_text(encoding="utf-8"))
    view = editor.page.evaluate(OPEN_AND_READ_ZOOM_JS, [ui, source])
    editor.page.keyboard.press("Escape")  # the missing-models notice, if any, stays out of the picture
    editor.page.wait_for_timeout(500)
    shot = screenshot(editor, f"opened-workflow-{'template' if source else 'file'}.png")
    print(f"\n[{source or 'file'}] opened at zoom {view['scale']:.2f} on a {view['canvas']} canvas: {shot}")
    assert view["scale"] > TEXT_DRAWS_FROM_SCALE + 0.1, view
    assert view["low_quality"] is False, view
    if source is None:
        assert view["scale"] == pytest.approx(ui["extra"]["ds"]["scale"]), view  # the stored view is used


def test_a_wrong_encoder_shows_our_error_in_the_toast(editor, zimage_gguf_name, qwen3_narrow_gguf_name,
                                                      flux_vae_name, run_timeout_s):
    ui = json.loads((WORKFLOWS / "z_image_turbo_gguf.json").read_text(encoding="utf-8"))
    values = {"ZImageGGUFDiffusionModelLoader": [zimage_gguf_name, "auto", False],
              "ZImageGGUFTextEncoderLoader": [qwen3_narrow_gguf_name, "ovis", "default"],
              "VAELoader": [flux_vae_name], "EmptySD3LatentImage": [64, 64, 1]}
    for node in ui["nodes"]:
        if node["type"] in values:
            node["widgets_values"] = values[node["type"]]
            node.get("properties", {}).pop("models", None)
        if node["type"] == "KSampler":
            node["widgets_values"][2] = 1  # steps
    open_workflow(editor, ui)
    editor.page.evaluate("() => window.app.queuePrompt(0)")
    # the frontend reports an execution error in a toast or its error panel: whichever shows our type
    toast = editor.page.get_by_text("IncompatibleModelError")
    try:
        toast.first.wait_for(timeout=int(min(run_timeout_s, 600) * 1000))
    finally:
        editor.page.wait_for_timeout(500)
        shot = screenshot(editor, "error-toast.png")
    text = toast.first.evaluate("(node) => (node.closest('.p-toast-message, [role=alert], [role=dialog]') || node.parentElement.parentElement).innerText")
    print(f"\n[toast] {text!r}: {shot}")
    assert "ZImageGGUF.IncompatibleModelError" in text
    assert "Z-Image takes Qwen3-4B, 2560 wide" in text
    assert "custom_nodes" not in text  # no install path in the type name


@pytest.mark.parametrize("words, node_title", [
    ("unet gguf", "Load Diffusion Model (GGUF, Z-Image pack)"),
    ("clip gguf", "Load Text Encoder (GGUF, Z-Image pack)"),
    ("qwen gguf", "Load Text Encoder (GGUF, Z-Image pack)"),
])
def test_node_search_finds_the_loaders_by_the_words_users_type(editor, words, node_title):
    editor.page.keyboard.press("Escape")
    editor.page.evaluate("() => window.app.loadGraphData({nodes: [], links: [], groups: [], version: 0.4})")
    box = editor.page.locator("canvas#graph-canvas")
    box.dblclick(position={"x": 800, "y": 500})
    search = editor.page.get_by_role("combobox").or_(editor.page.locator(".comfy-vue-node-search-container input"))
    search.first.wait_for(timeout=10_000)
    search.first.fill(words)
    editor.page.wait_for_timeout(1500)
    results = editor.page.locator(".p-autocomplete-list, [role=listbox]").first.inner_text()
    shot = screenshot(editor, f"node-search-{words.replace(' ', '-')}.png")
    print(f"\n[search {words!r}] first results: {results.splitlines()[:6]}: {shot}")
    editor.page.keyboard.press("Escape")
    assert node_title in results
