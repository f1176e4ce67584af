"""The package's layers, read from the source with ``ast``: no import cycle, no import against
the layering of docs/ARCHITECTURE.md, and no test that imports another test file or conftest."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# what each part of vita_clip may import from the package (besides itself); the CLIs may import anything
ALLOWED = {
    "errors": set(),
    "config_builder": set(),
    "precision": set(),
    "kernels": set(),
    "data": {"errors", "config_builder"},
    "checkpoints": {"errors", "config_builder"},
    "cli": {"errors", "data"},
    "models": {"errors", "config_builder", "precision", "kernels", "checkpoints", "data"},
    "inference": {"errors", "config_builder", "precision", "checkpoints", "data", "models"},
    "demo": {"errors", "config_builder", "precision", "checkpoints", "data", "models"},
    "tools": {"errors", "config_builder", "precision", "kernels", "checkpoints", "data", "models"},
    "engine": {"errors", "config_builder", "precision", "kernels", "checkpoints", "data", "models", "inference", "demo"},
}
CLIS = {"train", "eval", "predict"}


def package_modules() -> dict[str, Path]:
    """Module name -> file, with the top-level kernels/ folder as ``vita_clip.kernels`` (setup.py)."""
    modules = {}
    for base, prefix in ((ROOT / "vita_clip", "vita_clip"), (ROOT / "kernels", "vita_clip.kernels")):
        for path in base.rglob("*.py"):
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join([prefix, *parts])] = path
    return modules


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Package modules that module ``name`` imports anywhere in its body (lazy imports too)."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [module] + [f"{module}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # `from pkg import name` names a module or an attribute
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = package_modules()
    return {name: imports_of(name, path, set(modules)) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as a path ``[a, b, ..., a]``, or ``None``. A package imports
    its submodules by construction (``__init__``), so edges into a module's own parents are not
    followed."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if node.startswith(nxt + "."):
                continue
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def part_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def forbidden_edges(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for module, targets in graph.items():
        part = part_of(module)
        if part in CLIS or part == "__init__":
            continue
        for target in targets:
            other = part_of(target)
            if other != part and other not in ALLOWED.get(part, set()):
                bad.append(f"{module} imports {target} ({part} may import only {sorted(ALLOWED.get(part, ()))})")
    return bad


def test_the_checker_finds_cycles_and_forbidden_edges():
    assert find_cycle({"a.x": {"a.y"}, "a.y": {"a.z"}, "a.z": {"a.x"}}) == ["a.x", "a.y", "a.z", "a.x"]
    assert find_cycle({"a.x": {"a.y"}, "a.y": set()}) is None
    assert forbidden_edges({"vita_clip.models.vita": {"vita_clip.engine.trainer"}})
    assert forbidden_edges({"vita_clip.data.dataset": {"vita_clip.models.vita"}})
    assert not forbidden_edges({"vita_clip.engine.trainer": {"vita_clip.models.vita"}})


def test_every_part_of_the_package_has_a_layer():
    parts = {part_of(m) for m in package_modules()} - {"__init__"} - CLIS
    assert parts <= set(ALLOWED), f"add {sorted(parts - set(ALLOWED))} to ALLOWED and docs/ARCHITECTURE.md"


def test_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 40  # the walk found the package
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_imports_follow_the_layers():
    graph = import_graph()
    assert "vita_clip.checkpoints.io" in graph["vita_clip.models.backbone"]  # the walk resolves relative imports
    assert forbidden_edges(graph) == []


@pytest.mark.parametrize("folder", ["tests", "benchmarks"])
def test_no_test_imports_a_test_file_or_conftest(folder):
    offenders = []
    for path in (ROOT / folder).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for module in names:
                if module.split(".")[0] == "conftest" or module.split(".")[-1].startswith("test_"):
                    offenders.append(f"{path.relative_to(ROOT)} imports {module}")
    assert offenders == []
