"""The package graph is one-way (docs/design.md): every import, including those inside
functions, goes from a higher layer to a lower one, so no two packages import each
other. Checked twice: by reading every import statement here, and by import-linter
(`lint-imports`, the contract in pyproject.toml)."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "traffic_retrieval"

# lower number = lower layer; packages of one layer must not import each other
LAYERS = {
    "errors": 0, "options": 0,
    "io": 1,
    "config": 2, "runtime": 2,
    "data": 3,
    "model": 4, "synth": 4,
    "retrieval": 5, "evaluation": 5,
    "train": 6, "index": 6,
    "serve": 7,
    "commands": 8,
    "cli": 9,
    "__main__": 10,
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """``(line, absolute module)`` for every import statement in the file, wherever it stands."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((node.lineno, target))
            found += [(node.lineno, f"{target}.{alias.name}") for alias in node.names]  # "from . import faiss_index"
    return [(line, target) for line, target in found if target.split(".")[0] == "traffic_retrieval"]


def top_package(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def package_edges() -> dict[tuple[str, str], list[str]]:
    edges: dict[tuple[str, str], list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        source = top_package(module_name(path))
        for line, target in imported_modules(path):
            target_package = top_package(target)
            if source and target_package and target_package != source and target_package in LAYERS:
                edges.setdefault((source, target_package), []).append(f"{path.relative_to(PACKAGE.parent)}:{line}")
    return edges


def test_every_package_and_top_module_has_a_layer():
    names = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    names |= {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    assert names <= set(LAYERS), f"give these a layer in LAYERS and pyproject.toml: {sorted(names - set(LAYERS))}"


def test_imports_only_go_down_the_layers():
    upward = [f"{a} -> {b} ({', '.join(where[:3])})" for (a, b), where in package_edges().items() if LAYERS[a] <= LAYERS[b]]
    assert not upward, "imports against the one-way package graph:\n" + "\n".join(upward)


def test_no_import_cycle_between_packages():
    graph: dict[str, set[str]] = {}
    for a, b in package_edges():
        graph.setdefault(a, set()).add(b)
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return path + [node, nxt]
            if nxt not in state and (cycle := visit(nxt, path + [node])):
                return cycle
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node, [])
            assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_checker_sees_imports_inside_functions(tmp_path):
    sample = PACKAGE / "retrieval" / "queries.py"
    targets = {target for _, target in imported_modules(sample)}
    assert "traffic_retrieval.retrieval.encode" in targets  # imported inside QueryEncoder.encode_texts


def test_import_linter_contract_holds():
    lint_imports = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if lint_imports is None:
        pytest.skip("import-linter is not installed (pip install -e '.[dev]')")
    result = subprocess.run([lint_imports, "--no-cache"], cwd=PACKAGE.parent, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:]
