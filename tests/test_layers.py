"""Arrows point down: the model at the bottom, the package in the middle, the scripts, `eval/`,
`pipeline/`, `bench/` and the demo on top. Every import counts, at module level, inside a function
or under `TYPE_CHECKING`: a dependency hidden in a function is still a dependency."""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOP = ("train", "data_builder", "app", "eval", "pipeline", "bench", "tests")  # what the package never imports
PROJECT = ("omninegclip", "modeling_omninegclip", *TOP)


def _tracked_modules() -> dict[str, Path]:
    """Dotted module name -> file, for every tracked Python file of the project."""
    paths = subprocess.run(
        ["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    modules = {}
    for path in paths:
        parts = Path(path).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts and parts[0] in PROJECT and (ROOT / path).is_file():
            modules[".".join(parts)] = ROOT / path
    return modules


def _imports(module: str, path: Path, known: set[str]) -> set[str]:
    """The project modules `module` imports, anywhere in its file (relative imports resolved)."""
    found = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)] if package else []
                base = ".".join([*anchor, base] if base else anchor)
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            # the longest project module the name starts with (a `from a.b import c` may name a function c)
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _tracked_modules()
    return {module: _imports(module, path, set(modules)) for module, path in modules.items()}


def _layer(module: str) -> str:
    return module.split(".")[0]


def test_the_model_and_the_package_never_import_the_layer_above():
    graph = _graph()
    assert any(module.startswith("omninegclip.training") for module in graph)
    upward = {
        module: sorted(name for name in imports if _layer(name) in TOP)
        for module, imports in graph.items()
        if _layer(module) in ("omninegclip", "modeling_omninegclip")
    }
    assert {module: names for module, names in upward.items() if names} == {}
    model = graph["modeling_omninegclip"]
    assert not [name for name in model if _layer(name) != "modeling_omninegclip"], sorted(model)


def test_no_import_circle_anywhere():
    """No two modules reach each other through imports (Tarjan's strongly connected components)."""
    graph = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for name in graph.get(module, ()):
            if name not in index:
                visit(name)
                low[module] = min(low[module], low[name])
            elif name in on_stack:
                low[module] = min(low[module], index[name])
        if low[module] == index[module]:
            component = []
            while True:
                name = stack.pop()
                on_stack.discard(name)
                component.append(name)
                if name == module:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    assert circles == [], circles
