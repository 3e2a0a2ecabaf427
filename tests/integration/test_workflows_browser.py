"""The pack in ComfyUI's real graph editor, on two frontends: the one ComfyUI 0.18.1 pins and the newest.

Each frontend version is installed (once, into a cache outside the repository) from PyPI's
comfyui-frontend-package and served with ComfyUI's --front-end-root, so the user's install is never
changed: FRONTENDS pins both. For each, in headless Chromium: the shipped UI workflow opens with every
node type known and no error, offers its three model files as missing downloads, and builds a prompt
equal to the shipped API file up to node ids; it opens at a zoom where the editor draws text, as a
template and as a file; the template browser lists the pack's templates; the node search finds the
loaders by the words users type; the help panel shows the node's help; and a pack error shows the
pack's first line where the user looks (1.42: the error popup; 1.58: the toast says only "... failed",
the message is under View details -> Error log). Screenshots of each go to $ZIMAGE_GGUF_SCREENSHOTS
(default /tmp/zimage-screens), named after the frontend.
"""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed in this Python")

import comfy_server  # noqa: E402  (tests/integration helper, on pytest's pythonpath)

REPO_ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = REPO_ROOT / "workflows"
PACK_NAME = "comfyui_zimage_gguf"
COMFYUI_PATH = os.environ.get("COMFYUI_PATH")
COMFYUI_PYTHON = os.environ.get("COMFYUI_PYTHON") or sys.executable
# 1.42.8: what ComfyUI 0.18.1's requirements.txt pins. 1.58.1: the newest comfyui-frontend-package on
# PyPI when this was written (2026-12-06); raise it here to test a newer one.
FRONTENDS = ("1.42.8", "1.58.1")
FRONTEND_CACHE = Path(os.environ.get("ZIMAGE_GGUF_TEST_FRONTENDS", "~/.cache/comfyui_zimage_gguf/frontends")).expanduser()
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
# A damaged file in the server's own models folder: loading it is a pack error within a second.
BROKEN_GGUF = "broken-zimage.gguf"
BROKEN_FIRST_LINE = f"{BROKEN_GGUF} is not a valid GGUF file: download it again (damaged or incomplete?)"


def frontend_static(version: str) -> Path:
    """comfyui-frontend-package==version's static folder, installed once into FRONTEND_CACHE with ComfyUI's pip."""
    target = FRONTEND_CACHE / version
    static = target / "comfyui_frontend_package" / "static"
    if not (static / "index.html").is_file():
        result = subprocess.run(
            [COMFYUI_PYTHON, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target),
             f"comfyui-frontend-package=={version}"], capture_output=True, text=True, timeout=900)
        if result.returncode != 0 or not (static / "index.html").is_file():
            pytest.skip(f"comfyui-frontend-package=={version} could not be installed into {target} "
                        f"(offline?): {result.stderr.strip()[-300:]}")
    return static


@pytest.fixture(scope="module", params=FRONTENDS, ids=[f"frontend-{v}" for v in FRONTENDS])
def frontend_server(request, tmp_path_factory, model_cache):
    """A ComfyUI 0.18.1 server of its own serving one pinned frontend (stopped when its tests are done)."""
    if not COMFYUI_PATH:
        pytest.skip("COMFYUI_PATH is not set")
    version = request.param
    static = frontend_static(version)
    base_dir = tmp_path_factory.mktemp(f"comfyui-frontend-{version}")
    (base_dir / "models" / "diffusion_models").mkdir(parents=True)
    (base_dir / "models" / "diffusion_models" / BROKEN_GGUF).write_bytes(b"GGUF\x03\x00\x00\x00damaged")
    try:
        server = comfy_server.start_server(
            COMFYUI_PATH, COMFYUI_PYTHON, base_dir, model_cache, {PACK_NAME: REPO_ROOT},
            env={"ZIMAGE_GGUF_STRICT": "1"}, extra_args=("--front-end-root", str(static)),
            startup_timeout_s=float(os.environ.get("ZIMAGE_GGUF_STARTUP_TIMEOUT", "300")))
    except (RuntimeError, TimeoutError) as error:
        pytest.fail(str(error))
    server.frontend = version
    yield server
    comfy_server.stop_server(server.process)

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
    frontend: str  # the comfyui-frontend-package version served
    server: object
    problems: list[str] = field(default_factory=list)  # console errors, uncaught errors, failed requests

    def at_least(self, version: str) -> bool:
        return tuple(map(int, self.frontend.split("."))) >= tuple(map(int, version.split(".")))


@pytest.fixture(scope="module")
def editor(frontend_server, tmp_path_factory):
    """The graph editor loaded in a page, recording console errors and failed requests."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (set CHROMIUM_PATH)")
    # A first-time user gets the template browser as a modal dialog over the canvas; mark the
    # (temporary) server's user as past that.
    status, body = frontend_server.request("/settings/Comfy.TutorialCompleted", True)
    assert status == 200, body
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=CHROMIUM, headless=True,
            args=CHROMIUM_FLAGS, viewport=WINDOW,
        )
        try:
            page = context.new_page()
            editor = Editor(page, frontend_server.frontend, frontend_server)
            page.on("pageerror", lambda error: editor.problems.append(f"uncaught: {error}"))
            page.on("console", lambda message: editor.problems.append(f"console error: {message.text}")
                    if message.type == "error" else None)
            page.on("requestfailed", lambda request: editor.problems.append(
                f"request failed: {request.url} ({request.failure})"))
            page.on("response", lambda response: editor.problems.append(f"HTTP {response.status}: {response.url}")
                    if response.status >= 400 else None)
            page.goto(frontend_server.url, wait_until="domcontentloaded")
            page.wait_for_function("() => window.app && window.app.rootGraph && window.LiteGraph",
                                   timeout=EDITOR_READY_TIMEOUT_MS)
            served = page.evaluate("() => window.__COMFYUI_FRONTEND_VERSION__")
            assert served == editor.frontend, f"the server serves frontend {served}, not the pinned {editor.frontend}"
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
    ui = json.loads((WORKFLOWS / "Z-Image Turbo GGUF - text to image.json").read_text(encoding="utf-8"))
    api = json.loads((WORKFLOWS / "api" / "z_image_turbo_gguf_api.json").read_text(encoding="utf-8"))
    models = model_entries(ui)
    opened = open_workflow(editor, ui)

    assert opened["unregistered"] == []
    assert opened["problems"] == []
    assert graphs.canonical_graph(opened["output"]) == graphs.canonical_graph(api)

    # The editor read the download entries: it lists exactly these files as missing models.
    panel = issues_panel(editor, opened)
    screenshot(editor, "missing-models.png")
    assert missing_nodes_shown(editor, opened["overlay"] + panel) is False
    if editor.at_least("1.58"):
        assert f"{len(models)} issues found" in opened["overlay"] and "Missing Models" in panel
    else:
        assert f"Missing Models ({len(models)})" in opened["overlay"]
    for entry in models:
        assert entry["name"] in panel and entry["directory"] in panel


def test_a_missing_node_type_would_be_caught(editor, graphs):
    # The same checks on a copy naming a node type no server has: proves they can fail.
    ui = json.loads((WORKFLOWS / "Z-Image Turbo GGUF - text to image.json").read_text(encoding="utf-8"))
    api = json.loads((WORKFLOWS / "api" / "z_image_turbo_gguf_api.json").read_text(encoding="utf-8"))
    broken = copy.deepcopy(ui)
    loader = next(node for node in broken["nodes"] if node["type"] == "ZImageGGUFTextEncoderLoader")
    loader["type"] = "ZImageGGUFTextEncoderLoaderThatDoesNotExist"
    opened = open_workflow(editor, broken)

    assert opened["unregistered"] == ["ZImageGGUFTextEncoderLoaderThatDoesNotExist"]
    # 1.42 says it in a modal dialog over the page; 1.58 in its issues panel
    panel = issues_panel(editor, opened) if editor.at_least("1.58") else ""
    screenshot(editor, "missing-node.png")
    editor.page.keyboard.press("Escape")
    assert missing_nodes_shown(editor, opened["overlay"] + panel) is True
    assert graphs.canonical_graph(opened["output"]) != graphs.canonical_graph(api)


def issues_panel(editor: Editor, opened: dict) -> str:
    """The page's text after opening the list of the workflow's problems (1.42: See Errors; 1.58: View details)."""
    editor.page.get_by_text("View details" if editor.at_least("1.58") else "See Errors").first.click()
    editor.page.wait_for_timeout(1500)
    return editor.page.evaluate("() => document.body.innerText")


def missing_nodes_shown(editor: Editor, text: str) -> bool:
    """Whether the editor reports node types it does not know (1.42: 'Missing Node'; 1.58: 'Missing Node Packs')."""
    return ("Missing Node Packs" if editor.at_least("1.58") else "Missing Node") in text


def screenshot(editor: Editor, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"frontend-{editor.frontend}-{name}"
    editor.page.screenshot(path=str(path))
    return path


OPEN_AND_READ_ZOOM_JS = """async ([workflow, source]) => {
    // as a file: under no name, so no open tab's saved view of the same workflow is reused
    await window.app.loadGraphData(workflow, true, true, source ? "Z-Image Turbo GGUF - text to image" : null,
                                   source ? {openSource: source} : {});
    await new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(resolve)));
    const canvas = window.app.canvas;
    return {scale: canvas.ds.scale, low_quality: canvas.low_quality,
            canvas: [canvas.canvas.clientWidth, canvas.canvas.clientHeight]};
}"""


@pytest.mark.parametrize("source", ["template", None], ids=["as-template", "as-file"])
def test_workflow_opens_at_a_zoom_where_text_draws(editor, source):
    ui = json.loads((WORKFLOWS / "Z-Image Turbo GGUF - text to image.json").read_text(encoding="utf-8"))
    view = editor.page.evaluate(OPEN_AND_READ_ZOOM_JS, [ui, source])
    editor.page.keyboard.press("Escape")  # the missing-models notice, if any, stays out of the picture
    editor.page.wait_for_timeout(500)
    shot = screenshot(editor, f"opened-workflow-{'template' if source else 'file'}.png")
    print(f"\n[{source or 'file'}] opened at zoom {view['scale']:.2f} on a {view['canvas']} canvas: {shot}")
    assert view["scale"] > TEXT_DRAWS_FROM_SCALE + 0.1, view
    assert view["low_quality"] is False, view
    if source is None:
        assert view["scale"] == pytest.approx(ui["extra"]["ds"]["scale"]), view  # the stored view is used


ERROR_LOG_JS = """(node) => {
    // the Error log block of 1.58's error panel: the smallest element holding its title and the report
    let box = node;
    while (box && !(box.innerText || "").includes("Exception Message")) box = box.parentElement;
    return box ? box.innerText : "";
}"""


def shown_error(editor: Editor, type_name: str, timeout_s: float) -> dict:
    """Wait for a node error of `type_name` and return what the user sees first and after one click:
    {"first": the popup or toast text, "details": the panel it opens}. Screenshots of both."""
    page = editor.page
    if editor.at_least("1.58"):
        # 1.58: a toast "<node> failed / This node threw an error ..." with View details, which
        # opens the Issues panel whose Error log holds the report (type and message).
        toast = page.get_by_text("This node threw an error")
        try:
            toast.first.wait_for(timeout=int(timeout_s * 1000))
        finally:
            page.wait_for_timeout(500)
            screenshot(editor, f"error-{type_name}-toast.png")
        first = toast.first.evaluate("(node) => node.parentElement.parentElement.innerText")
        page.get_by_text("View details").first.click()
        log = page.get_by_text("Exception Message")
        log.first.wait_for(timeout=10_000)
        page.wait_for_timeout(500)
        screenshot(editor, f"error-{type_name}-details.png")
        return {"first": first, "details": log.first.evaluate(ERROR_LOG_JS)}
    # 1.42: a popup "1 ERROR" listing "<type>: <message>" (cut after three lines), See Errors opens the panel.
    popup = page.get_by_text(type_name)
    try:
        popup.first.wait_for(timeout=int(timeout_s * 1000))
    finally:
        page.wait_for_timeout(500)
        screenshot(editor, f"error-{type_name}-toast.png")
    first = popup.first.evaluate(
        "(node) => (node.closest('.p-toast-message, [role=alert], [role=dialog]') || node.parentElement.parentElement).innerText")
    page.get_by_text("See Errors").first.click()
    page.wait_for_timeout(1500)
    screenshot(editor, f"error-{type_name}-details.png")
    return {"first": first, "details": page.evaluate("() => document.body.innerText")}


BROKEN_LOAD_JS = """async (fileName) => {
    await window.app.loadGraphData({nodes: [], links: [], groups: [], version: 0.4});
    const graph = window.app.graph;
    const loader = window.LiteGraph.createNode("ZImageGGUFDiffusionModelLoader");
    loader.pos = [300, 300];
    graph.add(loader);
    loader.widgets.find((w) => w.name === "unet_name").value = fileName;
    const shift = window.LiteGraph.createNode("ModelSamplingAuraFlow");
    shift.pos = [760, 300];
    graph.add(shift);
    const preview = window.LiteGraph.createNode("PreviewAny");
    preview.pos = [1060, 300];
    graph.add(preview);
    loader.connect(0, shift, 0);
    shift.connect(0, preview, 0);
    window.app.canvas.setDirty(true, true);
}"""


def test_a_pack_error_shows_its_first_line_where_users_look(editor):
    editor.page.keyboard.press("Escape")
    editor.page.evaluate(BROKEN_LOAD_JS, BROKEN_GGUF)
    editor.page.evaluate("() => window.app.queuePrompt(0)")
    shown = shown_error(editor, "GGUFFormatError", timeout_s=120)
    print(f"\n[{editor.frontend}] first: {shown['first']!r}\n[{editor.frontend}] details: {shown['details'][:600]!r}")
    if editor.at_least("1.58"):
        assert "Load Diffusion Model (GGUF, Z-Image pack) failed" in shown["first"]
        assert f"Exception Message:** ZImageGGUF.GGUFFormatError: {BROKEN_FIRST_LINE}" in shown["details"]
    else:
        # the popup cuts the line after three lines of text; what it shows is the line's start
        assert f"ZImageGGUF.GGUFFormatError: {BROKEN_FIRST_LINE[:60]}" in shown["first"]
        assert f"ZImageGGUF.GGUFFormatError: {BROKEN_FIRST_LINE}" in shown["details"]
    assert "custom_nodes" not in shown["first"]


def test_a_wrong_encoder_shows_our_error(editor, zimage_gguf_name, qwen3_narrow_gguf_name, flux_vae_name,
                                         run_timeout_s):
    ui = json.loads((WORKFLOWS / "Z-Image Turbo GGUF - text to image.json").read_text(encoding="utf-8"))
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
    shown = shown_error(editor, "IncompatibleModelError", timeout_s=min(run_timeout_s, 600))
    print(f"\n[{editor.frontend}] first: {shown['first']!r}")
    where = shown["details"] if editor.at_least("1.58") else shown["first"]
    assert "ZImageGGUF.IncompatibleModelError" in where
    assert "Z-Image takes Qwen3-4B, 2560 wide" in where
    assert "custom_nodes" not in shown["first"]  # no install path in the type name


@pytest.mark.parametrize("words, node_titles", [
    ("gguf", ["Load Diffusion Model (GGUF, Z-Image pack)", "Load Text Encoder (GGUF, Z-Image pack)"]),
    ("unet gguf", ["Load Diffusion Model (GGUF, Z-Image pack)"]),
    ("clip gguf", ["Load Text Encoder (GGUF, Z-Image pack)"]),
    ("qwen gguf", ["Load Text Encoder (GGUF, Z-Image pack)"]),
    ("z-image", ["Load Diffusion Model (GGUF, Z-Image pack)", "Load Text Encoder (GGUF, Z-Image pack)"]),
])
def test_node_search_finds_the_loaders_by_the_words_users_type(editor, words, node_titles):
    editor.page.keyboard.press("Escape")
    editor.page.evaluate("() => window.app.loadGraphData({nodes: [], links: [], groups: [], version: 0.4})")
    box = editor.page.locator("canvas#graph-canvas")
    search = editor.page.get_by_role("combobox").or_(editor.page.locator(".comfy-vue-node-search-container input"))
    for attempt in range(3):  # a double click landing while the new tab settles opens nothing: again
        box.dblclick(position={"x": 800, "y": 500})
        try:
            search.first.wait_for(timeout=5_000)
            break
        except sync_api.TimeoutError:
            if attempt == 2:
                screenshot(editor, f"node-search-{words.replace(' ', '-')}-no-box.png")
                raise
            editor.page.keyboard.press("Escape")
    search.first.fill(words)
    editor.page.wait_for_timeout(1500)
    results = editor.page.locator(".p-autocomplete-list, [role=listbox]").first.inner_text()
    shot = screenshot(editor, f"node-search-{words.replace(' ', '-')}.png")
    print(f"\n[{editor.frontend} search {words!r}] first results: {results.splitlines()[:6]}: {shot}")
    editor.page.keyboard.press("Escape")
    for title in node_titles:
        assert title in results


def test_the_template_browser_lists_the_packs_templates(editor):
    status, listing = editor.server.request("/api/workflow_templates")
    assert status == 200 and sorted(listing[PACK_NAME]) == sorted(p.stem for p in WORKFLOWS.glob("*.json"))
    page = editor.page
    page.keyboard.press("Escape")
    page.evaluate("() => window.app.extensionManager.command.execute('Comfy.BrowseTemplates')")
    dialog = page.locator("[role=dialog]").first
    entry = dialog.get_by_text(PACK_NAME, exact=True).first
    entry.wait_for(timeout=30_000)
    page.wait_for_timeout(1000)  # the dialog re-renders its list once the templates arrive
    entry.click()  # scrolls it into view, and finds it again if the list re-rendered
    page.wait_for_timeout(2000)
    shot = screenshot(editor, "templates.png")
    text = dialog.inner_text()
    print(f"\n[{editor.frontend} templates] {text[-300:]!r}: {shot}")
    page.keyboard.press("Escape")
    for name in listing[PACK_NAME]:
        assert name in text
    assert f"Showing {len(listing[PACK_NAME])} of {len(listing[PACK_NAME])} templates" in text


SELECT_NEW_NODE_JS = """async (type) => {
    await window.app.loadGraphData({nodes: [], links: [], groups: [], version: 0.4});
    const node = window.LiteGraph.createNode(type);
    node.pos = [400, 300];
    window.app.graph.add(node);
    window.app.canvas.selectNode(node);
    window.app.canvas.setDirty(true, true);
}"""


def node_help_page(editor: Editor, node_class: str) -> str | None:
    """The pack's help page for `node_class` where it ships one (ComfyUI's custom-node docs convention:
    <WEB_DIRECTORY>/docs/<Node>/<locale>.md or docs/<Node>.md, served under /extensions/<pack>/)."""
    for path in (f"/extensions/{PACK_NAME}/docs/{node_class}/en.md", f"/extensions/{PACK_NAME}/docs/{node_class}.md"):
        status, body = editor.server.request(path)
        if status == 200:
            return body.decode("utf-8") if isinstance(body, bytes) else str(body)
    return None


def markdown_opening(markdown: str) -> tuple[str, str]:
    """A help page's title (its first heading) and first paragraph as the panel renders them (no markup)."""
    import re

    lines = [line.strip() for line in markdown.splitlines()]
    title = next(line.lstrip("#").strip() for line in lines if line.startswith("#"))
    paragraph = []
    for line in lines[lines.index(next(line for line in lines if line.startswith("#"))) + 1:]:
        if not line and paragraph:
            break
        if line and not line.startswith("#"):
            paragraph.append(line)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", " ".join(paragraph))
    return title, re.sub(r"[*`_]", "", text)


@pytest.mark.parametrize("node_class", ["ZImageGGUFDiffusionModelLoader", "ZImageGGUFTextEncoderLoader"])
def test_the_help_panel_shows_the_nodes_help(editor, node_class):
    status, info = editor.server.request(f"/api/object_info/{node_class}")
    assert status == 200
    definition = info[node_class]
    page = editor.page
    page.keyboard.press("Escape")
    page.evaluate(SELECT_NEW_NODE_JS, node_class)
    page.wait_for_timeout(1000)
    page.get_by_test_id("info-button").first.click()
    page.wait_for_timeout(2500)
    shot = screenshot(editor, f"help-{node_class}.png")
    panel = page.evaluate("() => document.body.innerText")
    help_page = node_help_page(editor, node_class)
    print(f"\n[{editor.frontend} help {node_class}] help page: {'yes' if help_page else 'none'}: {shot}")
    if help_page is not None:
        title, first_paragraph = markdown_opening(help_page)
        assert title in panel and first_paragraph[:80] in " ".join(panel.split())
        return
    assert definition["description"] in panel
    for section in ("required", "optional"):
        for name, spec in definition["input"].get(section, {}).items():
            tooltip = spec[1].get("tooltip") if len(spec) > 1 and isinstance(spec[1], dict) else None
            if tooltip:
                assert tooltip in panel, name
