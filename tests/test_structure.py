"""The pack's structure rules (issue 18, docs/ARCHITECTURE.md "The layers of the house"), checked on
the source with `ast`, without importing anything:

- no module imports from a layer above it, and the two faces beside each other (`nodes/`, `api/`)
  do not import each other;
- no import cycles among the pack's modules (imports inside functions included);
- no function longer than 60 lines outside tests.
"""
import ast
from pathlib import Path

import pytest

PACK = Path(__file__).resolve().parents[1]
NOT_THE_PACK = {"tests", "benchmarks", "build_backend", "build", "docs", "workflows", "web"}

# Bottom to top. A module may import its own top-level part and the parts of lower rank; parts of
# the same rank (the two faces) may not import each other.
LAYERS = {
    "errors": 0,
    "fileio": 1,
    "ops.ggml": 2,        # the GGML math: quant types, kernels, quantizers, type rules
    "ops.gguf_file": 3,   # the GGUF file: reader, writer, imatrix
    "ops.runtime": 3,     # the torch runtime: quantized tensor, state dicts, buffers, layers
    "ops.comfy_edge": 4,  # ComfyUI's edge: layouts, ops namespaces, patchers (ComfyUI inside functions)
    "ops": 5,             # ops/__init__.py: the public names (dequantize, quantize, QUANT_TYPES ...)
    "model_families": 6,  # what a file holds in ComfyUI's terms
    "conversion": 7,      # converting to GGUF, for the command and the Save node
    "nodes": 8,           # the ComfyUI face
    "api": 8,             # the image API face
    "cli": 9,             # the command line, thin over everything below
    "__main__": 10,
    "": 10,               # the root __init__.py: ComfyUI's entry point
}
MAX_FUNCTION_LINES = 60
# Functions still longer than that, to be split (shrink this list, never grow it): none left.
LONG_FUNCTIONS_TO_SPLIT: set[tuple[str, str]] = set()


def _pack_modules() -> dict[str, Path]:
    modules = {}
    for path in PACK.rglob("*.py"):
        rel = path.relative_to(PACK)
        if rel.parts[0] in NOT_THE_PACK or rel.parts[0].startswith(".") or rel.parts[0].endswith(".egg-info"):
            continue
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


MODULES = _pack_modules()


def _imported_modules(name: str) -> set[str]:
    """The pack modules `name` imports anywhere in its source (relative or by the package name)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.ImportFrom):
            if isinstance(node, ast.Import):
                found |= {a.name[len("comfyui_zimage_gguf."):] for a in node.names
                          if a.name.startswith("comfyui_zimage_gguf.")}
            continue
        if node.level:
            base = package.split(".") if package else []
            assert node.level - 1 <= len(base), f"{path}: relative import above the pack"
            base = base[:len(base) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
        elif (node.module or "").split(".")[0] == "comfyui_zimage_gguf":
            target = node.module[len("comfyui_zimage_gguf"):].lstrip(".")
        else:
            continue
        for alias in node.names:
            submodule = f"{target}.{alias.name}" if target else alias.name
            found.add(submodule if submodule in MODULES else target)
    return {module for module in found if module in MODULES and module != name}


GRAPH = {name: _imported_modules(name) for name in MODULES}


def _part(module: str) -> str:
    """The layer a module belongs to: its top-level part, or its subpackage of ops/."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "ops" and len(parts) > 1 else parts[0]


def test_every_top_level_part_has_a_layer():
    assert {_part(m) for m in MODULES} <= set(LAYERS), "a new top-level part: give it a rank in LAYERS"


def test_no_module_imports_from_a_layer_above_it_or_beside_it():
    wrong = []
    for module, imported in GRAPH.items():
        for target in imported:
            here, there = _part(module), _part(target)
            if here != there and LAYERS[there] >= LAYERS[here]:
                wrong.append(f"{module} -> {target}")
    assert wrong == []


def test_the_graph_sees_the_imports():
    # the check above is only as good as the graph: known arrows must be in it
    assert "conversion.plan" in GRAPH["nodes.save_gguf"]
    assert "api.comfy_messages" in GRAPH["cli.queue"]
    assert "model_families.diffusion" in GRAPH["api.model_catalog"]
    assert "ops.ggml.quant_types" in GRAPH["ops"]


def test_no_import_cycles():
    order, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(module):
        order[module] = low[module] = len(order)
        stack.append(module)
        on_stack.add(module)
        for target in sorted(GRAPH[module]):
            if target not in order:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], order[target])
        if low[module] == order[module]:
            component = set()
            while module not in component:
                component.add(stack.pop())
            on_stack.difference_update(component)
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(GRAPH):
        if module not in order:
            visit(module)
    assert cycles == []


def _long_functions() -> set[tuple[str, str]]:
    found = set()
    for path in MODULES.values():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES:
                    found.add((path.relative_to(PACK).as_posix(), node.name))
    return found


def test_no_function_is_longer_than_60_lines():
    assert _long_functions() - LONG_FUNCTIONS_TO_SPLIT == set()


def test_the_list_of_functions_to_split_only_shrinks():
    assert LONG_FUNCTIONS_TO_SPLIT - _long_functions() == set(), "split: remove it from LONG_FUNCTIONS_TO_SPLIT"


@pytest.mark.parametrize("folder", ["cli", "benchmarks"])
def test_benchmarks_and_commands_use_nothing_from_tests(folder):
    wrong = []
    for path in sorted((PACK / folder).rglob("*.py")):
        text = path.read_text()
        tree = ast.parse(text, str(path))
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            wrong += [f"{path.name}: import {n}" for n in names if n.split(".")[0] in ("tests", "helpers")]
        if '"tests"' in text or "'tests'" in text or '"tests/' in text:
            wrong.append(f"{path.name}: names the tests folder")
    assert wrong == []


def _reachable(module: str) -> set[str]:
    seen, todo = set(), [module]
    while todo:
        for target in GRAPH[todo.pop()] - seen:
            seen.add(target)
            todo.append(target)
    return seen


def test_the_reader_knows_no_tensor_class():
    # the GGUF file layer hands out bytes and descriptions; ops/runtime/state_dict.py makes tensors of them
    assert {"ops.runtime.tensor", "ops.runtime.state_dict"} & _reachable("ops.gguf_file.reader") == set()


def test_the_wheel_lists_every_subpackage():
    # setuptools installs only the packages pyproject.toml names: a new folder left out is missing
    # from every non-editable install
    import re  # (tomllib is Python 3.11+; the pack supports 3.10)

    line = re.search(r"^packages = \[(.*?)\]", (PACK / "pyproject.toml").read_text(), re.M | re.S).group(1)
    listed = set(re.findall(r'"([^"]+)"', line))
    packages = {".".join(["comfyui_zimage_gguf", *([name] if name else [])])
                for name, path in MODULES.items() if path.name == "__init__.py"}
    assert packages == listed
