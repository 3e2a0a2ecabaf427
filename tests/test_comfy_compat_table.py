"""docs/ARCHITECTURE.md's compatibility table names every ComfyUI internal the pack's code uses.

The pack's code that runs inside ComfyUI (everything but tests/, benchmarks/ and cli/, which talk to ComfyUI over
HTTP) is scanned, comments and docstrings left out, for:
- dotted names under ComfyUI's modules (`comfy.sd.load_clip`, `folder_paths.get_folder_paths`,
  `execution.validate_prompt`, `comfy_kitchen...`, `comfy_aimdo...`), including what is imported
  from them (`from comfy.quant_ops import QuantizedTensor`) and names used through an alias
  (`import comfy.patcher_extension as ext` then `ext.WrappersMP`);
- module names given as strings (`sys.modules.get("server")`, `"comfy.quant_ops" in sys.modules`);
- attributes of ComfyUI's PromptServer and its queue (`self.server.number`, `prompt_server.routes`,
  `queue.get_history`, and names read with getattr/hasattr on them).
Every name found must appear in backticks in the table's section, so a new use of an internal
fails here until its row says where it is in ComfyUI 0.18.1 and in the newest sources. Every row
of ops/comfy_edge/comfy_compat.py's INTERNALS must be there too.
"""
import ast
import io
import re
import tokenize
from pathlib import Path

from comfyui_zimage_gguf.ops.comfy_edge.comfy_compat import INTERNALS

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Compatibility with ComfyUI versions"
COMFY_MODULES = ("comfy", "comfy_extras", "comfy_kitchen", "comfy_aimdo", "comfy_api", "folder_paths", "server",
                 "execution", "latent_preview", "node_helpers", "comfyui_version", "app")
# Objects of ComfyUI's server reached through variables (api/inserver.py): name -> the table's prefix.
SERVER_OBJECTS = {"server": "PromptServer.instance.", "prompt_server": "PromptServer.instance.",
                  "queue": "PromptServer.instance.prompt_queue.", "prompt_queue": "PromptServer.instance.prompt_queue."}
OWN_MARKER = "._zimage_gguf"  # attributes the pack sets on ComfyUI's objects itself
# Module names looked up as strings (sys.modules.get("server")); other strings such as "comfy" are data.
STRING_MODULES = {"server", "execution", "folder_paths", "comfyui_version", "comfy_kitchen", "comfy_aimdo"}


def pack_sources():
    for path in sorted(ROOT.rglob("*.py")):
        relative = path.relative_to(ROOT)
        if relative.parts[0] in ("tests", "benchmarks", "cli", "build", "dist") or relative.parts[0].startswith("."):
            continue
        yield relative, path.read_text(encoding="utf-8")


def _without_docstrings(tree):
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and isinstance(
                getattr(body[0], "value", None), ast.Constant) and isinstance(body[0].value.value, str):
            body[0].value.value = ""
    return tree


def _dotted(node):
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def _is_comfy(module: str) -> bool:
    return module.split(".")[0] in COMFY_MODULES


def comfy_names(source: str) -> set[str]:
    tree = _without_docstrings(ast.parse(source))
    _mark_parents(tree)
    aliases = {}  # local name -> the ComfyUI dotted name it stands for
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _is_comfy(alias.name):
                    found.add(alias.name)
                    local = alias.asname or alias.name.split(".")[0]
                    aliases[local] = alias.name if alias.asname else local
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and _is_comfy(node.module):
            for alias in node.names:
                found.add(f"{node.module}.{alias.name}")
                aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and re.fullmatch(r"[a-z_][\w.]*", node.value) \
                and (node.value in STRING_MODULES or node.value.startswith("comfy.")):
            found.add(node.value)  # a module named in a string: sys.modules lookups
    for node in ast.walk(tree):
        parent = getattr(node, "_parent", None)
        if isinstance(node, ast.Attribute) and not (isinstance(parent, ast.Attribute) and parent.value is node):
            dotted = _dotted(node)
            if dotted is None:
                continue
            head, _, rest = dotted.partition(".")
            if head in aliases:
                found.add(f"{aliases[head]}.{rest}")
    return {_without_dunder(name) for name in found}


def _without_dunder(name: str) -> str:
    parts = name.split(".")
    while parts[-1].startswith("__"):
        parts.pop()
    return ".".join(parts)


def server_names(source: str) -> set[str]:
    tree = _without_docstrings(ast.parse(source))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            owner = node.value
            owner_name = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", None)
            if owner_name in SERVER_OBJECTS:
                found.add(SERVER_OBJECTS[owner_name] + node.attr)
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("getattr", "hasattr") and len(node.args) >= 2:
            owner, attribute = node.args[0], node.args[1]
            owner_name = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", None)
            if owner_name in SERVER_OBJECTS and isinstance(attribute, ast.Constant):
                found.add(SERVER_OBJECTS[owner_name] + attribute.value)
            if owner_name == "server_module" and isinstance(attribute, ast.Constant):
                found.add(f"server.{attribute.value}")
            if isinstance(owner, ast.Call) and getattr(owner.func, "id", None) == "getattr" and isinstance(attribute, ast.Constant):
                inner = owner.args[1]
                if getattr(owner.args[0], "id", None) == "server_module" and isinstance(inner, ast.Constant):
                    found.add(f"server.{inner.value}.{attribute.value}")
    return {name for name in found if OWN_MARKER not in name}


def _mark_parents(tree):
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            child._parent = node


def names_used_by_the_pack() -> dict[str, set[str]]:
    used: dict[str, set[str]] = {}
    for relative, source in pack_sources():
        names = comfy_names(source)
        if relative.parts[0] == "api":
            names |= server_names(source)
        for name in names:
            used.setdefault(name, set()).add(str(relative))
    return used


def table_names() -> set[str]:
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    assert SECTION in text, f"docs/ARCHITECTURE.md has no '{SECTION}' section"
    section = text.split(SECTION, 1)[1]
    section = re.split(r"\n## ", section, maxsplit=1)[0]
    return {name.rstrip("()") for name in re.findall(r"`([^`\s]+)`", section)}


def test_every_comfyui_name_the_pack_uses_is_in_the_table():
    used = names_used_by_the_pack()
    assert "comfy.sd.load_diffusion_model_state_dict" in used  # the scan sees the loaders' calls
    assert "PromptServer.instance.number" in used  # and the server's attributes
    documented = table_names()
    missing = {name: sorted(files) for name, files in used.items() if name not in documented}
    assert not missing, ("add a row to docs/ARCHITECTURE.md's compatibility table (where it is in ComfyUI 0.18.1 "
                         f"and in the newest sources, what changed, what the pack does) for: {missing}")


def test_every_probed_internal_is_in_the_table():
    documented = table_names()
    assert sorted(i.name for i in INTERNALS if i.name not in documented) == []


def test_the_scan_would_see_a_new_internal():
    source = ("import comfy.samplers as samplers\nfrom comfy_aimdo.model_vbar import vbar_fault\n"
              "def f(self, prompt_server):\n    \"\"\"comfy.sd.not_this_docstring\"\"\"\n"
              "    samplers.KSampler(1)\n    prompt_server.routes.add\n"
              "    return getattr(self.server, 'prompt_queue')\n")
    names = comfy_names(source) | server_names(source)
    assert {"comfy.samplers.KSampler", "comfy_aimdo.model_vbar.vbar_fault", "PromptServer.instance.routes",
            "PromptServer.instance.prompt_queue"} <= names
    assert "comfy.sd.not_this_docstring" not in names
