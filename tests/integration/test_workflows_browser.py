"""The shipped UI workflow in ComfyUI's real graph editor (served by the server, driven in headless Chromium).

It must open with every node type known and no error, offer its three model files as missing
downloads (the real files are not here), and the prompt the editor builds from it must equal the
shipped API file up to node ids.
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
            args=CHROMIUM_FLAGS,
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
def graphs(load_tests_helper):
    return load_tests_helper("test_workflows")


def test_ui_workflow_opens_cleanly_and_builds_the_api_prompt(editor, graphs):
    ui = json.loads((WORKFLOWS / "z_image_turbo_gguf.json").read_text(encoding="utf-8"))
    api = json.loads((WORKFLOWS / "z_image_turbo_gguf_api.json").read_text(encoding="utf-8"))
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
    api = json.loads((WORKFLOWS / "z_image_turbo_gguf_api.json").read_text(encoding="utf-8"))
    broken = copy.deepcopy(ui)
    loader = next(node for node in broken["nodes"] if node["type"] == "ZImageGGUFTextEncoderLoader")
    loader["type"] = "ZImageGGUFTextEncoderLoaderThatDoesNotExist"
    opened = open_workflow(editor, broken)

    assert opened["unregistered"] == ["ZImageGGUFTextEncoderLoaderThatDoesNotExist"]
    assert "Missing Node" in opened["overlay"]
    assert graphs.canonical_graph(opened["output"]) != graphs.canonical_graph(api)
